"""The durable email outbox: rows written with the message, claimed by workers.

A row's life: `pending` (waiting for its due time, batching a burst of messages) →
`sending` (claimed by one worker under a lease) → `sent`, or `dropped` (read, came online,
muted, lost access: nothing to say), or `failed` (refused for good, or too old); a transient
failure puts it back to `pending` with a later due time. A worker that dies holding a claim
lets its lease run out, and another worker takes the row over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, bindparam, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from channels.interfaces import Presence
from mailer.preferences import muted_among
from storage.database import Database
from storage.models import EmailOutbox, ThreadPoster, utcnow

PENDING, SENDING, SENT, DROPPED, FAILED = "pending", "sending", "sent", "dropped", "failed"


async def enqueue(
    session: AsyncSession,
    *,
    org_pk: int,
    candidate_pk: int,
    thread_id: int,
    message_id: int,
    recipients: Iterable[int],
    due_at: datetime,
) -> None:
    """One pending alert per (recipient, thread): a burst of messages joins the row that the
    first one created, so that it is one email, due when the first message's delay ends."""
    rows = [
        {
            "org_pk": org_pk,
            "user_pk": user_pk,
            "thread_id": thread_id,
            "candidate_pk": candidate_pk,
            "status": PENDING,
            "due_at": due_at,
            "first_message_id": message_id,
            "attempts": 0,
            "created_at": utcnow(),
        }
        for user_pk in sorted(set(recipients))
    ]
    if not rows:
        return
    conn = await session.connection()
    await conn.execute(_ENQUEUE[conn.dialect.name], rows)


def _enqueue_statement(insert: Any) -> Any:
    return insert(EmailOutbox).on_conflict_do_nothing(
        # A literal predicate (not a bound parameter), so that one statement inserts many rows.
        index_elements=["user_pk", "thread_id"],
        index_where=text(f"status = '{PENDING}'"),
    )


# Built once per dialect: enqueueing runs inside every send.
_ENQUEUE = {
    "postgresql": _enqueue_statement(pg_insert),
    "sqlite": _enqueue_statement(sqlite_insert),
}


async def cancel_for_user(db: Database, user_pk: int) -> int:
    """The user came online: pending alerts have nothing left to tell."""
    async with db.read() as session:
        # Most connects have nothing pending: answer them with a read (the partial index on
        # pending rows), not a write. A row committed after this read is dropped by the
        # worker, which checks presence again before sending.
        pending = await session.scalar(
            select(EmailOutbox.id)
            .where(EmailOutbox.user_pk == user_pk, EmailOutbox.status == PENDING)
            .limit(1)
        )
    if pending is None:
        return 0
    async with db.write() as session:
        result = await session.execute(
            update(EmailOutbox)
            .where(EmailOutbox.user_pk == user_pk, EmailOutbox.status == PENDING)
            .values(status=DROPPED, last_error="came online")
        )
        return int(result.rowcount or 0)  # type: ignore[attr-defined]


async def claim(db: Database, *, limit: int, lease_seconds: float) -> list[EmailOutbox]:
    """Claims due rows (and rows whose worker's lease ran out) for this worker.

    PostgreSQL: FOR UPDATE SKIP LOCKED, so concurrent workers claim disjoint rows.
    SQLite: the database's single writer serialises claims.
    """
    now = utcnow()
    async with db.write() as session:
        due = (
            select(EmailOutbox.id)
            .where(
                or_(
                    and_(EmailOutbox.status == PENDING, EmailOutbox.due_at <= now),
                    and_(EmailOutbox.status == SENDING, EmailOutbox.lease_until < now),
                )
            )
            .order_by(EmailOutbox.due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
        ids = list(await session.scalars(due))
        if not ids:
            return []
        await session.execute(
            update(EmailOutbox)
            .where(EmailOutbox.id.in_(ids))
            .values(
                status=SENDING,
                lease_until=now + timedelta(seconds=lease_seconds),
                attempts=EmailOutbox.attempts + 1,
            )
        )
        rows = list(
            await session.scalars(
                select(EmailOutbox).where(EmailOutbox.id.in_(ids)).order_by(EmailOutbox.id)
            )
        )
    return rows


async def finish(db: Database, alert_id: int, status: str, note: str | None = None) -> None:
    async with db.write() as session:
        values: dict[str, object] = {"status": status, "lease_until": None}
        if status == SENT:
            values["sent_at"] = utcnow()
        if note is not None:
            values["last_error"] = note[:500]
        await session.execute(
            update(EmailOutbox)
            .where(EmailOutbox.id == alert_id, EmailOutbox.status == SENDING)
            .values(**values)
        )


async def retry_later(db: Database, alert: EmailOutbox, delay_seconds: float, note: str) -> bool:
    """Puts a claimed row back for later. If a newer pending row for the same recipient and
    thread exists meanwhile, that one will cover these messages too: this one is merged
    into it (dropped). Returns whether the row will be retried."""
    async with db.write() as session:
        newer = await session.scalar(
            select(EmailOutbox.id).where(
                EmailOutbox.user_pk == alert.user_pk,
                EmailOutbox.thread_id == alert.thread_id,
                EmailOutbox.status == PENDING,
            )
        )
        if newer is not None:
            await session.execute(
                update(EmailOutbox)
                .where(EmailOutbox.id == newer)
                .values(first_message_id=alert.first_message_id)
            )
            status, due = DROPPED, None
        else:
            status, due = PENDING, utcnow() + timedelta(seconds=delay_seconds)
        values: dict[str, object] = {
            "status": status,
            "lease_until": None,
            "last_error": note[:500],
        }
        if due is not None:
            values["due_at"] = due
        await session.execute(
            update(EmailOutbox)
            .where(EmailOutbox.id == alert.id, EmailOutbox.status == SENDING)
            .values(**values)
        )
    return status == PENDING


def _insert(session: AsyncSession) -> Any:
    return pg_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert


_POSTERS = select(ThreadPoster.user_pk).where(ThreadPoster.thread_id == bindparam("t"))


class AlertScheduler:
    """Decides, inside the transaction that stores a message, who will get an alert."""

    def __init__(
        self,
        presence: Presence,
        delay_seconds: float,
        count: Callable[[int], None] = lambda queued: None,
    ) -> None:
        self.presence = presence
        self.delay_seconds = delay_seconds
        self.count = count

    async def message_posted(
        self,
        session: AsyncSession,
        *,
        org_pk: int,
        candidate_pk: int,
        thread_id: int,
        message_id: int,
        author_pk: int,
        involved: Callable[[set[int]], Iterable[int]],
    ) -> int:
        """Records the author as a poster and queues alerts for the involved users who are
        offline and not muted. `involved` is the domain's rule: given the thread's posters,
        who may be alerted. Returns how many alerts were queued or joined."""
        conn = await session.connection()  # Core statements: this runs on every send
        posters = set(await conn.scalars(_POSTERS, {"t": thread_id}))
        if author_pk not in posters:  # the candidate row lock keeps this check race-free
            await conn.execute(
                _insert(session)(ThreadPoster)
                .values(thread_id=thread_id, user_pk=author_pk)
                .on_conflict_do_nothing(index_elements=["thread_id", "user_pk"])
            )
            posters.add(author_pk)
        recipients = set(involved(posters))
        recipients -= await muted_among(conn, recipients, candidate_pk)
        try:
            online = await self.presence.online([(org_pk, pk) for pk in sorted(recipients)])
        except Exception:  # presence down: queue for all; the worker checks again at send time
            online = set()
        recipients -= {pk for _, pk in online}
        await enqueue(
            session,
            org_pk=org_pk,
            candidate_pk=candidate_pk,
            thread_id=thread_id,
            message_id=message_id,
            recipients=recipients,
            due_at=utcnow() + timedelta(seconds=self.delay_seconds),
        )
        self.count(len(recipients))
        return len(recipients)
