"""Reads across candidates: the caller's conversations newest activity first (the inbox), and
its candidates in the same order.

Each page is chosen in SQL (visibility is `views.thread_visible`, the SQL form of the rules)
and every row is then checked with `rules.can_see_thread` on the facts the same statement
loaded, so that the answer is what the rules allow now. A page costs a fixed number of
statements whatever the number of candidates: the page with its unread counts and last
messages, then what "seen by" needs (the candidates' access, the read markers, the readers).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import Select, bindparam, exists, func, literal, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from server.domain import facts, rules, views
from server.domain.rules import AGENCY, MEMBER, Actor, CandidateAccess, ThreadRef
from server.domain.views import Json
from storage.models import (
    Agency,
    Candidate,
    CandidateAgencyUser,
    CandidateMember,
    Message,
    ReadMarker,
    Thread,
    User,
)

# The orders of the candidate list: by id (the default), or newest activity first.
BY_ID = "id"
BY_ACTIVITY = "activity"
CANDIDATE_ORDERS = (BY_ID, BY_ACTIVITY)


def _conversation_page_query(kind: str, *, cursor: bool) -> Select[Any]:
    """The threads of a page, newest last message first, each with its candidate, its two
    people and the facts the rules decide on. Parameters: u (user pk), o (org pk), n (rows),
    and c (the cursor: last message ids below it) when `cursor`."""
    actor = Actor(cast(int, bindparam("u")), cast(int, bindparam("o")), kind)
    page = select(
        Thread.id,
        Thread.candidate_pk,
        Thread.kind,
        Thread.agency_user_pk,
        Thread.member_pk,
        Thread.last_message_id,
    ).where(views.thread_visible(actor), Thread.last_message_id.is_not(None))
    if cursor:
        page = page.where(Thread.last_message_id < bindparam("c"))
    # Chosen first and joined after: the joins run for the page's rows alone.
    chosen = page.order_by(Thread.last_message_id.desc()).limit(bindparam("n")).subquery()
    link = CandidateMember if kind == MEMBER else CandidateAgencyUser
    listed = exists().where(link.candidate_pk == chosen.c.candidate_pk, link.user_pk == actor.pk)
    linked = exists().where(
        CandidateAgencyUser.candidate_pk == chosen.c.candidate_pk,
        CandidateAgencyUser.user_pk == chosen.c.agency_user_pk,
    )
    agent, agent_agency = aliased(User), aliased(Agency)
    member, member_agency = aliased(User), aliased(Agency)
    # The unread count and the last message come with the page: two round trips fewer.
    marker = aliased(ReadMarker)
    unread = (
        select(func.count())
        .where(
            *views.unread_conditions(
                actor.pk, chosen.c.id, func.coalesce(marker.message_id, literal(0))
            )
        )
        .correlate(chosen, marker)
        .scalar_subquery()
    )
    last, author, author_agency = aliased(Message), aliased(User), aliased(Agency)
    return (
        select(
            chosen,
            unread.label("unread"),
            last.thread_id.label("last_thread_id"),
            last.body.label("last_body"),
            last.created_at.label("last_created_at"),
            last.deleted.label("last_deleted"),
            last.client_id.label("last_client_id"),
            author.ext_id.label("author_id"),
            author.name.label("author_name"),
            author.kind.label("author_kind"),
            author_agency.ext_id.label("author_agency_id"),
            author_agency.name.label("author_agency_name"),
            Candidate.org_pk,
            Candidate.ext_id.label("candidate_id"),
            Candidate.name.label("candidate_name"),
            Candidate.coordinator_pk,
            listed.label("listed"),
            linked.label("linked"),
            agent.ext_id.label("agent_id"),
            agent.name.label("agent_name"),
            agent.kind.label("agent_kind"),
            agent_agency.ext_id.label("agent_agency_id"),
            agent_agency.name.label("agent_agency_name"),
            member.ext_id.label("member_id"),
            member.name.label("member_name"),
            member.kind.label("member_kind"),
            member_agency.ext_id.label("member_agency_id"),
            member_agency.name.label("member_agency_name"),
        )
        .join(Candidate, Candidate.pk == chosen.c.candidate_pk)
        .join(agent, agent.pk == chosen.c.agency_user_pk)
        .outerjoin(agent_agency, agent_agency.pk == agent.agency_pk)
        .outerjoin(member, member.pk == chosen.c.member_pk)
        .outerjoin(member_agency, member_agency.pk == member.agency_pk)
        .outerjoin(marker, (marker.thread_id == chosen.c.id) & (marker.user_pk == bindparam("u")))
        .join(last, last.id == chosen.c.last_message_id)
        .join(author, author.pk == last.author_pk)
        .outerjoin(author_agency, author_agency.pk == author.agency_pk)
        .order_by(chosen.c.last_message_id.desc())
    )


# Built once per kind of user and cursor: the inbox is read on every page of the host.
_CONVERSATION_PAGE = {
    (kind, cursor): _conversation_page_query(kind, cursor=cursor)
    for kind in (MEMBER, AGENCY)
    for cursor in (False, True)
}


def _access(actor: Actor, row: Any) -> CandidateAccess:
    """The candidate's access as far as the rules about this actor and this thread go: the
    actor's own place on it, its coordinator, and whether the thread's agency user is
    linked (as `queries.seen_candidates` builds it)."""
    mine = frozenset({actor.pk}) if row.listed else frozenset()
    agency_users = frozenset() if actor.is_member else mine
    if row.linked:
        agency_users |= {row.agency_user_pk}
    return CandidateAccess(
        pk=row.candidate_pk,
        org_pk=row.org_pk,
        coordinator_pk=row.coordinator_pk,
        member_pks=mine if actor.is_member else frozenset(),
        agency_user_pks=agency_users,
    )


def _ref(row: Any) -> ThreadRef:
    return ThreadRef(row.id, row.candidate_pk, row.kind, row.agency_user_pk, row.member_pk)


def _person(row: Any, prefix: str) -> Json | None:
    if getattr(row, f"{prefix}_id") is None:
        return None
    return views.user_ref(
        getattr(row, f"{prefix}_id"),
        getattr(row, f"{prefix}_name"),
        getattr(row, f"{prefix}_kind"),
        getattr(row, f"{prefix}_agency_id"),
        getattr(row, f"{prefix}_agency_name"),
    )


@dataclass(slots=True)
class _LastMessage:
    """A page row's last message, as `views.message_json` reads a message."""

    id: int
    thread_id: int
    body: str | None
    created_at: datetime
    deleted: bool
    client_id: str | None


def _last_message(row: Any) -> Json:
    message = _LastMessage(
        row.last_message_id,
        row.last_thread_id,
        row.last_body,
        row.last_created_at,
        row.last_deleted,
        row.last_client_id,
    )
    return views.message_json(message, _person(row, "author"), row.candidate_id)


async def conversations(
    session: AsyncSession, actor: Actor, *, before: int | None, limit: int
) -> tuple[list[Json], bool]:
    """A page of the actor's threads across candidates, newest last message first (threads
    with no message left out), each a contract `Thread` with its candidate's name; and
    whether more follow. `before`: only threads whose last message id is below it."""
    query = _CONVERSATION_PAGE[actor.kind, before is not None]
    params = {"u": actor.pk, "o": actor.org_pk, "n": limit + 1}
    if before is not None:
        params["c"] = before
    conn = await session.connection()
    rows = list(await conn.execute(query, params))
    has_more = len(rows) > limit
    visible = []
    for row in rows[:limit]:
        access = _access(actor, row)
        if rules.can_see_thread(actor, access, _ref(row)):
            visible.append((row, access))
    # "Seen by" needs each candidate's whole access (who else sees the thread), not only
    # the caller's place on it: read in one statement for the page.
    accesses = await facts.accesses_of(
        session, {row.candidate_pk: (row.org_pk, row.coordinator_pk) for row, _ in visible}
    )
    seen = await views.seen_entries(
        session, actor, [(_ref(row), accesses[row.candidate_pk]) for row, _ in visible]
    )
    readers = await views.users_by_pk(session, views.seen_readers(seen))
    page = []
    for row, access in visible:
        page.append(
            {
                "id": row.id,
                "candidate": row.candidate_id,
                "candidate_name": row.candidate_name,
                "kind": row.kind,
                "agency_user": _person(row, "agent"),
                "member": _person(row, "member"),
                "agency_user_linked": access.agency_user_linked(row.agency_user_pk),
                "unread": row.unread,
                "last_message": _last_message(row),
                "seen": views.seen_list(seen[row.id], readers),
            }
        )
    return page, has_more


# --- candidates by activity -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CandidateRow:
    pk: int
    ext_id: str
    name: str
    last_message_id: int | None  # the newest message the actor may see there


def _newest_visible(actor: Actor) -> Select[int, int | None]:
    """Per candidate, the newest last message of the threads the actor sees there."""
    return (
        select(
            Thread.candidate_pk.label("candidate_pk"),
            func.max(Thread.last_message_id).label("last_id"),
        )
        .where(views.thread_visible(actor))
        .group_by(Thread.candidate_pk)
    )


async def last_visible_messages(
    session: AsyncSession, actor: Actor, candidate_pks: Sequence[int]
) -> dict[int, int]:
    """The newest message id the actor may see on each of these candidates (those with
    one), in one statement."""
    if not candidate_pks:
        return {}
    query = _newest_visible(actor).where(Thread.candidate_pk.in_(list(candidate_pks)))
    return {pk: last for pk, last in await session.execute(query) if last is not None}


async def candidates_by_activity(
    session: AsyncSession, actor: Actor, *, before: int | None, after: str | None, limit: int
) -> tuple[list[CandidateRow], bool]:
    """A page of the actor's candidates, newest visible message first, then those with no
    visible message by id; and whether more follow. `before`: candidates whose newest
    visible message is below that id, then all those without one; `after`: those without
    one, ids after it."""
    newest = _newest_visible(actor).subquery()
    activity = func.coalesce(newest.c.last_id, literal(0))
    query = (
        select(Candidate.pk, Candidate.ext_id, Candidate.name, newest.c.last_id)
        .outerjoin(newest, newest.c.candidate_pk == Candidate.pk)
        .where(
            Candidate.org_pk == actor.org_pk,
            Candidate.pk.in_(views.accessible_candidates(actor)),
        )
    )
    if before is not None:
        query = query.where(activity < before)
    if after is not None:
        query = query.where(newest.c.last_id.is_(None), Candidate.ext_id > after)
    query = query.order_by(activity.desc(), Candidate.ext_id).limit(limit + 1)
    rows = [CandidateRow(*row) for row in await session.execute(query)]
    return rows[:limit], len(rows) > limit
