"""A hub over the in-process broker and presence, with an event source the test controls.

Shared by tests/unit/test_hub_paths.py and tests/unit/test_hub_unread.py. `FakeSource` is
the hub's durable side in memory: an event log per candidate and unread rows per user, with
switches to make reads fail, stall or wait on a gate. `running_hub` starts a hub over it
and closes it afterwards; `connect` makes a member's connection and `sent` reads back the
frames queued on it.

Each event of the fake log belongs to a thread whose facts give it its audience under a
member's rule (`member_rule`): an event seen by several users is in an agency thread, one
seen by a single user in that member's private thread.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable

import orjson

from channels import protocol
from channels.backends.memory import MemoryBroker, MemoryPresence
from channels.connection import Connection, ConnectionLimits
from channels.hub import Hub, LoggedEvent, LogReads, ThreadFacts, ThreadRule
from channels.unread import ThreadSnapshot

ORG, USER_PK = 1, 10
AGENT_PK = 99  # the agency user of every thread of the fake log


def frame(seq: int, thread_id: int = 1, message_id: int | None = None) -> str:
    message_id = message_id or seq
    message = {"id": message_id, "thread": thread_id, "body": f"m{message_id}", "deleted": False}
    return protocol.candidate_event(
        protocol.MESSAGE_CREATED, "c5", seq, thread_id, message_id, message
    )


def thread_for(audience: set[int]) -> ThreadFacts:
    """A thread that a member's rule shows to exactly these members."""
    if len(audience) == 1:
        (member,) = audience
        return ThreadFacts(1000 + member, "private", AGENT_PK, member)
    return ThreadFacts(1, "agency", AGENT_PK, None)


def member_rule(user_pk: int) -> ThreadRule:
    """The rule of a member who sees the candidate: every agency thread, its own private
    ones."""
    return lambda thread: thread.kind == "agency" or thread.member_pk == user_pk


class FakeSource:
    """An event log per candidate (`append`), and unread rows per user (`rows`).

    Every unread read is noted in `reads` (the user's key) and answers with the rows as
    they are when it starts (the database's snapshot); it then waits on the next of `gates`,
    if any (`gate()` adds one), calls `on_read`, and raises `read_error` if set. Replays
    note where each batch starts in `cursors`, fail from batch `fail_after_batches` on, and
    wait on `stall` while `stalling`; a read for many candidates notes each `after` it reads
    from as a cursor too. Thread lookups are noted in `thread_reads`."""

    def __init__(self) -> None:
        self.log: dict[int, list[LoggedEvent]] = {}
        self.rows: dict[tuple[int, int], list[ThreadSnapshot]] = {}
        self.reads: list[tuple[int, int]] = []
        self.gates: list[asyncio.Event] = []
        self.cursors: list[int] = []
        self.fail_after_batches: int | None = None  # events_after fails from this call on
        self.on_read: Callable[[Connection], object] | None = None
        self.read_error: Exception | None = None
        self.stall = asyncio.Event()  # events_after waits on it while `stalling`
        self.stalling = False
        self.thread_reads: list[list[int]] = []

    def append(self, candidate_pk: int, seq: int, audience: set[int]) -> LoggedEvent:
        thread = thread_for(audience)
        event = LoggedEvent(seq, frozenset(audience), frame(seq, thread.id), thread)
        self.log.setdefault(candidate_pk, []).append(event)
        return event

    def add(self, candidate_pk: int, event: LoggedEvent) -> LoggedEvent:
        self.log.setdefault(candidate_pk, []).append(event)
        return event

    def gate(self) -> asyncio.Event:
        gate = asyncio.Event()
        self.gates.append(gate)
        return gate

    async def last_seqs(self, candidate_pks: list[int]) -> dict[int, int]:
        return {pk: self.log[pk][-1].seq if self.log.get(pk) else 0 for pk in candidate_pks}

    async def events_after(self, candidate_pk: int, after: int, limit: int) -> list[LoggedEvent]:
        if self.stalling:
            await self.stall.wait()
        if self.fail_after_batches is not None and len(self.cursors) >= self.fail_after_batches:
            raise OSError("database unreachable")
        self.cursors.append(after)
        return [e for e in self.log.get(candidate_pk, []) if e.seq > after][:limit]

    async def log_reads(
        self, candidate_pks: list[int], after: dict[int, int], limit: int
    ) -> LogReads:
        seqs = await self.last_seqs(candidate_pks)
        events = {}
        for pk, seq in after.items():
            events[pk] = await self.events_after(pk, seq, limit)
        return LogReads(seqs, events)

    async def thread_facts(self, thread_ids: list[int]) -> dict[int, ThreadFacts]:
        self.thread_reads.append(thread_ids)
        threads = [e.thread for events in self.log.values() for e in events if e.thread]
        return {t.id: t for t in threads if t.id in thread_ids}

    async def unread_snapshot(self, connection: Connection) -> list[ThreadSnapshot]:
        self.reads.append(connection.user_key)
        rows = list(self.rows.get(connection.user_key, []))  # the snapshot of the read's start
        if self.gates:
            await self.gates.pop(0).wait()
        if self.on_read is not None:
            result = self.on_read(connection)
            if asyncio.iscoroutine(result):
                await result
        if self.read_error is not None:
            raise self.read_error
        return rows


@contextlib.asynccontextmanager
async def running_hub(
    source: FakeSource, presence: MemoryPresence | None = None
) -> AsyncIterator[Hub]:
    """A started hub over `source`, the in-process broker and `presence` (in-process by
    default); closed on the way out."""
    hub = Hub(MemoryBroker(), presence or MemoryPresence(), source)
    await hub.start()
    try:
        yield hub
    finally:
        await hub.close()


def connect(user_pk: int = USER_PK, **limits: float) -> Connection:
    """A member's connection in org `ORG`, with `limits` overriding the default ones."""
    return Connection(ORG, user_pk, "member", ConnectionLimits(**limits))  # type: ignore[arg-type]


def sent(conn: Connection) -> list[dict[str, object]]:
    """The frames queued on `conn` so far, decoded."""
    return [orjson.loads(f) for f in conn._queue]
