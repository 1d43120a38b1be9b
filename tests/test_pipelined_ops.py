"""Pipelined ops over a real socket: a protocol 2 client writes many ops at once and gets
every answer (matched by `ref`), with each thread's sends stored in the order they were
written; a protocol 1 client gets its answers in the order of its frames."""

from __future__ import annotations

import asyncio
from typing import Any

from channels.protocol import SUBPROTOCOL_V2
from tests.support.realtime import WsClient
from tests.support.world import Api


async def burst(client: WsClient, frames: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Writes every frame before reading any answer; returns the answers by frame."""
    return list(await asyncio.gather(*(client.request(**f) for f in frames)))


async def test_a_protocol_2_burst_is_answered_whole_and_each_thread_keeps_its_order(
    world: Api, live: str
) -> None:
    threads = []
    for cand in ("c1", "c2"):
        await world.candidate(
            "acme", cand, coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
        )
        threads.append((await world.open_thread("acme", "ann", cand, {"private": False}))["id"])
    client = await WsClient.connect(live, world.token("acme", "mem"), subprotocols=[SUBPROTOCOL_V2])
    try:
        assert client.subprotocol == SUBPROTOCOL_V2
        frames: list[dict[str, Any]] = []
        for n in range(20):
            frames.append({"op": "send", "thread": threads[n % 2], "body": f"m{n}"})
            if n % 5 == 0:
                frames.append({"op": "ping"})
        answers = await burst(client, frames)
        assert all(a["type"] in ("ack", "pong") for a in answers), answers
        ids = {
            f["body"]: a["message"]["id"]
            for f, a in zip(frames, answers, strict=True)
            if "body" in f
        }
        for parity in (0, 1):  # each thread: ids grow in the order the sends were written
            bodies = [f"m{n}" for n in range(parity, 20, 2)]
            assert [ids[b] for b in bodies] == sorted(ids[b] for b in bodies)
        history = await world.get("acme", "mem", f"/api/v1/threads/{threads[0]}/messages")
        assert [m["body"] for m in history.json()["messages"]] == [f"m{n}" for n in range(0, 20, 2)]
    finally:
        await client.close()


async def test_a_protocol_1_client_gets_its_answers_in_the_order_of_its_frames(
    world: Api, live: str
) -> None:
    thread = (await world.open_thread("acme", "ann", "c1", {"private": False}))["id"]
    client = await WsClient.connect(live, world.token("acme", "mem"))
    order: list[Any] = []
    client._received = lambda frame: order.append(frame.get("ref"))  # type: ignore[method-assign]
    try:
        frames: list[dict[str, Any]] = []
        for n in range(8):
            frames.append({"op": "send", "thread": thread, "body": f"m{n}"})
            frames.append({"op": "ping"})
        await burst(client, frames)
        refs = [r for r in order if r is not None]
        assert refs == sorted(refs) and len(refs) == len(frames)
    finally:
        await client.close()
