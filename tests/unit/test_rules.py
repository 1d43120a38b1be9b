"""The rules matrix: every role x thread kind x operation x state, checked against the contract.

Each expected outcome comes from a small model of the interface's rules (docs/api.md: the
candidate, its threads, reading, deleting), written here in those terms and never by asking
server.domain.rules. One design decision of rules.py is taken as given: the candidate's current
coordinator has access even when it is not in the candidate's members list.

Outcomes: "ok"; NotFound (the caller cannot see the thing); Forbidden (it sees it but may not
do this); InvalidInput (malformed request). Case ids read role-kind-operation-state, e.g.
"coordinator-agency-post-revoked", or role-open-request-state for thread openings.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import pytest

from server.domain.errors import Forbidden, InvalidInput, NotFound
from server.domain.rules import (
    AGENCY,
    AGENCY_THREAD,
    MEMBER,
    PRIVATE_THREAD,
    Actor,
    CandidateAccess,
    ThreadRef,
    can_see_candidate,
    can_see_thread,
    check_delete,
    check_open_thread,
    check_post,
    check_read,
    private_contacts,
    require_candidate,
    require_thread,
    thread_key,
    thread_viewers,
)

OK = "ok"
Outcome = Any  # OK, or one of the error classes

ORG, OTHER_ORG = 1, 2
CANDIDATE_PK = 100
OTHER_CANDIDATE_PK = 101


# --- the cast ---------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    pk: int
    org: int
    is_member: bool

    @property
    def actor(self) -> Actor:
        return Actor(self.pk, self.org, MEMBER if self.is_member else AGENCY)


USERS: dict[str, User] = {
    "coordinator": User(1, ORG, True),  # the coordinator; not in the members list
    "member": User(2, ORG, True),  # a member with access, listed
    "no-access": User(3, ORG, True),  # a member of the org without access
    "new-coordinator": User(4, ORG, True),  # takes over in the coord-* states
    "agent": User(11, ORG, False),  # the linked agency user whose threads these are
    "colleague": User(12, ORG, False),  # same agency, also linked to the candidate
    "stranger-agent": User(13, ORG, False),  # an agency user of the org, not linked
    "other-org-member": User(21, OTHER_ORG, True),
    "other-org-agent": User(22, OTHER_ORG, False),
}
MEMBER_ROLES = [role for role, user in USERS.items() if user.is_member]
AGENCY_ROLES = [role for role, user in USERS.items() if not user.is_member]


def pk(role: str) -> int:
    return USERS[role].pk


# --- the states of the candidate --------------------------------------------------------


@dataclass(frozen=True)
class State:
    coordinator: str | None
    listed: frozenset[str]  # the candidate's members list
    linked: frozenset[str]  # its linked agency users


def _state(coordinator: str | None, listed: Iterable[str], linked: Iterable[str]) -> State:
    return State(coordinator, frozenset(listed), frozenset(linked))


BOTH_AGENTS = ("agent", "colleague")
STATES: dict[str, State] = {
    "normal": _state("coordinator", ["member"], BOTH_AGENTS),
    "revoked": _state("coordinator", [], BOTH_AGENTS),  # the member's access revoked
    "unlinked": _state("coordinator", ["member"], ["colleague"]),  # the agent unlinked
    # coordinator handed to another member; the old one stays listed, so keeps access
    "coord-changed": _state("new-coordinator", ["member", "coordinator"], BOTH_AGENTS),
    # coordinator handed over and the old one not listed: it loses access
    "coord-dropped": _state("new-coordinator", ["member"], BOTH_AGENTS),
    "no-coordinator": _state(None, ["member"], BOTH_AGENTS),
}


def candidate_access(state: State, candidate_pk: int = CANDIDATE_PK) -> CandidateAccess:
    return CandidateAccess(
        pk=candidate_pk,
        org_pk=ORG,
        coordinator_pk=None if state.coordinator is None else pk(state.coordinator),
        member_pks=frozenset(pk(role) for role in state.listed),
        agency_user_pks=frozenset(pk(role) for role in state.linked),
    )


# --- the threads: kind, agency user, member ---------------------------------------------

THREADS: dict[str, tuple[str, str, str | None]] = {
    "agency": (AGENCY_THREAD, "agent", None),
    "private": (PRIVATE_THREAD, "agent", "member"),  # with the member with access
    "private-coord": (PRIVATE_THREAD, "agent", "coordinator"),  # with the (old) coordinator
}


def thread_ref(kind: str, candidate_pk: int = CANDIDATE_PK) -> ThreadRef:
    thread_kind, agency_user, member = THREADS[kind]
    return ThreadRef(
        id=list(THREADS).index(kind) + 1,
        candidate_pk=candidate_pk,
        kind=thread_kind,
        agency_user_pk=pk(agency_user),
        member_pk=None if member is None else pk(member),
    )


# --- the contract, as a model -----------------------------------------------------------


def has_access(state: State, role: str) -> bool:
    """A member of the org with access: listed, or the current coordinator."""
    user = USERS[role]
    return (
        user.org == ORG and user.is_member and (role in state.listed or role == state.coordinator)
    )


def is_linked(state: State, role: str) -> bool:
    """An agency user of the org linked to the candidate."""
    user = USERS[role]
    return user.org == ORG and not user.is_member and role in state.linked


def sees_candidate(state: State, role: str) -> bool:
    return has_access(state, role) or is_linked(state, role)


def audience(kind: str, state: State) -> frozenset[str]:
    """Who sees the thread now.

    Agency thread: every member with access, and that agency user alone. Private thread:
    those two alone. Reading needs the access to hold now, for each of them.
    """
    _, agency_user, member = THREADS[kind]
    if member is None:
        parties = {agency_user} | {role for role in USERS if has_access(state, role)}
    else:
        parties = {agency_user, member}
    return frozenset(role for role in parties if sees_candidate(state, role))


THREAD_OPS = ("see", "read", "post", "delete-own", "delete-other")


def expect_thread_op(role: str, kind: str, op: str, state: State) -> Outcome:
    seen_by = audience(kind, state)
    if role not in seen_by:
        return NotFound
    if op == "delete-other":
        return Forbidden  # only the author may delete a message
    _, agency_user, member = THREADS[kind]
    if op == "post" and member is not None:
        # "either of the two may post while both can see the candidate"
        return OK if {agency_user, member} <= seen_by else Forbidden
    if op == "post" and agency_user not in seen_by:
        # An agency thread whose agency user was unlinked: readable, but no more posts.
        return Forbidden
    return OK  # agency thread: "Any of them may post."; see, read, delete own


# A member asks for a thread by naming the agency user: (private, agency user).
MEMBER_OPENS: dict[str, tuple[bool, str | None]] = {
    "agency-with-agent": (False, "agent"),
    "private-with-agent": (True, "agent"),
    "agency-with-colleague": (False, "colleague"),
    "private-with-colleague": (True, "colleague"),
    "agency-with-stranger-agent": (False, "stranger-agent"),
    "private-with-stranger-agent": (True, "stranger-agent"),
    "private-with-other-org-agent": (True, "other-org-agent"),
    "agency-unnamed": (False, None),
    "private-unnamed": (True, None),
}

# An agency user asks for its agency thread, or a private one naming the member:
# (private, member, members it has already exchanged private messages with).
AGENCY_OPENS: dict[str, tuple[bool, str | None, tuple[str, ...]]] = {
    "agency": (False, None, ()),
    "private-with-coordinator": (True, "coordinator", ()),
    "private-with-coordinator-prior": (True, "coordinator", ("coordinator",)),
    "private-with-member-prior": (True, "member", ("member",)),
    "private-with-member-no-prior": (True, "member", ()),
    "private-with-lost-access-prior": (True, "no-access", ("no-access",)),
    "private-with-no-access-no-prior": (True, "no-access", ()),
    "private-with-new-coordinator": (True, "new-coordinator", ()),
    "private-unnamed": (True, None, ()),
}

Key = tuple[str, int, int | None]  # (kind, agency user pk, member pk)


def expect_member_open(role: str, request: str, state: State) -> tuple[Outcome, Key | None]:
    """A member with access may open either kind with any agency user linked to the candidate."""
    private, agency_user = MEMBER_OPENS[request]
    if not sees_candidate(state, role):
        return NotFound, None
    if agency_user is None:
        return InvalidInput, None
    if not is_linked(state, agency_user):
        return NotFound, None  # no such agency user on this candidate, as the member sees it
    if private:
        return OK, (PRIVATE_THREAD, pk(agency_user), pk(role))
    return OK, (AGENCY_THREAD, pk(agency_user), None)


def expect_agency_open(role: str, request: str, state: State) -> tuple[Outcome, Key | None]:
    """An agency user opens its agency thread; a private one only with the current
    coordinator, or with a member who has access and with whom it already exchanged."""
    private, member, prior = AGENCY_OPENS[request]
    if not sees_candidate(state, role):
        return NotFound, None
    if not private:
        return OK, (AGENCY_THREAD, pk(role), None)
    if member is None:
        return InvalidInput, None
    if member == state.coordinator or (member in prior and has_access(state, member)):
        return OK, (PRIVATE_THREAD, pk(role), pk(member))
    return Forbidden, None


def expect_contacts(role: str, state: State, prior: Iterable[str]) -> frozenset[int]:
    """The members an agency user may open a private thread with; empty for a member."""
    if USERS[role].is_member or not sees_candidate(state, role):
        return frozenset()
    return frozenset(
        pk(member)
        for member in MEMBER_ROLES
        if member == state.coordinator or (member in prior and has_access(state, member))
    )


# --- running the module -----------------------------------------------------------------


def attempt(call: Callable[[], Any]) -> tuple[Outcome, Any]:
    try:
        value = call()
    except (NotFound, Forbidden, InvalidInput) as error:
        return type(error), None
    return OK, value


def label(outcome: Outcome) -> str:
    return outcome if isinstance(outcome, str) else outcome.__name__


def perform(
    op: str, role: str, candidate: CandidateAccess | None, thread: ThreadRef | None
) -> Outcome:
    actor = USERS[role].actor
    someone_else = pk("coordinator" if role == "agent" else "agent")
    calls: dict[str, Callable[[], Any]] = {
        "see": lambda: require_thread(actor, candidate, thread),
        "read": lambda: check_read(actor, candidate, thread),
        "post": lambda: check_post(actor, candidate, thread),
        "delete-own": lambda: check_delete(actor, candidate, thread, actor.pk),
        "delete-other": lambda: check_delete(actor, candidate, thread, someone_else),
    }
    return attempt(calls[op])[0]


# --- the matrix -------------------------------------------------------------------------


def _candidate_cases() -> Iterator[Any]:
    for role in USERS:
        for state_name in STATES:
            yield pytest.param(role, state_name, id=f"{role}-candidate-see-{state_name}")


@pytest.mark.parametrize(("role", "state_name"), list(_candidate_cases()))
def test_see_candidate(role: str, state_name: str) -> None:
    state = STATES[state_name]
    actor, candidate = USERS[role].actor, candidate_access(state)
    want = OK if sees_candidate(state, role) else NotFound
    got = attempt(lambda: require_candidate(actor, candidate))[0]
    assert label(got) == label(want)
    assert can_see_candidate(actor, candidate) is (want == OK)


def _thread_cases() -> Iterator[Any]:
    for role in USERS:
        for kind in THREADS:
            for op in THREAD_OPS:
                for state_name in STATES:
                    yield pytest.param(
                        role, kind, op, state_name, id=f"{role}-{kind}-{op}-{state_name}"
                    )


@pytest.mark.parametrize(("role", "kind", "op", "state_name"), list(_thread_cases()))
def test_thread_operation(role: str, kind: str, op: str, state_name: str) -> None:
    state = STATES[state_name]
    candidate, thread = candidate_access(state), thread_ref(kind)
    want = expect_thread_op(role, kind, op, state)
    got = perform(op, role, candidate, thread)
    assert label(got) == label(want), f"{role} {op} in {kind} thread ({state_name})"
    if op == "see":
        assert can_see_thread(USERS[role].actor, candidate, thread) is (want == OK)


def _member_open_cases() -> Iterator[Any]:
    for role in MEMBER_ROLES:
        for request, (_, agency_user) in MEMBER_OPENS.items():
            for state_name, state in STATES.items():
                # 404 and 422 order is not in the contract: malformed asks only by viewers
                if agency_user is None and not sees_candidate(state, role):
                    continue
                yield pytest.param(
                    role, request, state_name, id=f"{role}-open-{request}-{state_name}"
                )


@pytest.mark.parametrize(("role", "request_name", "state_name"), list(_member_open_cases()))
def test_member_opens_thread(role: str, request_name: str, state_name: str) -> None:
    state = STATES[state_name]
    actor, candidate = USERS[role].actor, candidate_access(state)
    private, agency_user = MEMBER_OPENS[request_name]
    want, want_key = expect_member_open(role, request_name, state)

    def open_thread() -> Key:
        key = thread_key(
            actor,
            candidate,
            private=private,
            agency_user_pk=None if agency_user is None else pk(agency_user),
        )
        check_open_thread(actor, candidate, key, ())
        return (key.kind, key.agency_user_pk, key.member_pk)

    got, got_key = attempt(open_thread)
    assert label(got) == label(want)
    assert got_key == want_key


def _agency_open_cases() -> Iterator[Any]:
    for role in AGENCY_ROLES:
        for request, (private, member, _) in AGENCY_OPENS.items():
            for state_name, state in STATES.items():
                if private and member is None and not sees_candidate(state, role):
                    continue
                yield pytest.param(
                    role, request, state_name, id=f"{role}-open-{request}-{state_name}"
                )


@pytest.mark.parametrize(("role", "request_name", "state_name"), list(_agency_open_cases()))
def test_agency_user_opens_thread(role: str, request_name: str, state_name: str) -> None:
    state = STATES[state_name]
    actor, candidate = USERS[role].actor, candidate_access(state)
    private, member, prior = AGENCY_OPENS[request_name]
    want, want_key = expect_agency_open(role, request_name, state)

    def open_thread() -> Key:
        key = thread_key(
            actor, candidate, private=private, member_pk=None if member is None else pk(member)
        )
        check_open_thread(actor, candidate, key, [pk(partner) for partner in prior])
        return (key.kind, key.agency_user_pk, key.member_pk)

    got, got_key = attempt(open_thread)
    assert label(got) == label(want)
    assert got_key == want_key


PRIOR_PARTNERS: dict[str, tuple[str, ...]] = {
    "none": (),
    "member": ("member",),
    "no-access": ("no-access",),
    "coordinator": ("coordinator",),
    "everyone": tuple(MEMBER_ROLES),
}


def _contacts_cases() -> Iterator[Any]:
    for role in USERS:
        for prior in PRIOR_PARTNERS:
            for state_name in STATES:
                yield pytest.param(
                    role, prior, state_name, id=f"{role}-contacts-prior-{prior}-{state_name}"
                )


@pytest.mark.parametrize(("role", "prior", "state_name"), list(_contacts_cases()))
def test_private_contacts(role: str, prior: str, state_name: str) -> None:
    state = STATES[state_name]
    partners = PRIOR_PARTNERS[prior]
    got = private_contacts(
        USERS[role].actor, candidate_access(state), [pk(partner) for partner in partners]
    )
    assert got == expect_contacts(role, state, partners)


def _viewer_cases() -> Iterator[Any]:
    for kind in THREADS:
        for state_name in STATES:
            yield pytest.param(kind, state_name, id=f"{kind}-viewers-{state_name}")


@pytest.mark.parametrize(("kind", "state_name"), list(_viewer_cases()))
def test_thread_viewers(kind: str, state_name: str) -> None:
    state = STATES[state_name]
    got = thread_viewers(candidate_access(state), thread_ref(kind))
    assert got == frozenset(pk(role) for role in audience(kind, state))


# --- edges outside the matrix -----------------------------------------------------------


@pytest.mark.parametrize("op", THREAD_OPS)
@pytest.mark.parametrize("role", ["coordinator", "member", "agent"])
def test_thread_of_another_candidate_is_not_found(role: str, op: str) -> None:
    """A thread is checked against its own candidate: another candidate's access lends none."""
    candidate = candidate_access(STATES["normal"])
    thread = thread_ref("agency", candidate_pk=OTHER_CANDIDATE_PK)
    assert label(perform(op, role, candidate, thread)) == label(NotFound)


@pytest.mark.parametrize("op", THREAD_OPS)
def test_missing_candidate_or_thread_is_not_found(op: str) -> None:
    candidate = candidate_access(STATES["normal"])
    assert label(perform(op, "coordinator", candidate, None)) == label(NotFound)
    assert label(perform(op, "coordinator", None, thread_ref("agency"))) == label(NotFound)
    actor = USERS["coordinator"].actor
    assert label(attempt(lambda: require_candidate(actor, None))[0]) == label(NotFound)


@pytest.mark.parametrize("role", ["coordinator", "member", "agent"])
def test_nothing_crosses_orgs_even_with_a_matching_pk(role: str) -> None:
    """An actor of another org never sees the candidate, whatever its pk."""
    user = USERS[role]
    twin = Actor(user.pk, OTHER_ORG, MEMBER if user.is_member else AGENCY)
    candidate = candidate_access(STATES["normal"])
    assert not can_see_candidate(twin, candidate)
    for kind in THREADS:
        thread = thread_ref(kind)
        assert not can_see_thread(twin, candidate, thread)
        assert label(attempt(partial(check_read, twin, candidate, thread))[0]) == label(NotFound)
