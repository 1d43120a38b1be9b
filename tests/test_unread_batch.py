"""Protocol 2 over a real socket: a client that offers the `agency-messaging.v2` subprotocol
gets its unread counts in `unread.batch` frames, while a client that does not, or that
offers something else, keeps getting protocol 1's `unread` frames."""

from __future__ import annotations

from typing import Any

from channels.protocol import SUBPROTOCOL_V2
from tests.support.realtime import WsClient
from tests.support.world import Api

Counts = dict[int, tuple[str, int, int, int]]  # thread -> candidate, unread, of candidate, total


def counts_in(frame: dict[str, Any]) -> Counts:
    """The counts a frame of either protocol tells, by thread."""
    if frame["type"] == "unread":
        threads, total = [frame], frame["total_unread"]
    else:
        threads, total = frame["threads"], frame["total_unread"]
    return {
        t["thread"]: (t["candidate"], t["unread"], t["candidate_unread"], total) for t in threads
    }


async def counts_reach(client: WsClient, kind: str, expected: Counts) -> None:
    """Reads `kind` frames until the latest counts of each expected thread, with the newest
    total, are `expected` (batching may fold any number of the changes into one frame, or
    split them over several: a thread that did not move is not in the later ones)."""
    latest: Counts = {}
    total = None

    def now() -> Counts:
        return {t: (c[0], c[1], c[2], total) for t, c in latest.items() if t in expected}

    while now() != expected:
        frame = await client.next_event(timeout=10, type=kind)
        latest |= counts_in(frame)
        total = frame["total_unread"]


def unread_kinds(client: WsClient) -> set[str]:
    return {f["type"] for f in client.frames if f["type"].startswith("unread")}


async def test_a_protocol_2_client_gets_batches_and_a_protocol_1_client_frames_per_thread(
    world: Api, live: str
) -> None:
    await world.candidate(
        "acme", "c2", coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
    )
    t1 = await world.open_thread("acme", "ann", "c1", {"private": False})
    t2 = await world.open_thread("acme", "ann", "c2", {"private": False})
    token = world.token("acme", "mem")
    new = await WsClient.connect(live, token, subprotocols=[SUBPROTOCOL_V2])
    old = await WsClient.connect(live, token)
    other = await WsClient.connect(live, token, subprotocols=["chat.example"])
    assert (new.subprotocol, old.subprotocol, other.subprotocol) == (SUBPROTOCOL_V2, None, None)
    for client in (new, old, other):
        assert (await client.request("ping"))["type"] == "pong"

    await world.send("acme", "ann", t1["id"], "one")
    await world.send("acme", "ann", t1["id"], "two")
    await world.send("acme", "ann", t2["id"], "elsewhere")
    expected = {t1["id"]: ("c1", 2, 2, 3), t2["id"]: ("c2", 1, 1, 3)}
    await counts_reach(new, "unread.batch", expected)
    for client in (old, other):
        await counts_reach(client, "unread", expected)
    assert unread_kinds(new) == {"unread.batch"}
    assert unread_kinds(old) == unread_kinds(other) == {"unread"}
    batches = [f for f in new.frames if f["type"] == "unread.batch"]
    assert all(f["summary"] is None and f["threads"] for f in batches)
    # Never more frames than protocol 1 sends for the same changes.
    assert len(batches) <= len([f for f in old.frames if f["type"] == "unread"])

    # A read clears the thread's dot on the other socket, in a batch there too.
    messages = await world.get("acme", "mem", f"/api/v1/threads/{t1['id']}/messages")
    newest = max(m["id"] for m in messages.json()["messages"])
    ack = await old.request("read", thread=t1["id"], message_id=newest)
    assert ack["unread"] == 0
    await counts_reach(new, "unread.batch", {t1["id"]: ("c1", 0, 0, 1)})
    for client in (new, old, other):
        await client.close()
