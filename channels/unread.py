"""Unread counts of this process's connected users, kept up to date from events.

A user's counts are read from SQL once (a *snapshot*), then moved by the `message.created`
events that reach the process: a new message is one more unread for every viewer but its
author, unless the reader's marker is already past it. Anything rarer (a read, a delete, an
access change, an unknown thread, a lost broker link) makes the user's counts be read again.
So a message to a thousand viewers costs a thousand dictionary updates, not a thousand
queries.

Why an event is never counted twice or missed: each thread's snapshot row carries the
thread's `last_message_id` (its *watermark*) read in the same statement as the count.
Messages of a thread commit in id order, so every message up to the watermark is in the
count, and every later one arrives as an event; events up to the watermark are ignored,
later ones are counted once each. Events that arrive while a snapshot is being read are
held and applied to the new snapshot.

Every read after the first is compared with the counts it replaces: each thread whose count
moved, or that the user no longer sees (sent as 0), is reported. So an access change, a
delete or a lost broker link tells the client exactly what changed.

What a batch reports to one user is one `UnreadChange`: encoded once per protocol (an
`unread` frame per thread for protocol 1, one `unread.batch` frame for protocol 2), and the
same strings are queued on each of the user's sockets.

This module does no I/O: the hub reads snapshots and sends the frames it builds.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from channels import envelope, protocol
from channels.interfaces import UserKey

RESYNC = (0, 0)  # in a set of touched threads: send the user's whole unread summary


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


@dataclass(slots=True)
class UnreadChange:
    """What one batch tells one user: the threads whose counts moved, the user's total and,
    after its counts could have drifted (RESYNC), every candidate with unread messages.
    Encoded at most once per protocol, and the same strings sent to each of its sockets."""

    threads: list[ThreadUnread]
    total: int
    summary: list[tuple[str, int]] | None
    _per_thread: list[str] | None = field(default=None, init=False, repr=False)
    _batched: list[str] | None = field(default=None, init=False, repr=False)

    def frames(self, batched: bool) -> list[str]:
        """For a protocol 2 socket (`batched`), one `unread.batch` frame; for a protocol 1
        socket, an `unread` frame per thread, then an `unread.summary` after a resync."""
        if batched:
            if self._batched is None:
                self._batched = [protocol.unread_batch(self.threads, self.total, self.summary)]
            return self._batched
        if self._per_thread is None:
            self._per_thread = [protocol.unread(*thread, self.total) for thread in self.threads]
            if self.summary is not None:
                self._per_thread.append(protocol.unread_summary(self.summary, self.total))
        return self._per_thread


@dataclass(slots=True)
class _ThreadCount:
    candidate_pk: int
    unread: int
    watermark: int
    marker: int
    counted: set[int] = field(default_factory=set)  # ids above the watermark, counted


@dataclass(slots=True)
class _UserCounts:
    threads: dict[int, _ThreadCount] = field(default_factory=dict)
    # The candidates of the threads held, and of threads just gone until they are
    # reported (as 0) under their candidate's id. Pks are never reused.
    candidate_ids: dict[int, str] = field(default_factory=dict)
    loaded: bool = False
    reading: int = 0  # the token of the newest snapshot read; older reads are dropped
    ever_loaded: bool = False  # the first read is the client's starting point: no frames
    held: list[envelope.UnreadEnvelope] = field(default_factory=list)
    gone: dict[int, int] = field(default_factory=dict)  # thread -> candidate, to report as 0


class UnreadTracker:
    def __init__(self) -> None:
        self._users: dict[UserKey, _UserCounts] = {}
        self._reads = 0
        self.stale: set[UserKey] = set()  # users whose counts must be read from SQL
        self.touched: dict[UserKey, set[tuple[int, int]]] = {}  # (candidate_pk, thread_id)

    # --- users ----------------------------------------------------------------------

    def forget(self, user: UserKey) -> None:
        """The user's last local connection closed."""
        self._users.pop(user, None)
        self.stale.discard(user)
        self.touched.pop(user, None)

    def knows(self, user: UserKey) -> bool:
        """The user's counts are held (or being read) here."""
        return user in self._users

    def invalidate(self, user: UserKey, touch: tuple[int, int] | None = None) -> None:
        """Read this user's counts again, then send what moved, and `touch` (a thread, or
        RESYNC for the whole summary)."""
        counts = self._users.setdefault(user, _UserCounts())
        counts.loaded = False
        self.stale.add(user)
        if touch is not None:
            self.touched.setdefault(user, set()).add(touch)

    def begin_load(self, user: UserKey) -> int:
        """A snapshot read starts: events from now on are held for it. Returns the read's
        token, for `load` or `load_failed`."""
        counts = self._users.setdefault(user, _UserCounts())
        counts.loaded = False
        counts.held.clear()
        self.stale.discard(user)
        self._reads += 1
        counts.reading = self._reads
        return self._reads

    def load(self, user: UserKey, rows: Iterable[ThreadSnapshot], token: int) -> None:
        counts = self._users.get(user)
        if counts is None or counts.reading != token:
            return  # disconnected meanwhile, or a newer read has started: it decides
        held, counts.held = counts.held, []
        before = {thread_id: (c.candidate_pk, c.unread) for thread_id, c in counts.threads.items()}
        counts.threads = {
            r.thread_id: _ThreadCount(r.candidate_pk, r.unread, r.watermark, r.marker) for r in rows
        }
        for r in rows:
            counts.candidate_ids[r.candidate_pk] = r.candidate_id
        counts.loaded = True
        for message in held:
            self._apply(user, counts, message)
        if counts.ever_loaded:
            self._touch_moved(user, counts, before)
        counts.ever_loaded = True

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

    # --- events ---------------------------------------------------------------------

    def on_envelope(self, message: envelope.UnreadEnvelope, local: Iterable[UserKey]) -> None:
        """`local`: the users in the envelope with a connection on this process."""
        for user in local:
            counts = self._users.get(user)
            if message.change != envelope.UNREAD_CREATED:
                # Thread 0: the user's access to the candidate changed. The new read is
                # compared with the old one thread by thread.
                item = (message.candidate_pk, message.thread_id) if message.thread_id else None
                self.invalidate(user, item)
            elif counts is None:
                self.invalidate(user, (message.candidate_pk, message.thread_id))
            elif not counts.loaded:
                # A snapshot is pending or being read: hold the event for it.
                counts.held.append(message)
                self.touched.setdefault(user, set()).add((message.candidate_pk, message.thread_id))
            else:
                self._apply(user, counts, message)

    def _apply(self, user: UserKey, counts: _UserCounts, message: envelope.UnreadEnvelope) -> None:
        thread = counts.threads.get(message.thread_id)
        if thread is None or message.candidate_pk not in counts.candidate_ids:
            # A thread this snapshot does not know (new to the user): count it from SQL.
            self.invalidate(user, (message.candidate_pk, message.thread_id))
            return
        self.touched.setdefault(user, set()).add((message.candidate_pk, message.thread_id))
        mid = message.message_id
        if mid <= thread.watermark or mid in thread.counted or mid <= thread.marker:
            return
        thread.counted.add(mid)
        thread.unread += 1

    # --- changes --------------------------------------------------------------------

    def take_changes(self) -> dict[UserKey, UnreadChange]:
        """What every loaded user with touched threads is to be told; those users are done."""
        out: dict[UserKey, UnreadChange] = {}
        for user, items in list(self.touched.items()):
            counts = self._users.get(user)
            if counts is None:  # pragma: no cover - forget() drops counts and touched together
                del self.touched[user]
                continue
            if not counts.loaded:
                continue
            del self.touched[user]
            change = self._change(counts, items)
            if change is not None:
                out[user] = change
        return out

    def take_frames(self) -> dict[UserKey, list[str]]:
        """`take_changes` as protocol 1 frames, by user."""
        return {user: change.frames(False) for user, change in self.take_changes().items()}

    def _change(self, counts: _UserCounts, items: set[tuple[int, int]]) -> UnreadChange | None:
        by_candidate: dict[int, int] = {}
        for count in counts.threads.values():
            by_candidate[count.candidate_pk] = (
                by_candidate.get(count.candidate_pk, 0) + count.unread
            )
        threads = []
        for candidate_pk, thread_id in sorted(items):
            thread = self._thread_unread(counts, candidate_pk, thread_id, by_candidate)
            if thread is not None:
                threads.append(thread)
        counts.gone.clear()
        # Only candidates of threads still seen need their ids now.
        seen = {count.candidate_pk for count in counts.threads.values()}
        if len(counts.candidate_ids) > len(seen):
            counts.candidate_ids = {pk: counts.candidate_ids[pk] for pk in seen}
        summary = self._summary(counts, by_candidate) if RESYNC in items else None
        if not threads and summary is None:
            return None
        return UnreadChange(threads, sum(by_candidate.values()), summary)

    @staticmethod
    def _summary(counts: _UserCounts, by_candidate: dict[int, int]) -> list[tuple[str, int]]:
        """Every candidate with unread messages, by its id."""
        return [
            (counts.candidate_ids[pk], n)
            for pk, n in sorted(by_candidate.items())
            if n and pk in counts.candidate_ids
        ]

    @staticmethod
    def _thread_unread(
        counts: _UserCounts, candidate_pk: int, thread_id: int, by_candidate: dict[int, int]
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
        return ThreadUnread(candidate_id, thread_id, unread, by_candidate.get(candidate_pk, 0))
