"""Protocol 2's pipelined ops (server/edge/ws.py `_Pipeline`), each op held until the test
lets it finish: answers in the order ops end, except within a lane (a thread's sends and
reads, a message's deletes, a socket's subscriptions), which keeps the order of the frames;
pings at once; at most MAX_OPS_IN_FLIGHT ops at a time; what is in flight at the close gets
its grace, then is cancelled."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
import pytest

from channels.connection import Connection, ConnectionLimits
from channels.protocol import ClientFrame, parse_client_frame
from server.edge import ws


class HeldOps:
    """Stands for `ws._apply`: each op waits until released, then acks with its ref."""

    def __init__(self) -> None:
        self.gates: dict[Any, asyncio.Event] = {}
        self.started: list[Any] = []

    async def apply(self, frame: ClientFrame, conn: Connection, s: Any) -> str:
        self.started.append(frame.ref)
        await self.gates.setdefault(frame.ref, asyncio.Event()).wait()
        return orjson.dumps({"type": "ack", "ref": frame.ref}).decode()

    def release(self, ref: Any) -> None:
        self.gates.setdefault(ref, asyncio.Event()).set()


@pytest.fixture
def held(monkeypatch: pytest.MonkeyPatch) -> HeldOps:
    ops = HeldOps()
    monkeypatch.setattr(ws, "_apply", ops.apply)
    return ops


def connection() -> tuple[Connection, list[Any]]:
    conn = Connection(1, 2, "member", ConnectionLimits(), unread_batches=True)
    answered: list[Any] = []
    conn.direct = lambda frame: answered.append(orjson.loads(frame)["ref"]) or True
    return conn, answered


def frame(op: str, ref: int, **fields: Any) -> ClientFrame:
    return parse_client_frame({"op": op, "ref": ref, **fields})


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_ops_of_other_lanes_overtake_a_slow_one_and_pings_answer_at_once(
    held: HeldOps,
) -> None:
    conn, answered = connection()
    pipeline = ws._Pipeline(conn, None)  # type: ignore[arg-type]
    await pipeline.start(frame("send", 1, thread=7, body="slow"), 1)
    await pipeline.start(frame("send", 2, thread=8, body="other thread"), 2)
    await pipeline.start(frame("ping", 3), 3)
    await settle()
    assert answered == [3] and held.started == [1, 2]
    held.release(2)
    await settle()
    assert answered == [3, 2]
    held.release(1)
    await settle()
    assert answered == [3, 2, 1]


async def test_a_lane_keeps_the_order_of_its_frames(held: HeldOps) -> None:
    conn, answered = connection()
    pipeline = ws._Pipeline(conn, None)  # type: ignore[arg-type]
    await pipeline.start(frame("send", 1, thread=7, body="first"), 1)
    await pipeline.start(frame("read", 2, thread=7, message_id=5), 2)
    await pipeline.start(frame("subscribe", 3, candidate="c1"), 3)
    await pipeline.start(frame("unsubscribe", 4, candidate="c1"), 4)
    await pipeline.start(frame("delete", 5, message=9), 5)
    await pipeline.start(frame("delete", 6, message=9), 6)
    await settle()
    assert held.started == [1, 3, 5]  # one op of each lane at a time
    for ref in (2, 4, 6):
        held.release(ref)  # the later ones may not start, let alone end, before
    await settle()
    assert answered == [] and held.started == [1, 3, 5]
    for ref in (1, 3, 5):
        held.release(ref)
    await settle()
    assert answered == [1, 3, 5, 2, 4, 6]


async def test_at_most_so_many_ops_are_in_flight(held: HeldOps) -> None:
    conn, answered = connection()
    pipeline = ws._Pipeline(conn, None)  # type: ignore[arg-type]
    for ref in range(ws.MAX_OPS_IN_FLIGHT):
        await pipeline.start(frame("send", ref, thread=100 + ref, body="x"), ref)
    one_more = asyncio.create_task(pipeline.start(frame("send", 99, thread=99, body="x"), 99))
    await settle()
    assert not one_more.done() and 99 not in held.started  # the reader waits for a slot
    held.release(0)
    await settle()
    assert one_more.done() and 99 in held.started and answered == [0]


async def test_at_the_close_ops_in_flight_get_their_grace_then_are_cancelled(
    held: HeldOps,
) -> None:
    conn, answered = connection()
    pipeline = ws._Pipeline(conn, None)  # type: ignore[arg-type]
    await pipeline.start(frame("send", 1, thread=7, body="finishes"), 1)
    await pipeline.start(frame("send", 2, thread=8, body="never does"), 2)
    finishing = asyncio.create_task(pipeline.finish(grace=0.5))
    await settle()
    held.release(1)
    await asyncio.wait_for(finishing, 5)
    assert answered == [1] and not pipeline.running
