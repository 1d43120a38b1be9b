"""The channels' memory of their last events (`RecentEvents`) and the hub's resumes from it,
with an in-memory event log: what memory answers and what it leaves to the log, who sees a
replayed event, and how many reads a batch costs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from channels import envelope, protocol
from channels import hub as hub_module
from channels.backends.memory import MemoryBroker
from channels.hub import Hub, LoggedEvent, RecentEvents, SubscribeRequest, ThreadFacts
from tests.support.hub import (
    AGENT_PK,
    USER_PK,
    FakeSource,
    connect,
    frame,
    member_rule,
    running_hub,
    sent,
)

CAND, OTHER_CAND = 5, 6
AGENCY_THREAD = ThreadFacts(1, "agency", AGENT_PK, None)
PRIVATE_THREAD = ThreadFacts(2, "private", AGENT_PK, 77)  # another member's


def event(
    seq: int, thread: ThreadFacts | None = None, message_id: int | None = None
) -> LoggedEvent:
    thread_id = thread.id if thread else AGENCY_THREAD.id
    return LoggedEvent(seq, frozenset(), frame(seq, thread_id, message_id), thread)


def deleted(seq: int, message_id: int) -> LoggedEvent:
    raw = protocol.candidate_event(protocol.MESSAGE_DELETED, "c5", seq, 1, message_id, None)
    return LoggedEvent(seq, frozenset(), raw)


def filled(*seqs: int) -> RecentEvents:
    recent = RecentEvents()
    for seq in seqs:
        recent.append(event(seq))
    return recent


# --- the memory of one channel ------------------------------------------------------------


def test_memory_answers_only_what_it_holds_with_no_hole() -> None:
    recent = filled(4, 5, 6)
    assert recent.since(6, 6) == []  # nothing missed
    assert [e.seq for e in recent.since(3, 6) or []] == [4, 5, 6]
    assert [e.seq for e in recent.since(5, 6) or []] == [6]
    assert recent.since(2, 6) is None  # seq 3 is not here
    assert recent.since(7, 6) is None  # beyond the channel's seq
    assert recent.since(3, 7) is None  # the channel went further than memory
    assert RecentEvents().since(0, 0) == [] and RecentEvents().since(0, 2) is None


def test_memory_is_bounded_by_count_and_by_size(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hub_module, "RECENT_EVENTS", 3)
    recent = filled(*range(1, 8))
    assert len(recent) == 3 and recent.since(3, 7) is None
    assert [e.seq for e in recent.since(4, 7) or []] == [5, 6, 7]
    monkeypatch.setattr(hub_module, "RECENT_EVENTS", 100)
    monkeypatch.setattr(hub_module, "RECENT_CHARS", len(event(1).frame) * 2)
    recent = filled(1, 2, 3)
    assert len(recent) == 2 and [e.seq for e in recent.since(1, 3) or []] == [2, 3]


def test_an_event_after_a_hole_starts_memory_again() -> None:
    recent = filled(1, 2)
    recent.append(event(4))
    assert len(recent) == 1 and recent.since(1, 4) is None and recent.since(3, 4) is not None


def test_a_deletion_leaves_its_message_as_a_tombstone_in_memory() -> None:
    recent = filled(1, 2, 3)
    recent.append(deleted(4, message_id=2))
    frames = [orjson.loads(e.frame) for e in recent.since(0, 4) or []]
    assert [f["message"]["deleted"] for f in frames[:3]] == [False, True, False]
    assert frames[1]["message"]["body"] is None and frames[0]["message"]["body"] == "m1"
    assert frames[3]["type"] == "message.deleted"
    recent.append(deleted(5, message_id=99))  # its creation is no longer held: nothing to do
    assert len(recent) == 5


def test_memory_is_seeded_only_when_empty_and_up_to_the_channels_seq() -> None:
    recent = RecentEvents()
    recent.seed([event(3), event(4)], last_seq=5)  # does not reach the channel's seq
    assert len(recent) == 0
    recent.seed([event(3), event(4), event(5), event(6)], last_seq=5)  # 6 is not dispatched
    assert [e.seq for e in recent.since(2, 5) or []] == [3, 4, 5]
    recent.seed([event(1)], last_seq=1)
    assert len(recent) == 3


def test_a_frames_head_tells_its_thread() -> None:
    assert protocol.event_thread_id(frame(3, thread_id=42)) == 42
    assert protocol.event_thread_id(deleted(4, 7).frame) == 1
    assert protocol.event_thread_id(protocol.pong(1)) is None
    assert protocol.deleted_message_id(frame(3)) is None
    assert protocol.tombstone(frame(3, message_id=31), 3) is None  # "id":3 is in "id":31
    assert protocol.tombstone(deleted(4, 7).frame, 7) is None


def test_a_frame_names_its_form_by_its_op_and_the_batch_by_its_list() -> None:
    assert protocol.op({"op": "subscribe", "candidate": "c1"}) == "subscribe"
    assert protocol.op({"op": "subscribe", "candidates": []}) == protocol.SUBSCRIBE_BATCH
    assert protocol.op({"op": "ping", "candidates": []}) == "ping"
    assert protocol.op(["subscribe"]) is None


# --- resumes through the hub --------------------------------------------------------------


@pytest.fixture
async def hub_and_source() -> AsyncIterator[tuple[Hub, FakeSource]]:
    source = FakeSource()
    async with running_hub(source) as hub:
        yield hub, source


async def publish(hub: Hub, candidate_pk: int, logged: LoggedEvent) -> None:
    """As another process publishes it: the thread's facts do not travel with it."""
    message = envelope.EventEnvelope(candidate_pk, logged.seq, logged.audience, logged.frame)
    await hub.on_broker_message(envelope.candidate_channel(candidate_pk), envelope.encode(message))


async def follow_live(hub: Hub, user_pk: int, *candidates: int) -> None:
    """A socket that keeps these candidates followed in this process."""
    holder = connect(user_pk)
    await hub.register(holder)
    requests = [SubscribeRequest(c, f"c{c}", None, member_rule(user_pk)) for c in candidates]
    await hub.subscribe_many(holder, requests)


async def test_a_resume_from_memory_decides_by_the_thread_not_the_audience(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    await follow_live(hub, 11, CAND)
    # Written while USER_PK was in no audience (it was added to the candidate since).
    await publish(hub, CAND, source.add(CAND, event(1, AGENCY_THREAD)))
    await publish(hub, CAND, source.add(CAND, event(2, PRIVATE_THREAD)))
    await publish(hub, CAND, source.add(CAND, event(3, AGENCY_THREAD)))
    conn = connect()
    await hub.register(conn)
    result = await hub.subscribe(conn, CAND, "c5", 0, member_rule(USER_PK))
    assert (result.seq, result.reset, result.replayed) == (3, False, 2)
    assert [f["seq"] for f in sent(conn)] == [1, 3]
    assert source.cursors == []  # nothing read from the log
    assert source.thread_reads == [[1, 2]]  # the threads, once for both

    # The next resume knows the threads already: no read at all.
    again = connect()
    await hub.register(again)
    await hub.subscribe(again, CAND, "c5", 1, member_rule(USER_PK))
    assert [f["seq"] for f in sent(again)] == [3] and source.thread_reads == [[1, 2]]
    # The private thread's own member sees it.
    member = connect(77)
    await hub.register(member)
    await hub.subscribe(member, CAND, "c5", 0, member_rule(77))
    assert [f["seq"] for f in sent(member)] == [1, 2, 3]


async def test_an_event_of_a_thread_gone_is_not_replayed(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, _ = hub_and_source
    await follow_live(hub, 11, CAND)
    await publish(hub, CAND, event(1, ThreadFacts(9, "agency", AGENT_PK, None)))  # not in the log
    conn = connect()
    await hub.register(conn)
    result = await hub.subscribe(conn, CAND, "c5", 0, member_rule(USER_PK))
    assert (result.seq, result.replayed) == (1, 0) and sent(conn) == []


async def test_a_batch_reads_the_log_once_for_the_candidates_memory_does_not_cover(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    for seq in (1, 2):
        source.append(CAND, seq, {USER_PK, 11})
        source.append(OTHER_CAND, seq, {USER_PK, 11})
    await follow_live(hub, 11, CAND)  # opened at seq 2: its memory starts there
    await publish(hub, CAND, source.append(CAND, 3, {USER_PK, 11}))
    reads: list[dict[int, int]] = []
    log_reads = source.log_reads

    async def noting(pks: list[int], after: dict[int, int], limit: int) -> hub_module.LogReads:
        reads.append(after)
        return await log_reads(pks, after, limit)

    source.log_reads = noting  # type: ignore[method-assign]
    conn = connect()
    await hub.register(conn)
    rule = member_rule(USER_PK)
    results = await hub.subscribe_many(
        conn,
        [
            SubscribeRequest(CAND, "c5", 2, rule),  # in memory
            SubscribeRequest(OTHER_CAND, "c6", 0, rule),  # opened now: from the log
        ],
    )
    assert [(r.seq, r.reset, r.replayed) for r in results] == [(3, False, 1), (2, False, 2)]
    assert reads == [{OTHER_CAND: 0}]
    assert [(f["candidate"], f["seq"]) for f in sent(conn)] == [("c5", 3), ("c5", 1), ("c5", 2)]
    # The log read filled the new channel's memory: the next resume reads nothing.
    again = connect()
    await hub.register(again)
    await hub.subscribe(again, OTHER_CAND, "c6", 0, rule)
    assert reads == [{OTHER_CAND: 0}] and len(sent(again)) == 2


async def test_a_replay_stops_for_a_subscriber_whose_access_is_revoked_meanwhile(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    await follow_live(hub, 11, CAND)
    for seq in range(1, 5):
        await publish(hub, CAND, source.append(CAND, seq, {USER_PK, 11}))
    conn = connect()
    await hub.register(conn)

    def revoke_after_the_first(_thread: ThreadFacts) -> bool:
        revoked = envelope.RevokedEnvelope(CAND, frozenset({USER_PK}), erased=False)
        hub._on_revoked(revoked)  # as the broker delivers it, while the replay goes on
        return True

    await hub.subscribe(conn, CAND, "c5", 0, revoke_after_the_first)
    frames = sent(conn)
    assert [f["type"] for f in frames] == ["unsubscribed"]  # no event went out after it
    assert CAND not in conn.subscriptions


async def test_a_batch_that_fails_to_open_a_channel_follows_none_of_its_candidates(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, _ = hub_and_source
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    subscribe = broker.subscribe

    async def refuse_the_second(channel: str) -> None:
        if channel == envelope.candidate_channel(OTHER_CAND):
            raise ConnectionError("broker unreachable")
        await subscribe(channel)

    broker.subscribe = refuse_the_second  # type: ignore[method-assign]
    conn = connect()
    await hub.register(conn)
    rule = member_rule(USER_PK)
    with pytest.raises(ConnectionError):
        await hub.subscribe_many(
            conn,
            [SubscribeRequest(CAND, "c5", 0, rule), SubscribeRequest(OTHER_CAND, "c6", 0, rule)],
        )
    assert conn.subscriptions == {} and hub.channels == {}
    assert broker._channels == {envelope.UNREAD_CHANNEL}
