"""The unread counts a process keeps from events (channels.unread), without I/O.

The model test drives the tracker with every interleaving Hypothesis finds of: messages
committing, their events arriving late and out of order (or twice), and the snapshot being
read at any moment, with events arriving while it is read. Whatever the order, once every
event has arrived the count must equal the truth.
"""

from __future__ import annotations

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from channels import envelope
from channels.unread import RESYNC, ThreadSnapshot, UnreadTracker

ORG, READER, AUTHOR, OTHER = 1, 10, 20, 30
USER = (ORG, READER)
CAND, THREAD = 5, 7


def created(message_id: int, thread: int = THREAD, candidate: int = CAND) -> envelope.Envelope:
    return envelope.UnreadEnvelope(
        ORG, candidate, thread, frozenset({READER}), envelope.UNREAD_CREATED, message_id
    )


def snapshot(unread: int, watermark: int, marker: int = 0, thread: int = THREAD) -> ThreadSnapshot:
    return ThreadSnapshot(thread, CAND, "c5", unread, watermark, marker)


def loaded(*rows: ThreadSnapshot) -> UnreadTracker:
    tracker = UnreadTracker()
    token = tracker.begin_load(USER)
    tracker.load(USER, list(rows), token)
    return tracker


def frames(tracker: UnreadTracker, batched: bool = False) -> list[dict[str, object]]:
    """The frames of what the tracker has to tell USER now (protocol 1, or 2 if `batched`)."""
    change = tracker.take_changes().get(USER)
    return [] if change is None else [orjson.loads(f) for f in change.frames(batched)]


def feed(tracker: UnreadTracker, message: envelope.Envelope) -> None:
    assert isinstance(message, envelope.UnreadEnvelope)
    tracker.on_envelope(message, {READER})


def test_a_new_message_counts_once_for_thread_candidate_and_total() -> None:
    other = ThreadSnapshot(8, 6, "c6", 2, 40, 0)
    tracker = loaded(snapshot(unread=1, watermark=50), other)
    feed(tracker, created(51))
    assert frames(tracker) == [
        {
            "type": "unread",
            "candidate": "c5",
            "thread": THREAD,
            "unread": 2,
            "candidate_unread": 2,
            "total_unread": 4,
        }
    ]
    assert frames(tracker) == []  # nothing new: nothing sent


def test_events_already_in_the_snapshot_or_seen_or_read_are_not_counted() -> None:
    tracker = loaded(snapshot(unread=3, watermark=50, marker=40))
    for message_id in (49, 50, 51, 51, 52):  # two at or below the watermark, one twice
        feed(tracker, created(message_id))
    assert [f["unread"] for f in frames(tracker)] == [5]
    tracker = loaded(snapshot(unread=0, watermark=10, marker=60))  # read ahead of the event
    feed(tracker, created(55))
    assert [f["unread"] for f in frames(tracker)] == [0]


def test_events_during_a_snapshot_read_are_held_and_applied_to_it() -> None:
    tracker = UnreadTracker()
    feed(tracker, created(51))  # no counts yet: they must be read
    assert USER in tracker.stale and frames(tracker) == []
    token = tracker.begin_load(USER)
    feed(tracker, created(52))  # committed before the read: inside the snapshot
    feed(tracker, created(53))  # committed after it
    assert frames(tracker) == []  # nothing is sent from counts being read
    tracker.load(USER, [snapshot(unread=2, watermark=52)], token)
    assert [f["unread"] for f in frames(tracker)] == [3]


def test_an_unknown_thread_reads_the_counts_again() -> None:
    tracker = loaded(snapshot(unread=0, watermark=5))
    feed(tracker, created(60, thread=99))
    assert USER in tracker.stale
    token = tracker.begin_load(USER)
    tracker.load(USER, [snapshot(0, 5), snapshot(4, 60, thread=99)], token)
    assert [(f["thread"], f["unread"], f["total_unread"]) for f in frames(tracker)] == [(99, 4, 4)]


def test_reads_and_deletes_read_the_counts_again() -> None:
    tracker = loaded(snapshot(unread=3, watermark=9))
    feed(tracker, envelope.UnreadEnvelope(ORG, CAND, THREAD, frozenset({READER})))
    assert USER in tracker.stale and frames(tracker) == []
    token = tracker.begin_load(USER)
    tracker.load(USER, [snapshot(unread=1, watermark=9)], token)
    assert [f["unread"] for f in frames(tracker)] == [1]


def access_changed(candidate: int) -> envelope.Envelope:
    return envelope.UnreadEnvelope(ORG, candidate, 0, frozenset({READER}))


def test_an_access_change_sends_every_thread_that_moved_and_only_those() -> None:
    other = ThreadSnapshot(8, 6, "c6", 2, 40, 0)
    quiet = ThreadSnapshot(9, 6, "c6", 0, 40, 40)
    tracker = loaded(snapshot(unread=3, watermark=9), other, quiet)
    # Access to c5 is revoked: its thread is reported as 0, under its candidate's id.
    feed(tracker, access_changed(CAND))
    token = tracker.begin_load(USER)
    tracker.load(USER, [other, quiet], token)
    assert frames(tracker) == [
        {
            "type": "unread",
            "candidate": "c5",
            "thread": THREAD,
            "unread": 0,
            "candidate_unread": 0,
            "total_unread": 2,
        }
    ]
    # Granted again, with one more message meanwhile: the thread comes back with its count.
    feed(tracker, access_changed(CAND))
    token = tracker.begin_load(USER)
    tracker.load(USER, [snapshot(unread=4, watermark=12), other, quiet], token)
    assert [
        (f["thread"], f["unread"], f["candidate_unread"], f["total_unread"])
        for f in frames(tracker)
    ] == [(THREAD, 4, 4, 6)]
    # A thread that appears with nothing unread changes nothing the client shows.
    feed(tracker, access_changed(5))
    token = tracker.begin_load(USER)
    tracker.load(
        USER,
        [snapshot(unread=4, watermark=12), other, quiet, ThreadSnapshot(11, 7, "c7", 0, 0, 0)],
        token,
    )
    assert frames(tracker) == []


def test_the_first_read_of_a_connection_sends_nothing() -> None:
    tracker = UnreadTracker()
    token = tracker.begin_load(USER)
    feed(tracker, access_changed(CAND))  # during the first read: that read is the start
    assert tracker.knows(USER)
    token = tracker.begin_load(USER)
    tracker.load(USER, [snapshot(unread=3, watermark=9)], token)
    assert frames(tracker) == []


def test_a_lost_broker_link_resends_the_summary() -> None:
    tracker = loaded(snapshot(unread=2, watermark=9))
    tracker.invalidate(USER, RESYNC)
    token = tracker.begin_load(USER)
    tracker.load(USER, [snapshot(unread=2, watermark=9)], token)
    assert [f["type"] for f in frames(tracker)] == ["unread.summary"]


def test_a_batch_tells_every_moved_thread_in_one_protocol_2_frame() -> None:
    other = ThreadSnapshot(8, 6, "c6", 2, 40, 0)
    tracker = loaded(snapshot(unread=1, watermark=50), snapshot(0, 50, thread=9), other)
    for message in (created(51), created(52, thread=9), created(41, thread=8, candidate=6)):
        feed(tracker, message)
    change = tracker.take_changes()[USER]
    (batch,) = [orjson.loads(f) for f in change.frames(batched=True)]
    assert batch == {
        "type": "unread.batch",
        "threads": [
            {"candidate": "c5", "thread": THREAD, "unread": 2, "candidate_unread": 3},
            {"candidate": "c5", "thread": 9, "unread": 1, "candidate_unread": 3},
            {"candidate": "c6", "thread": 8, "unread": 3, "candidate_unread": 3},
        ],
        "total_unread": 6,
        "summary": None,
    }
    # Protocol 1 is told the same, a frame per thread, as before.
    per_thread = [orjson.loads(f) for f in change.frames(batched=False)]
    assert [f["type"] for f in per_thread] == ["unread"] * 3
    assert [
        {k: f[k] for k in ("candidate", "thread", "unread", "candidate_unread")} for f in per_thread
    ] == batch["threads"]
    assert {f["total_unread"] for f in per_thread} == {6}


def test_each_protocol_s_frames_are_encoded_once() -> None:
    tracker = loaded(snapshot(unread=1, watermark=50))
    feed(tracker, created(51))
    change = tracker.take_changes()[USER]
    assert change.frames(batched=True) is change.frames(batched=True)
    assert change.frames(batched=False) is change.frames(batched=False)
    assert change.frames(batched=True)[0] is change.frames(batched=True)[0]


def test_a_resync_folds_the_summary_into_the_protocol_2_frame() -> None:
    other = ThreadSnapshot(8, 6, "c6", 0, 40, 40)
    tracker = loaded(snapshot(unread=2, watermark=9), other)
    tracker.invalidate(USER, RESYNC)
    token = tracker.begin_load(USER)
    # A message was missed while the broker link was down: the thread moved too.
    tracker.load(USER, [snapshot(unread=3, watermark=10), other], token)
    change = tracker.take_changes()[USER]
    (batch,) = [orjson.loads(f) for f in change.frames(batched=True)]
    assert batch == {
        "type": "unread.batch",
        "threads": [{"candidate": "c5", "thread": THREAD, "unread": 3, "candidate_unread": 3}],
        "total_unread": 3,
        "summary": [{"candidate": "c5", "unread": 3}],
    }
    assert [orjson.loads(f)["type"] for f in change.frames(batched=False)] == [
        "unread",
        "unread.summary",
    ]
    # Nothing moved: the batch carries the summary alone.
    tracker.invalidate(USER, RESYNC)
    token = tracker.begin_load(USER)
    tracker.load(USER, [snapshot(unread=3, watermark=10), other], token)
    assert frames(tracker, batched=True) == [
        {
            "type": "unread.batch",
            "threads": [],
            "total_unread": 3,
            "summary": [{"candidate": "c5", "unread": 3}],
        }
    ]


def test_a_user_who_left_is_forgotten() -> None:
    tracker = loaded(snapshot(unread=2, watermark=9))
    feed(tracker, envelope.UnreadEnvelope(ORG, CAND, THREAD, frozenset({READER})))
    token = tracker.begin_load(USER)
    tracker.forget(USER)
    assert frames(tracker) == [] and USER not in tracker.stale
    tracker.load(USER, [snapshot(0, 0)], token)  # a read that finishes after the user left
    assert frames(tracker) == [] and not tracker.knows(USER)


def test_only_the_newest_of_overlapping_reads_counts() -> None:
    """A read that started earlier but finishes later must not overwrite a newer one, and
    events that come meanwhile stay held for the newest read."""
    tracker = loaded(snapshot(unread=1, watermark=9))
    older = tracker.begin_load(USER)
    newer = tracker.begin_load(USER)
    tracker.load(USER, [snapshot(unread=3, watermark=11)], newer)
    tracker.load(USER, [snapshot(unread=1, watermark=9)], older)  # stale: dropped
    assert [f["unread"] for f in frames(tracker)] == [3]
    older = tracker.begin_load(USER)
    newer = tracker.begin_load(USER)
    tracker.load(USER, [snapshot(unread=3, watermark=11)], older)  # dropped: not loaded yet
    feed(tracker, created(12))  # held for the newer read
    tracker.load_failed(USER, older)
    assert USER not in tracker.stale
    tracker.load(USER, [snapshot(unread=3, watermark=11)], newer)
    assert [f["unread"] for f in frames(tracker)] == [4]


def test_the_envelope_carries_the_change_and_old_envelopes_still_decode() -> None:
    message = created(42)
    assert envelope.decode(envelope.encode(message)) == message
    old = orjson.dumps({"k": "u", "o": 1, "c": 5, "t": 7, "u": [10]})
    decoded = envelope.decode(old)
    assert isinstance(decoded, envelope.UnreadEnvelope)
    assert decoded.change == envelope.UNREAD_CHANGED  # read again: always safe


@st.composite
def histories(draw: st.DrawFn) -> tuple[list[int], list[tuple[str, int]], int, list[int]]:
    """Authors of the messages; a schedule of commits and deliveries; when the snapshot is
    read (after how many steps, and which events arrive while it is read); the marker."""
    authors = draw(st.lists(st.sampled_from([AUTHOR, OTHER, READER]), min_size=1, max_size=12))
    n = len(authors)
    # Each message commits (in id order), and its event arrives once or twice, at any
    # time after its commit.
    steps: list[tuple[str, int]] = [("commit", i) for i in range(n)]
    for i in range(n):
        for _ in range(draw(st.integers(1, 2))):
            position = draw(st.integers(steps.index(("commit", i)) + 1, len(steps)))
            steps.insert(position, ("deliver", i))
    snapshot_at = draw(st.integers(0, len(steps)))
    marker = draw(st.integers(0, n))
    return authors, steps, snapshot_at, [marker]


@settings(max_examples=300, deadline=None)
@given(histories(), st.booleans())
def test_counts_match_the_truth_whatever_the_order(
    history: tuple[list[int], list[tuple[str, int]], int, list[int]], early_events: bool
) -> None:
    authors, steps, snapshot_at, (marker,) = history
    ids = list(range(1, len(authors) + 1))  # message i has id i + 1
    tracker = UnreadTracker()
    committed = 0

    def read_snapshot() -> ThreadSnapshot:
        unread = sum(1 for i in range(committed) if authors[i] != READER and ids[i] > marker)
        return snapshot(unread=unread, watermark=committed, marker=marker)

    def deliver(i: int) -> None:
        if authors[i] == READER:
            return  # a reader is never in the audience of its own message's unread change
        feed(tracker, created(ids[i]))

    pending_snapshot: ThreadSnapshot | None = None
    for index, (kind, i) in enumerate(steps):
        if index == snapshot_at:
            # The snapshot is read now; with early_events the events of the next steps
            # arrive while it is being read (they are held).
            token = tracker.begin_load(USER)
            pending_snapshot = read_snapshot()
            if not early_events:
                tracker.load(USER, [pending_snapshot], token)
                pending_snapshot = None
        if kind == "commit":
            committed = i + 1
        else:
            deliver(i)
    if snapshot_at >= len(steps):
        token = tracker.begin_load(USER)
        pending_snapshot = read_snapshot()
    if pending_snapshot is not None:
        tracker.load(USER, [pending_snapshot], token)
    truth = sum(1 for i, a in enumerate(authors) if a != READER and ids[i] > marker)
    counted = frames(tracker)
    final = counted[-1]["unread"] if counted else read_snapshot().unread
    if USER in tracker.stale:  # an unknown-thread refresh: the next read is the truth
        token = tracker.begin_load(USER)
        tracker.load(USER, [read_snapshot()], token)
        final = frames(tracker)[-1]["unread"]
    assert final == truth


def test_viewers_with_the_same_counts_share_one_frame_per_batch() -> None:
    """The audience of a busy candidate is told the same thing: one string for all of them
    (encoded once, written to each socket as the same bytes); a viewer whose counts differ
    gets its own."""
    tracker = UnreadTracker()
    others = (OTHER, OTHER + 1)
    for reader, unread in ((READER, 0), (others[0], 0), (others[1], 5)):
        token = tracker.begin_load((ORG, reader))
        tracker.load((ORG, reader), [snapshot(unread=unread, watermark=50)], token)
    tracker.on_envelope(
        envelope.UnreadEnvelope(
            ORG, CAND, THREAD, frozenset({READER, *others}), envelope.UNREAD_CREATED, 51
        ),
        {READER, *others},
    )
    changes = tracker.take_changes()
    same, twin, apart = (changes[(ORG, user)] for user in (READER, *others))
    for batched, kind in ((False, "unread"), (True, "unread.batch")):
        assert same.frames(batched)[0] is twin.frames(batched)[0]
        assert apart.frames(batched)[0] != same.frames(batched)[0]
        # Each protocol its own frame, whichever was asked for first.
        assert orjson.loads(twin.frames(batched)[0])["type"] == kind
    assert orjson.loads(apart.frames(False)[0])["unread"] == 6
