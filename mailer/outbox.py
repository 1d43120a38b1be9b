"""The durable email outbox: rows queued from the event log, claimed by workers.

A send marks its event `alerts_pending`; the worker decides who gets an alert
(`server.domain.alerting`) and queues the rows here. A row's life: `pending` (waiting for
its due time, batching a burst of messages) → `sending` (claimed by one worker under a
lease) → `sent`, or `dropped` (read, muted, lost access: nothing to say), or
`failed` (refused for good, or too old); a transient failure puts it back to `pending` with
a later due time. A worker that dies holding a claim
lets its lease run out, and another worker takes the row over.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncConnection

from storage.database import Database
from storage.models import EmailOutbox, utcnow

PENDING, SENDING, SENT, DROPPED, FAILED = "pending", "sending", "sent", "dropped", "failed"


@dataclass(frozen=True, slots=True)
class Pending:
    """An alert to queue: one recipient, one thread, due when its first message's delay ends."""

    org_pk: int
    candidate_pk: int
    thread_id: int
    user_pk: int
    first_message_id: int
    due_at: datetime


async def enqueue_many(conn: AsyncConnection, alerts: Iterable[Pending]) -> None:
    """One pending row per (recipient, thread), in one statement: a burst of messages joins
    the row that its first message created, so that it is one email."""
    now = utcnow()
    rows = [
        {
            "org_pk": a.org_pk,
            "user_pk": a.user_pk,
            "thread_id": a.thread_id,
            "candidate_pk": a.candidate_pk,
            "status": PENDING,
            "due_at": a.due_at,
            "first_message_id": a.first_message_id,
            "attempts": 0,
            "created_at": now,
        }
        for a in sorted(alerts, key=lambda a: (a.user_pk, a.thread_id))
    ]
    if rows:
        await conn.execute(_ENQUEUE[conn.dialect.name], rows)


def _enqueue_statement(insert: Any) -> Any:
    return insert(EmailOutbox).on_conflict_do_nothing(
        # A literal predicate (not a bound parameter), so that one statement inserts many rows.
        index_elements=["user_pk", "thread_id"],
        index_where=text(f"status = '{PENDING}'"),
    )


# Built once per dialect.
_ENQUEUE = {
    "postgresql": _enqueue_statement(pg_insert),
    "sqlite": _enqueue_statement(sqlite_insert),
}


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
