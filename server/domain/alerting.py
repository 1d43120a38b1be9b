"""Email alerts decided from the event log, off the send path.

A send only marks its event `alerts_pending`. The alert worker then decides the alerts of
every pending event in one transaction: it records each author as a poster of the thread,
asks `rules.alert_recipients` who is involved (with access as it is now), leaves out who
muted alerts, queues one outbox row per (recipient, thread) due when the message's delay
ends, and clears the flags. The rows and the cleared flags commit together, so each
message's alerts are decided exactly once, by whichever process gets there first. Who is
online plays no part: an open socket is not reading, and whether the recipient has read
the messages is checked when the row is due.

Events are taken in seq order, and on PostgreSQL by one process at a time (a
transaction-scoped advisory lock; the others skip): who has posted in a thread, which
decides who is involved, must be recorded in the order the messages were posted.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy import bindparam, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from mailer import outbox
from mailer.preferences import muted_pairs
from server.domain import facts, rules
from storage.database import Database
from storage.models import Candidate, Event, Message, Thread, ThreadPoster

BATCH = 500  # events per transaction
# Any constant unique to this job: the key of the PostgreSQL advisory lock it takes.
ADVISORY_LOCK_KEY = 0x616D616C65727473  # "amalerts"

_PENDING = (
    select(
        Event.candidate_pk,
        Event.seq,
        Event.thread_id,
        Event.message_id,
        Message.author_pk,
        Message.created_at,
        Thread.org_pk,
        Thread.kind,
        Thread.agency_user_pk,
        Thread.member_pk,
        Candidate.coordinator_pk,
    )
    .join(Message, Message.id == Event.message_id)
    .join(Thread, Thread.id == Event.thread_id)
    .join(Candidate, Candidate.pk == Event.candidate_pk)
    .where(Event.alerts_pending.is_(True))
    .order_by(Event.candidate_pk, Event.seq)
    .limit(bindparam("n"))
)
_POSTERS = select(ThreadPoster.thread_id, ThreadPoster.user_pk).where(
    ThreadPoster.thread_id.in_(bindparam("ts", expanding=True))
)
_DECIDED = (
    update(Event)
    .where(tuple_(Event.candidate_pk, Event.seq).in_(bindparam("keys", expanding=True)))
    .values(alerts_pending=False)
)
_TRY_LOCK = text("SELECT pg_try_advisory_xact_lock(:key)")
_LOCK = text("SELECT pg_advisory_xact_lock(:key) IS NULL")  # waits; the function is void


@dataclass(slots=True)
class _Batch:
    alerts: dict[tuple[int, int], outbox.Pending] = field(default_factory=dict)  # (user, thread)
    new_posters: set[tuple[int, int]] = field(default_factory=set)  # (thread, user)


class AlertDerivation:
    """Turns pending `message.created` events into outbox rows (see the module's doc)."""

    def __init__(
        self,
        db: Database,
        delay_seconds: float,
        *,
        batch: int = BATCH,
        count: Callable[[int], None] = lambda queued: None,
    ) -> None:
        self.db = db
        self.delay = timedelta(seconds=delay_seconds)
        self.batch = batch
        self.count = count

    async def run_once(self, *, wait: bool = False) -> int:
        """Decides one batch of pending events; returns how many were decided. While another
        process is deciding, returns 0 at once, or with `wait` waits for it to finish (and
        then decides what is left)."""
        async with self.db.write() as session:
            conn = await session.connection()
            if self.db.dialect == "postgresql" and not await self._lock(conn, wait):
                return 0  # another process is deciding them now
            rows = (await conn.execute(_PENDING, {"n": self.batch})).all()
            if not rows:
                return 0
            decided = await self._decide(conn, rows)
            await self._write(conn, decided)
            await conn.execute(_DECIDED, {"keys": [(r.candidate_pk, r.seq) for r in rows]})
        self.count(len(decided.alerts))
        return len(rows)

    async def full_batch(self) -> bool:
        """Decides one batch; returns whether it was full (more may be pending)."""
        return await self.run_once() >= self.batch

    async def run_all(self) -> int:
        """Decides every pending event, waiting for another process that is deciding some
        (a test, or a tool, that needs every alert decided now)."""
        total = 0
        while decided := await self.run_once(wait=True):
            total += decided
        return total

    @staticmethod
    async def _lock(conn: AsyncConnection, wait: bool) -> bool:
        if wait:
            await conn.execute(_LOCK, {"key": ADVISORY_LOCK_KEY})
            return True
        return bool(await conn.scalar(_TRY_LOCK, {"key": ADVISORY_LOCK_KEY}))

    async def _decide(self, conn: AsyncConnection, rows: Sequence[Any]) -> _Batch:
        accesses = await facts.accesses_of(
            conn, {r.candidate_pk: (r.org_pk, r.coordinator_pk) for r in rows}
        )
        posters: dict[int, set[int]] = {r.thread_id: set() for r in rows}
        for thread_id, user_pk in await conn.execute(_POSTERS, {"ts": sorted(posters)}):
            posters[thread_id].add(user_pk)
        batch = _Batch()
        wanted: list[outbox.Pending] = []
        for r in rows:  # in seq order per candidate: posters grow as the thread did
            thread_posters = posters[r.thread_id]
            if r.author_pk not in thread_posters:
                thread_posters.add(r.author_pk)
                batch.new_posters.add((r.thread_id, r.author_pk))
            ref = rules.ThreadRef(
                r.thread_id, r.candidate_pk, r.kind, r.agency_user_pk, r.member_pk
            )
            access = accesses[r.candidate_pk]
            for user_pk in rules.alert_recipients(access, ref, thread_posters, r.author_pk):
                wanted.append(
                    outbox.Pending(
                        org_pk=r.org_pk,
                        candidate_pk=r.candidate_pk,
                        thread_id=r.thread_id,
                        user_pk=user_pk,
                        first_message_id=r.message_id,
                        due_at=r.created_at + self.delay,
                    )
                )
        if not wanted:
            return batch
        muted = await muted_pairs(conn, {(a.user_pk, a.candidate_pk) for a in wanted})
        for alert in wanted:
            if (alert.user_pk, alert.candidate_pk) in muted:
                continue
            # A burst shares one alert: the first message's row, due when its delay ends.
            batch.alerts.setdefault((alert.user_pk, alert.thread_id), alert)
        return batch

    async def _write(self, conn: AsyncConnection, batch: _Batch) -> None:
        insert = pg_insert if conn.dialect.name == "postgresql" else sqlite_insert
        if batch.new_posters:
            await conn.execute(
                insert(ThreadPoster).on_conflict_do_nothing(
                    index_elements=["thread_id", "user_pk"]
                ),
                [{"thread_id": t, "user_pk": u} for t, u in sorted(batch.new_posters)],
            )
        await outbox.enqueue_many(conn, batch.alerts.values())
