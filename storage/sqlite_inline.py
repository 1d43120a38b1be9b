"""aiosqlite's interface, carried out on the event loop's own thread.

aiosqlite hands every call (execute, fetch, close a cursor) to a worker thread and back. A
call on a local SQLite file takes microseconds; each hand-off costs more than that, and under
load the two threads queue for the GIL, so one message send (a dozen statements, several
calls each) spent most of its time waiting. Run inline, the calls cost what SQLite costs.

Why this does not stall the event loop: writers of this process are serialised by
`Database.write()` before they reach SQLite, and readers in WAL mode never wait for a
writer, so a call only waits when another *process* holds the write lock, and then for the
length of that process's short transaction (bounded by the busy timeout).

The worker thread still starts, idle, for the one call SQLAlchemy makes through it (setting
the isolation level once per connection); hence `check_same_thread=False`, which is safe
because calls on a connection never overlap.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from typing import Any

import aiosqlite


class InlineConnection(aiosqlite.Connection):
    async def _connect(self) -> InlineConnection:
        if self._connection is None:
            self._connection = self._connector()
        return self

    async def _execute(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        if not self._running or not self._connection:
            raise ValueError("Connection closed")
        return fn(*args, **kwargs)


def inline_creator(database: str) -> Callable[[], Awaitable[aiosqlite.Connection]]:
    """An `async_creator` for SQLAlchemy's aiosqlite dialect."""

    def connector() -> sqlite3.Connection:
        return sqlite3.connect(database, check_same_thread=False)

    async def create() -> aiosqlite.Connection:
        connection = InlineConnection(connector, iter_chunk_size=64)
        connection._thread.daemon = True
        return await connection

    return create
