"""The per-candidate event log as the real-time layer reads it: replay, catch-up, unread
counts and pruning. Visibility is decided by `server.domain.rules` with access loaded now:
each event read carries its thread's facts, and `thread_rule` hands the hub the rule of one
subscriber."""

from __future__ import annotations

import logging
from datetime import timedelta

from sqlalchemy import and_, delete, func, or_, select
from sqlalchemy.ext.asyncio import AsyncSession

from channels import protocol
from channels.connection import Connection
from channels.hub import LoggedEvent, LogReads, ReplayWindow, ThreadFacts, ThreadRule
from channels.unread import ThreadSnapshot
from server.domain import facts, rules, views
from server.domain.facts import Principal
from server.domain.rules import Actor, CandidateAccess, ThreadRef
from storage.database import Database
from storage.models import Agency, Candidate, Event, Message, Thread, User, utcnow

log = logging.getLogger("agency_messaging.eventlog")
PRUNE_BATCH = 500  # candidates per transaction


def thread_rule(actor: Actor, access: CandidateAccess) -> ThreadRule:
    """Which threads of the candidate of `access` the actor sees, as the hub asks it about
    the events it replays (the actor sees the candidate: its subscribe checked that)."""

    def sees(thread: ThreadFacts) -> bool:
        ref = ThreadRef(thread.id, access.pk, thread.kind, thread.agency_user_pk, thread.member_pk)
        return rules.can_see_thread(actor, access, ref)

    return sees


def _thread_facts(thread: Thread) -> ThreadFacts:
    return ThreadFacts(thread.id, thread.kind, thread.agency_user_pk, thread.member_pk)


def _logged_event(
    event: Event,
    thread: Thread,
    message: Message,
    author: User,
    agency: Agency | None,
    candidate_id: str,
    audience: frozenset[int] = frozenset(),
) -> LoggedEvent:
    author_json = views.user_ref(
        author.ext_id,
        author.name,
        author.kind,
        agency.ext_id if agency else None,
        agency.name if agency else None,
    )
    payload = views.message_json(message, author_json, candidate_id)
    frame = protocol.candidate_event(
        event.kind, candidate_id, event.seq, thread.id, message.id, payload
    )
    return LoggedEvent(event.seq, audience, frame, _thread_facts(thread))


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
        """The candidate's first `limit` events after `after`, each with its audience now
        (they may be dispatched live: a catch-up)."""
        async with self.db.read() as session:
            candidate = await facts.candidate_row_by_pk(session, candidate_pk)
            if candidate is None:
                return []
            access = await facts.candidate_access(session, candidate)
            rows = await session.execute(
                select(Event, Thread, Message, User, Agency)
                .join(Thread, Thread.id == Event.thread_id)
                .join(Message, Message.id == Event.message_id)
                .join(User, User.pk == Message.author_pk)
                .outerjoin(Agency, Agency.pk == User.agency_pk)
                .where(Event.candidate_pk == candidate_pk, Event.seq > after)
                .order_by(Event.seq)
                .limit(limit)
            )
            return [
                _logged_event(
                    event,
                    thread,
                    message,
                    author,
                    agency,
                    candidate.ext_id,
                    rules.thread_viewers(access, facts.thread_ref(thread)),
                )
                for event, thread, message, author, agency in rows
            ]

    async def log_reads(
        self, candidate_pks: list[int], after: dict[int, int], limit: int
    ) -> LogReads:
        """The last seqs of `candidate_pks` and each candidate's first `limit` events after
        its `after`, in two statements, the seqs first: an event committed between them is
        replayed, and its live copy, no newer than what was replayed, is skipped. The events
        are for replays only (the replayed user's rule decides, not an audience)."""
        async with self.db.read() as session:
            seqs = await session.execute(
                select(Candidate.pk, Candidate.last_seq).where(Candidate.pk.in_(candidate_pks))
            )
            last_seqs = {pk: seq for pk, seq in seqs}
            events = await _events_in_ranges(session, after, limit) if after else {}
        return LogReads(last_seqs, events)

    async def thread_facts(self, thread_ids: list[int]) -> dict[int, ThreadFacts]:
        async with self.db.read() as session:
            rows = await session.execute(
                select(Thread.id, Thread.kind, Thread.agency_user_pk, Thread.member_pk).where(
                    Thread.id.in_(thread_ids)
                )
            )
            return {row.id: ThreadFacts(*row) for row in rows}

    async def unread_snapshot(self, connection: Connection) -> list[ThreadSnapshot]:
        who: Principal = connection.context
        async with self.db.reading() as conn:
            rows = await views.unread_snapshot(conn, who.actor)
        return [ThreadSnapshot(*row) for row in rows]


async def _events_in_ranges(
    session: AsyncSession, after: dict[int, int], limit: int
) -> dict[int, list[LoggedEvent]]:
    """Each candidate's events in (after, after + limit], in one statement of primary key
    ranges. Seqs have no hole, so that range is its first `limit` events after `after`, or
    it lacks `after + 1` when the log no longer reaches back that far."""
    ranges = [
        and_(
            Event.candidate_pk == pk,
            Event.seq > seq,
            Event.seq <= min(seq + limit, protocol.MAX_ID),
        )
        for pk, seq in after.items()
    ]
    rows = await session.execute(
        select(Event, Thread, Message, User, Agency, Candidate.ext_id)
        .join(Thread, Thread.id == Event.thread_id)
        .join(Message, Message.id == Event.message_id)
        .join(User, User.pk == Message.author_pk)
        .outerjoin(Agency, Agency.pk == User.agency_pk)
        .join(Candidate, Candidate.pk == Event.candidate_pk)
        .where(or_(*ranges))
        .order_by(Event.candidate_pk, Event.seq)
    )
    found: dict[int, list[LoggedEvent]] = {}
    for event, thread, message, author, agency, candidate_id in rows:
        found.setdefault(event.candidate_pk, []).append(
            _logged_event(event, thread, message, author, agency, candidate_id)
        )
    return found


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
