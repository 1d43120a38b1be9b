"""Pooled PostgreSQL connections are not pinged on checkout (a ping is three round trips
with asyncpg), yet one that the server closed is never handed to a request: it is swapped
for a new connection at checkout. Uses a PostgreSQL server of its own, restarted here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import text

from harness.services import PostgresServer
from storage.database import Database

pytestmark = pytest.mark.postgres


@pytest.fixture
def own_postgres() -> Iterator[PostgresServer]:
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


async def test_a_connection_closed_by_a_restart_is_replaced_without_pinging(
    own_postgres: PostgresServer,
) -> None:
    db = Database(own_postgres.url("postgres"))
    pings: list[Any] = []
    ping = db.engine.dialect.do_ping

    def counted_ping(connection: Any) -> bool:
        pings.append(connection)
        return bool(ping(connection))

    db.engine.dialect.do_ping = counted_ping  # type: ignore[method-assign]
    try:
        # Two connections in the pool, both used once.
        async with db.read() as first, db.read() as second:
            assert (await first.execute(text("select 1"))).scalar() == 1
            assert (await second.execute(text("select 2"))).scalar() == 2
        async with db.read() as session:
            before = (await session.execute(text("select pg_backend_pid()"))).scalar()

        await asyncio.to_thread(own_postgres.restart)
        # The server closed every connection; the driver notices once the loop runs.
        await asyncio.sleep(0.2)

        for _ in range(3):
            async with db.read() as session:
                after = (await session.execute(text("select pg_backend_pid()"))).scalar()
            assert after != before  # a new connection, to the restarted server
        assert pings == []
    finally:
        await db.close()
