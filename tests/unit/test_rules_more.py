"""Rules added beside the matrix of test_rules.py: which agency users a user is shown on a
candidate (GET /api/v1/candidates/{cand}, `agency_users`; docs/api.md), and the thread of
an agency user unlinked from the candidate (readable, but closed to posts)."""

from __future__ import annotations

import pytest

from server.domain.errors import Forbidden
from server.domain.rules import (
    AGENCY,
    AGENCY_THREAD,
    MEMBER,
    PRIVATE_THREAD,
    Actor,
    CandidateAccess,
    ThreadRef,
    can_see_thread,
    check_post,
    check_read,
    visible_agency_users,
)

ORG, OTHER_ORG = 1, 2
COORDINATOR, LISTED, OUTSIDER = 10, 11, 12
LINKED, ALSO_LINKED, UNLINKED = 20, 21, 22

ACCESS = CandidateAccess(
    pk=100,
    org_pk=ORG,
    coordinator_pk=COORDINATOR,
    member_pks=frozenset({LISTED}),
    agency_user_pks=frozenset({LINKED, ALSO_LINKED}),
)


@pytest.mark.parametrize(
    ("actor", "expected"),
    [
        pytest.param(Actor(COORDINATOR, ORG, MEMBER), {LINKED, ALSO_LINKED}, id="coordinator"),
        pytest.param(Actor(LISTED, ORG, MEMBER), {LINKED, ALSO_LINKED}, id="listed-member"),
        pytest.param(Actor(LINKED, ORG, AGENCY), {LINKED}, id="linked-agency-user-sees-itself"),
        pytest.param(Actor(ALSO_LINKED, ORG, AGENCY), {ALSO_LINKED}, id="other-linked-agency"),
        pytest.param(Actor(OUTSIDER, ORG, MEMBER), set(), id="member-without-access"),
        pytest.param(Actor(UNLINKED, ORG, AGENCY), set(), id="unlinked-agency-user"),
        pytest.param(Actor(LISTED, OTHER_ORG, MEMBER), set(), id="member-of-another-org"),
        pytest.param(Actor(LINKED, OTHER_ORG, AGENCY), set(), id="agency-of-another-org"),
    ],
)
def test_visible_agency_users(actor: Actor, expected: set[int]) -> None:
    assert visible_agency_users(actor, ACCESS) == frozenset(expected)


def test_a_member_is_shown_no_agency_user_when_none_is_linked() -> None:
    bare = CandidateAccess(100, ORG, COORDINATOR, frozenset(), frozenset())
    assert visible_agency_users(Actor(COORDINATOR, ORG, MEMBER), bare) == frozenset()


def test_an_agency_user_never_sees_the_other_agency_users() -> None:
    """Agency users of one candidate may be competitors: each sees only itself."""
    for pk in ACCESS.agency_user_pks:
        shown = visible_agency_users(Actor(pk, ORG, AGENCY), ACCESS)
        assert shown == {pk} and not shown & (ACCESS.agency_user_pks - {pk})


UNLINKED_AGENCY_THREAD = ThreadRef(1, ACCESS.pk, AGENCY_THREAD, UNLINKED, None)
UNLINKED_PRIVATE_THREAD = ThreadRef(2, ACCESS.pk, PRIVATE_THREAD, UNLINKED, LISTED)


@pytest.mark.parametrize("member", [COORDINATOR, LISTED], ids=["coordinator", "listed-member"])
def test_members_read_an_unlinked_agency_users_thread_but_may_not_post(member: int) -> None:
    actor = Actor(member, ORG, MEMBER)
    assert can_see_thread(actor, ACCESS, UNLINKED_AGENCY_THREAD)
    check_read(actor, ACCESS, UNLINKED_AGENCY_THREAD)
    with pytest.raises(Forbidden, match="no longer has access to the candidate"):
        check_post(actor, ACCESS, UNLINKED_AGENCY_THREAD)


def test_a_private_thread_with_an_unlinked_agency_user_takes_no_posts_either() -> None:
    with pytest.raises(Forbidden, match="no longer has access to the candidate"):
        check_post(Actor(LISTED, ORG, MEMBER), ACCESS, UNLINKED_PRIVATE_THREAD)


def test_a_linked_agency_users_thread_takes_posts_from_both_sides() -> None:
    thread = ThreadRef(3, ACCESS.pk, AGENCY_THREAD, LINKED, None)
    for actor in (Actor(LISTED, ORG, MEMBER), Actor(LINKED, ORG, AGENCY)):
        check_post(actor, ACCESS, thread)
