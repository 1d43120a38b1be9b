"""The hub: this process's live connections, by candidate and by user.

Events reach the hub from the broker as envelopes (see `channels.envelope`). Per candidate
the hub keeps the highest seq it has dispatched, so that each local subscriber gets the
candidate's events exactly once and in seq order:

- an event that arrives ahead of a gap waits while the gap is filled from the event log
  (two processes may publish adjacent seqs in either order);
- after the broker link comes back, and on a periodic sweep, every channel is caught up
  from the event log, so a dead subscription never hides behind a green /readyz;
- a new subscriber with `after` is replayed from the log while live events are buffered,
  then switched to live with no gap and no duplicate.

Each event carries its audience (the users who see its thread), computed once by whoever
wrote it, and its client frame, encoded once: dispatching is a set lookup and a queue put
per subscriber, with no task and no encoding per recipient.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from channels import envelope, protocol
from channels.connection import Connection, Subscription
from channels.interfaces import Broker, Presence, UserKey
from channels.unread import RESYNC, ThreadSnapshot, UnreadTracker

log = logging.getLogger("agency_messaging.hub")

GAP_WAIT_SECONDS = 0.05
SWEEP_SECONDS = 5.0
PRESENCE_RENEW_SECONDS = 20.0
# Unread changes are sent in batches: the first change after a quiet spell waits
# UNREAD_COALESCE_SECONDS, and under a stream of messages batches go out at most every
# UNREAD_INTERVAL_SECONDS. Each frame carries the counts as they are then, so a batch loses
# nothing; a busy candidate costs each viewer one frame a second instead of one per
# message, while the messages themselves still arrive at once.
UNREAD_COALESCE_SECONDS = 0.05
UNREAD_INTERVAL_SECONDS = 1.0
REPLAY_BATCH = 500


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    seq: int
    audience: frozenset[int]
    frame: str


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    first_retained: int | None  # lowest seq still in the log
    last_seq: int | None  # None: the candidate does not exist (any more)


class EventSource(Protocol):
    """The durable side: the event log and the unread counts, read as they are now."""

    async def last_seqs(self, candidate_pks: list[int]) -> dict[int, int]: ...

    async def window(self, candidate_pk: int) -> ReplayWindow: ...

    async def events_after(
        self, candidate_pk: int, after: int, limit: int
    ) -> list[LoggedEvent]: ...

    async def unread_snapshot(self, connection: Connection) -> list[ThreadSnapshot]:
        """The unread counts of the connection's user, in every thread it sees."""


@dataclass(eq=False)
class CandidateChannel:
    pk: int
    seq: int | None = None  # every event up to this seq has been dispatched here
    pending: dict[int, LoggedEvent] = field(default_factory=dict)
    subscribers: set[Subscription] = field(default_factory=set)
    filling: asyncio.Task[None] | None = None


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    seq: int
    reset: bool
    replayed: int


class Hub:
    def __init__(self, broker: Broker, presence: Presence, source: EventSource) -> None:
        self.broker = broker
        self.presence = presence
        self.source = source
        self.channels: dict[int, CandidateChannel] = {}
        self.users: dict[UserKey, set[Connection]] = defaultdict(set)
        self._lifecycle = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._background: set[asyncio.Task[None]] = set()
        self.unread = UnreadTracker()
        self._first_reads: dict[UserKey, asyncio.Task[None]] = {}
        self._unread_wakeup = asyncio.Event()
        self.on_event_dispatched: Callable[[int], None] | None = None

    # --- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        await self.presence.start()
        await self.broker.start(self.on_broker_message, self.on_broker_reconnect)
        await self.broker.subscribe(envelope.UNREAD_CHANNEL)
        for name, loop in (
            ("hub-sweep", self._sweep_loop),
            ("hub-presence", self._presence_loop),
            ("hub-unread", self._unread_loop),
        ):
            self._tasks.append(asyncio.create_task(loop(), name=name))

    async def close(self) -> None:
        tasks = [*self._tasks, *self._first_reads.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for channel in self.channels.values():
            if channel.filling is not None:
                channel.filling.cancel()
        await self.broker.close()
        await self.presence.close()

    # --- connections ----------------------------------------------------------------

    async def register(self, connection: Connection) -> None:
        """Adds a connection; for a user new to this process, its unread counts are read
        first. Called before the socket is accepted, so that whatever the client reads after
        connecting is no older than the counts that later changes are reported against.
        Raises what reading the counts raised (the database is down): nothing is kept."""
        key = connection.user_key
        self.users[key].add(connection)
        try:
            await self._first_unread(key, connection)
        except BaseException:
            self._remove(connection)
            raise
        try:
            await self.presence.add(connection.user_key, connection.id)
        except Exception:  # the lease is written again by the next renewal
            log.warning("Presence is unavailable; this connection is recorded on renewal.")

    async def unregister(self, connection: Connection) -> None:
        for candidate_pk in list(connection.subscriptions):
            await self.unsubscribe(connection, candidate_pk)
        self._remove(connection)
        with contextlib.suppress(Exception):  # presence also expires by itself
            await self.presence.remove(connection.user_key, connection.id)

    def _remove(self, connection: Connection) -> None:
        peers = self.users.get(connection.user_key)
        if peers is not None:
            peers.discard(connection)
            if not peers:
                del self.users[connection.user_key]
                if connection.user_key not in self._first_reads:
                    # (A first read in flight forgets the counts itself if nobody is
                    # left when it ends: a retry of the same user may still join it.)
                    self.unread.forget(connection.user_key)

    async def _first_unread(self, key: UserKey, connection: Connection) -> None:
        """Reads a user's counts once per process; concurrent connects share the read."""
        while True:
            reading = self._first_reads.get(key)
            if reading is not None and reading.done():
                # Finished, but its done-callback (which forgets it) has not run yet:
                # awaiting a finished task does not yield, so looping on it would spin
                # forever without ever letting that callback run.
                self._forget_first_read(key, reading)
                reading = None
            if reading is None:
                if self.unread.knows(key):
                    return
                reading = asyncio.create_task(self._read_first(key, connection), name="hub-unread")
                self._first_reads[key] = reading
                reading.add_done_callback(lambda done: self._forget_first_read(key, done))
            try:
                await asyncio.shield(reading)
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is None or task.cancelling():
                    raise  # this handshake is cancelled (its client left, or a timeout)
                # The read itself was cancelled (the hub is closing): read again.
            # A read whose handshakes were all given up on still finishes (cancelling a
            # query mid-flight costs the database a connection): a retry of the same
            # user joins it instead of starting another. If the read ends unused (every
            # connection that wanted it left), this connection reads again.

    def _forget_first_read(self, key: UserKey, reading: asyncio.Task[None]) -> None:
        if self._first_reads.get(key) is reading:  # never a newer read of the same user
            del self._first_reads[key]

    async def _read_first(self, key: UserKey, connection: Connection) -> None:
        token = self.unread.begin_load(key)
        try:
            rows = await self.source.unread_snapshot(connection)
        except BaseException:
            self.unread.forget(key)
            raise
        if not self.users.get(key):
            self.unread.forget(key)  # every handshake that wanted it was given up on
            return
        self.unread.load(key, rows, token)
        self._unread_wakeup.set()  # a change during the read is read again, and reported

    # --- subscriptions --------------------------------------------------------------

    async def subscribe(
        self, connection: Connection, candidate_pk: int, candidate_id: str, after: int | None
    ) -> SubscribeResult:
        if candidate_pk in connection.subscriptions:
            await self.unsubscribe(connection, candidate_pk)
        channel = await self._open_channel(candidate_pk)
        assert channel.seq is not None
        sub = Subscription(connection, candidate_pk, candidate_id, last_seq=channel.seq)
        channel.subscribers.add(sub)
        connection.subscriptions[candidate_pk] = sub
        try:
            reset, replayed = await self._replay(sub, after)
        except BaseException:
            channel.subscribers.discard(sub)
            connection.subscriptions.pop(candidate_pk, None)
            await self._close_channel_if_idle(channel)
            raise
        sub.go_live()
        return SubscribeResult(sub.last_seq, reset, replayed)

    async def _replay(self, sub: Subscription, after: int | None) -> tuple[bool, int]:
        if after is None:
            return False, 0
        window = await self.source.window(sub.candidate_pk)
        last = window.last_seq or 0
        complete = after == last or (
            window.first_retained is not None and window.first_retained <= after + 1
        )
        if after > last or not complete:
            return True, 0
        sub.last_seq, replayed, cursor = after, 0, after
        if after == last:
            return False, 0  # nothing to replay (events after this read arrive live)
        user_pk = sub.connection.user_pk
        while True:
            batch = await self.source.events_after(sub.candidate_pk, cursor, REPLAY_BATCH)
            for event in batch:
                visible = event.frame if user_pk in event.audience else None
                sub.last_seq = event.seq
                if visible is not None:
                    await sub.connection.send_wait(visible)
                    replayed += 1
            if len(batch) < REPLAY_BATCH:
                return False, replayed
            cursor = batch[-1].seq

    async def unsubscribe(self, connection: Connection, candidate_pk: int) -> bool:
        sub = connection.subscriptions.pop(candidate_pk, None)
        if sub is None:
            return False
        channel = self.channels.get(candidate_pk)
        if channel is not None:
            channel.subscribers.discard(sub)
            await self._close_channel_if_idle(channel)
        return True

    async def _open_channel(self, candidate_pk: int) -> CandidateChannel:
        async with self._lifecycle:
            channel = self.channels.get(candidate_pk)
            if channel is not None and channel.seq is not None:
                return channel
            channel = CandidateChannel(candidate_pk)
            self.channels[candidate_pk] = channel
            # Subscribe first, then read the last seq: anything published after that read
            # arrives live; anything before it is in the log.
            await self.broker.subscribe(envelope.candidate_channel(candidate_pk))
            seqs = await self.source.last_seqs([candidate_pk])
            channel.seq = seqs.get(candidate_pk, 0)
            self._drain(channel)
            return channel

    async def _close_channel_if_idle(self, channel: CandidateChannel) -> None:
        async with self._lifecycle:
            if channel.subscribers or self.channels.get(channel.pk) is not channel:
                return
            del self.channels[channel.pk]
            if channel.filling is not None:
                channel.filling.cancel()
            await self.broker.unsubscribe(envelope.candidate_channel(channel.pk))

    # --- events from the broker -----------------------------------------------------

    async def on_broker_message(self, channel_name: str, payload: bytes) -> None:
        message = envelope.decode(payload)
        if isinstance(message, envelope.EventEnvelope):
            self._on_event(
                message.candidate_pk, LoggedEvent(message.seq, message.audience, message.frame)
            )
        elif isinstance(message, envelope.RevokedEnvelope):
            self._on_revoked(message)
        elif isinstance(message, envelope.UnreadEnvelope):
            self._on_unread(message)

    def _on_event(self, candidate_pk: int, event: LoggedEvent) -> None:
        channel = self.channels.get(candidate_pk)
        if channel is None:
            return
        if channel.seq is not None and event.seq <= channel.seq:
            return
        channel.pending[event.seq] = event
        if channel.seq is None:
            return  # still opening: drained once its seq is known
        self._drain(channel)
        if channel.pending:
            self._schedule_fill(channel, delay=GAP_WAIT_SECONDS)

    def _drain(self, channel: CandidateChannel) -> None:
        assert channel.seq is not None
        for seq in [s for s in channel.pending if s <= channel.seq]:
            del channel.pending[seq]
        while (channel.seq + 1) in channel.pending:
            event = channel.pending.pop(channel.seq + 1)
            channel.seq = event.seq
            self._dispatch(channel, event)

    def _dispatch(self, channel: CandidateChannel, event: LoggedEvent) -> None:
        for sub in list(channel.subscribers):
            sub.deliver(
                event.seq, event.frame if sub.connection.user_pk in event.audience else None
            )
        if self.on_event_dispatched is not None:
            self.on_event_dispatched(len(channel.subscribers))

    def _schedule_fill(self, channel: CandidateChannel, delay: float = 0.0) -> None:
        if channel.filling is None or channel.filling.done():
            channel.filling = asyncio.create_task(self._fill(channel, delay), name="hub-fill")

    async def _fill(self, channel: CandidateChannel, delay: float) -> None:
        """Catches a channel up from the event log (a gap, a lost publish, a reconnect)."""
        if delay:
            await asyncio.sleep(delay)
        try:
            while self.channels.get(channel.pk) is channel and channel.seq is not None:
                before = channel.seq
                batch = await self.source.events_after(channel.pk, channel.seq, REPLAY_BATCH)
                for event in batch:
                    if event.seq > channel.seq:
                        channel.pending[event.seq] = event
                self._drain(channel)
                if len(batch) < REPLAY_BATCH:
                    break
                if channel.seq == before:
                    # A full batch that does not start at the next seq: reading it again
                    # would return the same rows forever. The sweep tries again later.
                    log.warning(
                        "The event log of candidate %d has a gap after seq %d.", channel.pk, before
                    )
                    break
                await asyncio.sleep(0)  # a long catch-up must not hold the loop
        except Exception:
            log.exception("Catching a channel up from the event log failed; the sweep retries.")

    def _on_revoked(self, message: envelope.RevokedEnvelope) -> None:
        channel = self.channels.get(message.candidate_pk)
        if channel is None:
            return
        for sub in list(channel.subscribers):
            if message.erased or sub.connection.user_pk in message.user_pks:
                channel.subscribers.discard(sub)
                sub.connection.subscriptions.pop(message.candidate_pk, None)
                sub.connection.send(protocol.unsubscribed(sub.candidate_id, "access"))
        if not channel.subscribers:
            # Not awaited: the broker listener calling us must never wait on the lifecycle lock.
            task = asyncio.create_task(self._close_channel_if_idle(channel), name="hub-close")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    async def on_broker_reconnect(self) -> None:
        for channel in list(self.channels.values()):
            self._schedule_fill(channel)
        # Unread events published while the link was down are lost: resend each local
        # user's whole summary.
        for user_key in self.users:
            self.unread.invalidate(user_key, RESYNC)
        self._unread_wakeup.set()

    # --- unread ---------------------------------------------------------------------

    def _on_unread(self, message: envelope.UnreadEnvelope) -> None:
        local = [key for pk in message.user_pks if (key := (message.org_pk, pk)) in self.users]
        if local:
            self.unread.on_envelope(message, local)
            self._unread_wakeup.set()

    async def _unread_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_batch = float("-inf")
        while True:
            await self._unread_wakeup.wait()
            next_batch = last_batch + UNREAD_INTERVAL_SECONDS - loop.time()
            await asyncio.sleep(max(UNREAD_COALESCE_SECONDS, next_batch))
            self._unread_wakeup.clear()
            last_batch = loop.time()
            for user_key in list(self.unread.stale):
                if user_key in self._first_reads:
                    continue  # stays stale: read again once the first read is in
                await self._load_unread(user_key)
                await asyncio.sleep(0)  # many users at once must not starve the fan-out
            for user_key, frames in self.unread.take_frames().items():
                for connection in list(self.users.get(user_key, ())):
                    for frame in frames:
                        connection.send(frame)

    async def _load_unread(self, user_key: UserKey) -> None:
        connections = self.users.get(user_key)
        if not connections:
            self.unread.forget(user_key)
            return
        token = self.unread.begin_load(user_key)
        try:
            rows = await self.source.unread_snapshot(next(iter(connections)))
        except Exception as error:  # an outage of the database: expected, and retried
            log.warning(
                "Unread counts could not be read (%s); the next change retries.",
                type(error).__name__,
            )
            self.unread.load_failed(user_key, token)
            return
        self.unread.load(user_key, rows, token)

    # --- background loops -----------------------------------------------------------

    async def _sweep_loop(self) -> None:
        """Safety net: a channel whose log moved past what was dispatched is caught up."""
        while True:
            await asyncio.sleep(SWEEP_SECONDS)
            try:
                await self.sweep()
            except Exception:
                log.warning("The channel sweep could not read the event log; retrying later.")

    async def sweep(self) -> None:
        pks = [pk for pk, ch in self.channels.items() if ch.seq is not None]
        if not pks:
            return
        latest = await self.source.last_seqs(pks)
        for pk in pks:
            channel = self.channels.get(pk)
            if channel is not None and channel.seq is not None and latest.get(pk, 0) > channel.seq:
                self._schedule_fill(channel)

    async def _presence_loop(self) -> None:
        while True:
            await asyncio.sleep(PRESENCE_RENEW_SECONDS)
            leases = [(key, c.id) for key, conns in self.users.items() for c in conns]
            try:
                await self.presence.renew(leases)
            except Exception:
                log.warning("Presence leases could not be renewed; retrying later.")
