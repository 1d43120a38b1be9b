"""Who may see and do what: the product's rules, in one pure module.

Nothing here touches the database or the network. REST, WebSocket (live fan-out and replay)
and email alerts all call these functions with facts loaded *now*, so that a revoked access
takes effect on every path at once.

The rules, as the contract states them:
- Nothing crosses orgs.
- A member sees a candidate while it has access (listed, or the current coordinator); an
  agency user sees a candidate while it is linked to it.
- The agency thread of (candidate, agency user) is seen by every member who sees the
  candidate and by that agency user alone. A private thread is seen by its member and its
  agency user, each while they see the candidate.
- A member may open either kind of thread with any agency user linked to the candidate. An
  agency user may open its agency thread, and a private thread only with the current
  coordinator or with a member who has access and with whom it has already exchanged private
  messages on any candidate of the org.
- Anyone who sees an agency thread may post in it while its agency user is still linked to
  the candidate; posting in a private thread needs both of its people to still see the
  candidate. A thread whose agency user was unlinked stays readable to the members who
  see it, but takes no more posts.
- Only the author deletes a message.
- "Seen by": a member sees how far each other person who sees a thread has read it; an
  agency user sees only how far the hiring team as a whole has read it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

from server.domain.errors import Forbidden, InvalidInput, NotFound

MEMBER = "member"
AGENCY = "agency"
AGENCY_THREAD = "agency"
PRIVATE_THREAD = "private"


@dataclass(frozen=True, slots=True)
class Actor:
    pk: int
    org_pk: int
    kind: str  # MEMBER | AGENCY

    @property
    def is_member(self) -> bool:
        return self.kind == MEMBER


@dataclass(frozen=True, slots=True)
class CandidateAccess:
    """Who may see one candidate, as it is now."""

    pk: int
    org_pk: int
    coordinator_pk: int | None
    member_pks: frozenset[int]
    agency_user_pks: frozenset[int]

    def member_has_access(self, user_pk: int) -> bool:
        return user_pk in self.member_pks or user_pk == self.coordinator_pk

    def agency_user_linked(self, user_pk: int) -> bool:
        return user_pk in self.agency_user_pks

    @property
    def members_with_access(self) -> frozenset[int]:
        if self.coordinator_pk is None:
            return self.member_pks
        return self.member_pks | {self.coordinator_pk}

    @property
    def users_with_access(self) -> frozenset[int]:
        """Everyone who sees the candidate: members with access and linked agency users."""
        return self.members_with_access | self.agency_user_pks


@dataclass(frozen=True, slots=True)
class ThreadRef:
    id: int
    candidate_pk: int
    kind: str  # AGENCY_THREAD | PRIVATE_THREAD
    agency_user_pk: int
    member_pk: int | None


@dataclass(frozen=True, slots=True)
class ThreadKey:
    """What identifies a thread inside a candidate: the target of a get-or-create."""

    kind: str
    agency_user_pk: int
    member_pk: int | None


# --- seeing ---------------------------------------------------------------------------


def can_see_candidate(actor: Actor, candidate: CandidateAccess) -> bool:
    if actor.org_pk != candidate.org_pk:
        return False
    if actor.is_member:
        return candidate.member_has_access(actor.pk)
    return candidate.agency_user_linked(actor.pk)


def can_see_thread(actor: Actor, candidate: CandidateAccess, thread: ThreadRef) -> bool:
    if thread.candidate_pk != candidate.pk or not can_see_candidate(actor, candidate):
        return False
    if not actor.is_member:
        return thread.agency_user_pk == actor.pk
    return thread.kind == AGENCY_THREAD or thread.member_pk == actor.pk


def thread_viewers(candidate: CandidateAccess, thread: ThreadRef) -> frozenset[int]:
    """Every user who sees the thread now: the audience of its live events."""
    viewers: set[int] = set()
    if candidate.agency_user_linked(thread.agency_user_pk):
        viewers.add(thread.agency_user_pk)
    if thread.kind == AGENCY_THREAD:
        viewers |= candidate.members_with_access
    elif thread.member_pk is not None and candidate.member_has_access(thread.member_pk):
        viewers.add(thread.member_pk)
    return frozenset(viewers)


def visible_agency_users(actor: Actor, candidate: CandidateAccess) -> frozenset[int]:
    """The agency users of the candidate that the actor is shown: every linked one to a
    member, only itself to an agency user, none to someone who does not see the candidate."""
    if not can_see_candidate(actor, candidate):
        return frozenset()
    if actor.is_member:
        return candidate.agency_user_pks
    return frozenset({actor.pk})


def require_candidate(actor: Actor, candidate: CandidateAccess | None) -> CandidateAccess:
    if candidate is None or not can_see_candidate(actor, candidate):
        raise NotFound("No such candidate.")
    return candidate


def require_thread(
    actor: Actor, candidate: CandidateAccess | None, thread: ThreadRef | None
) -> None:
    if thread is None or candidate is None or not can_see_thread(actor, candidate, thread):
        raise NotFound("No such thread.")


# --- opening threads ----------------------------------------------------------------


def private_contacts(
    actor: Actor, candidate: CandidateAccess, earlier_partners: Iterable[int]
) -> frozenset[int]:
    """The members an agency user may open a private thread with on this candidate.

    `earlier_partners` are the members it has exchanged private messages with (a private
    thread holding at least one message) on any candidate of the org.
    """
    if actor.is_member or not can_see_candidate(actor, candidate):
        return frozenset()
    contacts = {pk for pk in earlier_partners if candidate.member_has_access(pk)}
    if candidate.coordinator_pk is not None:
        contacts.add(candidate.coordinator_pk)
    return frozenset(contacts)


def thread_key(
    actor: Actor,
    candidate: CandidateAccess,
    *,
    private: bool,
    agency_user_pk: int | None = None,
    member_pk: int | None = None,
) -> ThreadKey:
    """The thread a get-or-create asks for, checked for shape (not yet for permission).

    A member names the agency user; an agency user names the member of a private thread.
    """
    require_candidate(actor, candidate)
    kind = PRIVATE_THREAD if private else AGENCY_THREAD
    if actor.is_member:
        if agency_user_pk is None:
            raise InvalidInput("A member must name the agency user of the thread.")
        if not candidate.agency_user_linked(agency_user_pk):
            raise NotFound("No such agency user on this candidate.")
        return ThreadKey(kind, agency_user_pk, actor.pk if private else None)
    if not private:
        return ThreadKey(kind, actor.pk, None)
    if member_pk is None:
        raise InvalidInput("A private thread needs the member to talk with.")
    return ThreadKey(kind, actor.pk, member_pk)


def check_open_thread(
    actor: Actor, candidate: CandidateAccess, key: ThreadKey, earlier_partners: Iterable[int]
) -> None:
    """May `actor` create the thread `key` (which does not exist yet)?"""
    require_candidate(actor, candidate)
    if actor.is_member or key.kind == AGENCY_THREAD:
        return  # thread_key already made sure of the counterpart
    assert key.member_pk is not None
    if key.member_pk not in private_contacts(actor, candidate, earlier_partners):
        raise Forbidden(
            "An agency user may open a private thread only with the candidate's coordinator "
            "or with a member it has already exchanged private messages with."
        )


# --- writing in a thread ------------------------------------------------------------


def check_post(actor: Actor, candidate: CandidateAccess | None, thread: ThreadRef | None) -> None:
    """Anyone who sees a thread may post in it while both its sides still see the candidate:
    its agency user (for either kind), and the member of a private thread."""
    require_thread(actor, candidate, thread)
    assert candidate is not None and thread is not None
    if not candidate.agency_user_linked(thread.agency_user_pk):
        # The members still see an agency thread (its history stays readable), but a reply
        # would go to someone who can no longer read it.
        raise Forbidden(
            "The agency user of this thread no longer has access to the candidate; "
            "the thread can be read but takes no new messages."
        )
    if thread.kind != PRIVATE_THREAD:
        return
    assert thread.member_pk is not None
    if not candidate.member_has_access(thread.member_pk):
        raise Forbidden("The member of this private thread no longer has access to the candidate.")


def check_delete(
    actor: Actor, candidate: CandidateAccess | None, thread: ThreadRef | None, author_pk: int
) -> None:
    require_thread(actor, candidate, thread)
    if author_pk != actor.pk:
        raise Forbidden("Only the author of a message may delete it.")


def check_read(actor: Actor, candidate: CandidateAccess | None, thread: ThreadRef | None) -> None:
    require_thread(actor, candidate, thread)


# --- email alerts -------------------------------------------------------------------


def alert_recipients(
    candidate: CandidateAccess, thread: ThreadRef, posters: Iterable[int], author_pk: int
) -> frozenset[int]:
    """Who is *involved* in a thread and so may get an email alert about a new message:
    for an agency thread its agency user, the current coordinator and every member who
    has posted in it; for a private thread its two people. Never the author, and only
    those who see the thread now. (Whether they are offline or muted is checked apart.)"""
    if thread.kind == PRIVATE_THREAD:
        involved = {thread.agency_user_pk, thread.member_pk}
    else:
        involved = {thread.agency_user_pk, candidate.coordinator_pk, *posters}
    viewers = thread_viewers(candidate, thread)
    return frozenset(pk for pk in involved if pk is not None and pk != author_pk and pk in viewers)


# --- "seen by" ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Marker:
    """How far one user has read a thread, and when the marker last moved (None: before
    that was recorded)."""

    user_pk: int
    message_id: int
    read_at: datetime | None


@dataclass(frozen=True, slots=True)
class Seen:
    """One entry of a thread's "seen by" as a caller is shown it: a named reader, or (for
    an agency user) the hiring team as a whole, with `reader_pk` None."""

    reader_pk: int | None
    team: bool
    message_id: int
    at: datetime | None


def seen_by(
    viewer: Actor, candidate: CandidateAccess, thread: ThreadRef, markers: Iterable[Marker]
) -> list[Seen]:
    """How far the others have read a thread, as `viewer` may know it. Only markers of
    people who see the thread now count, never the viewer's own. A member sees each of them
    by name, furthest first; an agency user sees only how far the hiring team got (its
    members' furthest marker, when it was first reached), never which member read."""
    if not can_see_thread(viewer, candidate, thread):
        return []
    viewers = thread_viewers(candidate, thread)
    others = [m for m in markers if m.user_pk in viewers and m.user_pk != viewer.pk]
    if viewer.is_member:
        others.sort(key=lambda m: (-m.message_id, m.user_pk))
        return [Seen(m.user_pk, False, m.message_id, m.read_at) for m in others]
    team = [m for m in others if m.user_pk != thread.agency_user_pk]
    if not team:
        return []
    furthest = max(m.message_id for m in team)
    # Markers without a time moved before any timed one: the earliest known reach.
    first = min((m for m in team if m.message_id == furthest), key=_reached)
    return [Seen(None, True, furthest, first.read_at)]


def _reached(marker: Marker) -> tuple[bool, datetime | None]:
    return (marker.read_at is not None, marker.read_at)


@dataclass(frozen=True, slots=True)
class ReadAudience:
    """Who is told live that a marker moved: `named` see the reader by name; `team` see
    only that the hiring team read (nobody is told of their own read)."""

    named: frozenset[int]
    team: frozenset[int]

    def without_team(self) -> ReadAudience:
        return ReadAudience(self.named, frozenset())


def read_audience(candidate: CandidateAccess, thread: ThreadRef, reader: Actor) -> ReadAudience:
    """The others who see the thread now. Members are told of every read by name; the
    agency user is told of a member's read as the team's (see `team_moved`)."""
    others = thread_viewers(candidate, thread) - {reader.pk}
    named = others - {thread.agency_user_pk}
    team = others & {thread.agency_user_pk} if reader.is_member else frozenset()
    return ReadAudience(frozenset(named), frozenset(team))


def team_readers(candidate: CandidateAccess, thread: ThreadRef, reader: Actor) -> frozenset[int]:
    """The other members whose markers make the hiring team's furthest read of the thread."""
    return thread_viewers(candidate, thread) - {thread.agency_user_pk, reader.pk}


def team_moved(message_id: int, others_furthest: int | None) -> bool:
    """A member's read is news to the agency user only when it moves the team's furthest
    marker: what it is told live then matches what `seen_by` shows it."""
    return others_furthest is None or message_id > others_furthest
