"""Resuming many candidates at once: the batch form of `subscribe`, answered from each
channel's memory of its last events where it reaches back far enough, else from the event
log, with a bounded number of SQL statements whatever the number of candidates.

Statements are counted on the app's engine, for the socket's own ops only (the task that
reads its frames): the server's background loops (sweep, unread counts, email alerts) run
beside them and are no part of a resume's cost.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from sqlalchemy import event
from starlette.applications import Starlette

from channels import hub as hub_module
from channels.protocol import MAX_BATCH_CANDIDATES
from tests.support.realtime import WsClient
from tests.support.world import Api

MESSAGE_EVENTS = ("message.created", "message.deleted")


def message_frames(client: WsClient, candidate: str | None = None) -> list[dict[str, Any]]:
    return [
        f
        for f in client.frames
        if f.get("type") in MESSAGE_EVENTS and candidate in (None, f["candidate"])
    ]


async def socket(world: Api, live: str, user: str) -> WsClient:
    return await WsClient.connect(live, world.token("acme", user))


@contextmanager
def statements(app: Starlette) -> Iterator[list[str]]:
    """The SQL statements the app's sockets run for their ops while inside the block (on
    SQLite each transaction's BEGIN is one of them; PostgreSQL's driver sends it apart)."""
    engine = app.state.services.db.engine.sync_engine
    seen: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        task = asyncio.current_task()
        if task is not None and task.get_name() == "ws-reader":
            seen.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield seen
    finally:
        event.remove(engine, "before_cursor_execute", note)


def reading(found: list[str], table: str) -> list[str]:
    return [s for s in found if f"FROM {table}" in s]


def queries(found: list[str]) -> list[str]:
    return [s for s in found if not s.lstrip().upper().startswith("BEGIN")]


async def wait_for(condition: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "not in time"
        await asyncio.sleep(0.02)


async def candidates_with_threads(world: Api, count: int) -> dict[str, int]:
    """`count` candidates that coord, mem and ann see, each with ann's agency thread."""
    threads = {}
    for i in range(count):
        cand = f"r{i:02d}"
        await world.candidate(
            "acme", cand, coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
        )
        threads[cand] = (await world.open_thread("acme", "ann", cand, {"private": False}))["id"]
    return threads


# --- the batch form -----------------------------------------------------------------------


async def test_a_batch_answers_each_candidate_in_one_ack(world: Api, live: str) -> None:
    await world.candidate(
        "acme", "c2", coordinator="coord", members=["coord"], agency_users=["ann"]
    )
    threads = await candidates_with_threads(world, 2)
    for i in range(3):
        await world.send("acme", "ann", threads["r00"], f"r00 {i}")
    await world.send("acme", "ann", threads["r01"], "r01 0")

    client = await socket(world, live, "mem")
    wanted = [
        {"candidate": "r00", "after": 1},
        {"candidate": "nope"},  # does not exist
        {"candidate": "c2", "after": 0},  # mem does not see it
        {"candidate": "r01"},
    ]
    ack = await client.request("subscribe", candidates=wanted)
    no_such = {"code": "not_found", "message": "No such candidate."}
    assert ack["type"] == "ack" and ack["candidates"] == [
        {"candidate": "r00", "seq": 3, "reset": False},
        {"candidate": "nope", "error": no_such},
        {"candidate": "c2", "error": no_such},
        {"candidate": "r01", "seq": 1, "reset": False},
    ]
    await client.quiet(0.2)
    assert [(f["candidate"], f["seq"]) for f in message_frames(client)] == [("r00", 2), ("r00", 3)]

    # Live from there, for the candidates followed, and nothing of the others.
    coord_thread = await world.open_thread(
        "acme", "coord", "c2", {"private": False, "agency_user": "ann"}
    )
    await world.send("acme", "coord", coord_thread["id"], "c2 live")
    await world.send("acme", "ann", threads["r01"], "r01 live")
    event = await client.next_event(type="message.created")
    assert (event["candidate"], event["seq"], event["message"]["body"]) == ("r01", 2, "r01 live")
    await client.quiet(0.2)
    assert {f["candidate"] for f in message_frames(client)} == {"r00", "r01"}
    await client.close()


async def test_a_malformed_batch_is_invalid_and_follows_nothing(world: Api, live: str) -> None:
    client = await socket(world, live, "mem")
    too_many = [{"candidate": f"x{i}"} for i in range(MAX_BATCH_CANDIDATES + 1)]
    for candidates in (too_many, [], [{"candidate": "c1"}, {"candidate": "c1", "after": 2}]):
        error = await client.request("subscribe", candidates=candidates)
        assert error["type"] == "error" and error["code"] == "invalid", error
    error = await client.request("subscribe", candidates=[{"candidate": "c1", "after": -1}])
    assert error["code"] == "invalid"
    # The socket lives on; the largest batch is fine (its unknown candidates not found).
    most = [{"candidate": "c1"}, *too_many[: MAX_BATCH_CANDIDATES - 1]]
    ack = await client.request("subscribe", candidates=most)
    assert ack["candidates"][0] == {"candidate": "c1", "seq": 0, "reset": False}
    assert all(r["error"]["code"] == "not_found" for r in ack["candidates"][1:])
    await client.close()


# --- what a resume costs ------------------------------------------------------------------


async def test_a_resume_at_the_current_seq_reads_nothing_but_the_access(
    world: Api, live: str, app: Starlette
) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    holder = await socket(world, live, "coord")  # keeps the candidate followed here
    await holder.request("subscribe", candidate="c1")
    for i in range(3):
        await world.send("acme", "ann", agency["id"], f"m{i}")
    await holder.events_of("message.created", 3)

    client = await socket(world, live, "mem")
    with statements(app) as found:
        ack = await client.request("subscribe", candidates=[{"candidate": "c1", "after": 3}])
    assert ack["candidates"] == [{"candidate": "c1", "seq": 3, "reset": False}]
    # The access check, and nothing else: no seq, no event, no thread is read.
    assert len(queries(found)) == 1 and reading(found, "candidates") == queries(found), found
    with statements(app) as found:
        ack = await client.request("subscribe", candidate="c1", after=3)
    assert ack["seq"] == 3 and len(queries(found)) == 1, found
    await client.quiet(0.2)
    assert message_frames(client) == []
    await holder.close()
    await client.close()


@pytest.mark.parametrize("followed_here", [False, True], ids=["cold", "warm"])
async def test_resuming_fifty_candidates_costs_at_most_five_statements(
    world: Api, live: str, app: Starlette, followed_here: bool
) -> None:
    threads = await candidates_with_threads(world, 50)
    holder = None
    if followed_here:  # another socket of this process follows them all
        holder = await socket(world, live, "coord")
        ack = await holder.request("subscribe", candidates=[{"candidate": c} for c in threads])
        assert all("seq" in r for r in ack["candidates"])
    for cand, thread in threads.items():
        await world.send("acme", "ann", thread, f"{cand} 1")
        await world.send("acme", "ann", thread, f"{cand} 2")
    if holder is not None:
        await holder.events_of("message.created", 100)

    client = await socket(world, live, "mem")
    wanted = [{"candidate": c, "after": 1} for c in threads]
    with statements(app) as found:
        ack = await client.request("subscribe", candidates=wanted)
        await wait_for(lambda: len(message_frames(client)) == 50)
    assert len(found) <= 5, found
    assert ack["candidates"] == [{"candidate": c, "seq": 2, "reset": False} for c in threads]
    await client.quiet(0.2)
    frames = message_frames(client)
    assert [(f["candidate"], f["seq"], f["message"]["body"]) for f in frames] == [
        (c, 2, f"{c} 2") for c in threads
    ]
    # And again, from further back.
    await client.close()
    client = await socket(world, live, "mem")
    with statements(app) as found:
        await client.request(
            "subscribe", candidates=[{"candidate": c, "after": 0} for c in threads]
        )
        await wait_for(lambda: len(message_frames(client)) == 100)
    assert len(found) <= 5, found
    for cand in threads:
        assert [f["seq"] for f in message_frames(client, cand)] == [1, 2]
    await client.close()
    if holder is not None:
        await holder.close()


async def test_a_resume_from_further_back_than_memory_reads_the_log(
    world: Api, live: str, app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hub_module, "RECENT_EVENTS", 3)
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    await world.send("acme", "ann", agency["id"], "before anyone followed")
    holder = await socket(world, live, "coord")
    await holder.request("subscribe", candidate="c1")  # opens the channel at seq 1
    for i in range(2, 8):
        await world.send("acme", "ann", agency["id"], f"m{i}")
    await holder.events_of("message.created", 6)  # memory holds seqs 5 to 7

    for after, from_log in ((0, True), (3, True), (4, False), (6, False)):
        client = await socket(world, live, "mem")
        with statements(app) as found:
            ack = await client.request(
                "subscribe", candidates=[{"candidate": "c1", "after": after}]
            )
            await wait_for(lambda c=client, a=after: len(message_frames(c)) == 7 - a)
        assert ack["candidates"] == [{"candidate": "c1", "seq": 7, "reset": False}]
        assert bool(reading(found, "events")) is from_log, (after, found)
        assert [f["seq"] for f in message_frames(client)] == list(range(after + 1, 8))
        await client.quiet(0.1)
        assert len(message_frames(client)) == 7 - after
        await client.close()
    await holder.close()


async def test_a_resume_from_memory_shows_a_deleted_message_as_its_tombstone(
    world: Api, live: str, app: Starlette
) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    holder = await socket(world, live, "coord")
    await holder.request("subscribe", candidate="c1")
    kept = await world.send("acme", "ann", agency["id"], "kept")
    gone = await world.send("acme", "ann", agency["id"], "regretted")
    response = await world.delete("acme", "ann", f"/api/v1/messages/{gone['id']}")
    assert response.status_code == 204
    await holder.events_of("message.deleted", 1)

    client = await socket(world, live, "mem")
    with statements(app) as found:
        await client.request("subscribe", candidates=[{"candidate": "c1", "after": 0}])
        await wait_for(lambda: len(message_frames(client)) == 3)
    assert reading(found, "events") == []  # from memory
    frames = message_frames(client)
    assert [f["message"] for f in frames[:2]] == [kept, {**gone, "body": None, "deleted": True}]
    assert frames[2]["type"] == "message.deleted" and frames[2]["message_id"] == gone["id"]
    await holder.close()
    await client.close()


# --- who sees what ------------------------------------------------------------------------


async def test_a_member_added_since_sees_the_agency_threads_events_from_memory(
    world: Api, live: str, app: Starlette
) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    private = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    holder = await socket(world, live, "coord")
    await holder.request("subscribe", candidate="c1")
    await world.send("acme", "ann", agency["id"], "for the team")
    await world.send("acme", "ann", private["id"], "for coord only")
    await world.send("acme", "ann", agency["id"], "for the team again")
    await holder.events_of("message.created", 3)

    # `out` was in no audience of these events; it sees the candidate now.
    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord", "mem", "out"], agency_users=["ann"]
    )
    client = await socket(world, live, "out")
    with statements(app) as found:
        ack = await client.request("subscribe", candidates=[{"candidate": "c1", "after": 0}])
        await wait_for(lambda: len(message_frames(client)) == 2)
    assert ack["candidates"] == [{"candidate": "c1", "seq": 3, "reset": False}]
    assert reading(found, "events") == []  # from memory
    await client.quiet(0.2)
    assert [(f["seq"], f["message"]["body"]) for f in message_frames(client)] == [
        (1, "for the team"),
        (3, "for the team again"),
    ]
    await client.close()
    await holder.close()


@pytest.mark.parametrize("followed_here", [False, True], ids=["cold", "warm"])
async def test_a_revoked_user_gets_nothing(world: Api, live: str, followed_here: bool) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    holder = await socket(world, live, "coord")
    if followed_here:
        await holder.request("subscribe", candidate="c1")
    mem = await socket(world, live, "mem")
    ann = await socket(world, live, "ann")
    for client in (mem, ann):
        ack = await client.request("subscribe", candidates=[{"candidate": "c1"}])
        assert ack["candidates"] == [{"candidate": "c1", "seq": 0, "reset": False}]
        await client.close()
    await world.send("acme", "ann", agency["id"], "before")
    # mem loses its access, ann is unlinked; the candidate goes on with another agency user
    # (ann's own thread takes no more posts).
    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord"], agency_users=["abe"]
    )
    other = await world.open_thread("acme", "coord", "c1", {"agency_user": "abe", "private": False})
    await world.send("acme", "coord", other["id"], "after")

    for user in ("mem", "ann"):
        client = await socket(world, live, user)
        ack = await client.request("subscribe", candidates=[{"candidate": "c1", "after": 0}])
        assert ack["candidates"][0]["error"]["code"] == "not_found", ack
        await world.send("acme", "coord", other["id"], f"while {user} waits")
        await client.quiet(0.3)
        assert message_frames(client) == []
        await client.close()
    await holder.close()


@pytest.mark.parametrize("followed_here", [False, True], ids=["cold", "warm"])
async def test_a_batch_resume_during_sends_has_no_gap_and_no_duplicate(
    world: Api, live: str, followed_here: bool
) -> None:
    threads = await candidates_with_threads(world, 3)
    holder = None
    if followed_here:
        holder = await socket(world, live, "coord")
        await holder.request("subscribe", candidates=[{"candidate": c} for c in threads])
    for thread in threads.values():
        for i in range(4):
            await world.send("acme", "ann", thread, f"early {i}")
    last_seen = 2

    client = await socket(world, live, "mem")
    count = 10
    sends = asyncio.gather(
        *(
            world.send("acme", "ann", thread, f"burst {i}")
            for i in range(count)
            for thread in threads.values()
        )
    )
    wanted = [{"candidate": c, "after": last_seen} for c in threads]
    _, ack = await asyncio.gather(sends, client.request("subscribe", candidates=wanted))
    assert all(r["reset"] is False for r in ack["candidates"]), ack
    total = 4 + count
    await wait_for(lambda: len(message_frames(client)) == 3 * (total - last_seen), 15)
    await client.quiet(0.3)
    for cand in threads:
        seqs = [f["seq"] for f in message_frames(client, cand)]
        assert seqs == list(range(last_seen + 1, total + 1)), (cand, seqs)
    await client.close()
    if holder is not None:
        await holder.close()
