"""Unread counts of this process's connected users, kept up to date from events.

A user's counts are read from SQL once (a *snapshot*), then moved by the `message.created`
events that reach the process: a new message is one more unread for every viewer but its
author, unless the reader's marker is already past it. Anything rarer (a read, a delete, an
access change, an unknown thread, a lost broker link) makes the user's counts be read again.
So a message to a thousand viewers costs no query, and no Python work per viewer when it
arrives: it is recorded once, in the thread's log shared by the process, with its viewers
whose counts are loaded (a set computed in C). The log is applied to each of those users'
counts once, when a batch is taken, or before any counts are replaced (a snapshot read
starts or ends) or dropped (a departure): so every record is applied to the very counts it
was recorded for, as if on arrival, and the log is empty after each batch.

Why an event is never counted twice or missed: each thread's snapshot row carries the
thread's `last_message_id` (its *watermark*) read in the same statement as the count.
Messages of a thread commit in id order, so every message up to the watermark is in the
count, and every later one arrives as an event; events up to the watermark are ignored,
later ones are counted once each. Events that arrive while a snapshot is being read are
held and applied to the new snapshot. "Once each": the process remembers, per thread, the
ids that arrived, and only a message's first arrival counts. That is the same as each user
remembering what it counted: an event is published after its message commits, so a
snapshot read after the first arrival already holds the message; a user whose read began
before it holds the event and counts it at load, its id remembered again then. The ids at
or below every holder's watermark and marker are forgotten: no count can take them again.

The counts of each candidate and the total are kept as the threads move, so a batch costs
a user what its moved threads cost, not what all its threads do.

Every read after the first is compared with the counts it replaces: each thread whose count
moved, or that the user no longer sees (sent as 0), is reported. So an access change, a
delete or a lost broker link tells the client exactly what changed.

What a batch reports to one user is one `UnreadChange`: encoded once per protocol (an
`unread` frame per thread for protocol 1, one `unread.batch` frame for protocol 2), and the
same strings are queued on each of the user's sockets.

This module does no I/O: the hub reads snapshots and sends the frames it builds.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Set
from dataclasses import dataclass, field
from typing import NamedTuple

from channels import envelope, protocol
from channels.interfaces import UserKey

RESYNC = (0, 0)  # in a set of touched threads: send the user's whole unread summary
# A thread's remembered ids are trimmed when they have doubled since the last trim (plus
# this), so trimming costs a thread's holders once per that many messages at most.
TRIM_SLACK = 64


@dataclass(frozen=True, slots=True)
class ThreadSnapshot:
    thread_id: int
    candidate_pk: int
    candidate_id: str
    unread: int
    watermark: int  # the thread's last_message_id when `unread` was counted
    marker: int  # the user's read marker in the thread (0: none)


class ThreadUnread(NamedTuple):
    """One thread's counts as a frame tells them."""

    candidate_id: str
    thread_id: int
    unread: int
    candidate_unread: int


# One batch's frames by what they say: viewers of the same threads with the same counts
# (the audience of a busy candidate) share one string, encoded once, and written to each
# of their sockets as the same bytes.
FrameMemo = dict[tuple[object, ...], str]


@dataclass(slots=True)
class UnreadChange:
    """What one batch tells one user: the threads whose counts moved, the user's total and,
    after its counts could have drifted (RESYNC), every candidate with unread messages.
    Encoded at most once per protocol, and the same strings sent to each of its sockets."""

    threads: list[ThreadUnread]
    total: int
    summary: list[tuple[str, int]] | None
    memo: FrameMemo = field(default_factory=dict, repr=False)  # shared by a batch's changes
    _per_thread: list[str] | None = field(default=None, init=False, repr=False)
    _batched: list[str] | None = field(default=None, init=False, repr=False)

    def frames(self, batched: bool) -> list[str]:
        """For a protocol 2 socket (`batched`), one `unread.batch` frame; for a protocol 1
        socket, an `unread` frame per thread, then an `unread.summary` after a resync."""
        if batched:
            if self._batched is None:
                self._batched = [self._batch_frame()]
            return self._batched
        if self._per_thread is None:
            self._per_thread = [self._thread_frame(thread) for thread in self.threads]
            if self.summary is not None:
                self._per_thread.append(protocol.unread_summary(self.summary, self.total))
        return self._per_thread

    def _thread_frame(self, thread: ThreadUnread) -> str:
        key = ("unread", thread, self.total)
        frame = self.memo.get(key)
        if frame is None:
            frame = self.memo[key] = protocol.unread(*thread, self.total)
        return frame

    def _batch_frame(self) -> str:
        if self.summary is not None:  # a resync: rare, and particular to the user
            return protocol.unread_batch(self.threads, self.total, self.summary)
        key = ("unread.batch", self.total, *self.threads)
        frame = self.memo.get(key)
        if frame is None:
            frame = self.memo[key] = protocol.unread_batch(self.threads, self.total, None)
        return frame


@dataclass(slots=True)
class _ThreadCount:
    candidate_pk: int
    unread: int
    covered: int  # max(watermark, marker): no message at or below it is counted again


@dataclass(slots=True)
class _UserCounts:
    threads: dict[int, _ThreadCount] = field(default_factory=dict)
    # The candidates of the threads held, and of threads just gone until they are
    # reported (as 0) under their candidate's id. Pks are never reused.
    candidate_ids: dict[int, str] = field(default_factory=dict)
    # Kept as threads move: every candidate of a thread held (0 included), and the sum.
    by_candidate: dict[int, int] = field(default_factory=dict)
    total: int = 0
    loaded: bool = False
    reading: int = 0  # the token of the newest snapshot read; older reads are dropped
    ever_loaded: bool = False  # the first read is the client's starting point: no frames
    held: list[envelope.UnreadEnvelope] = field(default_factory=list)
    gone: dict[int, int] = field(default_factory=dict)  # thread -> candidate, to report as 0


class _Arrival(NamedTuple):
    message_id: int
    users: Set[int]  # the pks, loaded here and holding the thread, it is recorded for
    first: bool  # the id's first arrival: only it counts


@dataclass(slots=True, eq=False)
class _SharedThread:
    """A thread as the process sees it: who holds its counts, and its unapplied log."""

    org_pk: int
    candidate_pk: int
    thread_id: int
    holders: dict[int, _UserCounts] = field(default_factory=dict)  # user pk -> its counts
    loaded: set[int] = field(default_factory=set)  # the holders whose counts are loaded
    log: list[_Arrival] = field(default_factory=list)  # since the counts were last settled
    arrived: set[int] = field(default_factory=set)  # ids above some holder's `covered`
    trim_at: int = TRIM_SLACK

    @property
    def item(self) -> tuple[int, int]:
        return (self.candidate_pk, self.thread_id)


class UnreadTracker:
    def __init__(self) -> None:
        self._users: dict[UserKey, _UserCounts] = {}
        self._reads = 0
        self.stale: set[UserKey] = set()  # users whose counts must be read from SQL
        self.touched: dict[UserKey, set[tuple[int, int]]] = {}  # (candidate_pk, thread_id)
        self._threads: dict[tuple[int, int, int], _SharedThread] = {}  # (org, cand, thread)
        self._unsettled: list[_SharedThread] = []  # threads with a log to apply

    # --- users ----------------------------------------------------------------------

    def forget(self, user: UserKey) -> None:
        """The user's last local connection closed."""
        self._settle()
        counts = self._users.pop(user, None)
        if counts is not None:
            self._set_loaded(user, counts, False)
            self._release(user, counts)
        self.stale.discard(user)
        self.touched.pop(user, None)

    def knows(self, user: UserKey) -> bool:
        """The user's counts are held (or being read) here."""
        return user in self._users

    def invalidate(self, user: UserKey, touch: tuple[int, int] | None = None) -> None:
        """Read this user's counts again, then send what moved, and `touch` (a thread, or
        RESYNC for the whole summary)."""
        counts = self._users.setdefault(user, _UserCounts())
        self._set_loaded(user, counts, False)
        self.stale.add(user)
        if touch is not None:
            self._touch(user, touch)

    def begin_load(self, user: UserKey) -> int:
        """A snapshot read starts: events from now on are held for it. Returns the read's
        token, for `load` or `load_failed`."""
        self._settle()
        counts = self._users.setdefault(user, _UserCounts())
        self._set_loaded(user, counts, False)
        counts.held.clear()
        self.stale.discard(user)
        self._reads += 1
        counts.reading = self._reads
        return self._reads

    def load(self, user: UserKey, rows: Iterable[ThreadSnapshot], token: int) -> None:
        counts = self._users.get(user)
        if counts is None or counts.reading != token:
            return  # disconnected meanwhile, or a newer read has started: it decides
        self._settle()
        held, counts.held = counts.held, []
        before = {thread_id: (c.candidate_pk, c.unread) for thread_id, c in counts.threads.items()}
        self._release(user, counts)
        self._fill(counts, rows)
        self._hold_threads(user, counts)
        self._set_loaded(user, counts, True)
        counted: set[tuple[int, int]] = set()  # (thread, message) held twice count once
        for message in held:
            self._apply_held(user, counts, message, counted)
        if counts.ever_loaded:
            self._touch_moved(user, counts, before)
        counts.ever_loaded = True

    @staticmethod
    def _fill(counts: _UserCounts, rows: Iterable[ThreadSnapshot]) -> None:
        counts.threads = {}
        counts.by_candidate = {}
        for r in rows:
            counts.threads[r.thread_id] = _ThreadCount(
                r.candidate_pk, r.unread, max(r.watermark, r.marker)
            )
            counts.candidate_ids[r.candidate_pk] = r.candidate_id
            counts.by_candidate[r.candidate_pk] = counts.by_candidate.get(r.candidate_pk, 0) + (
                r.unread
            )
        counts.total = sum(counts.by_candidate.values())

    def _touch_moved(
        self, user: UserKey, counts: _UserCounts, before: dict[int, tuple[int, int]]
    ) -> None:
        touched = self.touched.setdefault(user, set())
        for thread_id, (candidate_pk, unread) in before.items():
            now = counts.threads.get(thread_id)
            if now is None:
                counts.gone[thread_id] = candidate_pk
                touched.add((candidate_pk, thread_id))
            elif now.unread != unread:
                touched.add((candidate_pk, thread_id))
        for thread_id, now in counts.threads.items():
            if thread_id not in before and now.unread:
                touched.add((now.candidate_pk, thread_id))

    def load_failed(self, user: UserKey, token: int) -> None:
        counts = self._users.get(user)
        if counts is not None and counts.reading == token:
            self.stale.add(user)

    def _set_loaded(self, user: UserKey, counts: _UserCounts, loaded: bool) -> None:
        """Also in each of its threads: a new message there is then matched against the
        thread's loaded holders by one set operation."""
        if counts.loaded == loaded:
            return
        counts.loaded = loaded
        org_pk, user_pk = user
        for thread_id, thread in counts.threads.items():
            shared = self._threads[(org_pk, thread.candidate_pk, thread_id)]
            if loaded:
                shared.loaded.add(user_pk)
            else:
                shared.loaded.discard(user_pk)

    def _hold_threads(self, user: UserKey, counts: _UserCounts) -> None:
        """Records the user as a holder of each thread of its counts."""
        org_pk, user_pk = user
        for thread_id, thread in counts.threads.items():
            key = (org_pk, thread.candidate_pk, thread_id)
            shared = self._threads.get(key)
            if shared is None:
                shared = self._threads[key] = _SharedThread(org_pk, thread.candidate_pk, thread_id)
            shared.holders[user_pk] = counts

    def _release(self, user: UserKey, counts: _UserCounts) -> None:
        """The user no longer holds its threads (its counts are replaced or dropped)."""
        org_pk, user_pk = user
        for thread_id, thread in counts.threads.items():
            key = (org_pk, thread.candidate_pk, thread_id)
            shared = self._threads.get(key)
            if shared is not None:
                shared.holders.pop(user_pk, None)
                shared.loaded.discard(user_pk)
                if not shared.holders:
                    del self._threads[key]  # settled first: its log is empty

    # --- events ---------------------------------------------------------------------

    def on_envelope(self, message: envelope.UnreadEnvelope, local: Set[int]) -> None:
        """`local`: the pks of the envelope's users with a connection on this process (of
        its org). Kept by the tracker until the next batch: the caller must not change it.
        A new message costs set operations in C on `local`, and Python work only for its
        users whose counts are not loaded or lack the thread (rare)."""
        org_pk = message.org_pk
        if message.change != envelope.UNREAD_CREATED:
            # Thread 0: the user's access to the candidate changed. The new read is
            # compared with the old one thread by thread.
            item = (message.candidate_pk, message.thread_id) if message.thread_id else None
            for user_pk in local:
                self.invalidate((org_pk, user_pk), item)
            return
        shared = self._threads.get((org_pk, message.candidate_pk, message.thread_id))
        if shared is not None and shared.loaded >= local:
            self._record(shared, message, local)  # the usual case: one check, in C
            return
        ready = local & shared.loaded if shared is not None else set()
        for user_pk in local - ready:
            self._not_ready((org_pk, user_pk), message)
        if ready and shared is not None:
            self._record(shared, message, ready)

    def _not_ready(self, user: UserKey, message: envelope.UnreadEnvelope) -> None:
        """A new message for a user whose counts are not loaded, or lack its thread."""
        counts = self._users.get(user)
        item = (message.candidate_pk, message.thread_id)
        if counts is not None and not counts.loaded:
            # A snapshot is pending or being read: hold the event for it.
            counts.held.append(message)
            self._touch(user, item)
        else:
            # No counts, or a thread the snapshot does not know (new to the user): count
            # it from SQL.
            self.invalidate(user, item)

    def _record(
        self, shared: _SharedThread, message: envelope.UnreadEnvelope, ready: Set[int]
    ) -> None:
        """Logs a new message once in its thread, for its loaded holders in `ready`."""
        mid = message.message_id
        first = mid not in shared.arrived
        shared.arrived.add(mid)
        if not shared.log:
            self._unsettled.append(shared)
        shared.log.append(_Arrival(mid, ready, first))

    def _apply_held(
        self,
        user: UserKey,
        counts: _UserCounts,
        message: envelope.UnreadEnvelope,
        counted: set[tuple[int, int]],
    ) -> None:
        """A message held during the read, applied to the new snapshot."""
        thread = counts.threads.get(message.thread_id)
        item = (message.candidate_pk, message.thread_id)
        if thread is None or message.candidate_pk not in counts.candidate_ids:
            # A thread this snapshot does not know (new to the user): count it from SQL.
            self.invalidate(user, item)
            return
        self._touch(user, item)
        mid = message.message_id
        if mid <= thread.covered or (message.thread_id, mid) in counted:
            return
        counted.add((message.thread_id, mid))
        self._count(counts, thread, 1)
        # Remembered again (it may have been trimmed): a later copy must not count.
        key = (user[0], thread.candidate_pk, message.thread_id)
        self._threads[key].arrived.add(mid)

    def _touch(self, user: UserKey, item: tuple[int, int]) -> None:
        touched = self.touched.get(user)
        if touched is None:
            touched = self.touched[user] = set()
        touched.add(item)

    @staticmethod
    def _count(counts: _UserCounts, thread: _ThreadCount, n: int) -> None:
        thread.unread += n
        counts.by_candidate[thread.candidate_pk] += n
        counts.total += n

    # --- applying the shared logs -----------------------------------------------------

    def _settle(self) -> None:
        """Applies every thread's log to the counts it was recorded for. Called before any
        counts are replaced or dropped, so those are still the counts of the arrivals."""
        while self._unsettled:
            unsettled, self._unsettled = self._unsettled, []
            for shared in unsettled:
                self._settle_thread(shared)

    def _settle_thread(self, shared: _SharedThread) -> None:
        log, shared.log = shared.log, []
        users, fresh = _tally(log)
        lowest = min((a.message_id for a in log if a.first), default=0)
        item = shared.item
        for user_pk in users:
            counts = shared.holders[user_pk]
            self._touch((shared.org_pk, user_pk), item)
            n = fresh.get(user_pk, 0)
            if n:
                thread = counts.threads[shared.thread_id]
                if thread.covered >= lowest:  # some arrivals are in its snapshot or read
                    n = _counted_above(log, user_pk, thread.covered)
                if n:
                    self._count(counts, thread, n)
        if len(shared.arrived) > shared.trim_at:
            self._trim(shared)

    @staticmethod
    def _trim(shared: _SharedThread) -> None:
        """Forgets the ids every holder's counts already cover: they never count again."""
        floor = min(counts.threads[shared.thread_id].covered for counts in shared.holders.values())
        shared.arrived = {mid for mid in shared.arrived if mid > floor}
        shared.trim_at = 2 * len(shared.arrived) + TRIM_SLACK

    # --- changes --------------------------------------------------------------------

    def take_changes(self) -> dict[UserKey, UnreadChange]:
        """What every loaded user with touched threads is to be told; those users are done."""
        self._settle()
        out: dict[UserKey, UnreadChange] = {}
        memo: FrameMemo = {}
        for user, items in list(self.touched.items()):
            counts = self._users.get(user)
            if counts is None:  # pragma: no cover - forget() drops counts and touched together
                del self.touched[user]
                continue
            if not counts.loaded:
                continue
            del self.touched[user]
            change = self._change(counts, items, memo)
            if change is not None:
                out[user] = change
        return out

    def _change(
        self, counts: _UserCounts, items: set[tuple[int, int]], memo: FrameMemo
    ) -> UnreadChange | None:
        threads = []
        for candidate_pk, thread_id in sorted(items):
            thread = self._thread_unread(counts, candidate_pk, thread_id)
            if thread is not None:
                threads.append(thread)
        counts.gone.clear()
        # Only candidates of threads still seen need their ids now.
        if len(counts.candidate_ids) > len(counts.by_candidate):
            counts.candidate_ids = {pk: counts.candidate_ids[pk] for pk in counts.by_candidate}
        summary = self._summary(counts) if RESYNC in items else None
        if not threads and summary is None:
            return None
        return UnreadChange(threads, counts.total, summary, memo)

    @staticmethod
    def _summary(counts: _UserCounts) -> list[tuple[str, int]]:
        """Every candidate with unread messages, by its id."""
        return [
            (counts.candidate_ids[pk], n)
            for pk, n in sorted(counts.by_candidate.items())
            if n and pk in counts.candidate_ids
        ]

    @staticmethod
    def _thread_unread(
        counts: _UserCounts, candidate_pk: int, thread_id: int
    ) -> ThreadUnread | None:
        """A touched thread's counts now (0 for one the user no longer sees); None for what
        is not a thread to report (RESYNC, a thread never known to the user)."""
        candidate_id = counts.candidate_ids.get(candidate_pk)
        if (candidate_pk, thread_id) == RESYNC or candidate_id is None:
            return None
        thread = counts.threads.get(thread_id)
        if thread is None and counts.gone.pop(thread_id, None) != candidate_pk:
            return None
        unread = 0 if thread is None else thread.unread
        return ThreadUnread(
            candidate_id, thread_id, unread, counts.by_candidate.get(candidate_pk, 0)
        )


def _tally(log: list[_Arrival]) -> tuple[Set[int], dict[int, int]]:
    """The users a log names, and how many first arrivals name each (counted in C)."""
    users = log[0].users
    if all(a.users is users or a.users == users for a in log[1:]):
        # One audience for the whole log, the usual case: nothing to count per user.
        firsts = sum(a.first for a in log)
        return users, dict.fromkeys(users, firsts) if firsts else {}
    fresh: Counter[int] = Counter()
    for arrival in log:
        if arrival.first:
            fresh.update(arrival.users)
    return set().union(*(a.users for a in log)), fresh


def _counted_above(log: list[_Arrival], user_pk: int, covered: int) -> int:
    """The first arrivals of the log for the user that its counts do not cover yet."""
    return sum(1 for a in log if a.first and a.message_id > covered and user_pk in a.users)
