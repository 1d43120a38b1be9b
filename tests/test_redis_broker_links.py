"""The Redis broker against a real Redis that fails in the ways Redis fails: a subscriber
handler that raises, a Redis that goes away and comes back, and a Redis that stops
answering (SIGSTOP) without closing its connections."""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import pytest

from channels.backends import redis as redis_backend
from channels.backends.redis import RedisBroker, RedisPresence
from channels.interfaces import BrokerUnavailable
from harness.services import RedisServer


@pytest.fixture
def own_redis() -> Iterator[RedisServer]:
    """A Redis of this test alone: the tests stop and freeze it."""
    server = RedisServer.start()
    try:
        yield server
    finally:
        if server.process is not None:
            server.process.send_signal(signal.SIGCONT)  # never leave it frozen
        server.stop()


@dataclass
class Listener:
    """What the broker hands the hub: messages, and link restorations."""

    messages: asyncio.Queue[tuple[str, bytes]] = field(default_factory=asyncio.Queue)
    reconnects: int = 0
    reconnected: asyncio.Event = field(default_factory=asyncio.Event)
    fail_on: bytes | None = None

    async def on_message(self, channel: str, payload: bytes) -> None:
        if payload == self.fail_on:
            raise RuntimeError("a bug in the hub")
        await self.messages.put((channel, payload))

    async def on_reconnect(self) -> None:
        self.reconnects += 1
        self.reconnected.set()


@pytest.fixture
async def listener() -> Listener:
    return Listener()


@pytest.fixture
async def started(own_redis: RedisServer, listener: Listener) -> AsyncIterator[RedisBroker]:
    broker = RedisBroker(own_redis.url)
    await broker.start(listener.on_message, listener.on_reconnect)
    try:
        await broker.ping()  # connected
        yield broker
    finally:
        await broker.close()


async def until_logged(caplog: pytest.LogCaptureFixture, text: str, timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while text not in caplog.text:
        assert loop.time() < deadline, f"never logged: {text!r}"
        await asyncio.sleep(0.01)


async def delivered(
    broker: RedisBroker, listener: Listener, channel: str, payload: bytes, timeout: float = 20
) -> None:
    """Publishes until the listener gets the payload: a resubscription is confirmed by
    Redis asynchronously, and a publish before it would be lost, as pub/sub loses it."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        await broker.publish(channel, payload)
        try:
            got = await asyncio.wait_for(listener.messages.get(), 0.2)
        except TimeoutError:
            assert loop.time() < deadline, f"{payload!r} never reached {channel}"
            continue
        assert got == (channel, payload)
        while not listener.messages.empty():  # repeats of the same publish
            assert listener.messages.get_nowait() == (channel, payload)
        return


async def test_a_failing_handler_is_logged_and_the_next_message_still_arrives(
    started: RedisBroker, listener: Listener, caplog: pytest.LogCaptureFixture
) -> None:
    listener.fail_on = b"poison"
    await started.subscribe("am.cand.1")
    with caplog.at_level(logging.ERROR, "agency_messaging.broker"):
        await started.publish("am.cand.1", b"poison")  # a single publish: no pipeline
        await started.publish("am.cand.1", b"next")
        assert await asyncio.wait_for(listener.messages.get(), 10) == ("am.cand.1", b"next")
    assert "A broker message could not be dispatched." in caplog.text
    assert "a bug in the hub" in caplog.text
    assert listener.messages.empty()


async def test_a_channel_subscribed_while_redis_is_down_is_subscribed_when_it_returns(
    own_redis: RedisServer,
    started: RedisBroker,
    listener: Listener,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, "agency_messaging.broker"):
        await asyncio.to_thread(own_redis.pause)  # Redis shuts down, closing every connection
        await until_logged(caplog, "Redis broker link lost")
    with pytest.raises(BrokerUnavailable, match="link is down"):
        await started.ping()
    # A client joins a candidate meanwhile: the subscribe returns at once (the hub catches
    # the client up from the event log) instead of waiting on the dead link.
    await asyncio.wait_for(started.subscribe("am.cand.2"), 1)
    await asyncio.to_thread(own_redis.resume)
    await asyncio.wait_for(listener.reconnected.wait(), 30)
    assert listener.reconnects == 1
    await delivered(started, listener, "am.cand.2", b"after the outage")
    await started.ping()


async def test_a_redis_that_stops_answering_is_detected_and_the_link_recovers(
    own_redis: RedisServer,
    listener: Listener,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The proportions of production (a ping every 2 s, 6 s without a pong is a dead link),
    # four times faster; a subscription unconfirmed for 0.3 s is given up on.
    monkeypatch.setattr(redis_backend, "PING_EVERY_SECONDS", 0.5)
    monkeypatch.setattr(redis_backend, "PONG_DEADLINE_SECONDS", 1.5)
    monkeypatch.setattr(redis_backend, "SUBSCRIBE_TIMEOUT_SECONDS", 0.3)
    broker = RedisBroker(own_redis.url)
    await broker.start(listener.on_message, listener.on_reconnect)
    process = own_redis.process
    assert process is not None
    try:
        await broker.subscribe("am.cand.1")
        await delivered(broker, listener, "am.cand.1", b"before")
        process.send_signal(signal.SIGSTOP)  # frozen: connections stay open, nothing answers
        with caplog.at_level(logging.WARNING, "agency_messaging.broker"):
            # The subscription is never confirmed: the subscribe gives up after its timeout.
            await asyncio.wait_for(broker.subscribe("am.cand.2"), 5)
            assert "Subscribing to a channel failed" in caplog.text
            # No pong within the deadline: the link is declared lost although still open.
            await until_logged(caplog, "Redis broker link lost (TimeoutError)")
        with pytest.raises(BrokerUnavailable, match="link is down"):
            await broker.ping()
        assert listener.reconnects == 0
        process.send_signal(signal.SIGCONT)
        await asyncio.wait_for(listener.reconnected.wait(), 30)
        # Both channels are subscribed again, the one that timed out included.
        await delivered(broker, listener, "am.cand.2", b"after")
        await delivered(broker, listener, "am.cand.1", b"after")
        await broker.ping()
    finally:
        process.send_signal(signal.SIGCONT)
        await broker.close()


async def test_presence_of_nobody_asks_redis_nothing(own_redis: RedisServer) -> None:
    presence = RedisPresence(own_redis.url)
    try:
        await presence.add((1, 10), "conn-a")
        assert await presence.online([(1, 10), (1, 11)]) == {(1, 10)}
        await asyncio.to_thread(own_redis.pause)
        assert await presence.online([]) == set()  # answered without the (dead) server
        await presence.renew([])  # a process with no sockets renews nothing, asks nothing
    finally:
        await presence.close()
