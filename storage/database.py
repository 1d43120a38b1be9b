"""Engine and sessions: one `Database` per process, opened and closed by the app's lifespan."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from sqlalchemy import event, exc, text
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from storage.sqlite_inline import inline_creator

SQLITE_BUSY_TIMEOUT_MS = 10_000

# These loggers write SQL parameters (message bodies, emails) at DEBUG/INFO: never let a
# verbose root level turn them on.
for _name in ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg"):
    logging.getLogger(_name).setLevel(logging.WARNING)


def default_sqlite_url(var_dir: Path = Path("var")) -> str:
    return f"sqlite+aiosqlite:///{var_dir / 'agency-messaging.db'}"


def is_sqlite(url: str) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def _prepare_sqlite_file(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:":
        Path(database).parent.mkdir(parents=True, exist_ok=True)


def create_engine(url: str, *, sqlite_foreign_keys: bool = True, **kwargs: Any) -> AsyncEngine:
    """An async engine for `url`. `sqlite_foreign_keys=False` is for schema migrations only:
    SQLite rebuilds a table by dropping it, which with foreign keys on cascades to its
    children."""
    # Errors must not carry SQL parameters into logs or tracebacks.
    kwargs.setdefault("hide_parameters", True)
    if not is_sqlite(url):
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        asyncpg = make_url(url).get_driver_name() == "asyncpg"
        if asyncpg:
            # Plans: asyncpg prepares statements, and after five runs PostgreSQL may switch
            # to a generic plan that scans every thread of the org for one user's unread
            # counts; and JIT compiling a 10 ms query took up to 90 ms.
            settings = {"plan_cache_mode": "force_custom_plan", "jit": "off"}
            connect_args = kwargs.setdefault("connect_args", {})
            connect_args.setdefault("server_settings", {}).update(settings)
        # No pre-ping: with asyncpg it is three round trips (BEGIN, ";", ROLLBACK) on every
        # checkout. A connection the server closed (a restart, an idle timeout) is known to
        # the driver without asking, and is swapped for a new one at checkout instead.
        kwargs.setdefault("pool_pre_ping", not asyncpg)
        engine = create_async_engine(url, **kwargs)
        if asyncpg:
            event.listen(engine.sync_engine.pool, "checkout", _replace_closed_connection)
        return engine

    _prepare_sqlite_file(url)
    kwargs.setdefault("async_creator", inline_creator(make_url(url).database or ":memory:"))
    engine = create_async_engine(url, **kwargs)

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver so that BEGIN IMMEDIATE can be used.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute(f"PRAGMA foreign_keys={'ON' if sqlite_foreign_keys else 'OFF'}")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Any) -> None:
        # Writers take the write lock up front: a deferred transaction that reads and then
        # writes can fail with SQLITE_BUSY_SNAPSHOT, which no busy timeout retries.
        mode = conn.get_execution_options().get("sqlite_begin", "DEFERRED")
        if mode is not None:  # None: a read, each statement on its own (Database.read)
            conn.exec_driver_sql(f"BEGIN {mode}")

    return engine


def _replace_closed_connection(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
    """A pooled connection whose socket the server closed is refused at checkout: the pool
    then retries with a new connection, and the request never sees the dead one."""
    if dbapi_connection.driver_connection.is_closed():
        raise exc.DisconnectionError("The database closed this pooled connection.")


class Database:
    """Sessions for reading and for writing.

    `write()` is one transaction that commits on success. On SQLite it also holds a process
    lock: SQLite has a single writer, and queueing writers here is cheaper than having them
    spin on the database lock.
    """

    def __init__(self, url: str, **engine_kwargs: Any) -> None:
        self.url = url
        self.sqlite = is_sqlite(url)
        self.engine = create_engine(url, **engine_kwargs)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        # Reads run in autocommit: on PostgreSQL each statement is its own snapshot either
        # way (READ COMMITTED), and a read then costs its statements alone, not BEGIN and
        # ROLLBACK round trips around them; on SQLite (WAL) likewise each statement sees
        # the newest commit. A read that needs one snapshot asks for it in one statement.
        # (SQLite: by not sending BEGIN; its driver's own autocommit switch would be reset
        # with a PRAGMA on every return to the pool.)
        self._reads = self.engine.execution_options(
            **({"sqlite_begin": None} if self.sqlite else {"isolation_level": "AUTOCOMMIT"})
        )
        self._read_sessions = async_sessionmaker(self._reads, expire_on_commit=False)
        self._write_lock = asyncio.Lock() if self.sqlite else None
        self.statements = 0  # SQL statements sent, for /metrics and the benchmarks
        event.listen(self.engine.sync_engine, "before_cursor_execute", self._count_statement)

    def _count_statement(self, *_args: Any) -> None:
        self.statements += 1

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @asynccontextmanager
    async def read(self) -> AsyncIterator[AsyncSession]:
        async with self._read_sessions() as session:
            yield session

    @asynccontextmanager
    async def reading(self) -> AsyncIterator[AsyncConnection]:
        """A bare connection for Core reads on hot paths (a socket's connect): as `read()`,
        without the cost of an ORM session."""
        async with self._reads.connect() as conn:
            yield conn

    @asynccontextmanager
    async def write(self) -> AsyncIterator[AsyncSession]:
        if self._write_lock is None:
            async with self._sessions() as session, session.begin():
                yield session
            return
        async with self._write_lock, self.engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with AsyncSession(bind=conn, expire_on_commit=False) as session, session.begin():
                yield session

    @asynccontextmanager
    async def transaction(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction on a bare connection, for Core statements on hot paths (an ORM
        session costs more than the statements). Commits on success, as `write()`."""
        if self._write_lock is None:
            async with self.engine.begin() as conn:
                yield conn
            return
        async with self._write_lock, self.engine.connect() as conn:
            conn = await conn.execution_options(sqlite_begin="IMMEDIATE")
            async with conn.begin():
                yield conn

    @asynccontextmanager
    async def atomic(self) -> AsyncIterator[AsyncConnection]:
        """A connection for writes that are one statement on PostgreSQL: in autocommit, the
        statement is its own transaction (one round trip, no BEGIN and COMMIT). On SQLite,
        whose statements here stand for one, a write transaction as `transaction()`."""
        if self._write_lock is not None:
            async with self.transaction() as conn:
                yield conn
            return
        async with self.engine.connect() as conn:
            yield await conn.execution_options(isolation_level="AUTOCOMMIT")

    async def ping(self) -> None:
        async with self.engine.connect() as conn:
            await conn.execute(text("SELECT 1"))

    async def close(self) -> None:
        await self.engine.dispose()
