"""The unread tracker's shared thread logs (channels.unread): a new message is recorded once
per thread for all its local viewers, and applied to their counts at the batch.

Two things are checked here. A message costs the same Python work whether ten or a thousand
users receive it, and no user's counts or touched threads move until the batch. And the
counts and frames are those of the per-user algorithm the logs replace (`PerUserTracker`,
below): a property test drives both with random histories of messages (delivered late, out
of order, twice), connects and departures, snapshot reads that overlap events, reads,
access changes and lost broker links, and compares everything they report.
"""

from __future__ import annotations

import random
import sys
from collections.abc import Iterable
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from types import FrameType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from channels import envelope
from channels.interfaces import UserKey
from channels.unread import RESYNC, ThreadSnapshot, UnreadTracker

ORG, CAND, THREAD = 1, 5, 7


def created(message_id: int, users: Iterable[int]) -> envelope.UnreadEnvelope:
    return envelope.UnreadEnvelope(
        ORG, CAND, THREAD, frozenset(users), envelope.UNREAD_CREATED, message_id
    )


def loaded_users(count: int) -> UnreadTracker:
    tracker = UnreadTracker()
    for pk in range(count):
        token = tracker.begin_load((ORG, pk))
        tracker.load((ORG, pk), [ThreadSnapshot(THREAD, CAND, "c5", 1, 10, 0)], token)
    return tracker


class Local(set[int]):
    """The local users of an envelope, noting every time Python code walks or probes them."""

    touches = 0

    def __iter__(self) -> Any:
        Local.touches += 1
        return super().__iter__()

    def __contains__(self, item: object) -> bool:
        Local.touches += 1
        return super().__contains__(item)


def python_calls_of_a_message(users: int) -> int:
    """The Python function calls that a new message to `users` loaded users costs."""
    tracker = loaded_users(users)
    calls = 0

    def count(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        calls += event == "call"

    message = created(11, range(users))
    local = Local(range(users))
    Local.touches = 0
    sys.setprofile(count)
    try:
        tracker.on_envelope(message, local)
    finally:
        sys.setprofile(None)
    assert Local.touches == 0  # matched against the loaded holders in C, never walked
    return calls


def test_a_message_costs_the_same_python_work_for_ten_or_a_thousand_users() -> None:
    assert python_calls_of_a_message(1000) == python_calls_of_a_message(10) <= 5


def test_no_user_moves_until_the_batch_and_then_each_moves_once() -> None:
    tracker = loaded_users(1000)
    for message_id in (11, 12, 12):  # the last one is delivered twice
        tracker.on_envelope(created(message_id, range(1000)), set(range(1000)))
    assert tracker.touched == {}
    assert {t.unread for c in tracker._users.values() for t in c.threads.values()} == {1}
    (shared,) = tracker._threads.values()
    assert [(a.message_id, a.first) for a in shared.log] == [(11, True), (12, True), (12, False)]
    changes = tracker.take_changes()
    assert len(changes) == 1000
    assert {(c.threads[0].unread, c.total) for c in changes.values()} == {(3, 3)}
    assert shared.log == [] and tracker.take_changes() == {}


def test_a_thread_forgets_the_ids_every_holder_has_covered() -> None:
    tracker = loaded_users(3)
    (shared,) = tracker._threads.values()
    for message_id in range(11, 1011):
        tracker.on_envelope(created(message_id, range(3)), {0, 1, 2})
        tracker.take_changes()
    assert len(shared.arrived) == 1000  # every holder still counts from watermark 10
    for pk in range(3):  # each reads the thread again: its counts now cover every id
        token = tracker.begin_load((ORG, pk))
        tracker.load((ORG, pk), [ThreadSnapshot(THREAD, CAND, "c5", 0, 1010, 1010)], token)
    # Trimmed when the ids have doubled since the last trim: memory stays within twice
    # what must be remembered, and a trim's cost is spread over as many messages.
    for message_id in range(1011, 2111):
        tracker.on_envelope(created(message_id, range(3)), {0, 1, 2})
        tracker.take_changes()
    assert shared.arrived == set(range(1011, 2111))
    tracker.on_envelope(created(1000, range(3)), {0, 1, 2})  # a late copy of a forgotten id
    assert {c.threads[0].unread for c in tracker.take_changes().values()} == {1100}


# --- the per-user algorithm, as the reference -------------------------------------------


@dataclass
class RefThread:
    candidate_pk: int
    unread: int
    watermark: int
    marker: int
    counted: set[int] = field(default_factory=set)


@dataclass
class RefUser:
    threads: dict[int, RefThread] = field(default_factory=dict)
    candidate_ids: dict[int, str] = field(default_factory=dict)
    loaded: bool = False
    reading: int = 0
    ever_loaded: bool = False
    held: list[envelope.UnreadEnvelope] = field(default_factory=list)
    gone: dict[int, int] = field(default_factory=dict)


Told = tuple[list[tuple[str, int, int, int]], int, list[tuple[str, int]] | None]


class PerUserTracker:
    """Each new message applied at once to each local user's counts, with per-user sets of
    counted ids; each batch sums every thread of each touched user."""

    def __init__(self) -> None:
        self.users: dict[UserKey, RefUser] = {}
        self.reads = 0
        self.stale: set[UserKey] = set()
        self.touched: dict[UserKey, set[tuple[int, int]]] = {}

    def forget(self, user: UserKey) -> None:
        self.users.pop(user, None)
        self.stale.discard(user)
        self.touched.pop(user, None)

    def invalidate(self, user: UserKey, touch: tuple[int, int] | None = None) -> None:
        self.users.setdefault(user, RefUser()).loaded = False
        self.stale.add(user)
        if touch is not None:
            self.touched.setdefault(user, set()).add(touch)

    def begin_load(self, user: UserKey) -> int:
        counts = self.users.setdefault(user, RefUser())
        counts.loaded = False
        counts.held.clear()
        self.stale.discard(user)
        self.reads += 1
        counts.reading = self.reads
        return self.reads

    def load(self, user: UserKey, rows: list[ThreadSnapshot], token: int) -> None:
        counts = self.users.get(user)
        if counts is None or counts.reading != token:
            return
        held, counts.held = counts.held, []
        before = {t: (c.candidate_pk, c.unread) for t, c in counts.threads.items()}
        counts.threads = {
            r.thread_id: RefThread(r.candidate_pk, r.unread, r.watermark, r.marker) for r in rows
        }
        counts.candidate_ids.update((r.candidate_pk, r.candidate_id) for r in rows)
        counts.loaded = True
        for message in held:
            self.apply(user, counts, message)
        if counts.ever_loaded:
            touched = self.touched.setdefault(user, set())
            for thread_id, (candidate_pk, unread) in before.items():
                now = counts.threads.get(thread_id)
                if now is None:
                    counts.gone[thread_id] = candidate_pk
                if now is None or now.unread != unread:
                    touched.add((candidate_pk, thread_id))
            for thread_id, now in counts.threads.items():
                if thread_id not in before and now.unread:
                    touched.add((now.candidate_pk, thread_id))
        counts.ever_loaded = True

    def load_failed(self, user: UserKey, token: int) -> None:
        counts = self.users.get(user)
        if counts is not None and counts.reading == token:
            self.stale.add(user)

    def on_envelope(self, message: envelope.UnreadEnvelope, local: AbstractSet[int]) -> None:
        for pk in local:
            user = (message.org_pk, pk)
            counts = self.users.get(user)
            item = (message.candidate_pk, message.thread_id)
            if message.change != envelope.UNREAD_CREATED:
                self.invalidate(user, item if message.thread_id else None)
            elif counts is None:
                self.invalidate(user, item)
            elif not counts.loaded:
                counts.held.append(message)
                self.touched.setdefault(user, set()).add(item)
            else:
                self.apply(user, counts, message)

    def apply(self, user: UserKey, counts: RefUser, message: envelope.UnreadEnvelope) -> None:
        thread = counts.threads.get(message.thread_id)
        item = (message.candidate_pk, message.thread_id)
        if thread is None or message.candidate_pk not in counts.candidate_ids:
            self.invalidate(user, item)
            return
        self.touched.setdefault(user, set()).add(item)
        mid = message.message_id
        if mid <= thread.watermark or mid in thread.counted or mid <= thread.marker:
            return
        thread.counted.add(mid)
        thread.unread += 1

    def take_changes(self) -> dict[UserKey, Told]:
        out: dict[UserKey, Told] = {}
        for user, items in list(self.touched.items()):
            counts = self.users[user]
            if not counts.loaded:
                continue
            del self.touched[user]
            by_candidate: dict[int, int] = {}
            for t in counts.threads.values():
                by_candidate[t.candidate_pk] = by_candidate.get(t.candidate_pk, 0) + t.unread
            threads = []
            for candidate_pk, thread_id in sorted(items):
                candidate_id = counts.candidate_ids.get(candidate_pk)
                if (candidate_pk, thread_id) == RESYNC or candidate_id is None:
                    continue
                now = counts.threads.get(thread_id)
                if now is None and counts.gone.pop(thread_id, None) != candidate_pk:
                    continue
                unread = 0 if now is None else now.unread
                threads.append((candidate_id, thread_id, unread, by_candidate.get(candidate_pk, 0)))
            counts.gone.clear()
            counts.candidate_ids = {pk: counts.candidate_ids[pk] for pk in by_candidate}
            summary = None
            if RESYNC in items:
                summary = [
                    (counts.candidate_ids[pk], n) for pk, n in sorted(by_candidate.items()) if n
                ]
            if threads or summary is not None:
                out[user] = (threads, sum(by_candidate.values()), summary)
        return out


# --- random histories ---------------------------------------------------------------------

USERS = (1, 2, 3, 4)
THREADS = {7: 5, 8: 5, 9: 6, 10: 6}  # thread -> candidate


@dataclass
class World:
    """What SQL holds: messages (committed in id order), read markers and access."""

    rng: random.Random
    messages: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # id, author
    markers: dict[tuple[int, int], int] = field(default_factory=dict)
    access: dict[int, set[int]] = field(default_factory=dict)  # user -> candidates
    next_id: int = 1

    def snapshot(self, user_pk: int) -> list[ThreadSnapshot]:
        rows = []
        for thread_id, messages in self.messages.items():
            candidate_pk = THREADS[thread_id]
            if candidate_pk not in self.access[user_pk]:
                continue
            marker = self.markers.get((user_pk, thread_id), 0)
            unread = sum(1 for mid, author in messages if author != user_pk and mid > marker)
            watermark = messages[-1][0] if messages else 0
            rows.append(
                ThreadSnapshot(
                    thread_id, candidate_pk, f"c{candidate_pk}", unread, watermark, marker
                )
            )
        return rows

    def post(self) -> envelope.UnreadEnvelope:
        thread_id = self.rng.choice(list(self.messages))
        candidate_pk = THREADS[thread_id]
        author = self.rng.choice([*USERS, 99])
        mid, self.next_id = self.next_id, self.next_id + 1
        self.messages[thread_id].append((mid, author))
        audience = {u for u in USERS if candidate_pk in self.access[u] and u != author}
        return envelope.UnreadEnvelope(
            ORG, candidate_pk, thread_id, frozenset(audience), envelope.UNREAD_CREATED, mid
        )


class Both:
    """The tracker and the reference, driven alike and compared after every step."""

    def __init__(self) -> None:
        self.new = UnreadTracker()
        self.ref = PerUserTracker()
        self.tokens: dict[int, tuple[int, int]] = {}  # user -> (new token, reference token)

    def begin_load(self, user_pk: int) -> None:
        user = (ORG, user_pk)
        self.tokens[user_pk] = (self.new.begin_load(user), self.ref.begin_load(user))

    def load(self, user_pk: int, rows: list[ThreadSnapshot]) -> None:
        new_token, ref_token = self.tokens.pop(user_pk)
        self.new.load((ORG, user_pk), rows, new_token)
        self.ref.load((ORG, user_pk), rows, ref_token)

    def compare(self) -> None:
        assert self.new.stale == self.ref.stale
        assert {u for u in self.new._users} == set(self.ref.users)
        told = {
            user: ([tuple(t) for t in c.threads], c.total, c.summary)
            for user, c in self.new.take_changes().items()
        }
        assert told == self.ref.take_changes()


def run_history(seed: int, steps: int) -> None:
    rng = random.Random(seed)
    world = World(rng)
    for thread_id in (7, 8, 9):
        world.messages[thread_id] = []
    for user_pk in USERS:
        world.access[user_pk] = {5, 6} if rng.random() < 0.7 else {5}
    both = Both()
    connected: set[int] = set()
    reading: dict[int, list[ThreadSnapshot] | None] = {}  # rows read early, or None: at load
    queue: list[envelope.UnreadEnvelope] = []

    def deliver(message: envelope.UnreadEnvelope) -> None:
        local = set(message.user_pks) & connected
        if local:
            both.new.on_envelope(message, set(local))
            both.ref.on_envelope(message, set(local))

    def finish(user_pk: int) -> None:
        rows = reading.pop(user_pk)
        if rng.random() < 0.1:
            new_token, ref_token = both.tokens.pop(user_pk)
            both.new.load_failed((ORG, user_pk), new_token)
            both.ref.load_failed((ORG, user_pk), ref_token)
        else:
            both.load(user_pk, world.snapshot(user_pk) if rows is None else rows)

    def start_read(user_pk: int) -> None:
        both.begin_load(user_pk)
        reading[user_pk] = world.snapshot(user_pk) if rng.random() < 0.5 else None

    for _ in range(steps):
        op = rng.random()
        if op < 0.30:
            message = world.post()
            queue.extend([message] * rng.choice((1, 1, 1, 2)))
        elif op < 0.55 and queue:
            deliver(queue.pop(rng.randrange(len(queue))))
        elif op < 0.62:
            user_pk = rng.choice(USERS)
            if user_pk not in connected:
                connected.add(user_pk)
                start_read(user_pk)
        elif op < 0.70 and reading:
            finish(rng.choice(sorted(reading)))
        elif op < 0.73 and connected:
            user_pk = rng.choice(sorted(connected))
            connected.discard(user_pk)
            both.new.forget((ORG, user_pk))
            both.ref.forget((ORG, user_pk))
            if user_pk in reading:  # the read ends after the user left: dropped
                finish(user_pk)
        elif op < 0.78:  # a user reads a thread
            user_pk, thread_id = rng.choice(USERS), rng.choice(list(world.messages))
            if world.messages[thread_id]:
                world.markers[(user_pk, thread_id)] = world.messages[thread_id][-1][0]
                queue.append(
                    envelope.UnreadEnvelope(
                        ORG, THREADS[thread_id], thread_id, frozenset({user_pk})
                    )
                )
        elif op < 0.80:  # access to a candidate changes
            user_pk, candidate_pk = rng.choice(USERS), rng.choice((5, 6))
            world.access[user_pk] ^= {candidate_pk}
            queue.append(envelope.UnreadEnvelope(ORG, candidate_pk, 0, frozenset({user_pk})))
        elif op < 0.82 and 10 not in world.messages:  # a new thread
            world.messages[10] = []
        elif op < 0.83:  # the broker link was lost
            for user_pk in connected:
                both.new.invalidate((ORG, user_pk), RESYNC)
                both.ref.invalidate((ORG, user_pk), RESYNC)
        elif op < 0.93:  # a batch: stale counts are read again, then changes are told
            for user_pk in sorted(both.new.stale):
                if user_pk[1] not in reading:
                    start_read(user_pk[1])
                    if rng.random() < 0.7:
                        finish(user_pk[1])
            both.compare()
    while queue:
        deliver(queue.pop(rng.randrange(len(queue))))
    for user_pk in sorted(reading):
        finish(user_pk)
    both.compare()


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 2**32), st.integers(20, 250))
def test_counts_and_frames_equal_the_per_user_algorithm(seed: int, steps: int) -> None:
    run_history(seed, steps)
