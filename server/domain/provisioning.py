"""The host ATS's side: idempotent upserts of orgs, agencies, users, candidates and their
access; erasing candidates and people; reading the audit trail."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, insert, select, union, update
from sqlalchemy.ext.asyncio import AsyncSession

from channels import protocol
from server.domain import facts, views
from server.domain.actions import AUDIT_USER_ERASED, thread_events
from server.domain.errors import Conflict, InvalidInput, NotFound
from server.domain.events import (
    AccessRevoked,
    DomainEvent,
    EventSink,
    UnreadTouched,
    UserErased,
)
from server.domain.facts import Target
from server.domain.rules import AGENCY, MEMBER, CandidateAccess
from server.domain.views import Json
from storage.database import Database
from storage.models import (
    Agency,
    AuditRecord,
    Candidate,
    CandidateAgencyUser,
    CandidateMember,
    EmailMute,
    EmailOutbox,
    Event,
    Message,
    Org,
    ReadMarker,
    Thread,
    ThreadPoster,
    User,
    utcnow,
)


@dataclass(frozen=True, slots=True)
class UserSpec:
    name: str
    email: str
    kind: str
    agency: str | None
    time_zone: str = "UTC"  # an IANA zone name, checked at the edge


@dataclass(frozen=True, slots=True)
class CandidateSpec:
    name: str
    coordinator: str | None
    members: Sequence[str]
    agency_users: Sequence[str]


class Provisioning:
    def __init__(self, db: Database, sink: EventSink) -> None:
        self.db = db
        self.sink = sink

    async def _org(self, session: AsyncSession, org_id: str) -> Org:
        org = (await session.execute(select(Org).where(Org.ext_id == org_id))).scalar_one_or_none()
        if org is None:
            raise NotFound(f"Org {org_id!r} is not provisioned.")
        return org

    async def put_org(self, org_id: str, name: str) -> tuple[Json, bool]:
        async with self.db.write() as session:
            org = (
                await session.execute(select(Org).where(Org.ext_id == org_id))
            ).scalar_one_or_none()
            created = org is None
            if org is None:
                session.add(Org(ext_id=org_id, name=name))
            else:
                org.name = name
        return {"id": org_id, "name": name}, created

    async def put_agency(self, org_id: str, agency_id: str, name: str) -> tuple[Json, bool]:
        async with self.db.write() as session:
            org = await self._org(session, org_id)
            agency = (
                await session.execute(
                    select(Agency).where(Agency.org_pk == org.pk, Agency.ext_id == agency_id)
                )
            ).scalar_one_or_none()
            created = agency is None
            if agency is None:
                session.add(Agency(org_pk=org.pk, ext_id=agency_id, name=name))
            else:
                agency.name = name
        return {"id": agency_id, "name": name}, created

    async def put_user(self, org_id: str, user_id: str, spec: UserSpec) -> tuple[Json, bool]:
        async with self.db.write() as session:
            org = await self._org(session, org_id)
            agency_pk = None
            if spec.kind == AGENCY:
                if spec.agency is None:
                    raise InvalidInput("An agency user needs its agency.")
                agency_pk = await session.scalar(
                    select(Agency.pk).where(Agency.org_pk == org.pk, Agency.ext_id == spec.agency)
                )
                if agency_pk is None:
                    raise InvalidInput(f"Agency {spec.agency!r} is not provisioned in this org.")
            elif spec.agency is not None:
                raise InvalidInput("A member belongs to no agency: send agency null.")
            user = (
                await session.execute(
                    select(User).where(User.org_pk == org.pk, User.ext_id == user_id)
                )
            ).scalar_one_or_none()
            created = user is None
            if user is None:
                user = User(org_pk=org.pk, ext_id=user_id, kind=spec.kind)
                session.add(user)
            elif user.kind != spec.kind:
                raise Conflict(
                    f"User {user_id!r} is a {user.kind}; "
                    "a user's kind cannot change once provisioned."
                )
            user.name, user.email, user.agency_pk = spec.name, spec.email, agency_pk
            user.time_zone = spec.time_zone
        body: Json = {
            "id": user_id,
            "name": spec.name,
            "kind": spec.kind,
            "email": spec.email,
            "agency": spec.agency,
            "time_zone": spec.time_zone,
        }
        return body, created

    async def put_candidate(
        self, org_id: str, candidate_id: str, spec: CandidateSpec
    ) -> tuple[Json, bool]:
        events: list[DomainEvent] = []
        async with self.db.write() as session:
            org = await self._org(session, org_id)
            wanted = {spec.coordinator} if spec.coordinator else set()
            wanted |= set(spec.members) | set(spec.agency_users)
            users = {
                u.ext_id: u
                for u in await session.scalars(
                    select(User).where(User.org_pk == org.pk, User.ext_id.in_(sorted(wanted)))
                )
            }
            coordinator_pk = None
            if spec.coordinator is not None:
                coordinator_pk = _pick(users, [spec.coordinator], MEMBER, "coordinator")[0]
            member_pks = set(_pick(users, spec.members, MEMBER, "members"))
            agency_pks = set(_pick(users, spec.agency_users, AGENCY, "agency_users"))

            candidate = await facts.candidate_row(session, org.pk, candidate_id, lock=True)
            created = candidate is None
            if candidate is None:
                candidate = Candidate(
                    org_pk=org.pk, ext_id=candidate_id, name=spec.name, last_seq=0
                )
                session.add(candidate)
                await session.flush()
                before = CandidateAccess(candidate.pk, org.pk, None, frozenset(), frozenset())
            else:
                before = await facts.candidate_access(session, candidate)
            after = CandidateAccess(
                candidate.pk, org.pk, coordinator_pk, frozenset(member_pks), frozenset(agency_pks)
            )
            candidate.name, candidate.coordinator_pk = spec.name, coordinator_pk
            await _replace_links(
                session, CandidateMember, candidate.pk, set(before.member_pks), member_pks
            )
            await _replace_links(
                session, CandidateAgencyUser, candidate.pk, set(before.agency_user_pks), agency_pks
            )

            revoked = before.users_with_access - after.users_with_access
            granted = after.users_with_access - before.users_with_access
            if not created and before != after:
                # Processes keep access in memory for sends, checked against this version.
                candidate.access_version += 1
                # Who lost access is unsubscribed; everyone else following it is told.
                events.append(AccessRevoked(org.pk, candidate.pk, revoked))
            if granted and not created:
                # Their blue dots may light up with the candidate's existing threads.
                events.append(UnreadTouched(org.pk, candidate.pk, 0, granted))
        await self.sink.publish(events)
        return {
            "id": candidate_id,
            "name": spec.name,
            "coordinator": spec.coordinator,
            "members": sorted(set(spec.members)),
            "agency_users": sorted(set(spec.agency_users)),
        }, created

    async def erase_candidate(self, org_id: str, candidate_id: str) -> None:
        """Erases the candidate with its threads, messages, markers, events and alerts."""
        events: list[DomainEvent] = []
        async with self.db.write() as session:
            org = await self._org(session, org_id)
            candidate = await facts.candidate_row(session, org.pk, candidate_id, lock=True)
            if candidate is None:
                return
            had = (await facts.candidate_access(session, candidate)).users_with_access
            # Explicit deletes rather than trusting every backend's cascade configuration.
            thread_ids = select(Thread.id).where(Thread.candidate_pk == candidate.pk)
            await session.execute(
                delete(EmailOutbox).where(EmailOutbox.candidate_pk == candidate.pk)
            )
            await session.execute(delete(Event).where(Event.candidate_pk == candidate.pk))
            await session.execute(delete(ReadMarker).where(ReadMarker.thread_id.in_(thread_ids)))
            await session.execute(
                delete(ThreadPoster).where(ThreadPoster.thread_id.in_(thread_ids))
            )
            await session.execute(delete(EmailMute).where(EmailMute.candidate_pk == candidate.pk))
            await session.execute(delete(Message).where(Message.thread_id.in_(thread_ids)))
            await session.execute(delete(Thread).where(Thread.candidate_pk == candidate.pk))
            await session.execute(
                delete(CandidateMember).where(CandidateMember.candidate_pk == candidate.pk)
            )
            await session.execute(
                delete(CandidateAgencyUser).where(CandidateAgencyUser.candidate_pk == candidate.pk)
            )
            await session.execute(delete(Candidate).where(Candidate.pk == candidate.pk))
            events.append(AccessRevoked(org.pk, candidate.pk, had, erased=True))
        await self.sink.publish(events)

    async def erase_user(self, org_id: str, user_id: str) -> None:
        """Erases a person, in one transaction: their name and email are replaced, their
        messages become tombstones for everyone (`message.deleted` in each candidate's log),
        their links to candidates, read markers, alerts and mutes go, and the erasure is
        kept in the audit trail. Their agency stays (past threads still name it). After
        the commit, their sockets close. Erasing an erased user again does nothing."""
        events: list[DomainEvent] = []
        async with self.db.write() as session:
            org = await self._org(session, org_id)
            user = (
                await session.execute(
                    select(User).where(User.org_pk == org.pk, User.ext_id == user_id)
                )
            ).scalar_one_or_none()
            if user is None:
                if await _was_erased(session, org.pk, user_id):
                    return  # erased already: nothing more to do
                raise NotFound(f"User {user_id!r} is not provisioned in this org.")
            pk = user.pk
            candidates = await _lock_candidates_of(session, org.pk, pk)
            before = await facts.accesses_of(
                session, {c.pk: (c.org_pk, c.coordinator_pk) for c in candidates}
            )
            after = {cand_pk: _without(access, pk) for cand_pk, access in before.items()}
            erased = sorted(
                (
                    await session.execute(
                        update(Message)
                        .where(Message.author_pk == pk, Message.deleted.is_(False))
                        .values(deleted=True, body=None)
                        .returning(Message.id, Message.thread_id, Message.candidate_pk)
                    )
                ).all()
            )
            for table in (ReadMarker, EmailOutbox, ThreadPoster, EmailMute):
                await session.execute(delete(table).where(table.user_pk == pk))
            for link in (CandidateMember, CandidateAgencyUser):
                await session.execute(delete(link).where(link.user_pk == pk))
            for candidate in candidates:
                if candidate.coordinator_pk == pk:
                    candidate.coordinator_pk = None
                changed = before[candidate.pk] != after[candidate.pk]
                if changed:
                    # Processes keep access in memory for sends, checked against this version.
                    candidate.access_version += 1
                # They are unsubscribed where they had access; everyone else following the
                # candidate is told (its people changed: names, tombstones, links).
                events.append(
                    AccessRevoked(org.pk, candidate.pk, frozenset({pk}) if changed else frozenset())
                )
            events += await _log_tombstones(session, candidates, after, erased, pk)
            # The host id goes too: it may itself say who the person was, and freed, it
            # provisions a new person with no past here. The new id is outside the host-id
            # alphabet, so no host id can ever name the erased row again.
            user.ext_id = f"{ERASED_ID_PREFIX}{pk}"
            user.name, user.email = ERASED_NAME, f"erased-{pk}@erased.invalid"
            user.email_muted, user.erased_at = True, utcnow()
            session.add(
                AuditRecord(
                    org_pk=org.pk, at=user.erased_at, action=AUDIT_USER_ERASED, user_id=user_id
                )
            )
            events.append(UserErased(org.pk, pk))
        await self.sink.publish(events)

    async def audit_page(self, org_id: str, *, after: int, limit: int) -> tuple[list[Json], bool]:
        """The org's audit records after the id `after`, oldest first, and whether more
        follow."""
        async with self.db.read() as session:
            org = await self._org(session, org_id)
            rows = list(
                await session.scalars(
                    select(AuditRecord)
                    .where(AuditRecord.org_pk == org.pk, AuditRecord.id > after)
                    .order_by(AuditRecord.id)
                    .limit(limit + 1)
                )
            )
        return [_audit_json(r) for r in rows[:limit]], len(rows) > limit


# What an erased person is called from then on, wherever their messages appear, and the
# start of the id that replaces their host id.
ERASED_NAME = "Erased user"
ERASED_ID_PREFIX = "~erased-"


async def _was_erased(session: AsyncSession, org_pk: int, user_id: str) -> bool:
    """Whether the audit trail says this host id was erased (a repeated erasure)."""
    query = select(AuditRecord.id).where(
        AuditRecord.org_pk == org_pk,
        AuditRecord.action == AUDIT_USER_ERASED,
        AuditRecord.user_id == user_id,
    )
    return await session.scalar(query.limit(1)) is not None


def _audit_json(record: AuditRecord) -> Json:
    return {
        "id": record.id,
        "at": views.iso(record.at),
        "action": record.action,
        "actor": record.actor_id,
        "user": record.user_id,
        "candidate": record.candidate_id,
        "thread": record.thread_id,
        "message": record.message_id,
    }


async def _lock_candidates_of(session: AsyncSession, org_pk: int, user_pk: int) -> list[Candidate]:
    """The candidates a person is linked to, coordinates or has messages on, locked in pk
    order (as every writer of several candidates locks them: no deadlock)."""
    touched = union(
        select(CandidateMember.candidate_pk).where(CandidateMember.user_pk == user_pk),
        select(CandidateAgencyUser.candidate_pk).where(CandidateAgencyUser.user_pk == user_pk),
        select(Candidate.pk).where(Candidate.coordinator_pk == user_pk),
        select(Message.candidate_pk).where(
            Message.author_pk == user_pk, Message.deleted.is_(False)
        ),
    ).subquery()
    query = (
        select(Candidate)
        .where(Candidate.org_pk == org_pk, Candidate.pk.in_(select(touched.c[0])))
        .order_by(Candidate.pk)
        .with_for_update()
    )
    return list(await session.scalars(query))


def _without(access: CandidateAccess, user_pk: int) -> CandidateAccess:
    """The access once the user is gone from it."""
    return CandidateAccess(
        access.pk,
        access.org_pk,
        None if access.coordinator_pk == user_pk else access.coordinator_pk,
        access.member_pks - {user_pk},
        access.agency_user_pks - {user_pk},
    )


async def _log_tombstones(
    session: AsyncSession,
    candidates: list[Candidate],
    access: dict[int, CandidateAccess],
    erased: Sequence[Any],
    author_pk: int,
) -> list[DomainEvent]:
    """Appends a `message.deleted` event for each erased message (rows of id, thread id and
    candidate pk, in id order) to its candidate's log, and returns the events to publish:
    one per message, and one unread change per thread."""
    if not erased:
        return []
    by_pk = {c.pk: c for c in candidates}
    threads = {
        t.id: facts.thread_ref(t)
        for t in await session.scalars(
            select(Thread).where(Thread.id.in_(sorted({row.thread_id for row in erased})))
        )
    }
    now = utcnow()
    rows: list[dict[str, Any]] = []
    out: list[DomainEvent] = []
    touched: dict[int, DomainEvent] = {}
    for message_id, thread_id, candidate_pk in erased:
        candidate = by_pk[candidate_pk]
        candidate.last_seq += 1  # under the row lock taken above
        rows.append(
            {
                "candidate_pk": candidate_pk,
                "seq": candidate.last_seq,
                "kind": protocol.MESSAGE_DELETED,
                "thread_id": thread_id,
                "message_id": message_id,
                "created_at": now,
            }
        )
        target = Target(threads[thread_id], access[candidate_pk], candidate.ext_id)
        event, unread = thread_events(
            protocol.MESSAGE_DELETED, target, candidate.last_seq, message_id, None, author_pk
        )
        out.append(event)
        touched[thread_id] = unread
    await session.execute(insert(Event), rows)
    return out + list(touched.values())


def _pick(users: dict[str, User], ids: Sequence[str], kind: str, field: str) -> list[int]:
    missing = [i for i in ids if i not in users]
    if missing:
        raise InvalidInput(f"{field}: user {missing[0]!r} is not provisioned in this org.")
    wrong = [i for i in ids if users[i].kind != kind]
    if wrong:
        raise InvalidInput(f"{field}: user {wrong[0]!r} is not a {kind}.")
    return [users[i].pk for i in ids]


async def _replace_links(
    session: AsyncSession,
    table: type[CandidateMember] | type[CandidateAgencyUser],
    candidate_pk: int,
    before: set[int],
    after: set[int],
) -> None:
    gone, new = before - after, after - before
    if gone:
        await session.execute(
            delete(table).where(table.candidate_pk == candidate_pk, table.user_pk.in_(sorted(gone)))
        )
    for user_pk in sorted(new):
        session.add(table(candidate_pk=candidate_pk, user_pk=user_pk))
