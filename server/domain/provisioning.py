"""Idempotent upserts from the host ATS: orgs, agencies, users, candidates and their access."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import facts, views
from server.domain.errors import Conflict, InvalidInput, NotFound
from server.domain.events import AccessRevoked, DomainEvent, EventSink, UnreadTouched
from server.domain.rules import AGENCY, MEMBER, CandidateAccess
from server.domain.views import Json
from storage.database import Database
from storage.models import (
    Agency,
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
            body: Json = views.user_ref(user_id, spec.name, spec.kind)
            body |= {"email": spec.email, "agency": spec.agency, "time_zone": spec.time_zone}
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
            if revoked:
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
