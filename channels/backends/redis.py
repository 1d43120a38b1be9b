"""Redis pub/sub broker and Redis presence, for several server processes.

One subscriber connection per process carries every channel this process listens to; a
separate pool publishes. When the link drops the listener reconnects with backoff and
jitter, resubscribes by itself, and calls the hub back so that clients are caught up from
the event log (pub/sub drops whatever was published while a subscriber was away).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from channels.interfaces import (
    LEASE_SECONDS,
    BrokerUnavailable,
    MessageHandler,
    ReconnectHandler,
    UserKey,
)

log = logging.getLogger("agency_messaging.broker")

CONTROL_CHANNEL = "am.control"
PING_EVERY_SECONDS = 2.0
PONG_DEADLINE_SECONDS = 6.0
SUBSCRIBE_TIMEOUT_SECONDS = 5.0
BACKOFF_MIN, BACKOFF_MAX = 0.1, 5.0


# Commands of this process share a bounded pool. At the bound a command waits for a free
# connection (a connect storm makes hundreds of presence writes at once) instead of failing
# at once, as the default pool of redis-py 8 does with "Too many connections".
POOL_CONNECTIONS = 64
POOL_WAIT_SECONDS = 5.0


def _client(url: str) -> aioredis.Redis:
    # Pooled connections that Redis closed during an outage are checked before reuse
    # (health_check_interval) and a failed command is retried on a fresh connection.
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=POOL_CONNECTIONS,
        timeout=POOL_WAIT_SECONDS,
        socket_connect_timeout=2.0,
        socket_timeout=5.0,
        socket_keepalive=True,
        health_check_interval=5,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.02), 2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    return aioredis.Redis.from_pool(pool)  # the client owns the pool and closes it


class RedisBroker:
    def __init__(self, url: str) -> None:
        self.url = url
        self._publisher = _client(url)
        self._channels: set[str] = set()
        self._confirmed: dict[str, asyncio.Event] = {}
        self._pubsub: Any = None
        self._connected = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._on_message: MessageHandler | None = None
        self._on_reconnect: ReconnectHandler | None = None
        self._last_pong = 0.0
        self._closing = False

    async def start(self, on_message: MessageHandler, on_reconnect: ReconnectHandler) -> None:
        self._on_message, self._on_reconnect = on_message, on_reconnect
        self._task = asyncio.create_task(self._run(), name="redis-broker-listener")
        # Start serving even if Redis is down: messages persist and clients catch up later.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._connected.wait(), SUBSCRIBE_TIMEOUT_SECONDS)

    async def close(self) -> None:
        self._closing = True
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self._close_pubsub()
        await self._publisher.aclose()

    async def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # --- the listener --------------------------------------------------------------

    async def _run(self) -> None:
        backoff, connected_before = BACKOFF_MIN, False
        while not self._closing:
            try:
                await self._connect()
                backoff = BACKOFF_MIN
                if connected_before and self._on_reconnect is not None:
                    log.info("Redis broker link restored; catching clients up.")
                    await self._on_reconnect()
                connected_before = True
                await self._listen()
            except asyncio.CancelledError:
                raise
            except (RedisError, OSError, TimeoutError) as error:
                if self._connected.is_set():
                    log.warning("Redis broker link lost (%s); reconnecting.", type(error).__name__)
            finally:
                self._connected.clear()
                for event in self._confirmed.values():
                    event.clear()
                await self._close_pubsub()
            if self._closing:
                return
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(BACKOFF_MAX, backoff * 2)

    async def _connect(self) -> None:
        self._pubsub = self._publisher.pubsub(ignore_subscribe_messages=False)
        await self._pubsub.subscribe(CONTROL_CHANNEL, *sorted(self._channels))
        self._last_pong = time.monotonic()

    async def _listen(self) -> None:
        pubsub, next_ping = self._pubsub, time.monotonic()
        while True:
            now = time.monotonic()
            if now >= next_ping:
                await pubsub.ping()
                next_ping = now + PING_EVERY_SECONDS
            if now - self._last_pong > PONG_DEADLINE_SECONDS:
                raise TimeoutError("The Redis subscriber connection stopped answering pings.")
            message = await pubsub.get_message(timeout=PING_EVERY_SECONDS / 2)
            if message is None:
                continue  # pragma: no cover - runs; CPython 3.11 drops line events after a timeout
            await self._handle(message)

    async def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        channel = message.get("channel")
        if isinstance(channel, bytes):
            channel = channel.decode()
        if kind == "pong" or (kind == "message" and channel == CONTROL_CHANNEL):
            self._last_pong = time.monotonic()
        elif kind == "subscribe":
            self._last_pong = time.monotonic()
            if channel == CONTROL_CHANNEL:
                self._connected.set()
            elif channel in self._confirmed:
                self._confirmed[channel].set()
        elif kind == "message" and isinstance(channel, str) and self._on_message is not None:
            try:
                await self._on_message(channel, message["data"])
            except Exception:
                log.exception("A broker message could not be dispatched.")

    # --- subscriptions and publishing -------------------------------------------------

    async def subscribe(self, channel: str) -> None:
        """Returns once Redis confirms the subscription (or the link is down: the hub's
        catch-up from the event log covers that case)."""
        self._channels.add(channel)
        confirmed = self._confirmed.setdefault(channel, asyncio.Event())
        if self._pubsub is None or not self._connected.is_set():
            return
        try:
            await self._pubsub.subscribe(channel)
            await asyncio.wait_for(confirmed.wait(), SUBSCRIBE_TIMEOUT_SECONDS)
        except (RedisError, OSError, TimeoutError):
            log.warning("Subscribing to a channel failed; the reconnect will resubscribe it.")

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        self._confirmed.pop(channel, None)
        if self._pubsub is not None and self._connected.is_set():
            with contextlib.suppress(RedisError, OSError):
                await self._pubsub.unsubscribe(channel)

    async def publish(self, channel: str, payload: bytes) -> None:
        await self.publish_many([(channel, payload)])

    async def publish_many(self, items: list[tuple[str, bytes]]) -> None:
        if not items:
            return
        try:
            if len(items) == 1:
                await self._publisher.publish(*items[0])
                return
            async with self._publisher.pipeline(transaction=False) as pipe:
                for channel, payload in items:
                    pipe.publish(channel, payload)
                await pipe.execute()
        except (RedisError, OSError) as error:
            raise BrokerUnavailable(
                f"Redis did not take the publish: {type(error).__name__}."
            ) from None

    async def ping(self) -> None:
        if not self._connected.is_set():
            raise BrokerUnavailable("The Redis subscriber link is down.")
        if time.monotonic() - self._last_pong > PONG_DEADLINE_SECONDS:
            raise BrokerUnavailable("The Redis subscriber link stopped answering.")
        await self._publisher.ping()


class RedisPresence:
    """A sorted set per user: connection id → lease expiry. Leases are renewed by the
    hub's heartbeat, so a process that dies stops counting within LEASE_SECONDS."""

    def __init__(self, url: str) -> None:
        self._redis = _client(url)

    @staticmethod
    def _key(user: UserKey) -> str:
        return f"am.presence.{user[0]}.{user[1]}"

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        await self._redis.aclose()

    async def add(self, user: UserKey, connection_id: str) -> None:
        await self.renew([(user, connection_id)])

    async def renew(self, connections: list[tuple[UserKey, str]]) -> None:
        if not connections:
            return
        expiry = time.time() + LEASE_SECONDS
        async with self._redis.pipeline(transaction=False) as pipe:
            for user, connection_id in connections:
                pipe.zadd(self._key(user), {connection_id: expiry})
                pipe.expire(self._key(user), int(LEASE_SECONDS * 2))
            await pipe.execute()

    async def remove(self, user: UserKey, connection_id: str) -> None:
        await self._redis.zrem(self._key(user), connection_id)

    async def count(self, user: UserKey) -> int:
        key, now = self._key(user), time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", now)
            pipe.zcard(key)
            _, count = await pipe.execute()
        return int(count)

    async def online(self, users: list[UserKey]) -> set[UserKey]:
        if not users:
            return set()
        now = time.time()
        async with self._redis.pipeline(transaction=False) as pipe:
            for user in users:
                pipe.zcount(self._key(user), now, "+inf")
            counts = await pipe.execute()
        return {user for user, count in zip(users, counts, strict=True) if count}
