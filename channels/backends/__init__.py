"""Broker and presence backends, picked by URL scheme and imported only when used (a
process on the in-process backend never imports the Redis client).

The table names each backend by module and class, so that this package imports none of
them: the backends import `channels.interfaces`, and nothing imports back.
"""

from __future__ import annotations

import importlib
from typing import Any, cast
from urllib.parse import urlsplit

from channels.interfaces import Broker, BrokerError, Presence

_BROKERS = {
    "memory": "channels.backends.memory:MemoryBroker",
    "redis": "channels.backends.redis:RedisBroker",
    "rediss": "channels.backends.redis:RedisBroker",
}
_PRESENCE = {
    "memory": "channels.backends.memory:MemoryPresence",
    "redis": "channels.backends.redis:RedisPresence",
    "rediss": "channels.backends.redis:RedisPresence",
}


def _load(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def create_broker(url: str) -> Broker:
    scheme = urlsplit(url).scheme
    if scheme not in _BROKERS:
        raise BrokerError(f"There is no broker for the URL scheme {scheme!r}.")
    backend = _load(_BROKERS[scheme])
    return cast(Broker, backend() if scheme == "memory" else backend(url))


def create_presence(url: str) -> Presence:
    """Presence follows the broker's URL; any scheme but Redis keeps it in this process."""
    scheme = urlsplit(url).scheme
    backend = _load(_PRESENCE.get(scheme, _PRESENCE["memory"]))
    return cast(Presence, backend() if backend.__name__ == "MemoryPresence" else backend(url))
