"""Edges of the real-time layer that need no server: broker envelopes that do not parse, the
backend table, the in-process broker's listener, a connection's paced replay puts, the unread
tracker's rarer paths, and the Redis broker's paths that never reach Redis."""

from __future__ import annotations

import asyncio
import logging
import socket

import orjson
import pytest

from channels import envelope
from channels.backends import create_broker, create_presence
from channels.backends import redis as redis_backend
from channels.backends.memory import MemoryBroker, MemoryPresence
from channels.backends.redis import RedisBroker, RedisPresence
from channels.connection import Connection, ConnectionLimits
from channels.interfaces import BrokerError, BrokerUnavailable, UserKey
from channels.protocol import CLOSE_TOO_SLOW
from channels.unread import ThreadSnapshot, UnreadTracker

ORG, READER = 1, 10
USER = (ORG, READER)
CAND, THREAD, OTHER_THREAD = 5, 7, 8


# --- envelopes --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"not json",
        b"[1, 2]",  # a header that is not an object
        b'{"c": 1, "s": 2}',  # no kind
        b'{"k": "e", "c": 1}',  # an event without its seq and audience
        b'{"k": "e", "c": 1, "s": 2, "a": 3}',  # an audience that is not a list
        b'{"k": "e", "c": 1, "s": 2, "a": [3]}\n\xff\xfe',  # a frame that is not UTF-8
        b'{"k": "u", "o": 1, "c": 2, "t": 3}',  # unread without its users
        b'{"k": "z", "c": 1}',  # a kind from a newer (or foreign) publisher
    ],
)
def test_a_malformed_broker_payload_decodes_to_nothing(payload: bytes) -> None:
    assert envelope.decode(payload) is None


def test_well_formed_envelopes_still_decode() -> None:
    event = envelope.EventEnvelope(3, 4, frozenset({10, 11}), '{"type":"x"}')
    revoked = envelope.RevokedEnvelope(3, frozenset({10}), erased=True)
    assert envelope.decode(envelope.encode(event)) == event
    assert envelope.decode(envelope.encode(revoked)) == revoked


# --- the backend table ------------------------------------------------------------------


def test_an_unknown_broker_scheme_is_a_clear_broker_error() -> None:
    with pytest.raises(BrokerError, match="no broker for the URL scheme 'kafka'"):
        create_broker("kafka://broker.example:9092")


async def test_known_schemes_pick_their_backends() -> None:
    assert isinstance(create_broker("memory://"), MemoryBroker)
    # Presence follows the broker; a scheme without a presence backend stays in-process.
    assert isinstance(create_presence("memory://"), MemoryPresence)
    assert isinstance(create_presence("kafka://broker.example:9092"), MemoryPresence)
    presence = create_presence("redis://127.0.0.1:1/0")  # constructing never connects
    assert isinstance(presence, RedisPresence)
    await presence.close()


# --- the in-process broker --------------------------------------------------------------


async def test_a_failing_handler_is_logged_and_the_listener_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    broker = MemoryBroker()
    received: list[bytes] = []
    second = asyncio.Event()

    async def on_message(channel: str, payload: bytes) -> None:
        if payload == b"boom":
            raise ValueError("a handler bug")
        received.append(payload)
        second.set()

    async def on_reconnect() -> None:
        return None

    await broker.start(on_message, on_reconnect)
    try:
        await broker.subscribe("c")
        await broker.publish("c", b"boom")
        await broker.publish("unsubscribed", b"dropped")
        await broker.publish("c", b"ok")
        await asyncio.wait_for(second.wait(), 5)
        assert received == [b"ok"]
        assert "could not be dispatched" in caplog.text
        await broker.ping()  # the listener survived the failure
    finally:
        await broker.close()


async def test_the_in_process_broker_is_unready_until_started_and_after_closing() -> None:
    broker = MemoryBroker()
    with pytest.raises(ConnectionError, match="not running"):
        await broker.ping()

    async def ignore(channel: str, payload: bytes) -> None:
        return None

    async def on_reconnect() -> None:
        return None

    await broker.start(ignore, on_reconnect)
    await broker.ping()
    await broker.close()
    with pytest.raises(ConnectionError, match="not running"):
        await broker.ping()


# --- a connection's paced puts ----------------------------------------------------------


async def test_a_replay_put_waits_for_the_writer_to_make_room() -> None:
    conn = Connection(ORG, READER, "member", ConnectionLimits(send_queue_frames=2))
    conn.send("a")
    conn.send("b")
    putting = asyncio.create_task(conn.send_wait("c"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not putting.done() and conn.queued == 2
    assert await conn.next_frames() == ["a", "b"]  # the writer drains the queue
    await asyncio.wait_for(putting, 5)
    assert conn.queued == 1 and conn.close_code is None
    assert await conn.next_frames() == ["c"]


async def test_a_replay_put_that_times_out_closes_the_connection_as_too_slow() -> None:
    limits = ConnectionLimits(send_queue_frames=2, replay_put_timeout_seconds=0.01)
    conn = Connection(ORG, READER, "member", limits)
    conn.send("a")
    conn.send("b")
    await asyncio.wait_for(conn.send_wait("c"), 5)  # nobody reads
    assert conn.close_code == CLOSE_TOO_SLOW and conn.closed.is_set()
    assert conn.queued == 0  # the backlog is dropped: the client resumes from its seq
    assert await conn.next_frames() == []  # the writer closes the socket


# --- the unread tracker -----------------------------------------------------------------


def _created(message_id: int, thread: int) -> envelope.UnreadEnvelope:
    return envelope.UnreadEnvelope(
        ORG, CAND, thread, frozenset({READER}), envelope.UNREAD_CREATED, message_id
    )


def test_a_thread_the_reader_never_saw_is_not_reported_after_the_reread() -> None:
    tracker = UnreadTracker()
    seen = ThreadSnapshot(THREAD, CAND, "c5", 1, 50, 0)
    token = tracker.begin_load(USER)
    tracker.load(USER, [seen], token)
    # A message in a thread of the same candidate that the snapshot does not hold: its
    # counts are read again, and by then the reader no longer sees that thread.
    tracker.on_envelope(_created(60, OTHER_THREAD), {READER})
    assert USER in tracker.stale
    token = tracker.begin_load(USER)
    tracker.load(USER, [seen], token)
    assert protocol_1_frames(tracker) == {}  # no frame about a thread the client never knew
    # A thread it does see is still reported when it moves.
    tracker.on_envelope(_created(61, THREAD), {READER})
    frames = [orjson.loads(f) for f in protocol_1_frames(tracker)[USER]]
    assert [(f["thread"], f["unread"]) for f in frames] == [(THREAD, 2)]


def test_only_the_newest_failed_read_makes_the_user_stale_again() -> None:
    tracker = UnreadTracker()
    older = tracker.begin_load(USER)
    newer = tracker.begin_load(USER)
    tracker.load_failed(USER, older)  # superseded: the newer read decides
    assert USER not in tracker.stale
    tracker.load_failed(USER, newer)
    assert USER in tracker.stale
    tracker.forget(USER)
    tracker.load_failed(USER, newer)  # the user left meanwhile: nothing to read
    assert USER not in tracker.stale


# --- the Redis broker, without Redis ----------------------------------------------------


def _closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"redis://127.0.0.1:{port}/0"  # nothing listens there any more


async def test_publishing_nothing_never_touches_redis() -> None:
    broker = RedisBroker(_closed_port_url())
    try:
        await broker.publish_many([])  # returns without a connection
        with pytest.raises(BrokerUnavailable, match="did not take the publish"):
            await broker.publish("am.cand.1", b"x")
    finally:
        await broker.close()


async def test_a_subscriber_link_whose_pongs_stopped_is_reported_without_asking_redis() -> None:
    broker = RedisBroker(_closed_port_url())
    try:
        with pytest.raises(BrokerUnavailable, match="link is down"):
            await broker.ping()
        broker._connected.set()  # the link came up, then stopped answering pings
        broker._last_pong = redis_backend.time.monotonic() - 2 * redis_backend.PONG_DEADLINE_SECONDS
        # Raised before the publisher's ping, which could not connect (a different error).
        with pytest.raises(BrokerUnavailable, match="stopped answering"):
            await broker.ping()
    finally:
        await broker.close()


async def test_a_link_failure_while_closing_ends_the_listener_without_a_backoff(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broker = RedisBroker(_closed_port_url())
    attempts = 0

    async def connect_failing_as_close_begins() -> None:
        nonlocal attempts
        attempts += 1
        broker._closing = True  # close() began while this attempt was under way
        raise redis_backend.RedisConnectionError("connection reset")

    monkeypatch.setattr(broker, "_connect", connect_failing_as_close_begins)
    monkeypatch.setattr(redis_backend, "BACKOFF_MIN", 60.0)  # a backoff would be seen
    try:
        with caplog.at_level(logging.WARNING, "agency_messaging.broker"):
            await asyncio.wait_for(broker._run(), 5)
        assert attempts == 1
        assert "link lost" not in caplog.text  # never connected: nothing was lost
    finally:
        await broker.close()


def protocol_1_frames(tracker: UnreadTracker) -> dict[UserKey, list[str]]:
    """What the tracker has to tell each user now, as protocol 1 frames."""
    return {user: change.frames(False) for user, change in tracker.take_changes().items()}
