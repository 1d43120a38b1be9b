""" "Seen by": how far the others have read a thread, over REST (`Thread.seen`) and live
(`thread.read` frames), with its privacy: members see each reader by name, the agency user
only the hiring team as a whole, nobody their own reads, and only people who see the thread
now count.

Absence is never waited for: a later frame that a socket does get (a message, an unread
count) travels behind the one it must not get, so everything before it is all it got."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import event
from starlette.applications import Starlette

from harness.services import PostgresServer, RedisServer
from tests.support.cluster import Cluster
from tests.support.realtime import WsClient
from tests.support.world import SECRET, SERVICE_TOKEN, Api, migrate_database

ANN = {"id": "ann", "name": "Ann", "kind": "agency", "agency": {"id": "ag", "name": "Ag"}}
MEM = {"id": "mem", "name": "Mem", "kind": "member", "agency": None}
COORD = {"id": "coord", "name": "Coord", "kind": "member", "agency": None}


async def connect(live: str, world: Api, user: str, *candidates: str) -> WsClient:
    client = await WsClient.connect(live, world.token("acme", user))
    for candidate in candidates:
        ack = await client.request("subscribe", candidate=candidate)
        assert ack["type"] == "ack", ack
    return client


async def reads_before(client: WsClient, barrier: str) -> list[dict[str, Any]]:
    """The `thread.read` frames the client got before its next frame of type `barrier`."""
    frames = []
    while (frame := await client.next_event()).get("type") != barrier:
        frames.append(frame)
    return [f for f in frames if f["type"] == "thread.read"]


def told(thread: int, reader: dict[str, Any] | None, message_id: int, at: str) -> dict[str, Any]:
    return {
        "type": "thread.read",
        "candidate": "c1",
        "thread": thread,
        "reader": reader,
        "team": reader is None,
        "message_id": message_id,
        "at": at,
    }


async def read(world: Api, user: str, thread: int, message_id: int) -> None:
    response = await world.post(
        "acme", user, f"/api/v1/threads/{thread}/read", {"message_id": message_id}
    )
    assert response.status_code == 200, response.text


async def seen(world: Api, user: str, thread: int, candidate: str = "c1") -> list[dict[str, Any]]:
    response = await world.get("acme", user, f"/api/v1/candidates/{candidate}/threads")
    assert response.status_code == 200, response.text
    (found,) = [t for t in response.json()["threads"] if t["id"] == thread]
    result: list[dict[str, Any]] = found["seen"]
    return result


async def test_members_see_who_read_and_the_agency_user_only_the_team(
    world: Api, live: str
) -> None:
    opened = await world.open_thread("acme", "ann", "c1", {"private": False})
    thread = opened["id"]
    assert opened["seen"] == []
    m1 = (await world.send("acme", "ann", thread, "Hello"))["id"]
    m2 = (await world.send("acme", "coord", thread, "Hi Ann"))["id"]
    mem, coord, ann = [await connect(live, world, user, "c1") for user in ("mem", "coord", "ann")]

    # The agency user reads (the socket op): each member is told, by name.
    assert (await ann.request("read", thread=thread, message_id=m2))["unread"] == 0
    ann_read = await mem.next_event(type="thread.read")
    assert ann_read == told(thread, ANN, m2, ann_read["at"])
    assert ann_read["at"].endswith("Z")
    assert await coord.next_event(type="thread.read") == ann_read

    # A member reads (REST): the other member is told by name, the agency user of the team.
    await read(world, "mem", thread, m1)
    mem_read = await coord.next_event(type="thread.read")
    assert mem_read == told(thread, MEM, m1, mem_read["at"])
    # (Its own read came first: had it been sent, it would be this frame.)
    team = await ann.next_event(type="thread.read")
    assert team == told(thread, None, m1, mem_read["at"])

    # The coordinator reads further: the team's furthest moved, and it is told again.
    await read(world, "coord", thread, m2)
    coord_read = await mem.next_event(type="thread.read")
    assert coord_read == told(thread, COORD, m2, coord_read["at"])
    assert await ann.next_event(type="thread.read") == told(thread, None, m2, coord_read["at"])

    # The member catches up with it: the team's furthest does not move, the agency user is
    # not told (nor is the member of its own read); the coordinator is.
    await read(world, "mem", thread, m2)
    mem_again = await coord.next_event(type="thread.read")
    assert mem_again == told(thread, MEM, m2, mem_again["at"])
    await world.send("acme", "coord", thread, "Anything else?")
    assert await reads_before(ann, "message.created") == []
    assert await reads_before(mem, "message.created") == []

    # REST shows the same: named to members (furthest first), the team to the agency user
    # (its furthest, as of when it was first reached), never the caller itself.
    assert await seen(world, "mem", thread) == [
        {"reader": COORD, "team": False, "message_id": m2, "at": coord_read["at"]},
        {"reader": ANN, "team": False, "message_id": m2, "at": ann_read["at"]},
    ]
    assert await seen(world, "coord", thread) == [
        {"reader": MEM, "team": False, "message_id": m2, "at": mem_again["at"]},
        {"reader": ANN, "team": False, "message_id": m2, "at": ann_read["at"]},
    ]
    team_seen = [{"reader": None, "team": True, "message_id": m2, "at": coord_read["at"]}]
    assert await seen(world, "ann", thread) == team_seen

    # A read that does not move the marker (back, or to where it is) tells nobody anything.
    await read(world, "coord", thread, m1)
    assert (await ann.request("read", thread=thread, message_id=m1))["unread"] == 1
    await read(world, "coord", thread, m2)
    await world.send("acme", "mem", thread, "Thanks")
    assert await reads_before(mem, "message.created") == []
    assert await reads_before(ann, "message.created") == []
    assert await seen(world, "ann", thread) == team_seen
    for client in (mem, coord, ann):
        await client.close()


async def test_a_private_thread_is_told_to_its_two_people_alone(world: Api, live: str) -> None:
    agency = (await world.open_thread("acme", "ann", "c1", {"private": False}))["id"]
    private = (
        await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": True})
    )["id"]
    p1 = (await world.send("acme", "ann", private, "Between us"))["id"]
    mem, coord, ann = [await connect(live, world, user, "c1") for user in ("mem", "coord", "ann")]

    await ann.request("read", thread=private, message_id=p1)
    ann_read = await mem.next_event(type="thread.read")
    assert ann_read == told(private, ANN, p1, ann_read["at"])
    await read(world, "mem", private, p1)
    team = await ann.next_event(type="thread.read")
    assert team == told(private, None, p1, team["at"])

    await world.send("acme", "ann", agency, "To everyone")
    assert await reads_before(coord, "message.created") == []
    assert await seen(world, "mem", private) == [
        {"reader": ANN, "team": False, "message_id": p1, "at": ann_read["at"]}
    ]
    assert await seen(world, "ann", private) == [
        {"reader": None, "team": True, "message_id": p1, "at": team["at"]}
    ]
    for client in (mem, coord, ann):
        await client.close()


async def test_a_viewer_who_is_not_subscribed_gets_nothing(world: Api, live: str) -> None:
    thread = (await world.open_thread("acme", "ann", "c1", {"private": False}))["id"]
    m1 = (await world.send("acme", "ann", thread, "Hello"))["id"]
    coord = await connect(live, world, "coord")  # connected, following no candidate
    ann = await connect(live, world, "ann")
    await ann.request("read", thread=thread, message_id=m1)
    await world.send("acme", "ann", thread, "Are you there?")
    assert await reads_before(coord, "unread") == []
    for client in (coord, ann):
        await client.close()


async def test_a_member_who_lost_access_is_not_counted_and_gets_nothing(
    world: Api, live: str
) -> None:
    await world.candidate(
        "acme", "c2", coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
    )
    thread = (await world.open_thread("acme", "ann", "c1", {"private": False}))["id"]
    other = (await world.open_thread("acme", "ann", "c2", {"private": False}))["id"]
    m1 = (await world.send("acme", "ann", thread, "Hello"))["id"]
    m2 = (await world.send("acme", "ann", thread, "Hello again"))["id"]
    await read(world, "coord", thread, m1)
    await read(world, "mem", thread, m2)
    mem = await connect(live, world, "mem", "c1", "c2")
    coord = await connect(live, world, "coord", "c1")

    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord"], agency_users=["ann"]
    )
    assert (await mem.next_event(type="unsubscribed"))["candidate"] == "c1"
    await world.post("acme", "ann", f"/api/v1/threads/{thread}/read", {"message_id": m2})
    ann_read = await coord.next_event(type="thread.read")
    assert ann_read == told(thread, ANN, m2, ann_read["at"])
    await world.send("acme", "ann", other, "On c2")
    assert await reads_before(mem, "message.created") == []

    # Its marker (the furthest of the team) counts no more, for anyone.
    coord_seen = await seen(world, "coord", thread)
    assert coord_seen == [{"reader": ANN, "team": False, "message_id": m2, "at": ann_read["at"]}]
    (team,) = await seen(world, "ann", thread)
    assert (team["reader"], team["team"], team["message_id"]) == (None, True, m1)
    for client in (mem, coord):
        await client.close()


@contextmanager
def selects(app: Starlette) -> Iterator[list[str]]:
    engine = app.state.services.db.engine.sync_engine
    found: list[str] = []

    def note(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            found.append(statement)

    event.listen(engine, "before_cursor_execute", note)
    try:
        yield found
    finally:
        event.remove(engine, "before_cursor_execute", note)


async def test_seen_is_read_in_one_statement_for_every_thread(world: Api, app: Starlette) -> None:
    agency = (await world.open_thread("acme", "ann", "c1", {"private": False}))["id"]
    m1 = (await world.send("acme", "ann", agency, "Hello"))["id"]
    await read(world, "coord", agency, m1)
    with selects(app) as one_thread:
        assert len(await seen(world, "mem", agency)) == 1
    private = (
        await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": True})
    )["id"]
    p1 = (await world.send("acme", "ann", private, "Between us"))["id"]
    await read(world, "ann", private, p1)
    with selects(app) as two_threads:
        assert len(await seen(world, "mem", private)) == 1
    assert len(two_threads) == len(one_thread)
    assert len([s for s in two_threads if "FROM read_markers" in s]) == 1


# --- across processes ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Two `serve` processes over one PostgreSQL database and one Redis."""
    name = f"am_seen_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    url = postgres.url(name)
    asyncio.run(migrate_database(url))
    env = {
        "AM_DATABASE_URL": url,
        "AM_SECRET": SECRET,
        "AM_SERVICE_TOKEN": SERVICE_TOKEN,
        "AM_SEND_RATE_PER_MINUTE": "0",
    }
    cluster = Cluster(env, tmp_path_factory.mktemp("seen"), RedisServer.start())
    cluster.env["AM_BROKER_URL"] = cluster.redis.url
    try:
        cluster.start_node("a")
        cluster.start_node("b")
        yield cluster
    finally:
        cluster.stop()
        cluster.redis.stop()


@pytest.mark.xdist_group("seen_by_cluster")
async def test_reads_cross_processes_through_the_broker(cluster: Cluster) -> None:
    async with (
        httpx.AsyncClient(base_url=cluster.url("a"), timeout=15) as a,
        httpx.AsyncClient(base_url=cluster.url("b"), timeout=15) as b,
    ):
        api_a, api_b = Api(a), Api(b)
        await api_a.team("acme", members=("coord", "mem"), agent="ann", candidates=("c1",))
        thread = (await api_a.open_thread("acme", "ann", "c1", {"private": False}))["id"]
        m1 = (await api_a.send("acme", "ann", thread, "Hello"))["id"]
        coord, ann = [
            await connect(cluster.url("a"), api_a, user, "c1") for user in ("coord", "ann")
        ]
        mem = await connect(cluster.url("b"), api_b, "mem", "c1")

        await read(api_b, "mem", thread, m1)  # on node b: told on node a
        mem_read = await coord.next_event(type="thread.read")
        assert mem_read == told(thread, MEM, m1, mem_read["at"])
        assert await ann.next_event(type="thread.read") == told(thread, None, m1, mem_read["at"])

        await ann.request("read", thread=thread, message_id=m1)  # on node a: told on node b
        ann_read = await mem.next_event(type="thread.read")
        assert ann_read == told(thread, ANN, m1, ann_read["at"])
        for client in (coord, ann, mem):
            await client.close()
