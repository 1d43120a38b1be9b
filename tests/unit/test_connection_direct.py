"""A connection's two ways out (channels/connection.py): frames written at once through the
edge's direct writer, or queued behind a transport that cannot take them, in one order."""

from __future__ import annotations

import asyncio

from channels.connection import Connection, ConnectionLimits, Subscription
from channels.protocol import CLOSE_CLIENT_GONE, CLOSE_NORMAL, CLOSE_TOO_SLOW

ORG, USER = 1, 10


class FakeEdge:
    """A direct writer whose transport can be paused, and a count of the wake-ups."""

    def __init__(self, conn: Connection) -> None:
        self.written: list[str] = []
        self.paused = False
        self.wakes = 0
        conn.direct, conn.wake = self.write, self.woken

    def write(self, frame: str) -> bool:
        if self.paused:
            return False
        self.written.append(frame)
        return True

    def woken(self) -> None:
        self.wakes += 1


def connection(**limits: float) -> Connection:
    return Connection(ORG, USER, "member", ConnectionLimits(**limits))  # type: ignore[arg-type]


def drain(conn: Connection, edge: FakeEdge) -> None:
    """What the edge's writer does once the transport takes frames again."""
    while (frame := conn.first_queued()) is not None:
        edge.written.append(frame)
        conn.sent_first()


def test_frames_go_straight_out_while_nothing_is_queued() -> None:
    conn = connection()
    edge = FakeEdge(conn)
    for frame in ("a", "b", "c"):
        conn.send(frame)
    assert edge.written == ["a", "b", "c"]
    assert conn.queued == 0 and edge.wakes == 0  # no writer needed


def test_once_a_frame_is_queued_every_later_one_queues_behind_it() -> None:
    conn = connection()
    edge = FakeEdge(conn)
    conn.send("a")
    edge.paused = True
    conn.send("b")  # the transport is paused: queued, and a writer woken
    edge.paused = False
    conn.send("c")  # the transport would take it, but "b" is still waiting
    conn.send("d")
    assert edge.written == ["a"] and conn.queued == 3
    assert edge.wakes == 1  # one writer drains the whole queue
    drain(conn, edge)
    conn.send("e")  # drained: straight out again
    assert edge.written == ["a", "b", "c", "d", "e"] and conn.queued == 0
    assert edge.wakes == 1


def test_a_frame_on_its_way_keeps_later_ones_behind_it() -> None:
    """The writer takes a frame off the queue only once it is handed to the transport."""
    conn = connection()
    edge = FakeEdge(conn)
    edge.paused = True
    conn.send("a")
    edge.paused = False
    in_hand = conn.first_queued()  # the writer waits for the transport with "a"
    conn.send("b")
    assert in_hand == "a" and edge.written == [] and conn.queued == 2
    edge.written.append(in_hand)
    conn.sent_first()
    drain(conn, edge)
    assert edge.written == ["a", "b"]


def test_a_full_queue_closes_the_connection_as_too_slow_and_drops_its_backlog() -> None:
    conn = connection(send_queue_frames=3)
    edge = FakeEdge(conn)
    edge.paused = True
    for frame in ("a", "b", "c"):
        conn.send(frame)
    assert conn.close_code is None and conn.queued == 3
    conn.send("d")
    assert conn.close_code == CLOSE_TOO_SLOW and conn.queued == 0
    assert edge.wakes == 2  # the first queued frame, then the close
    conn.send("e")  # closed: nothing more goes anywhere
    edge.paused = False
    conn.send("f")
    assert edge.written == [] and conn.queued == 0


def test_the_frame_in_hand_when_the_backlog_is_dropped_is_not_taken_twice() -> None:
    conn = connection(send_queue_frames=2)
    edge = FakeEdge(conn)
    edge.paused = True
    conn.send("a")
    assert conn.first_queued() == "a"  # the writer waits with it
    conn.send("b")
    conn.send("c")  # over the limit: closed, backlog dropped
    conn.sent_first()  # the writer's "a" went out after all
    assert conn.queued == 0 and conn.first_queued() is None


def test_closing_wakes_the_edge_once_and_keeps_what_was_queued() -> None:
    conn = connection()
    edge = FakeEdge(conn)
    edge.paused = True
    conn.send("a")
    conn.close(CLOSE_NORMAL, "bye")
    conn.close(CLOSE_CLIENT_GONE)  # a second close changes nothing
    assert (conn.close_code, conn.close_reason) == (CLOSE_NORMAL, "bye")
    assert edge.wakes == 2 and conn.first_queued() == "a"  # sent before the close frame


def test_without_an_edge_frames_stay_queued_for_next_frames() -> None:
    conn = connection()
    conn.send("a")
    conn.send("b")
    assert conn.queued == 2


async def test_next_frames_waits_for_a_frame_then_takes_them_all() -> None:
    conn = connection()
    taking = asyncio.create_task(conn.next_frames())
    await asyncio.sleep(0)
    assert not taking.done()
    conn.send("a")
    conn.send("b")
    assert await asyncio.wait_for(taking, 5) == ["a", "b"]
    conn.close(CLOSE_NORMAL)
    assert await conn.next_frames() == []


async def test_closed_is_set_for_waiters_and_for_late_askers() -> None:
    conn = connection()
    waiting = asyncio.create_task(conn.closed.wait())
    await asyncio.sleep(0)
    conn.close(CLOSE_NORMAL)
    await asyncio.wait_for(waiting, 5)
    late = connection()
    late.close(CLOSE_NORMAL)
    assert late.closed.is_set()


async def test_a_paced_put_waits_for_the_direct_writers_queue_to_drain() -> None:
    conn = connection(send_queue_frames=2)
    edge = FakeEdge(conn)
    edge.paused = True
    conn.send("a")
    conn.send("b")
    putting = asyncio.create_task(conn.send_wait("c"))
    for _ in range(5):
        await asyncio.sleep(0)
    assert not putting.done()
    edge.paused = False
    edge.written.append(conn.first_queued() or "")
    conn.sent_first()  # room for one
    await asyncio.wait_for(putting, 5)
    drain(conn, edge)
    assert edge.written == ["a", "b", "c"] and conn.close_code is None


def test_a_subscription_delivers_in_seq_order_through_the_direct_writer() -> None:
    conn = connection()
    edge = FakeEdge(conn)
    sub = Subscription(conn, 5, "c5", last_seq=0)
    sub.deliver(2, "two")
    sub.deliver(1, "one")
    sub.deliver(3, None)  # not visible to this user: only the seq moves
    sub.go_live()
    sub.deliver(3, "three again")
    sub.deliver(4, "four")
    assert edge.written == ["one", "two", "four"]
