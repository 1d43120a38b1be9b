"""The per-candidate event log as the real-time layer reads it: replay, catch-up, unread
counts and pruning. Visibility is decided by `server.domain.rules` with access loaded now."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import delete, func, select

from channels import protocol
from channels.connection import Connection
from channels.hub import LoggedEvent, ReplayWindow
from channels.unread import ThreadSnapshot
from server.domain import facts, rules, views
from server.domain.facts import Principal
from storage.database import Database
from storage.models import Candidate, Event, Message, Thread, User, utcnow

log = logging.getLogger("agency_messaging.eventlog")
PRUNE_BATCH = 500  # candidates per transaction


class SqlEventSource:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def last_seqs(self, candidate_pks: list[int]) -> dict[int, int]:
        async with self.db.read() as session:
            rows = await session.execute(
                select(Candidate.pk, Candidate.last_seq).where(Candidate.pk.in_(candidate_pks))
            )
            return {pk: seq for pk, seq in rows}

    async def window(self, candidate_pk: int) -> ReplayWindow:
        async with self.db.read() as session:
            last = await session.scalar(
                select(Candidate.last_seq).where(Candidate.pk == candidate_pk)
            )
            first = await session.scalar(
                select(func.min(Event.seq)).where(Event.candidate_pk == candidate_pk)
            )
        return ReplayWindow(first_retained=first, last_seq=last)

    async def events_after(self, candidate_pk: int, after: int, limit: int) -> list[LoggedEvent]:
        async with self.db.read() as session:
            candidate = await facts.candidate_row_by_pk(session, candidate_pk)
            if candidate is None:
                return []
            access = await facts.candidate_access(session, candidate)
            rows = await session.execute(
                select(Event, Thread, Message, User)
                .join(Thread, Thread.id == Event.thread_id)
                .join(Message, Message.id == Event.message_id)
                .join(User, User.pk == Message.author_pk)
                .where(Event.candidate_pk == candidate_pk, Event.seq > after)
                .order_by(Event.seq)
                .limit(limit)
            )
            out = []
            for event, thread, message, author in rows:
                ref = facts.thread_ref(thread)
                payload = views.message_json(message, views.user_json(author), candidate.ext_id)
                frame = protocol.candidate_event(
                    event.kind, candidate.ext_id, event.seq, thread.id, message.id, payload
                )
                out.append(LoggedEvent(event.seq, rules.thread_viewers(access, ref), frame))
            return out

    async def unread_snapshot(self, connection: Connection) -> list[ThreadSnapshot]:
        who: Principal = connection.context
        async with self.db.read() as session:
            rows = await views.unread_snapshot(session, who.actor)
        return [ThreadSnapshot(*row) for row in rows]


async def prune_events(db: Database, retention_days: int) -> int:
    """Deletes events older than the retention: per candidate, one range delete on the
    primary key (seqs grow with time), a bounded number of candidates per transaction."""
    cutoff = utcnow() - timedelta(days=retention_days)
    removed = 0
    async with db.read() as session:
        ranges = (
            await session.execute(
                select(Event.candidate_pk, func.max(Event.seq))
                .where(Event.created_at < cutoff)
                .group_by(Event.candidate_pk)
            )
        ).all()
    for start in range(0, len(ranges), PRUNE_BATCH):
        async with db.write() as session:
            for candidate_pk, max_seq in ranges[start : start + PRUNE_BATCH]:
                result = await session.execute(
                    delete(Event).where(Event.candidate_pk == candidate_pk, Event.seq <= max_seq)
                )
                removed += result.rowcount or 0  # type: ignore[attr-defined]
    return removed
