"""The privacy of "seen by" (server.domain.rules): who is shown whose reads, over REST
(`seen_by`) and live (`read_audience`, `team_readers`, `team_moved`)."""

from __future__ import annotations

from datetime import UTC, datetime

from server.domain.rules import (
    AGENCY,
    AGENCY_THREAD,
    MEMBER,
    PRIVATE_THREAD,
    Actor,
    CandidateAccess,
    Marker,
    ReadAudience,
    Seen,
    ThreadRef,
    read_audience,
    seen_by,
    team_moved,
    team_readers,
)

ORG = 1
COORD, MEM, OUT, ANN, ABE = 10, 11, 12, 20, 21
coord, mem, out = (Actor(pk, ORG, MEMBER) for pk in (COORD, MEM, OUT))
ann, abe = (Actor(pk, ORG, AGENCY) for pk in (ANN, ABE))
ACCESS = CandidateAccess(100, ORG, COORD, frozenset({MEM}), frozenset({ANN}))
AGENCY_T = ThreadRef(7, 100, AGENCY_THREAD, ANN, None)
PRIVATE_T = ThreadRef(8, 100, PRIVATE_THREAD, ANN, MEM)


def at(minute: int) -> datetime:
    return datetime(2026, 12, 1, 15, minute, tzinfo=UTC)


def test_a_member_sees_every_other_viewer_by_name_furthest_first() -> None:
    markers = [Marker(COORD, 40, at(1)), Marker(ANN, 42, at(2)), Marker(MEM, 41, at(3))]
    assert seen_by(mem, ACCESS, AGENCY_T, markers) == [
        Seen(ANN, False, 42, at(2)),
        Seen(COORD, False, 40, at(1)),
    ]


def test_markers_of_people_who_no_longer_see_the_thread_do_not_count() -> None:
    # OUT lost access; ABE was never linked; COORD does not see MEM's private thread.
    markers = [Marker(OUT, 50, at(1)), Marker(ABE, 50, at(1)), Marker(COORD, 50, at(1))]
    assert seen_by(mem, ACCESS, AGENCY_T, markers) == [Seen(COORD, False, 50, at(1))]
    assert seen_by(mem, ACCESS, PRIVATE_T, markers) == []
    assert seen_by(ann, ACCESS, AGENCY_T, markers[:2]) == []


def test_an_agency_user_sees_the_team_s_furthest_read_and_when_it_was_first_reached() -> None:
    markers = [
        Marker(ANN, 45, at(9)),  # its own: never shown
        Marker(COORD, 42, at(5)),
        Marker(MEM, 42, at(3)),
        Marker(OUT, 44, at(1)),  # no access any more
    ]
    assert seen_by(ann, ACCESS, AGENCY_T, markers) == [Seen(None, True, 42, at(3))]


def test_a_team_marker_without_a_time_moved_before_any_timed_one() -> None:
    markers = [Marker(COORD, 42, at(5)), Marker(MEM, 42, None)]
    assert seen_by(ann, ACCESS, AGENCY_T, markers) == [Seen(None, True, 42, None)]
    assert seen_by(ann, ACCESS, AGENCY_T, [Marker(COORD, 30, None), Marker(MEM, 31, at(2))]) == [
        Seen(None, True, 31, at(2))
    ]


def test_an_agency_user_sees_nothing_before_a_member_read_and_in_private_only_its_member() -> None:
    assert seen_by(ann, ACCESS, AGENCY_T, [Marker(ANN, 42, at(1))]) == []
    markers = [Marker(COORD, 50, at(1)), Marker(MEM, 42, at(2))]
    assert seen_by(ann, ACCESS, PRIVATE_T, markers) == [Seen(None, True, 42, at(2))]


def test_a_caller_who_does_not_see_the_thread_is_shown_nothing() -> None:
    markers = [Marker(ANN, 42, at(1)), Marker(MEM, 42, at(1))]
    assert seen_by(out, ACCESS, AGENCY_T, markers) == []
    assert seen_by(abe, ACCESS, AGENCY_T, markers) == []
    assert seen_by(coord, ACCESS, PRIVATE_T, markers) == []


def test_live_reads_name_the_reader_to_members_and_only_the_team_to_the_agency_user() -> None:
    assert read_audience(ACCESS, AGENCY_T, mem) == ReadAudience(
        frozenset({COORD}), frozenset({ANN})
    )
    assert read_audience(ACCESS, AGENCY_T, ann) == ReadAudience(
        frozenset({COORD, MEM}), frozenset()
    )
    assert read_audience(ACCESS, PRIVATE_T, mem) == ReadAudience(frozenset(), frozenset({ANN}))
    assert read_audience(ACCESS, PRIVATE_T, ann) == ReadAudience(frozenset({MEM}), frozenset())
    unlinked = CandidateAccess(100, ORG, COORD, frozenset({MEM}), frozenset())
    assert read_audience(unlinked, AGENCY_T, mem) == ReadAudience(frozenset({COORD}), frozenset())
    assert read_audience(ACCESS, AGENCY_T, mem).without_team() == ReadAudience(
        frozenset({COORD}), frozenset()
    )


def test_the_agency_user_hears_of_a_member_s_read_only_when_the_team_s_furthest_moves() -> None:
    assert team_readers(ACCESS, AGENCY_T, mem) == frozenset({COORD})
    assert team_readers(ACCESS, PRIVATE_T, mem) == frozenset()
    assert team_moved(42, None)
    assert team_moved(42, 41)
    assert not team_moved(42, 42)
    assert not team_moved(40, 42)
