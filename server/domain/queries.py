"""The reads behind the messaging API, one function per answer: each loads the facts, applies
the rules and returns the contract's objects, so that REST (and any other edge) only parses
input and wraps the result. Pieces of SQL and JSON shapes come from `views`; the facts the
rules decide on from `facts`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import Select, bindparam, exists, select
from sqlalchemy.ext.asyncio import AsyncSession

from server.domain import facts, inbox, rules, views
from server.domain.rules import AGENCY, MEMBER, Actor, CandidateAccess
from server.domain.views import Json
from storage.models import Candidate, CandidateAgencyUser, CandidateMember


@dataclass(frozen=True, slots=True)
class CandidateUnread:
    """A candidate's unread messages for one user, summed over the threads the user sees."""

    count: int
    newest_id: int  # the newest unread message of any of those threads


async def unread_by_candidate(
    session: AsyncSession, actor: Actor, candidate_pk: int | None = None
) -> dict[int, CandidateUnread]:
    """Candidates (all, or the one given) with unread messages for the actor, by pk."""
    found: dict[int, CandidateUnread] = {}
    for t in await views.unread_threads(session, actor, candidate_pk):
        was = found.get(t.candidate_pk, CandidateUnread(0, 0))
        found[t.candidate_pk] = CandidateUnread(
            was.count + t.unread, max(was.newest_id, t.newest_unread_id or 0)
        )
    return found


def _candidates_by_id_query(kind: str) -> Select[int, str, int | None, bool]:
    """Candidates of an org by id, each with whether the user is listed on it (a member
    among its members, an agency user among its linked ones)."""
    link = CandidateMember if kind == MEMBER else CandidateAgencyUser
    listed = exists().where(link.candidate_pk == Candidate.pk, link.user_pk == bindparam("user"))
    return select(Candidate.pk, Candidate.ext_id, Candidate.coordinator_pk, listed).where(
        Candidate.org_pk == bindparam("org"),
        Candidate.ext_id.in_(bindparam("ids", expanding=True)),
    )


_CANDIDATES_BY_ID = {kind: _candidates_by_id_query(kind) for kind in (MEMBER, AGENCY)}


async def seen_candidates(
    session: AsyncSession, actor: Actor, candidate_ids: Sequence[str]
) -> dict[str, CandidateAccess]:
    """The candidates among `candidate_ids` that the actor sees now (rules), by id, in one
    statement. Each access holds the actor's own place only (listed or not, and who
    coordinates): enough for every rule about the actor, and nobody else's."""
    params = {"org": actor.org_pk, "user": actor.pk, "ids": list(candidate_ids)}
    found = {}
    for pk, candidate_id, coordinator_pk, listed in await session.execute(
        _CANDIDATES_BY_ID[actor.kind], params
    ):
        mine = frozenset({actor.pk}) if listed else frozenset()
        access = CandidateAccess(
            pk=pk,
            org_pk=actor.org_pk,
            coordinator_pk=coordinator_pk,
            member_pks=mine if actor.is_member else frozenset(),
            agency_user_pks=frozenset() if actor.is_member else mine,
        )
        if rules.can_see_candidate(actor, access):
            found[candidate_id] = access
    return found


async def candidate_page(
    session: AsyncSession,
    actor: Actor,
    *,
    after: str | None,
    limit: int,
    order: str = inbox.BY_ID,
    before: int | None = None,
) -> tuple[list[Json], bool]:
    """A page of the actor's candidates with their unread counts and the newest message the
    actor may see on each, and whether more follow. By id (after the id `after`), or newest
    activity first (see `inbox.candidates_by_activity` for its cursors)."""
    if order == inbox.BY_ACTIVITY:
        rows, has_more = await inbox.candidates_by_activity(
            session, actor, before=before, after=after, limit=limit
        )
    else:
        found, has_more = await views.visible_candidates(session, actor, after=after, limit=limit)
        newest = await inbox.last_visible_messages(session, actor, [c.pk for c in found])
        rows = [inbox.CandidateRow(c.pk, c.ext_id, c.name, newest.get(c.pk)) for c in found]
    unread = await unread_by_candidate(session, actor)
    last = await views.messages_by_id(
        session, [r.last_message_id for r in rows if r.last_message_id is not None]
    )
    page = []
    for c in rows:
        last_row = last.get(c.last_message_id) if c.last_message_id is not None else None
        page.append(
            {
                "id": c.ext_id,
                "name": c.name,
                "unread": unread[c.pk].count if c.pk in unread else 0,
                "last_message": last_row.to_json() if last_row else None,
            }
        )
    return page, has_more


async def candidate_detail(session: AsyncSession, actor: Actor, candidate_id: str) -> Json:
    """The contract's `Candidate` as the actor sees it: its coordinator, the agency users
    shown to the actor, the members it may open a private thread with, and its unread."""
    candidate, access = await facts.visible_candidate(session, actor, candidate_id)
    partners = await facts.earlier_private_partners(session, actor)
    contacts = rules.private_contacts(actor, access, partners)
    agency_pks = rules.visible_agency_users(actor, access)
    wanted = set(agency_pks) | set(contacts)
    if access.coordinator_pk is not None:
        wanted.add(access.coordinator_pk)
    users = await views.users_by_pk(session, wanted)
    unread = await unread_by_candidate(session, actor, candidate.pk)
    coordinator = users.get(access.coordinator_pk) if access.coordinator_pk else None
    return {
        "id": candidate.ext_id,
        "name": candidate.name,
        "coordinator": views.user_json(coordinator),
        "agency_users": views.ordered_users(users, agency_pks),
        "private_contacts": views.ordered_users(users, contacts),
        "unread": unread[candidate.pk].count if candidate.pk in unread else 0,
        "seq": candidate.last_seq,
    }


async def candidate_threads(session: AsyncSession, actor: Actor, candidate_id: str) -> list[Json]:
    """The contract's `Thread`s of a candidate that the actor sees, oldest first."""
    candidate, access = await facts.visible_candidate(session, actor, candidate_id)
    threads = await views.visible_threads(session, actor, candidate.pk)
    return await views.threads_json(session, actor, threads, candidate.ext_id, access)


async def history(
    session: AsyncSession,
    actor: Actor,
    thread_id: int,
    *,
    before: int | None,
    after: int | None,
    limit: int,
) -> tuple[list[Json], bool]:
    """A page of a thread's messages, oldest first, if the actor may read the thread, and
    whether more exist in the paging direction (see `views.message_page`)."""
    target = await facts.thread_target(await session.connection(), actor, thread_id)
    rules.check_read(actor, target.access, target.ref)
    rows, has_more = await views.message_page(
        session, thread_id, before=before, after=after, limit=limit
    )
    return [r.to_json() for r in rows], has_more


async def unread_summary(session: AsyncSession, actor: Actor) -> list[Json]:
    """The blue dots: each candidate with unread messages for the actor, with its unread
    count and newest unread message, the most recent first."""
    per_candidate = await unread_by_candidate(session, actor)
    latest = await views.messages_by_id(session, [u.newest_id for u in per_candidate.values()])
    out = []
    for unread in sorted(per_candidate.values(), key=lambda u: -u.newest_id):
        row = latest.get(unread.newest_id)
        if row is None:  # pragma: no cover - erased between the two statements: nothing to show
            continue
        out.append({"candidate": row.candidate_id, "unread": unread.count, "latest": row.to_json()})
    return out
