"""The two interfaces that connect processes: the broker and presence.

Both are small protocols with backends picked by URL scheme (see `channels.backends`):

    memory://            one process; publish hands the payload straight to the listener
    redis://host:port/db many processes; Redis pub/sub, one subscriber connection a process

The broker carries encoded events between server processes. The hub subscribes a channel
when its first local client joins and unsubscribes after the last one leaves. After a lost
link comes back, the backend resubscribes by itself and calls `on_reconnect`, so that the
hub can catch its clients up from the event log.

Presence tells which users have an open socket on any process. It is used by email alerts
(who is offline) and by the per-user connection limit. A closed socket stops counting at
once; a socket whose process died stops counting when its lease runs out.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Protocol

MessageHandler = Callable[[str, bytes], Awaitable[None]]
ReconnectHandler = Callable[[], Awaitable[None]]
UserKey = tuple[int, int]  # (org pk, user pk)
LEASE_SECONDS = 60.0


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


class Presence(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, user: UserKey, connection_id: str) -> None: ...

    async def renew(self, connections: list[tuple[UserKey, str]]) -> None:
        """Extends the leases of this process's open connections."""

    async def remove(self, user: UserKey, connection_id: str) -> None: ...

    async def count(self, user: UserKey) -> int: ...

    async def online(self, users: list[UserKey]) -> set[UserKey]: ...
