"""In-process broker and presence: the default for a single server process."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict

from channels.interfaces import MessageHandler, ReconnectHandler, UserKey

log = logging.getLogger("agency_messaging.broker")


class MemoryBroker:
    """Publishes through a queue to one listener task, like a remote broker would, so that
    publishing never runs subscribers' code on the publisher's stack."""

    def __init__(self) -> None:
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._channels: set[str] = set()
        self._task: asyncio.Task[None] | None = None
        self._on_message: MessageHandler | None = None

    async def start(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        self._on_message = on_message
        self._task = asyncio.create_task(self._listen(), name="memory-broker-listener")

    async def _listen(self) -> None:
        assert self._on_message is not None
        while True:
            channel, payload = await self._queue.get()
            if channel in self._channels:
                try:
                    await self._on_message(channel, payload)
                except Exception:
                    log.exception("A broker message could not be dispatched.")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def subscribe(self, channel: str) -> None:
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)

    async def publish(self, channel: str, payload: bytes) -> None:
        self._queue.put_nowait((channel, payload))

    async def publish_many(self, items: list[tuple[str, bytes]]) -> None:
        for item in items:
            self._queue.put_nowait(item)

    async def ping(self) -> None:
        if self._task is None or self._task.done():
            raise ConnectionError("The in-process broker's listener is not running.")


class MemoryPresence:
    def __init__(self) -> None:
        self._connections: dict[UserKey, set[str]] = defaultdict(set)

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def add(self, user: UserKey, connection_id: str) -> None:
        self._connections[user].add(connection_id)

    async def renew(self, connections: list[tuple[UserKey, str]]) -> None:
        return None  # one process: a connection counts exactly while it is open

    async def remove(self, user: UserKey, connection_id: str) -> None:
        ids = self._connections.get(user)
        if ids is not None:
            ids.discard(connection_id)
            if not ids:
                del self._connections[user]

    async def count(self, user: UserKey) -> int:
        return len(self._connections.get(user, ()))

    async def online(self, users: list[UserKey]) -> set[UserKey]:
        return {u for u in users if self._connections.get(u)}
