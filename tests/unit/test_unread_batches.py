"""The hub's unread fan-out: what one batch queues on each socket, and what an unread event
costs a process where few of its users are connected.

The hub here is never started, so no unread loop runs on its own: each test feeds events
and then runs one batch itself (`send_unread_batch`), with no timing involved.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Iterator
from collections.abc import Set as AbstractSet
from typing import Any

import orjson
import pytest

from channels import envelope
from channels.backends.memory import MemoryBroker, MemoryPresence
from channels.connection import Connection, ConnectionLimits
from channels.hub import Hub
from channels.interfaces import UserKey
from channels.unread import ThreadSnapshot
from tests.support.hub import ORG, USER_PK, FakeSource

OTHER_PK = 11
OTHER_ORG = 2
CAND, OTHER_CAND = 5, 6
THREADS = (7, 8)  # candidate CAND's
OTHER_THREAD = 9  # candidate OTHER_CAND's
WATERMARK = 50


@pytest.fixture
async def hub() -> AsyncIterator[Hub]:
    source = FakeSource()
    for user in ((ORG, USER_PK), (ORG, OTHER_PK)):
        source.rows[user] = [
            *(ThreadSnapshot(t, CAND, "c5", 1, WATERMARK, 0) for t in THREADS),
            ThreadSnapshot(OTHER_THREAD, OTHER_CAND, "c6", 0, WATERMARK, 0),
        ]
    hub = Hub(MemoryBroker(), MemoryPresence(), source)
    try:
        yield hub
    finally:
        await hub.close()


async def connected(hub: Hub, user_pk: int, *, batches: bool, org: int = ORG) -> Connection:
    conn = Connection(org, user_pk, "member", ConnectionLimits(), unread_batches=batches)
    await hub.register(conn)
    return conn


def created(
    thread: int, message_id: int, audience: Iterable[int], candidate: int = CAND
) -> envelope.UnreadEnvelope:
    return envelope.UnreadEnvelope(
        ORG, candidate, thread, frozenset(audience), envelope.UNREAD_CREATED, message_id
    )


def three_threads_move(hub: Hub, audience: Iterable[int]) -> None:
    users = frozenset(audience)
    hub._on_unread(created(THREADS[0], WATERMARK + 1, users))
    hub._on_unread(created(THREADS[1], WATERMARK + 2, users))
    hub._on_unread(created(OTHER_THREAD, WATERMARK + 3, users, candidate=OTHER_CAND))


def decoded(conn: Connection) -> list[dict[str, Any]]:
    return [orjson.loads(f) for f in conn._queue]


async def test_a_protocol_2_socket_gets_one_frame_per_batch_with_every_moved_thread(
    hub: Hub,
) -> None:
    tabs = [await connected(hub, USER_PK, batches=True) for _ in range(3)]
    three_threads_move(hub, {USER_PK})
    await hub.send_unread_batch()
    for tab in tabs:
        assert decoded(tab) == [
            {
                "type": "unread.batch",
                "threads": [
                    {"candidate": "c5", "thread": THREADS[0], "unread": 2, "candidate_unread": 4},
                    {"candidate": "c5", "thread": THREADS[1], "unread": 2, "candidate_unread": 4},
                    {"candidate": "c6", "thread": OTHER_THREAD, "unread": 1, "candidate_unread": 1},
                ],
                "total_unread": 5,
                "summary": None,
            }
        ]
    # Encoded once: every socket of the user holds the very same string.
    (first,) = tabs[0]._queue
    assert all(tab._queue[0] is first for tab in tabs[1:])
    await hub.send_unread_batch()  # nothing moved since: nothing sent
    assert [len(tab._queue) for tab in tabs] == [1, 1, 1]


async def test_a_protocol_1_socket_still_gets_a_frame_per_thread(hub: Hub) -> None:
    old_tabs = [await connected(hub, USER_PK, batches=False) for _ in range(2)]
    new_tab = await connected(hub, USER_PK, batches=True)
    three_threads_move(hub, {USER_PK})
    await hub.send_unread_batch()
    for tab in old_tabs:
        assert decoded(tab) == [
            {
                "type": "unread",
                "candidate": candidate,
                "thread": thread,
                "unread": unread,
                "candidate_unread": candidate_unread,
                "total_unread": 5,
            }
            for candidate, thread, unread, candidate_unread in (
                ("c5", THREADS[0], 2, 4),
                ("c5", THREADS[1], 2, 4),
                ("c6", OTHER_THREAD, 1, 1),
            )
        ]
    assert all(a is b for a, b in zip(old_tabs[0]._queue, old_tabs[1]._queue, strict=True))
    assert [f["type"] for f in decoded(new_tab)] == ["unread.batch"]


async def test_each_user_gets_its_own_counts_in_one_frame(hub: Hub) -> None:
    mine = await connected(hub, USER_PK, batches=True)
    theirs = await connected(hub, OTHER_PK, batches=True)
    hub._on_unread(created(THREADS[0], WATERMARK + 1, {USER_PK, OTHER_PK}))
    hub._on_unread(created(THREADS[1], WATERMARK + 2, {OTHER_PK}))
    await hub.send_unread_batch()
    (batch,) = decoded(mine)
    assert [(t["thread"], t["unread"]) for t in batch["threads"]] == [(THREADS[0], 2)]
    (batch,) = decoded(theirs)
    assert [(t["thread"], t["unread"]) for t in batch["threads"]] == [
        (THREADS[0], 2),
        (THREADS[1], 2),
    ]


async def test_a_lost_broker_link_sends_the_summary_inside_the_batch(hub: Hub) -> None:
    new_tab = await connected(hub, USER_PK, batches=True)
    old_tab = await connected(hub, USER_PK, batches=False)
    await hub.on_broker_reconnect()
    await hub.send_unread_batch()
    assert decoded(new_tab) == [
        {
            "type": "unread.batch",
            "threads": [],
            "total_unread": 2,
            "summary": [{"candidate": "c5", "unread": 2}],
        }
    ]
    assert decoded(old_tab) == [
        {
            "type": "unread.summary",
            "candidates": [{"candidate": "c5", "unread": 2}],
            "total_unread": 2,
        }
    ]


class Audience(frozenset[int]):
    """An envelope's users that note every time Python code walks or probes them."""

    touches = 0

    def __iter__(self) -> Iterator[int]:
        Audience.touches += 1
        return super().__iter__()

    def __contains__(self, item: object) -> bool:
        Audience.touches += 1
        return super().__contains__(item)

    def __len__(self) -> int:
        Audience.touches += 1
        return super().__len__()


@pytest.fixture
def audience_touches() -> Iterator[None]:
    Audience.touches = 0
    yield
    Audience.touches = 0


def envelopes_seen(hub: Hub, monkeypatch: pytest.MonkeyPatch) -> list[list[UserKey]]:
    """The local users of each envelope the hub hands to its unread tracker."""
    seen: list[list[UserKey]] = []
    handle = hub.unread.on_envelope

    def spy(message: envelope.UnreadEnvelope, local: AbstractSet[int]) -> None:
        seen.append(sorted((message.org_pk, pk) for pk in local))
        handle(message, local)

    monkeypatch.setattr(hub.unread, "on_envelope", spy)
    return seen


HUGE = 1_000_000


async def test_an_event_of_an_org_with_nobody_here_is_dropped_unlooked_at(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, audience_touches: None
) -> None:
    seen = envelopes_seen(hub, monkeypatch)
    elsewhere = await connected(hub, USER_PK, batches=True, org=OTHER_ORG)
    gone = await connected(hub, USER_PK, batches=True)
    await hub.unregister(gone)  # org ORG had a user here, and has none any more
    hub._on_unread(created(THREADS[0], WATERMARK + 1, Audience(range(1, HUGE))))
    assert Audience.touches == 0 and seen == []
    assert ORG not in hub._local_users
    await hub.send_unread_batch()
    assert not elsewhere._queue


async def test_a_huge_audience_costs_only_its_local_users(
    hub: Hub, monkeypatch: pytest.MonkeyPatch, audience_touches: None
) -> None:
    seen = envelopes_seen(hub, monkeypatch)
    tab = await connected(hub, USER_PK, batches=True)
    await connected(hub, HUGE + 5, batches=True)  # connected, not in the audience
    hub._on_unread(created(THREADS[0], WATERMARK + 1, Audience(range(1, HUGE))))
    # The audience is intersected in C with the org's local users: never walked in Python.
    assert Audience.touches == 0
    assert seen == [[(ORG, USER_PK)]]
    await hub.send_unread_batch()
    assert [f["type"] for f in decoded(tab)] == ["unread.batch"]
