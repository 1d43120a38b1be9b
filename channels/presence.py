"""Presence: which users have an open socket on any process.

Used by email alerts (who is offline) and by the per-user connection limit. A closed socket
stops counting at once; a socket whose process died stops counting when its lease runs out.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol
from urllib.parse import urlsplit

UserKey = Hashable
LEASE_SECONDS = 60.0


class Presence(Protocol):
    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def add(self, user: tuple[int, int], connection_id: str) -> None: ...

    async def renew(self, connections: list[tuple[tuple[int, int], str]]) -> None:
        """Extends the leases of this process's open connections."""

    async def remove(self, user: tuple[int, int], connection_id: str) -> None: ...

    async def count(self, user: tuple[int, int]) -> int: ...

    async def online(self, users: list[tuple[int, int]]) -> set[tuple[int, int]]: ...


def create_presence(url: str) -> Presence:
    scheme = urlsplit(url).scheme
    if scheme in ("redis", "rediss"):
        from channels.redis import RedisPresence

        return RedisPresence(url)
    from channels.memory import MemoryPresence

    return MemoryPresence()
