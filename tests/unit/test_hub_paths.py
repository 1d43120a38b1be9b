"""The hub's less travelled paths, with an in-memory event log and the in-process broker:
replays longer than a batch, replays that fail or are given up on halfway, broker messages
for candidates nobody here follows, closing with a catch-up in flight, unread re-reads
that fail or whose user leaves meanwhile, and reads ("seen by") told to whom they are meant."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from datetime import UTC, datetime

import orjson
import pytest

from channels import envelope
from channels import hub as hub_module
from channels.backends.memory import MemoryBroker, MemoryPresence
from channels.connection import Connection
from channels.hub import Hub, LoggedEvent
from channels.unread import ThreadSnapshot
from server.domain import fanout
from server.domain.events import ThreadRead
from tests.support.hub import (
    ORG,
    USER_PK,
    FakeSource,
    connect,
    member_rule,
    running_hub,
    sent,
)

PEER_PK, OUTSIDER_PK = 11, 12
CAND, OTHER_CAND, THREAD = 5, 6, 7


@pytest.fixture
async def hub_and_source(monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Hub, FakeSource]]:
    # Unread batches go out as soon as they are coalesced: no test waits out the interval.
    monkeypatch.setattr(hub_module, "UNREAD_INTERVAL_SECONDS", 0.0)
    source = FakeSource()
    async with running_hub(source) as hub:
        yield hub, source


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Waits for `condition`, polling; fails after `timeout` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail("The condition was not met in time.")
        await asyncio.sleep(0.005)


def subscribed_on_broker(hub: Hub, candidate_pk: int) -> bool:
    broker = hub.broker
    assert isinstance(broker, MemoryBroker)
    return envelope.candidate_channel(candidate_pk) in broker._channels


async def publish_event(hub: Hub, candidate_pk: int, event: LoggedEvent) -> None:
    message = envelope.EventEnvelope(candidate_pk, event.seq, event.audience, event.frame)
    await hub.on_broker_message(envelope.candidate_channel(candidate_pk), envelope.encode(message))


# --- replay -------------------------------------------------------------------------------


async def test_a_replay_longer_than_a_batch_sends_every_visible_event_in_order(
    hub_and_source: tuple[Hub, FakeSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, source = hub_and_source
    monkeypatch.setattr(hub_module, "REPLAY_BATCH", 3)
    hidden = {4, 7}  # events of threads this user does not see
    for seq in range(1, 9):
        source.append(CAND, seq, {PEER_PK} if seq in hidden else {USER_PK, PEER_PK})
    conn = connect()
    await hub.register(conn)
    result = await hub.subscribe(conn, CAND, "c5", 0, member_rule(USER_PK))
    assert (result.seq, result.reset, result.replayed) == (8, False, 6)
    assert source.cursors == [0, 3, 6]  # batch after batch, from where the last one ended
    assert [f["seq"] for f in sent(conn)] == [1, 2, 3, 5, 6, 8]
    # Live from there: the next event follows with no gap and no duplicate.
    await publish_event(hub, CAND, source.append(CAND, 9, {USER_PK}))
    assert [f["seq"] for f in sent(conn)][-1:] == [9] and len(sent(conn)) == 7


async def test_a_replay_that_fails_midway_leaves_no_subscription_behind(
    hub_and_source: tuple[Hub, FakeSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, source = hub_and_source
    monkeypatch.setattr(hub_module, "REPLAY_BATCH", 3)
    for seq in range(1, 8):
        source.append(CAND, seq, {USER_PK})
    source.fail_after_batches = 1  # the second batch cannot be read
    conn = connect()
    await hub.register(conn)
    with pytest.raises(OSError, match="database unreachable"):
        await hub.subscribe(conn, CAND, "c5", 0, member_rule(USER_PK))
    assert conn.subscriptions == {}
    assert CAND not in hub.channels and not subscribed_on_broker(hub, CAND)
    # The client retries once the database is back, from the seq it last received.
    source.fail_after_batches = None
    last = sent(conn)[-1]["seq"]
    assert last == 3
    result = await hub.subscribe(conn, CAND, "c5", 3, member_rule(USER_PK))
    assert (result.seq, result.replayed) == (7, 4)
    assert [f["seq"] for f in sent(conn)] == [1, 2, 3, 4, 5, 6, 7]
    assert subscribed_on_broker(hub, CAND)


async def test_a_failed_replay_keeps_the_channel_of_the_other_subscribers(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    for seq in (1, 2):
        source.append(CAND, seq, {USER_PK, PEER_PK})
    peer = connect(PEER_PK)
    await hub.register(peer)
    await hub.subscribe(peer, CAND, "c5", None, member_rule(PEER_PK))  # live, no replay
    source.fail_after_batches = 0
    conn = connect()
    await hub.register(conn)
    with pytest.raises(OSError):
        await hub.subscribe(conn, CAND, "c5", 0, member_rule(USER_PK))
    assert conn.subscriptions == {} and CAND in hub.channels
    assert [s.connection for s in hub.channels[CAND].subscribers] == [peer]
    await publish_event(hub, CAND, source.append(CAND, 3, {USER_PK, PEER_PK}))
    assert [f["seq"] for f in sent(peer)] == [3] and sent(conn) == []


async def test_a_replay_given_up_on_while_the_client_reads_slowly_leaves_nothing_behind(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    for seq in range(1, 5):
        source.append(CAND, seq, {USER_PK})
    conn = connect(send_queue_frames=1)  # the replay waits for room after one frame
    await hub.register(conn)
    subscribing = asyncio.create_task(hub.subscribe(conn, CAND, "c5", 0, member_rule(USER_PK)))
    await eventually(lambda: conn.queued == 1 and CAND in conn.subscriptions)
    subscribing.cancel()  # the socket closed (or the op timed out) mid-replay
    with pytest.raises(asyncio.CancelledError):
        await subscribing
    assert conn.subscriptions == {}
    await eventually(lambda: CAND not in hub.channels)
    assert not subscribed_on_broker(hub, CAND)


# --- broker messages for candidates nobody here follows -----------------------------------


async def test_events_and_revocations_for_candidates_not_followed_here_are_dropped(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    conn = connect()
    await hub.register(conn)
    await hub.subscribe(conn, CAND, "c5", None, member_rule(USER_PK))
    # Another process's candidate (this one's broker may still deliver it just after an
    # unsubscribe), and garbage on the wire: nothing is opened, sent or read.
    await publish_event(hub, OTHER_CAND, source.append(OTHER_CAND, 1, {USER_PK}))
    revoked = envelope.RevokedEnvelope(OTHER_CAND, frozenset(), erased=True)
    await hub.on_broker_message(envelope.candidate_channel(OTHER_CAND), envelope.encode(revoked))
    await hub.on_broker_message(envelope.candidate_channel(CAND), b"\x00 not an envelope")
    assert set(hub.channels) == {CAND} and source.cursors == []
    assert sent(conn) == [] and CAND in conn.subscriptions
    # The followed candidate still works.
    await publish_event(hub, CAND, source.append(CAND, 1, {USER_PK}))
    assert [f["seq"] for f in sent(conn)] == [1]


async def test_a_duplicate_event_is_dispatched_once(hub_and_source: tuple[Hub, FakeSource]) -> None:
    hub, source = hub_and_source
    conn = connect()
    await hub.register(conn)
    await hub.subscribe(conn, CAND, "c5", None, member_rule(USER_PK))
    event = source.append(CAND, 1, {USER_PK})
    await publish_event(hub, CAND, event)
    await publish_event(hub, CAND, event)  # the same publish, delivered again
    assert [f["seq"] for f in sent(conn)] == [1]
    assert hub.channels[CAND].pending == {}


async def test_an_event_ahead_of_a_gap_waits_for_the_gap_to_be_filled_from_the_log(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    conn = connect()
    await hub.register(conn)
    await hub.subscribe(conn, CAND, "c5", None, member_rule(USER_PK))
    source.append(CAND, 1, {USER_PK})  # its publish is lost (or still on its way)
    await publish_event(hub, CAND, source.append(CAND, 2, {USER_PK}))
    assert sent(conn) == []  # held: seq 1 comes first
    await eventually(lambda: len(sent(conn)) == 2)
    assert [f["seq"] for f in sent(conn)] == [1, 2] and source.cursors == [0]


async def test_a_catch_up_longer_than_a_batch_reads_batch_after_batch(
    hub_and_source: tuple[Hub, FakeSource], monkeypatch: pytest.MonkeyPatch
) -> None:
    hub, source = hub_and_source
    monkeypatch.setattr(hub_module, "REPLAY_BATCH", 3)
    conn = connect()
    await hub.register(conn)
    await hub.subscribe(conn, CAND, "c5", None, member_rule(USER_PK))
    for seq in range(1, 8):
        source.append(CAND, seq, {USER_PK})  # their publishes are lost
    await hub.on_broker_reconnect()  # every channel is caught up from the log
    await eventually(lambda: len(sent(conn)) == 7)
    assert [f["seq"] for f in sent(conn)] == list(range(1, 8))
    assert source.cursors == [0, 3, 6]


async def test_a_catch_up_that_cannot_read_the_log_leaves_the_channel_to_the_sweep(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    conn = connect()
    await hub.register(conn)
    await hub.subscribe(conn, CAND, "c5", None, member_rule(USER_PK))
    source.append(CAND, 1, {USER_PK})
    source.fail_after_batches = 0  # the database is unreachable
    await hub.on_broker_reconnect()
    filling = hub.channels[CAND].filling
    assert filling is not None
    await asyncio.wait({filling}, timeout=5)
    assert filling.done() and filling.exception() is None and sent(conn) == []
    # Once the log answers again, the next catch-up delivers what was missed.
    source.fail_after_batches = None
    await hub.on_broker_reconnect()
    await eventually(lambda: len(sent(conn)) == 1)
    assert CAND in hub.channels


# --- closing ------------------------------------------------------------------------------


async def test_closing_cancels_a_catch_up_in_flight() -> None:
    source = FakeSource()
    hub = Hub(MemoryBroker(), MemoryPresence(), source)
    await hub.start()
    conn = connect()
    await hub.register(conn)
    await hub.subscribe(conn, CAND, "c5", None, member_rule(USER_PK))
    source.stalling = True  # the event log stops answering
    await hub.on_broker_reconnect()  # every channel is caught up from the log
    filling = hub.channels[CAND].filling
    assert filling is not None
    await hub.close()
    done, _ = await asyncio.wait({filling}, timeout=5)
    assert filling in done and filling.cancelled()


# --- unread re-reads ----------------------------------------------------------------------


def unread_frames(conn: Connection) -> list[dict[str, object]]:
    return [f for f in sent(conn) if str(f["type"]).startswith("unread")]


async def test_a_user_who_leaves_while_the_counts_are_read_again_is_forgotten(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, source = hub_and_source
    first, second = (ORG, USER_PK), (ORG, PEER_PK)
    for key in (first, second):
        source.rows[key] = [ThreadSnapshot(THREAD, CAND, "c5", 2, 9, 0)]
    conns = {first: connect(USER_PK), second: connect(PEER_PK)}
    for conn in conns.values():
        await hub.register(conn)
    assert sorted(source.reads) == [first, second]
    left: list[tuple[int, int]] = []

    async def the_other_user_leaves(reading: Connection) -> None:
        if not left:
            other = second if reading.user_key == first else first
            left.append(other)
            await hub.unregister(conns[other])

    source.on_read = the_other_user_leaves
    await hub.on_broker_reconnect()  # both users' counts are read again, one after the other
    await eventually(lambda: bool(left))  # whichever user is read first, the other leaves
    (gone,) = left
    (stayed,) = [key for key in conns if key != gone]
    await eventually(
        lambda: any(f["type"] == "unread.summary" for f in unread_frames(conns[stayed]))
    )
    assert source.reads[2:] == [stayed]  # the user who left is not read for nobody
    assert not hub.unread.knows(gone) and gone not in hub.unread.stale and gone not in hub.users


async def test_a_failed_reread_keeps_the_user_stale_until_the_next_change_reads_again(
    hub_and_source: tuple[Hub, FakeSource], caplog: pytest.LogCaptureFixture
) -> None:
    hub, source = hub_and_source
    user = (ORG, USER_PK)
    source.rows[user] = [ThreadSnapshot(THREAD, CAND, "c5", 3, 9, 0)]
    conn = connect()
    await hub.register(conn)
    access_changed = envelope.encode(envelope.UnreadEnvelope(ORG, CAND, 0, frozenset({USER_PK})))
    source.read_error = OSError("database unreachable")
    with caplog.at_level(logging.WARNING, "agency_messaging.hub"):
        await hub.on_broker_message(envelope.UNREAD_CHANNEL, access_changed)
        await eventually(lambda: len(source.reads) == 2 and user in hub.unread.stale)
    assert "Unread counts could not be read (OSError)" in caplog.text
    assert unread_frames(conn) == []  # nothing is reported from counts not read
    # The database is back, and the access was revoked meanwhile: the next change reads
    # again and reports the thread gone.
    source.read_error = None
    source.rows[user] = []
    await hub.on_broker_message(envelope.UNREAD_CHANNEL, access_changed)
    await eventually(lambda: bool(unread_frames(conn)))
    assert [(f["thread"], f["unread"], f["total_unread"]) for f in unread_frames(conn)] == [
        (THREAD, 0, 0)
    ]
    assert user not in hub.unread.stale


async def test_presence_renewals_that_fail_are_logged_and_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(hub_module, "PRESENCE_RENEW_SECONDS", 0.01)
    renewals: list[list[tuple[tuple[int, int], str]]] = []

    class FlakyPresence(MemoryPresence):
        async def renew(self, connections: list[tuple[tuple[int, int], str]]) -> None:
            renewals.append(connections)
            if len(renewals) == 1:
                raise ConnectionError("presence store unreachable")

    async with running_hub(FakeSource(), FlakyPresence()) as hub:
        conn = connect()
        await hub.register(conn)
        with caplog.at_level(logging.WARNING, "agency_messaging.hub"):
            await eventually(lambda: len(renewals) >= 3)
        assert "Presence leases could not be renewed" in caplog.text
        assert ((ORG, USER_PK), conn.id) in renewals[-1]  # the loop went on after the failure


# --- thread.read ("seen by") ----------------------------------------------------------------


async def test_a_read_reaches_each_subscriber_meant_with_its_frame_and_nobody_else(
    hub_and_source: tuple[Hub, FakeSource],
) -> None:
    hub, _ = hub_and_source
    named, team, outsider = connect(), connect(PEER_PK), connect(OUTSIDER_PK)
    for conn in (named, team, outsider):
        await hub.register(conn)
        await hub.subscribe(conn, CAND, "c5", None, member_rule(conn.user_pk))
    message = envelope.ReadEnvelope(
        CAND, frozenset({USER_PK}), frozenset({PEER_PK}), '{"who":"named"}', '{"who":"team"}'
    )
    payload = envelope.encode(message)
    assert envelope.decode(payload) == message
    await hub.on_broker_message(envelope.candidate_channel(CAND), payload)
    # Not for a candidate followed here: dropped, with nothing opened.
    elsewhere = envelope.ReadEnvelope(OTHER_CAND, frozenset({USER_PK}), frozenset(), "{}", "")
    await hub.on_broker_message(envelope.candidate_channel(OTHER_CAND), envelope.encode(elsewhere))
    assert sent(named) == [{"who": "named"}] and sent(team) == [{"who": "team"}]
    assert sent(outsider) == [] and set(hub.channels) == {CAND}


def test_a_read_nobody_else_sees_is_not_published() -> None:
    read = ThreadRead(
        CAND, "c5", THREAD, {"id": "u"}, 42, datetime.now(UTC), frozenset(), frozenset()
    )
    assert fanout.to_envelopes([read]) == []
    (item,) = fanout.to_envelopes([replace(read, named=frozenset({USER_PK}))])
    decoded = envelope.decode(item[1])
    assert isinstance(decoded, envelope.ReadEnvelope)
    assert decoded.team_frame == "" and orjson.loads(decoded.named_frame)["reader"] == {"id": "u"}
