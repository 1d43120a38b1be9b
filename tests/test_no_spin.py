"""Loops that could spin, and a burst that could exhaust a pool. Each loop is driven into
the state where, before its fix, it looped without ever yielding to the event loop. Every
scenario runs on a thread of its own, so a frozen loop fails its test instead of hanging
the suite (the bound is never reached by a loop that works; it is not a measure of speed).

The connect that found a finished shared read is in tests/unit/test_hub_unread.py.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from channels.backends.memory import MemoryBroker, MemoryPresence
from channels.connection import Connection
from channels.hub import CandidateChannel, Hub, LoggedEvent, ReplayWindow
from channels.unread import ThreadSnapshot
from mailer.worker import AlertWorker

FREEZE_BOUND_SECONDS = 30.0


def run_on_a_thread(scenario: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    pool = concurrent.futures.ThreadPoolExecutor(1)
    outcome = pool.submit(asyncio.run, scenario())
    try:
        return outcome.result(timeout=FREEZE_BOUND_SECONDS)
    except concurrent.futures.TimeoutError:
        pytest.fail("The event loop froze: a loop spun without yielding.")
    finally:
        pool.shutdown(wait=False)


class GappedLog:
    """An event log whose next seq is missing: every read returns the same full batch,
    starting past the gap, at once (as SQLite run inline answers)."""

    def __init__(self) -> None:
        self.reads = 0

    async def events_after(self, candidate_pk: int, after: int, limit: int) -> list[LoggedEvent]:
        self.reads += 1
        start = after + 2  # after + 1 is missing
        return [LoggedEvent(seq, frozenset(), "{}") for seq in range(start, start + limit)]

    async def last_seqs(self, candidate_pks: list[int]) -> dict[int, int]:
        return {pk: 0 for pk in candidate_pks}

    async def window(self, candidate_pk: int) -> ReplayWindow:
        return ReplayWindow(0, 0)

    async def unread_snapshot(self, connection: Connection) -> list[ThreadSnapshot]:
        return []


def test_catching_up_a_channel_over_a_gap_in_its_log_stops() -> None:
    async def scenario() -> int:
        source = GappedLog()
        hub = Hub(MemoryBroker(), MemoryPresence(), source)
        channel = CandidateChannel(7, seq=10)
        hub.channels[7] = channel
        hub._schedule_fill(channel)
        assert channel.filling is not None
        await channel.filling
        assert channel.seq == 10  # nothing dispatched past the gap
        return source.reads

    assert run_on_a_thread(scenario) == 1


class BusyWorker(AlertWorker):
    """A worker whose every batch is full (a backlog) and done without yielding."""

    def __init__(self, batches: int) -> None:
        self.batches = batches
        self._wakeup = asyncio.Event()

    async def run_once(self) -> bool:
        self.batches -= 1
        if self.batches <= 0:
            raise asyncio.CancelledError  # the end of the scenario
        return True


def test_the_alert_worker_yields_between_the_batches_of_a_backlog() -> None:
    async def scenario() -> int:
        turns = 0

        async def other_task() -> None:
            nonlocal turns
            while True:
                turns += 1
                await asyncio.sleep(0)

        other = asyncio.create_task(other_task())
        await asyncio.sleep(0)
        worker = asyncio.create_task(BusyWorker(batches=1000).run_forever())
        await asyncio.gather(worker, return_exceptions=True)
        other.cancel()
        return turns

    # Every other task ran between the batches, not only before and after the backlog.
    assert run_on_a_thread(scenario) >= 1000


async def test_a_burst_of_presence_writes_waits_for_pooled_connections(redis_server: Any) -> None:
    """A connect storm writes presence for hundreds of sockets at once: past the pool's
    size the writes wait for a connection (they used to fail with "Too many connections",
    leaving those sockets out of presence until the next renewal)."""
    from channels.backends.redis import POOL_CONNECTIONS, RedisPresence

    presence = RedisPresence(redis_server.url)
    await presence.start()
    try:
        users = range(POOL_CONNECTIONS * 4)
        outcomes = await asyncio.gather(
            *(presence.add((1, pk), f"conn-{pk}") for pk in users), return_exceptions=True
        )
        assert [o for o in outcomes if isinstance(o, BaseException)] == []
        assert [await presence.count((1, pk)) for pk in users] == [1] * len(users)
    finally:
        await presence.close()
