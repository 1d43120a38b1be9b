"""The hub's unread reads under concurrency, with a controllable event source.

A user's first counts are read while its socket is being accepted; changes that arrive
during that read, a second read racing the first, and a handshake given up on halfway must
all end with the client told the truth.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from channels import envelope
from channels.connection import Connection
from channels.hub import Hub
from channels.unread import ThreadSnapshot
from tests.support.hub import ORG, USER_PK, FakeSource, connect, running_hub, sent

CAND, THREAD = 5, 7
USER = (ORG, USER_PK)


@pytest.fixture
async def hub_and_source() -> AsyncIterator[tuple[Hub, FakeSource]]:
    source = FakeSource()
    async with running_hub(source) as hub:
        yield hub, source


def access_changed() -> bytes:
    return envelope.encode(envelope.UnreadEnvelope(ORG, CAND, 0, frozenset({USER_PK})))


def unread_frames(conn: Connection) -> list[dict[str, object]]:
    return [f for f in sent(conn) if f["type"] == "unread"]


async def settle() -> None:
    await asyncio.sleep(1.3)  # longer than an unread batch interval


async def test_access_revoked_during_the_first_read_is_reported(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    source.rows[USER] = [ThreadSnapshot(THREAD, CAND, "c5", 3, 9, 0)]
    gate = source.gate()
    conn = connect()
    registering = asyncio.create_task(hub.register(conn))
    await asyncio.sleep(0.01)
    source.rows[USER] = []  # revoked: committed after the first read's snapshot
    await hub.on_broker_message(envelope.UNREAD_CHANNEL, access_changed())
    await asyncio.sleep(0.2)  # the unread loop must not start a competing read
    gate.set()
    await registering
    await settle()
    assert [(f["thread"], f["unread"], f["total_unread"]) for f in unread_frames(conn)] == [
        (THREAD, 0, 0)
    ]
    assert hub.unread.stale == set()


async def test_a_handshake_given_up_on_does_not_leave_the_next_one_without_counts(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    source.rows[USER] = [ThreadSnapshot(THREAD, CAND, "c5", 3, 9, 0)]
    gate = source.gate()
    first = asyncio.create_task(hub.register(connect()))
    await asyncio.sleep(0.01)
    first.cancel()  # the client went away during the handshake
    await asyncio.gather(first, return_exceptions=True)
    # The read goes on (cancelling a query costs the database a connection)...
    assert USER not in hub.users and USER in hub._first_reads
    second = connect()
    registering = asyncio.create_task(hub.register(second))
    await asyncio.sleep(0.01)
    gate.set()  # ...and the retry joins it instead of reading again
    await registering
    assert hub.unread.knows(USER) and len(source.reads) == 1
    source.rows[USER] = []
    await hub.on_broker_message(envelope.UNREAD_CHANNEL, access_changed())
    await settle()
    assert [(f["thread"], f["unread"]) for f in unread_frames(second)] == [(THREAD, 0)]


async def test_a_failed_first_read_keeps_nothing(hub_and_source: tuple[Hub, FakeSource]) -> None:
    hub, source = hub_and_source

    async def down(connection: Connection) -> list[ThreadSnapshot]:
        raise OSError("database unreachable")

    source.unread_snapshot = down  # type: ignore[method-assign]
    with pytest.raises(OSError):
        await hub.register(connect())
    assert USER not in hub.users and not hub.unread.knows(USER)


class InlineSource(FakeSource):
    """Answers every unread read without yielding, as SQLite run inline does; the first
    read starts a second connect of the same user just before it returns. That connect
    runs after the read has finished but before the read's done-callbacks: the moment at
    which awaiting the shared read returns at once, without yielding to the loop."""

    def __init__(self, hub_of: list[Hub], late: list[asyncio.Task[None]]) -> None:
        super().__init__()
        self.hub_of, self.late = hub_of, late
        self.second = connect()

    async def unread_snapshot(self, connection: Connection) -> list[ThreadSnapshot]:
        self.reads.append(connection.user_key)
        if not self.late:
            hub = self.hub_of[0]
            self.late.append(asyncio.get_running_loop().create_task(hub.register(self.second)))
        return list(self.rows.get(connection.user_key, []))


def _connect_twice_in_the_window() -> int:
    """Runs the interleaving in a loop of its own; returns the number of reads."""

    async def scenario() -> int:
        hub_of: list[Hub] = []
        late: list[asyncio.Task[None]] = []
        source = InlineSource(hub_of, late)
        async with running_hub(source) as hub:
            hub_of.append(hub)
            await hub.register(connect())
            await asyncio.wait_for(late[0], 10)
            assert len(hub.users[USER]) == 2 and hub.unread.knows(USER)
            return len(source.reads)

    return asyncio.run(scenario())


def test_a_connect_that_finds_the_shared_read_just_finished_does_not_freeze_the_loop() -> None:
    """Before the fix, the second connect looped forever on the finished read: the event
    loop never ran again. The scenario runs on a thread, so that a freeze fails this test
    (the thread is left spinning) instead of hanging the suite."""
    import concurrent.futures

    pool = concurrent.futures.ThreadPoolExecutor(1)
    outcome = pool.submit(_connect_twice_in_the_window)
    try:
        reads = outcome.result(timeout=30)  # a bound that only a frozen loop reaches
    except concurrent.futures.TimeoutError:
        pytest.fail("The event loop froze: a connect spun on the user's finished first read.")
    finally:
        pool.shutdown(wait=False)
    assert reads == 1  # the second connect used the first read's counts


async def test_a_read_whose_handshakes_were_all_given_up_on_keeps_nothing(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    gate = source.gate()
    first = asyncio.create_task(hub.register(connect()))
    await asyncio.sleep(0.01)
    first.cancel()
    await asyncio.gather(first, return_exceptions=True)
    reading = hub._first_reads[USER]
    gate.set()
    await reading
    assert not hub.unread.knows(USER) and USER not in hub._first_reads
    # The next connect reads afresh: counts kept with nobody connected would go stale.
    source.rows[USER] = [ThreadSnapshot(THREAD, CAND, "c5", 2, 9, 0)]
    await hub.register(connect())
    assert len(source.reads) == 2 and hub.unread.knows(USER)
