"""Every change to conversations happens here, for REST and WebSocket alike.

Each action runs one transaction: lock the candidate row, load the facts, ask
`server.domain.rules`, write, append to the candidate's event log with the next seq, commit.
Only then are the events handed to the sink (persist first, then publish).

Sends, the hot path, decide on the thread's access kept in memory (server.domain.targets)
and write in one statement that also checks that access is still current
(server.domain.posting); their email alerts are decided later from the event log.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Select, bindparam, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from channels import protocol
from server.domain import facts, rules
from server.domain.errors import AppError, InvalidInput, NotFound, Unavailable
from server.domain.events import (
    CandidateEvent,
    DomainEvent,
    EventSink,
    ThreadRead,
    UnreadTouched,
)
from server.domain.facts import Principal, Target
from server.domain.posting import NewMessage, Posted, post_message
from server.domain.rules import Actor, ThreadKey
from server.domain.targets import TargetCache
from server.domain.views import (
    Json,
    message_json,
    messages_by_id,
    thread_unread,
    threads_json,
)
from storage.database import Database
from storage.models import (
    AuditRecord,
    Candidate,
    Event,
    Message,
    ReadMarker,
    Thread,
    User,
    utcnow,
)

log = logging.getLogger("agency_messaging.actions")

# The actions of the audit trail (storage.models.AuditRecord).
AUDIT_MESSAGE_DELETED = "message.deleted"
AUDIT_USER_ERASED = "user.erased"

# A send decides on access kept in memory and checks it at the write; when it moved, the
# send reads it again and retries, a few times at most under a storm of access changes.
SEND_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class OpenThreadRequest:
    private: bool
    agency_user: str | None = None
    member: str | None = None


class Messaging:
    def __init__(self, db: Database, sink: EventSink) -> None:
        self.db = db
        self.sink = sink
        self.targets = TargetCache()

    # --- threads --------------------------------------------------------------------

    async def open_thread(
        self, who: Principal, candidate_id: str, request: OpenThreadRequest
    ) -> tuple[Json, bool]:
        """Get-or-create a thread; returns (Thread JSON, created)."""
        async with self.db.write() as session:
            candidate, access = await facts.visible_candidate(
                session, who.actor, candidate_id, lock=True
            )
            key = rules.thread_key(
                who.actor,
                access,
                private=request.private,
                agency_user_pk=await self._user_pk(session, who, request.agency_user, "agency"),
                member_pk=await self._user_pk(session, who, request.member, "member"),
            )
            thread = await self._find_thread(session, candidate.pk, key)
            created = thread is None
            if thread is None:
                partners = await facts.earlier_private_partners(session, who.actor)
                rules.check_open_thread(who.actor, access, key, partners)
                thread = Thread(
                    org_pk=candidate.org_pk,
                    candidate_pk=candidate.pk,
                    kind=key.kind,
                    agency_user_pk=key.agency_user_pk,
                    member_pk=key.member_pk,
                )
                session.add(thread)
                await session.flush()
            rules.require_thread(who.actor, access, facts.thread_ref(thread))
            (body,) = await threads_json(session, who.actor, [thread], candidate.ext_id, access)
        return body, created

    async def _user_pk(
        self, session: AsyncSession, who: Principal, user_id: str | None, kind: str
    ) -> int | None:
        if user_id is None:
            return None
        pk = await session.scalar(
            select(User.pk).where(
                User.org_pk == who.actor.org_pk, User.ext_id == user_id, User.kind == kind
            )
        )
        if pk is None:
            what = "agency user" if kind == "agency" else "member"
            raise NotFound(f"No such {what} on this candidate.")
        return pk

    async def _find_thread(
        self, session: AsyncSession, candidate_pk: int, key: ThreadKey
    ) -> Thread | None:
        query = select(Thread).where(
            Thread.candidate_pk == candidate_pk,
            Thread.kind == key.kind,
            Thread.agency_user_pk == key.agency_user_pk,
        )
        if key.member_pk is None:
            query = query.where(Thread.member_pk.is_(None))
        else:
            query = query.where(Thread.member_pk == key.member_pk)
        return (await session.execute(query)).scalar_one_or_none()

    # --- messages -------------------------------------------------------------------

    async def send(
        self, who: Principal, thread_id: int, body: str, client_id: str | None
    ) -> tuple[Json, bool]:
        """Posts a message; returns (Message JSON, created). A repeated client_id is a no-op."""
        try:
            return await self._send(who, thread_id, body, client_id)
        except IntegrityError:
            # A concurrent request with the same client_id won the race: answer with its message.
            if client_id is None:
                raise
            async with self.db.read() as session:
                existing = await _repeat(session, who, client_id)
            if existing is None:
                raise
            return existing, False

    async def _send(
        self, who: Principal, thread_id: int, body: str, client_id: str | None
    ) -> tuple[Json, bool]:
        actor = who.actor
        target, fresh = self.targets.get(actor, thread_id), False
        for _attempt in range(SEND_ATTEMPTS):
            if target is None:
                target, fresh = await self._read_target(actor, thread_id), True
            try:
                rules.check_post(actor, target.access, target.ref)
            except AppError:
                if fresh:
                    raise
                target = None  # kept in memory: never refuse on that, read it again
                continue
            new = NewMessage(
                candidate_pk=target.ref.candidate_pk,
                thread_id=target.ref.id,
                access_version=target.access_version,
                author_pk=actor.pk,
                body=body,
                client_id=client_id,
                created_at=utcnow(),
            )
            posted = await self._post(new)
            if posted is not None:
                return await self._posted(who, target, new, posted), True
            # Nothing written: the client_id was used already, or the candidate's access
            # moved since it was read (or the candidate is gone). Decide again on it as now.
            if client_id is not None:
                async with self.db.read() as session:
                    earlier = await _repeat(session, who, client_id)
                if earlier is not None:
                    return earlier, False
            self.targets.forget_candidate(target.ref.candidate_pk)
            target = None
        raise Unavailable("The candidate's access kept changing; try again shortly.")

    async def _read_target(self, actor: Actor, thread_id: int) -> Target:
        async with self.db.read() as session:
            return await self.targets.load(await session.connection(), actor, thread_id)

    async def _post(self, new: NewMessage) -> Posted | None:
        """Writes the message (server.domain.posting). A connection the database dropped
        under the write is retried once on a new one when the message has a client_id: the
        first attempt may have been written, and the retry then finds it as a repeat. Without
        one the error reaches the client, who may send again."""
        for attempt in (1, 2):
            try:
                async with self.db.atomic() as conn:
                    return await post_message(conn, new)
            except DBAPIError as error:
                if new.client_id is None or not error.connection_invalidated or attempt == 2:
                    raise
                log.warning("The database dropped a connection during a send; retrying once.")
        raise AssertionError("unreachable")  # pragma: no cover

    async def _posted(
        self, who: Principal, target: Target, new: NewMessage, posted: Posted
    ) -> Json:
        """Publishes a committed message; returns its JSON, built from what is in hand."""
        message = Message(
            id=posted.message_id,
            thread_id=new.thread_id,
            candidate_pk=new.candidate_pk,
            author_pk=new.author_pk,
            body=new.body,
            client_id=new.client_id,
            created_at=new.created_at,
            deleted=False,
        )
        payload = message_json(message, who.user_json(), target.candidate_id)
        events = thread_events(
            protocol.MESSAGE_CREATED, target, posted.seq, posted.message_id, payload, who.actor.pk
        )
        await self.sink.publish(events)
        return payload

    async def delete(self, who: Principal, message_id: int) -> None:
        """Erases a message's text and leaves a tombstone. Deleting a tombstone is a no-op."""
        async with self.db.write() as session:
            conn = await session.connection()
            found = (
                await conn.execute(
                    select(Message.thread_id, Message.author_pk, Message.deleted).where(
                        Message.id == message_id
                    )
                )
            ).first()
            if found is None:
                raise NotFound("No such message.")
            target = await facts.thread_target(
                conn, who.actor, found.thread_id, missing="No such message.", lock=True
            )
            rules.check_delete(who.actor, target.access, target.ref, found.author_pk)
            if found.deleted:
                return
            await conn.execute(
                update(Message).where(Message.id == message_id).values(deleted=True, body=None)
            )
            seq = await self._append_event(conn, target, protocol.MESSAGE_DELETED, message_id)
            # In the same transaction: the record of who deleted what outlives the text.
            await conn.execute(
                insert(AuditRecord).values(
                    org_pk=who.actor.org_pk,
                    at=utcnow(),
                    action=AUDIT_MESSAGE_DELETED,
                    actor_id=who.user_id,
                    user_id=None,
                    candidate_id=target.candidate_id,
                    thread_id=target.ref.id,
                    message_id=message_id,
                )
            )
            events = thread_events(
                protocol.MESSAGE_DELETED, target, seq, message_id, None, who.actor.pk
            )
        await self.sink.publish(events)

    async def mark_read(self, who: Principal, thread_id: int, message_id: int) -> int:
        """Moves the caller's read marker forward (never back), noting when; returns the
        thread's unread. The others following the candidate are told ("seen by")."""
        actor = who.actor
        async with self.db.write() as session:
            conn = await session.connection()
            target = await facts.thread_target(conn, actor, thread_id)
            rules.check_read(actor, target.access, target.ref)
            thread_id = target.ref.id
            audience = rules.read_audience(target.access, target.ref, actor)
            query: Select[Any] = select(Message.id).where(
                Message.id == message_id, Message.thread_id == thread_id
            )
            team = rules.team_readers(target.access, target.ref, actor) if audience.team else None
            if team:
                # In the same statement: how far the rest of the hiring team has read.
                query = query.add_columns(
                    select(func.max(ReadMarker.message_id))
                    .where(ReadMarker.thread_id == thread_id, ReadMarker.user_pk.in_(team))
                    .scalar_subquery()
                )
            found = (await conn.execute(query)).first()
            if found is None:
                raise InvalidInput("message_id is not a message of this thread.")
            if team and not rules.team_moved(message_id, found[1]):
                audience = audience.without_team()
            marker = await session.get(ReadMarker, (actor.pk, thread_id))
            read_at, moved = utcnow(), True
            if marker is None:
                session.add(
                    ReadMarker(
                        user_pk=actor.pk,
                        thread_id=thread_id,
                        message_id=message_id,
                        read_at=read_at,
                    )
                )
            elif marker.message_id < message_id:
                marker.message_id, marker.read_at = message_id, read_at
            else:
                moved = False  # a marker never moves back
            await session.flush()
            unread = await thread_unread(session, actor.pk, thread_id)
        if moved:
            ref = target.ref
            await self.sink.publish(
                [
                    UnreadTouched(actor.org_pk, ref.candidate_pk, thread_id, frozenset({actor.pk})),
                    ThreadRead(
                        ref.candidate_pk,
                        target.candidate_id,
                        thread_id,
                        who.user_json(),
                        message_id,
                        read_at,
                        audience.named,
                        audience.team,
                    ),
                ]
            )
        return unread

    # --- shared steps ---------------------------------------------------------------

    async def _append_event(
        self, conn: AsyncConnection, target: Target, kind: str, message_id: int
    ) -> int:
        candidate_pk = target.ref.candidate_pk
        seq: int = (await conn.execute(_NEXT_SEQ, {"c": candidate_pk})).scalar_one()
        await conn.execute(
            _INSERT_EVENT,
            {
                "candidate_pk": candidate_pk,
                "seq": seq,
                "kind": kind,
                "thread_id": target.ref.id,
                "message_id": message_id,
                "created_at": utcnow(),
            },
        )
        return seq


# Built once: deletes share the event log's seq with sends.
_NEXT_SEQ = (
    update(Candidate)
    .where(Candidate.pk == bindparam("c"))
    .values(last_seq=Candidate.last_seq + 1)
    .returning(Candidate.last_seq)
)
_INSERT_EVENT = insert(Event)


async def _repeat(session: AsyncSession, who: Principal, client_id: str) -> Json | None:
    """The author's earlier message with this client_id (a retry, or the winner of a race),
    or None. It may be in another thread, even of another candidate: it is answered only
    if its author may still read it where it is."""
    message_id = await session.scalar(
        select(Message.id).where(Message.author_pk == who.actor.pk, Message.client_id == client_id)
    )
    if message_id is None:
        return None
    row = (await messages_by_id(session, [message_id]))[message_id]
    conn = await session.connection()
    original = await facts.thread_target(conn, who.actor, row.message.thread_id)
    rules.check_read(who.actor, original.access, original.ref)
    return row.to_json()


def thread_events(
    kind: str,
    target: Target,
    seq: int,
    message_id: int,
    payload: Json | None,
    author_pk: int,
) -> list[DomainEvent]:
    """The candidate event of a message change, and the unread counts it touches."""
    ref, access = target.ref, target.access
    audience = rules.thread_viewers(access, ref)
    event = CandidateEvent(
        type=kind,
        org_pk=access.org_pk,
        candidate_pk=ref.candidate_pk,
        candidate_id=target.candidate_id,
        seq=seq,
        thread=ref,
        message_id=message_id,
        audience=audience,
        message=payload,
    )
    touched = UnreadTouched(
        access.org_pk,
        ref.candidate_pk,
        ref.id,
        audience - {author_pk},
        new_message_id=message_id if kind == protocol.MESSAGE_CREATED else 0,
    )
    return [event, touched]
