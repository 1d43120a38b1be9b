"""Broker and presence backends, picked by URL scheme and imported only when used (a
process on the in-process backend never imports the Redis client).

The tables name each backend by module and class, so that this package imports none of
them: the backends import `channels.interfaces`, and nothing imports back. A backend class
takes the URL when it needs one (`takes_url`).
"""

from __future__ import annotations

import importlib
from typing import Any, NamedTuple, cast
from urllib.parse import urlsplit

from channels.interfaces import Broker, BrokerError, Presence


class Backend(NamedTuple):
    path: str  # module:class
    takes_url: bool


_MEMORY_BROKER = Backend("channels.backends.memory:MemoryBroker", takes_url=False)
_REDIS_BROKER = Backend("channels.backends.redis:RedisBroker", takes_url=True)
_MEMORY_PRESENCE = Backend("channels.backends.memory:MemoryPresence", takes_url=False)
_REDIS_PRESENCE = Backend("channels.backends.redis:RedisPresence", takes_url=True)

BROKERS = {"memory": _MEMORY_BROKER, "redis": _REDIS_BROKER, "rediss": _REDIS_BROKER}
# Presence follows the broker's URL: across processes with Redis, in this process otherwise.
PRESENCE = {"memory": _MEMORY_PRESENCE, "redis": _REDIS_PRESENCE, "rediss": _REDIS_PRESENCE}


def _build(backend: Backend, url: str) -> Any:
    module, _, name = backend.path.partition(":")
    cls = getattr(importlib.import_module(module), name)
    return cls(url) if backend.takes_url else cls()


def create_broker(url: str) -> Broker:
    scheme = urlsplit(url).scheme
    if scheme not in BROKERS:
        raise BrokerError(f"There is no broker for the URL scheme {scheme!r}.")
    return cast(Broker, _build(BROKERS[scheme], url))


def create_presence(url: str) -> Presence:
    """Presence for a broker URL; a scheme without a presence backend keeps it in this
    process (settings refuse unknown broker schemes before this is asked)."""
    scheme = urlsplit(url).scheme
    return cast(Presence, _build(PRESENCE.get(scheme, _MEMORY_PRESENCE), url))
