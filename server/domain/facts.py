"""Loads from storage the facts that `server.domain.rules` decides on, as they are now."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import bindparam, func, literal, select, union_all
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from server.domain import rules, views
from server.domain.errors import NotFound
from server.domain.rules import PRIVATE_THREAD, Actor, CandidateAccess, ThreadRef
from storage.models import (
    Agency,
    Candidate,
    CandidateAgencyUser,
    CandidateMember,
    Org,
    Thread,
    User,
)


@dataclass(frozen=True, slots=True)
class Principal:
    """The authenticated user of a request or socket."""

    actor: Actor
    org_id: str
    user_id: str
    name: str
    agency_id: str | None = None  # an agency user's agency
    agency_name: str | None = None

    @property
    def kind(self) -> str:
        return self.actor.kind

    @property
    def key(self) -> tuple[int, int]:
        return (self.actor.org_pk, self.actor.pk)

    def user_json(self) -> dict[str, Any]:
        """The contract's `User` for this principal (its name and agency as of
        authentication): the author of its messages in live events."""
        return views.user_ref(
            self.user_id, self.name, self.actor.kind, self.agency_id, self.agency_name
        )


# An erased user is no longer provisioned: its tokens and session cookies stop working,
# though they are stateless and still signed.
_PRINCIPAL = (
    select(User.pk, User.org_pk, User.kind, User.name, Agency.ext_id, Agency.name)
    .join(Org, Org.pk == User.org_pk)
    .outerjoin(Agency, Agency.pk == User.agency_pk)
    .where(
        Org.ext_id == bindparam("org"),
        User.ext_id == bindparam("user"),
        User.erased_at.is_(None),
    )
)


async def load_principal(
    db: AsyncSession | AsyncConnection, org_id: str, user_id: str
) -> Principal | None:
    # Core: this runs on every request and every connect.
    conn = db if isinstance(db, AsyncConnection) else await db.connection()
    row = (await conn.execute(_PRINCIPAL, {"org": org_id, "user": user_id})).first()
    if row is None:
        return None
    pk, org_pk, kind, name, agency_id, agency_name = row
    return Principal(Actor(pk, org_pk, kind), org_id, user_id, name, agency_id, agency_name)


async def candidate_row(
    session: AsyncSession, org_pk: int, candidate_id: str, *, lock: bool = False
) -> Candidate | None:
    query = select(Candidate).where(Candidate.org_pk == org_pk, Candidate.ext_id == candidate_id)
    if lock:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def candidate_row_by_pk(session: AsyncSession, candidate_pk: int) -> Candidate | None:
    query = select(Candidate).where(Candidate.pk == candidate_pk)
    return (await session.execute(query)).scalar_one_or_none()


async def candidate_access(session: AsyncSession, candidate: Candidate) -> CandidateAccess:
    return await access_of(session, candidate.pk, candidate.org_pk, candidate.coordinator_pk)


async def access_of(
    db: AsyncSession | AsyncConnection, candidate_pk: int, org_pk: int, coordinator_pk: int | None
) -> CandidateAccess:
    return (await accesses_of(db, {candidate_pk: (org_pk, coordinator_pk)}))[candidate_pk]


# Both lists in one round trip, built once: this runs on every write of a candidate.
_ACCESS_OF_MANY = union_all(
    select(CandidateMember.candidate_pk, literal(True), CandidateMember.user_pk).where(
        CandidateMember.candidate_pk.in_(bindparam("cs", expanding=True))
    ),
    select(CandidateAgencyUser.candidate_pk, literal(False), CandidateAgencyUser.user_pk).where(
        CandidateAgencyUser.candidate_pk.in_(bindparam("cs", expanding=True))
    ),
)


async def accesses_of(
    db: AsyncSession | AsyncConnection, candidates: dict[int, tuple[int, int | None]]
) -> dict[int, CandidateAccess]:
    """The access of many candidates (pk -> (org_pk, coordinator_pk)) in one statement."""
    members: dict[int, set[int]] = {pk: set() for pk in candidates}
    agency_users: dict[int, set[int]] = {pk: set() for pk in candidates}
    for candidate_pk, is_member, user_pk in await db.execute(
        _ACCESS_OF_MANY, {"cs": sorted(candidates)}
    ):
        (members if is_member else agency_users)[candidate_pk].add(user_pk)
    return {
        pk: CandidateAccess(
            pk=pk,
            org_pk=org_pk,
            coordinator_pk=coordinator_pk,
            member_pks=frozenset(members[pk]),
            agency_user_pks=frozenset(agency_users[pk]),
        )
        for pk, (org_pk, coordinator_pk) in candidates.items()
    }


async def visible_candidate(
    session: AsyncSession, actor: Actor, candidate_id: str, *, lock: bool = False
) -> tuple[Candidate, CandidateAccess]:
    """The candidate and its access now, if the actor sees it; else NotFound (rules)."""
    candidate = await candidate_row(session, actor.org_pk, candidate_id, lock=lock)
    access = await candidate_access(session, candidate) if candidate else None
    rules.require_candidate(actor, access)
    assert candidate is not None and access is not None
    return candidate, access


def thread_ref(thread: Thread) -> ThreadRef:
    return ThreadRef(
        id=thread.id,
        candidate_pk=thread.candidate_pk,
        kind=thread.kind,
        agency_user_pk=thread.agency_user_pk,
        member_pk=thread.member_pk,
    )


async def earlier_private_partners(session: AsyncSession, actor: Actor) -> frozenset[int]:
    """Members this agency user has exchanged private messages with, on any candidate."""
    if actor.is_member:
        return frozenset()
    rows = await session.scalars(
        select(Thread.member_pk)
        .where(
            Thread.agency_user_pk == actor.pk,
            Thread.kind == PRIVATE_THREAD,
            Thread.org_pk == actor.org_pk,
            Thread.last_message_id.is_not(None),
        )
        .distinct()
    )
    return frozenset(pk for pk in rows if pk is not None)


@dataclass(frozen=True, slots=True)
class Target:
    """A thread as reads and writes check it: what the rules need, and the candidate's
    external id."""

    ref: ThreadRef
    access: CandidateAccess
    candidate_id: str
    access_version: int = 0  # the candidate's, read with `access` (never after it)


_TARGET_COLUMNS = (
    Thread.id,
    Thread.candidate_pk,
    Thread.kind,
    Thread.agency_user_pk,
    Thread.member_pk,
    Candidate.ext_id,
    Candidate.coordinator_pk,
    Candidate.access_version,
)
_LOCKED_TARGET = (  # SQLite: the write lock already
    select(*_TARGET_COLUMNS)
    .join(Candidate, Candidate.pk == Thread.candidate_pk)
    .where(Thread.id == bindparam("t"), Thread.org_pk == bindparam("o"))
    .with_for_update(of=Candidate)
)


def _target_with_access(aggregate: Any) -> Any:
    """The thread, its candidate and the candidate's two access lists in one statement (the
    lists aggregated: an array on PostgreSQL, a comma list on SQLite)."""
    members = (
        select(aggregate(CandidateMember.user_pk))
        .where(CandidateMember.candidate_pk == Thread.candidate_pk)
        .scalar_subquery()
    )
    agency_users = (
        select(aggregate(CandidateAgencyUser.user_pk))
        .where(CandidateAgencyUser.candidate_pk == Thread.candidate_pk)
        .scalar_subquery()
    )
    return (
        select(*_TARGET_COLUMNS, members.label("members"), agency_users.label("agency_users"))
        .join(Candidate, Candidate.pk == Thread.candidate_pk)
        .where(Thread.id == bindparam("t"), Thread.org_pk == bindparam("o"))
    )


# Built once per dialect: every read and write of a thread starts here.
_TARGET = {
    "postgresql": _target_with_access(func.array_agg),
    "sqlite": _target_with_access(func.group_concat),
}


def _user_pks(aggregated: Any) -> frozenset[int]:
    if aggregated is None:
        return frozenset()
    if isinstance(aggregated, str):
        return frozenset(int(pk) for pk in aggregated.split(","))
    return frozenset(aggregated)


async def thread_target(
    db: AsyncSession | AsyncConnection,
    actor: Actor,
    thread_id: int,
    *,
    missing: str = "No such thread.",
    lock: bool = False,
) -> Target:
    """The thread, its candidate and the candidate's access now, in one statement built
    once; with `lock`, the candidate row is locked first (writes to one candidate are
    serialised, so that seqs and message ids commit in order) and its access read after,
    in a second statement. A thread the actor may not see is NotFound, as one that does
    not exist."""
    conn = db if isinstance(db, AsyncConnection) else await db.connection()
    params = {"t": thread_id, "o": actor.org_pk}
    row = (
        await conn.execute(_LOCKED_TARGET if lock else _TARGET[conn.dialect.name], params)
    ).first()
    if row is None:
        raise NotFound(missing)
    ref = ThreadRef(
        id=row.id,
        candidate_pk=row.candidate_pk,
        kind=row.kind,
        agency_user_pk=row.agency_user_pk,
        member_pk=row.member_pk,
    )
    if lock:
        access = await access_of(conn, row.candidate_pk, actor.org_pk, row.coordinator_pk)
    else:
        access = CandidateAccess(
            pk=row.candidate_pk,
            org_pk=actor.org_pk,
            coordinator_pk=row.coordinator_pk,
            member_pks=_user_pks(row.members),
            agency_user_pks=_user_pks(row.agency_users),
        )
    if not rules.can_see_thread(actor, access, ref):
        raise NotFound(missing)
    return Target(ref, access, row.ext_id, row.access_version)
