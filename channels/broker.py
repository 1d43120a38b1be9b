"""The broker: carries encoded events between server processes.

A small interface picked by URL scheme, backends imported lazily:

    memory://            one process; publish hands the payload straight to the listener
    redis://host:port/db many processes; Redis pub/sub, one subscriber connection a process

The hub subscribes a channel when its first local client joins and unsubscribes after the
last one leaves. After a lost link comes back, the backend resubscribes by itself and calls
`on_reconnect`, so that the hub can catch its clients up from the event log.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol
from urllib.parse import urlsplit

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ReconnectHandler = Callable[[], Awaitable[None]]


class BrokerError(Exception):
    """The broker could not carry out a request."""


class BrokerUnavailable(BrokerError):
    """The broker is not connected; events still persist and clients catch up later."""


class Broker(Protocol):
    async def start(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None: ...

    async def close(self) -> None: ...

    async def subscribe(self, channel: str) -> None: ...

    async def unsubscribe(self, channel: str) -> None: ...

    async def publish(self, channel: str, payload: bytes) -> None: ...

    async def publish_many(self, items: list[tuple[str, bytes]]) -> None: ...

    async def ping(self) -> None:
        """Raises unless the broker can deliver right now (for /readyz)."""


def create_broker(url: str) -> Broker:
    scheme = urlsplit(url).scheme
    if scheme == "memory":
        from channels.memory import MemoryBroker

        return MemoryBroker()
    if scheme in ("redis", "rediss"):
        from channels.redis import RedisBroker

        return RedisBroker(url)
    raise BrokerError(f"There is no broker for the URL scheme {scheme!r}.")
