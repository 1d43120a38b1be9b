"""The hub: this process's live connections, by candidate and by user.

Events reach the hub from the broker as envelopes (see `channels.envelope`). Per candidate
the hub keeps the highest seq it has dispatched, so that each local subscriber gets the
candidate's events exactly once and in seq order:

- an event that arrives ahead of a gap waits while the gap is filled from the event log
  (two processes may publish adjacent seqs in either order);
- after the broker link comes back, and on a periodic sweep, every channel is caught up
  from the event log, so a dead subscription never hides behind a green /readyz;
- a new subscriber with `after` is replayed what it missed while live events are buffered,
  then switched to live with no gap and no duplicate. Each channel keeps its last events in
  memory (`RecentEvents`): a resume within them reads nothing from the event log, and one
  that reaches further back reads it, in one read for every candidate of a batch.

Each event carries its audience (the users who see its thread), computed once by whoever
wrote it, and its client frame, encoded once: dispatching is a set lookup and a queue put
per subscriber, with no task and no encoding per recipient. A replay decides instead by the
facts of the event's thread, with the rule the domain hands over for the subscriber and the
access loaded for its subscribe: whoever sees the thread *now* gets its events, a member
added since they were written included.

A moved read marker (`thread.read`) travels the same channel with its two frames (named,
and the hiring team's), outside the seq order: it reaches the subscribers it names, once,
and is never replayed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
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
# message, while the messages themselves still arrive at once. A protocol 2 socket gets one
# frame per batch, however many threads moved.
UNREAD_COALESCE_SECONDS = 0.05
UNREAD_INTERVAL_SECONDS = 1.0
REPLAY_BATCH = 500
# What a channel keeps of its last events, to answer resumes from memory. A tab that comes
# back after a network blip, a sleep or a deploy has missed a few events per candidate; 256
# covers minutes of a busy candidate. The size bound (in characters of the frames, about
# bytes) keeps a channel of long messages small: a few hundred typical events fit, while a
# process following thousands of candidates holds a few hundred MiB at the very most.
RECENT_EVENTS = 256
RECENT_CHARS = 128 * 1024
SIGNED_OUT = "The session has ended; sign in again."


@dataclass(frozen=True, slots=True)
class ThreadFacts:
    """What the rules need about an event's thread to decide who sees it. A thread never
    changes kind or people, so these facts hold for as long as its events are kept."""

    id: int
    kind: str
    agency_user_pk: int
    member_pk: int | None


# The domain's rule of which threads of a candidate one user sees, decided with the access
# loaded when the user subscribed (the user sees the candidate itself).
ThreadRule = Callable[[ThreadFacts], bool]


@dataclass(frozen=True, slots=True)
class LoggedEvent:
    seq: int
    audience: frozenset[int]  # who saw its thread when written: the live delivery's filter
    frame: str
    thread: ThreadFacts | None = None  # None for an event that came live from the broker


@dataclass(frozen=True, slots=True)
class ReplayWindow:
    first_retained: int | None  # lowest seq still in the log
    last_seq: int | None  # None: the candidate does not exist (any more)


@dataclass(frozen=True, slots=True)
class LogReads:
    """One read of the event log for many candidates."""

    last_seqs: dict[int, int]  # a candidate that does not exist (any more) is absent
    events: dict[int, list[LoggedEvent]]  # each candidate's first events after its `after`


class EventSource(Protocol):
    """The durable side: the event log and the unread counts, read as they are now."""

    async def last_seqs(self, candidate_pks: list[int]) -> dict[int, int]: ...

    async def events_after(
        self, candidate_pk: int, after: int, limit: int
    ) -> list[LoggedEvent]: ...

    async def log_reads(
        self, candidate_pks: list[int], after: dict[int, int], limit: int
    ) -> LogReads:
        """In one read: the last seqs of `candidate_pks`, and for each candidate of `after`
        its first `limit` events after that seq, with their threads' facts."""

    async def thread_facts(self, thread_ids: list[int]) -> dict[int, ThreadFacts]:
        """The facts of these threads (a thread that no longer exists is absent)."""

    async def unread_snapshot(self, connection: Connection) -> list[ThreadSnapshot]:
        """The unread counts of the connection's user, in every thread it sees."""


class RecentEvents:
    """A channel's last dispatched events, bounded by RECENT_EVENTS and RECENT_CHARS, with no
    hole and ending at the channel's seq. Like the event log, it shows each message as it is
    now: a message deleted since is kept as its tombstone."""

    def __init__(self) -> None:
        self._events: deque[LoggedEvent] = deque()
        self._chars = 0

    def __len__(self) -> int:
        return len(self._events)

    def append(self, event: LoggedEvent) -> None:
        if self._events and event.seq != self._events[-1].seq + 1:
            self.clear()  # never a hole (dispatch goes in seq order: this is a safeguard)
        deleted = protocol.deleted_message_id(event.frame)
        if deleted is not None:
            self._tombstone(deleted)
        self._events.append(event)
        self._chars += len(event.frame)
        while len(self._events) > RECENT_EVENTS or self._chars > RECENT_CHARS:
            self._chars -= len(self._events.popleft().frame)

    def clear(self) -> None:
        self._events.clear()
        self._chars = 0

    def since(self, after: int, last_seq: int) -> list[LoggedEvent] | None:
        """The events after `after` up to `last_seq` (the channel's seq); None unless every
        one of them is here."""
        if after == last_seq:
            return []
        if not self._events or self._events[-1].seq != last_seq:
            return None
        first = self._events[0].seq
        if not first - 1 <= after < last_seq:
            return None
        return list(itertools.islice(self._events, after + 1 - first, None))

    def seed(self, events: list[LoggedEvent], last_seq: int) -> None:
        """Fills an empty buffer from the log's events up to `last_seq` (a channel opened by
        a resume): the next tab resuming the candidate needs no SQL."""
        if self._events:
            return
        kept = [event for event in events if event.seq <= last_seq]
        if kept and kept[-1].seq == last_seq:
            for event in kept:
                self.append(event)

    def _tombstone(self, message_id: int) -> None:
        for i in range(len(self._events) - 1, -1, -1):
            event = self._events[i]
            tombstone = protocol.tombstone(event.frame, message_id)
            if tombstone is not None:
                self._chars += len(tombstone) - len(event.frame)
                self._events[i] = replace(event, frame=tombstone)
                return


@dataclass(eq=False)
class CandidateChannel:
    pk: int
    seq: int | None = None  # every event up to this seq has been dispatched here
    pending: dict[int, LoggedEvent] = field(default_factory=dict)
    subscribers: set[Subscription] = field(default_factory=set)
    filling: asyncio.Task[None] | None = None
    recent: RecentEvents = field(default_factory=RecentEvents)
    threads: dict[int, ThreadFacts] = field(default_factory=dict)  # the facts met so far

    def thread_of(self, event: LoggedEvent) -> ThreadFacts | None:
        if event.thread is not None:
            return event.thread
        thread_id = protocol.event_thread_id(event.frame)
        return None if thread_id is None else self.threads.get(thread_id)


@dataclass(frozen=True, slots=True)
class SubscribeRequest:
    """A candidate to follow; with `after` (the last seq the client has), what came since
    is replayed first, as `sees` decides."""

    candidate_pk: int
    candidate_id: str
    after: int | None
    sees: ThreadRule


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    seq: int
    reset: bool
    replayed: int


@dataclass(eq=False)
class Replay:
    """One new subscriber's way from `after` to live: `events` come from the channel's
    memory, or from the log (`from_log`, with the candidate's `last_seq` read with them)."""

    sub: Subscription
    channel: CandidateChannel
    after: int | None
    sees: ThreadRule
    events: list[LoggedEvent] | None = None  # None: still to be read from the log
    from_log: bool = False
    last_seq: int = 0
    limit: int = 0  # the log read's size: a full one has more after it


def _log_misses(after: int, replay: Replay, events: list[LoggedEvent]) -> bool:
    """Whether the log no longer holds all that came after `after` (pruned by retention),
    or `after` is beyond the candidate's seq (erased and created again): a reset. The log
    has no hole, so it holds everything after `after` if it holds `after + 1`."""
    if after == replay.last_seq:
        return False
    return after > replay.last_seq or not events or events[0].seq != after + 1


class Hub:
    def __init__(self, broker: Broker, presence: Presence, source: EventSource) -> None:
        self.broker = broker
        self.presence = presence
        self.source = source
        self.channels: dict[int, CandidateChannel] = {}
        self.users: dict[UserKey, set[Connection]] = defaultdict(set)
        # The pks of each org's users with a socket here (the keys of `users`, by org): an
        # unread event is matched against them, not walked over its whole audience.
        self._local_users: dict[int, set[int]] = {}
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
        self._local_users.setdefault(connection.org_pk, set()).add(connection.user_pk)
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
                self._forget_local_user(connection)
                if connection.user_key not in self._first_reads:
                    # (A first read in flight forgets the counts itself if nobody is
                    # left when it ends: a retry of the same user may still join it.)
                    self.unread.forget(connection.user_key)

    def _forget_local_user(self, connection: Connection) -> None:
        org_users = self._local_users.get(connection.org_pk)
        if org_users is not None:
            org_users.discard(connection.user_pk)
            if not org_users:
                del self._local_users[connection.org_pk]

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
        self,
        connection: Connection,
        candidate_pk: int,
        candidate_id: str,
        after: int | None,
        sees: ThreadRule,
    ) -> SubscribeResult:
        request = SubscribeRequest(candidate_pk, candidate_id, after, sees)
        (result,) = await self.subscribe_many(connection, [request])
        return result

    async def subscribe_many(
        self, connection: Connection, requests: Sequence[SubscribeRequest]
    ) -> list[SubscribeResult]:
        """Follows each candidate (at most once in `requests`), replaying what the client
        missed: from the channels' memory where it still holds all of it, else from the
        event log, in one read for every candidate that needs it (together with the seqs
        of the channels opened). Results in the order of `requests`. On failure none of
        them is followed."""
        assert len({r.candidate_pk for r in requests}) == len(requests), "a candidate twice"
        for request in requests:
            if request.candidate_pk in connection.subscriptions:
                await self.unsubscribe(connection, request.candidate_pk)
        replays: list[Replay] = []
        try:
            await self._join(connection, requests, replays)
            await self._learn_threads(replays)
            return [await self._catch_up(replay) for replay in replays]
        except BaseException:
            await self._abandon(replays)
            raise

    async def _join(
        self, connection: Connection, requests: Sequence[SubscribeRequest], replays: list[Replay]
    ) -> None:
        """Adds the subscribers (replaying: live events wait in their buffers), opens the
        channels nobody here followed yet, and reads what memory does not hold."""
        async with self._lifecycle:
            opening: list[CandidateChannel] = []
            for request in requests:
                channel = self.channels.get(request.candidate_pk)
                if channel is None or channel.seq is None:
                    channel = CandidateChannel(request.candidate_pk)
                    self.channels[channel.pk] = channel
                    opening.append(channel)
                replays.append(self._add_subscriber(connection, channel, request))
            if opening:
                # Subscribe first, then read the seqs: anything published after that read
                # arrives live; anything before it is in the log.
                for channel in opening:
                    await self.broker.subscribe(envelope.candidate_channel(channel.pk))
                await self._read_log(replays, opening)
                return
        await self._read_log(replays, [])

    def _add_subscriber(
        self, connection: Connection, channel: CandidateChannel, request: SubscribeRequest
    ) -> Replay:
        sub = Subscription(connection, channel.pk, request.candidate_id, channel.seq or 0)
        channel.subscribers.add(sub)
        connection.subscriptions[channel.pk] = sub
        replay = Replay(sub, channel, request.after, request.sees)
        if request.after is None:
            replay.events = []
        elif channel.seq is not None:
            replay.events = channel.recent.since(request.after, channel.seq)
        return replay

    async def _read_log(self, replays: list[Replay], opening: list[CandidateChannel]) -> None:
        """One read for all: the seqs of the channels being opened, and the events that
        memory does not hold (a channel being opened holds none)."""
        after = {r.channel.pk: r.after for r in replays if r.events is None and r.after is not None}
        pks = [channel.pk for channel in opening]
        pks += [pk for pk in after if pk not in {channel.pk for channel in opening}]
        if not pks:
            return  # everything is in memory: no SQL at all
        limit = max(1, REPLAY_BATCH // max(1, len(after)))
        reads = await self.source.log_reads(pks, after, limit)
        for channel in opening:
            channel.seq = reads.last_seqs.get(channel.pk, 0)
            channel.recent.seed(reads.events.get(channel.pk, []), channel.seq)
        for replay in replays:
            if replay.channel in opening:
                replay.sub.last_seq = replay.channel.seq or 0
            if replay.events is None:
                replay.events = reads.events.get(replay.channel.pk, [])
                replay.from_log, replay.limit = True, limit
                replay.last_seq = reads.last_seqs.get(replay.channel.pk, 0)
        for channel in opening:
            self._drain(channel)

    async def _learn_threads(self, replays: list[Replay]) -> None:
        """Looks up, in one read, the threads of events to replay that came live from the
        broker (their facts do not travel with them) and that no event here told of."""
        missing: dict[int, list[CandidateChannel]] = {}
        for replay in replays:
            for event in replay.events or ():
                if event.thread is not None:
                    replay.channel.threads[event.thread.id] = event.thread
                elif replay.channel.thread_of(event) is None:
                    thread_id = protocol.event_thread_id(event.frame)
                    if thread_id is not None:
                        missing.setdefault(thread_id, []).append(replay.channel)
        if not missing:
            return
        for thread_id, facts in (await self.source.thread_facts(sorted(missing))).items():
            for channel in missing[thread_id]:
                channel.threads[thread_id] = facts

    async def _catch_up(self, replay: Replay) -> SubscribeResult:
        """Replays what the subscriber missed, then switches it to live."""
        sub, events, after = replay.sub, replay.events or [], replay.after
        if after is None:
            sub.go_live()
            return SubscribeResult(sub.last_seq, False, 0)
        if replay.from_log and _log_misses(after, replay, events):
            sub.go_live()  # from the channel's seq on: the client reloads over REST
            return SubscribeResult(sub.last_seq, True, 0)
        sub.last_seq = after  # (live events up to `after` are the client's already)
        replayed = await self._send_visible(replay, events)
        while replay.from_log and len(events) == replay.limit and self._still_wanted(sub):
            events = await self.source.events_after(sub.candidate_pk, sub.last_seq, REPLAY_BATCH)
            replay.limit = REPLAY_BATCH
            replayed += await self._send_visible(replay, events)
        sub.go_live()
        return SubscribeResult(sub.last_seq, False, replayed)

    async def _send_visible(self, replay: Replay, events: list[LoggedEvent]) -> int:
        """Sends the events the subscriber sees now (pacing itself to the client); returns
        how many were sent. Stops once the socket closed or the subscription ended (its
        user lost access meanwhile)."""
        sub, sent = replay.sub, 0
        seen: dict[int, bool] = {}  # thread id: does the user see it
        for event in events:
            thread = replay.channel.thread_of(event)
            if thread is not None and thread.id not in seen:
                seen[thread.id] = replay.sees(thread)
            if not self._still_wanted(sub):
                break
            sub.last_seq = event.seq
            if thread is not None and seen[thread.id]:
                await sub.connection.send_wait(event.frame)
                sent += 1
        return sent

    @staticmethod
    def _still_wanted(sub: Subscription) -> bool:
        connection = sub.connection
        return (
            connection.close_code is None and connection.subscriptions.get(sub.candidate_pk) is sub
        )

    async def _abandon(self, replays: list[Replay]) -> None:
        """Undoes a subscribe that failed or was given up on: its subscribers leave, and the
        channels left without any are closed."""
        for replay in replays:
            replay.channel.subscribers.discard(replay.sub)
            connection = replay.sub.connection
            if connection.subscriptions.get(replay.sub.candidate_pk) is replay.sub:
                del connection.subscriptions[replay.sub.candidate_pk]
        for channel in {id(r.channel): r.channel for r in replays}.values():
            await self._close_channel_if_idle(channel)

    async def unsubscribe(self, connection: Connection, candidate_pk: int) -> bool:
        sub = connection.subscriptions.pop(candidate_pk, None)
        if sub is None:
            return False
        channel = self.channels.get(candidate_pk)
        if channel is not None:
            channel.subscribers.discard(sub)
            await self._close_channel_if_idle(channel)
        return True

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
        elif isinstance(message, envelope.ReadEnvelope):
            self._on_read(message)
        elif isinstance(message, envelope.RevokedEnvelope):
            self._on_revoked(message)
        elif isinstance(message, envelope.UnreadEnvelope):
            self._on_unread(message)
        elif isinstance(message, envelope.SignedOutEnvelope):
            self._on_signed_out(message)

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
        channel.recent.append(event)
        if event.thread is not None:
            channel.threads[event.thread.id] = event.thread
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

    def _on_read(self, message: envelope.ReadEnvelope) -> None:
        """A read marker moved: each subscriber it is meant for gets its frame at once. Not
        an event of the log (no seq, never replayed): a client reloads it over REST."""
        channel = self.channels.get(message.candidate_pk)
        if channel is None:
            return
        for sub in list(channel.subscribers):
            user_pk = sub.connection.user_pk
            if user_pk in message.named:
                sub.connection.send(message.named_frame)
            elif user_pk in message.team:
                sub.connection.send(message.team_frame)

    def _on_revoked(self, message: envelope.RevokedEnvelope) -> None:
        channel = self.channels.get(message.candidate_pk)
        if channel is None:
            return
        for sub in list(channel.subscribers):
            if message.erased or sub.connection.user_pk in message.user_pks:
                channel.subscribers.discard(sub)
                sub.connection.subscriptions.pop(message.candidate_pk, None)
                sub.connection.send(protocol.unsubscribed(sub.candidate_id, "access"))
            else:
                # Who they talk with changed (a person linked, unlinked or erased): their
                # views of the candidate's threads and people are out of date.
                sub.connection.send(protocol.candidate_updated(sub.candidate_id))
        if not channel.subscribers:
            # Not awaited: the broker listener calling us must never wait on the lifecycle lock.
            task = asyncio.create_task(self._close_channel_if_idle(channel), name="hub-close")
            self._background.add(task)
            task.add_done_callback(self._background.discard)

    def _on_signed_out(self, message: envelope.SignedOutEnvelope) -> None:
        """Closes the user's sockets here; each leaves the hub as its endpoint ends."""
        for connection in list(self.users.get((message.org_pk, message.user_pk), ())):
            connection.close(protocol.CLOSE_SESSION_EXPIRED, SIGNED_OUT)

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
        """Costs what the envelope's users with a socket here cost, not its audience: the
        org's local users are intersected with the audience in C, over the smaller set, and
        a new message is recorded once for all of them (applied to each at the batch)."""
        org_users = self._local_users.get(message.org_pk)
        if not org_users:
            return  # nobody of the org is connected here
        local = org_users & message.user_pks  # a new set: the tracker may keep it
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
            await self.send_unread_batch()
            # Measured from the batch's sends, not its start: reading many users' counts
            # may take long, and a socket must still get the next batch an interval after
            # this one, never within a few milliseconds of it.
            last_batch = loop.time()

    async def send_unread_batch(self) -> None:
        """One batch: reads again the counts of users whose counts went stale, then tells each
        user with changes what moved, in frames built once and queued on each of its sockets
        (a protocol 2 socket gets one `unread.batch` frame)."""
        for user_key in list(self.unread.stale):
            if user_key in self._first_reads:
                continue  # stays stale: read again once the first read is in
            await self._load_unread(user_key)
            await asyncio.sleep(0)  # many users at once must not starve the fan-out
        for user_key, change in self.unread.take_changes().items():
            for connection in list(self.users.get(user_key, ())):
                for frame in change.frames(connection.unread_batches):
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
