"""Several `agency-messaging serve` processes sharing PostgreSQL and Redis.

Two real server processes (nodes A and B) run over one database and one private Redis.
Events cross processes through Redis pub/sub; the per-candidate event log lets clients
resume on another node and lets each node catch its connected clients up after the broker
link drops. Nothing here asserts a timing bound; the cross-process latency is only printed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import httpx
import pytest

from harness.services import PostgresServer, RedisServer
from server.domain.auth import make_user_token
from tests.support.cluster import Client, Cluster, Lost, node_env, request_or_lost
from tests.support.delivery import history, readyz
from tests.support.world import SECRET, Api, migrate_database

# Its tests share module-scoped fixtures: one worker runs them all.
pytestmark = pytest.mark.xdist_group("cluster")

ORG = "clu"
MEMBERS = ("coord", "mem")
AGENT = "ann"
CANDIDATES = ("c1", "lat", "res", "out", "term", "kill")


# --- the cluster --------------------------------------------------------------------------


async def _provision(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        await Api(client).team(ORG, members=MEMBERS, agent=AGENT, candidates=CANDIDATES)


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    name = f"am_cluster_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    url = postgres.url(name)
    asyncio.run(migrate_database(url))
    redis = RedisServer.start()
    workdir = tmp_path_factory.mktemp("cluster")
    env = node_env(url, redis)
    cluster = Cluster(env, workdir, redis)
    try:
        cluster.start_node("a")
        cluster.start_node("b")
        asyncio.run(_provision(cluster.url("a")))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nodes(cluster: Cluster) -> Cluster:
    """The cluster with both nodes serving (a node stopped by an earlier test is replaced)."""
    cluster.ensure_running()
    return cluster


@pytest.fixture
async def api_a(nodes: Cluster) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=nodes.url("a"), timeout=15) as client:
        yield Api(client)


@pytest.fixture
async def api_b(nodes: Cluster) -> AsyncIterator[Api]:
    async with httpx.AsyncClient(base_url=nodes.url("b"), timeout=15) as client:
        yield Api(client)


def token(user: str) -> str:
    return make_user_token(SECRET, ORG, user)


# --- clients ------------------------------------------------------------------------------


async def connect(base_url: str, user: str) -> Client:
    client = await Client.connect(base_url, token(user))
    assert isinstance(client, Client)
    return client


async def subscribe(client: Client, candidate: str, after: int | None = None) -> dict[str, Any]:
    fields: dict[str, Any] = {"candidate": candidate}
    if after is not None:
        fields["after"] = after
    try:
        ack = await request_or_lost(client, "subscribe", **fields)
    except Lost as lost:
        raise AssertionError(f"the socket died before the subscribe was answered: {lost}") from None
    assert ack["type"] == "ack", ack
    assert ack["reset"] is False, ack
    return ack


async def wait_created(
    client: Client, candidate: str, count: int, timeout: float = 10.0
) -> list[dict[str, Any]]:
    """Waits until `client` holds at least `count` message.created frames of `candidate`."""
    await poll_until(lambda: len(client.created(candidate)) >= count, timeout)
    return client.created(candidate)


async def poll_until(condition: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for _ in itertools.count():
        if condition() or time.monotonic() > deadline:
            return
        await asyncio.sleep(0.02)


def assert_stream(events: list[dict[str, Any]], after: int, messages: list[dict[str, Any]]) -> None:
    """`events` are exactly `messages`, once each, with the seqs after `after` in order."""
    seqs = [e["seq"] for e in events]
    assert seqs == list(range(after + 1, after + 1 + len(messages))), seqs
    assert [e["message"]["id"] for e in events] == [m["id"] for m in messages]
    assert [e["message"]["body"] for e in events] == [m["body"] for m in messages]


async def assert_no_more(client: Client, candidate: str, seconds: float) -> None:
    """Nothing more of `candidate` comes within `seconds` (no duplicate, nothing extra)."""
    seen = len(client.created(candidate))
    await asyncio.sleep(seconds)
    assert client.created(candidate)[seen:] == []


async def close_all(*clients: Client) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            await client.close()


async def agency_thread(api: Api, cand: str) -> int:
    thread = await api.open_thread(ORG, AGENT, cand, {"private": False})
    return int(thread["id"])


async def rest_send(api: Api, thread: int, body: str, **extra: Any) -> dict[str, Any]:
    response = await api.post(
        ORG, AGENT, f"/api/v1/threads/{thread}/messages", {"body": body, **extra}
    )
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    return result


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(p / 100 * len(ordered) + 0.5) - 1))
    return ordered[index]


# --- 1. cross-process delivery ----------------------------------------------------------


async def test_cross_process_delivery_and_latency(nodes: Cluster, api_a: Api) -> None:
    cand = "lat"
    thread = await agency_thread(api_a, cand)
    sender = await connect(nodes.url("a"), AGENT)
    receiver = await connect(nodes.url("b"), "mem")
    bystander = await connect(nodes.url("b"), "coord")  # connected on B, never subscribed
    try:
        start = (await subscribe(receiver, cand))["seq"]
        pong = await bystander.request("ping")
        assert pong["type"] == "pong"

        first = await sender.request("send", thread=thread, body="over the wire", client_id="l-ws")
        assert first["type"] == "ack", first
        event = await receiver.next_event(type="message.created")
        assert event["message"] == first["message"]
        assert event["seq"] == start + 1 and event["candidate"] == cand
        unread = await bystander.next_event(type="unread")
        assert unread["candidate"] == cand and unread["thread"] == thread
        assert unread["unread"] >= 1 and unread["candidate_unread"] >= 1

        by_rest = await rest_send(api_a, thread, "over REST", client_id="l-rest")
        event = await receiver.next_event(type="message.created")
        assert event["message"] == by_rest and event["seq"] == start + 2

        count = 300
        sent_at: dict[int, float] = {}
        round_trips: list[float] = []
        acked: list[dict[str, Any]] = []
        for i in range(count):
            t0 = time.perf_counter()
            ack = await sender.request("send", thread=thread, body=f"n{i}", client_id=f"l-{i}")
            assert ack["type"] == "ack", ack
            sent_at[ack["message"]["id"]] = t0
            round_trips.append((time.perf_counter() - t0) * 1000)
            acked.append(ack["message"])

        events = await wait_created(receiver, cand, count + 2, timeout=20)
        assert_stream(events, start, [first["message"], by_rest, *acked])
        latencies = [
            (arrived - sent_at[frame["message"]["id"]]) * 1000
            for frame, arrived in zip(receiver.frames, receiver.arrivals, strict=True)
            if frame.get("type") == "message.created" and frame["message"]["id"] in sent_at
        ]
        assert len(latencies) == count
        print(
            f"CROSS-PROCESS LATENCY n={count} p50={percentile(latencies, 50):.2f}ms "
            f"p99={percentile(latencies, 99):.2f}ms max={max(latencies):.2f}ms "
            "(WS send on node A -> message.created on node B, via Redis; "
            f"ack round trip on A p50={percentile(round_trips, 50):.2f}ms "
            f"p99={percentile(round_trips, 99):.2f}ms)"
        )
        await assert_no_more(receiver, cand, 0.3)
    finally:
        await close_all(sender, receiver, bystander)


# --- 2. resume across nodes -------------------------------------------------------------


async def test_resume_on_the_other_node(nodes: Cluster, api_a: Api, api_b: Api) -> None:
    cand = "res"
    thread = await agency_thread(api_a, cand)
    on_a = await connect(nodes.url("a"), "mem")
    start = (await subscribe(on_a, cand))["seq"]
    early = [await rest_send(api_a, thread, f"early {i}") for i in range(2)]
    events = await wait_created(on_a, cand, 2)
    assert_stream(events, start, early)
    last = events[-1]["seq"]
    await on_a.close()

    missed = [await rest_send(api_b, thread, f"missed {i}") for i in range(5)]
    on_b = await connect(nodes.url("b"), "mem")
    try:
        await subscribe(on_b, cand, after=last)
        replayed = await wait_created(on_b, cand, 5)
        assert_stream(replayed, last, missed)
        live = [await rest_send(api_a, thread, f"live {i}") for i in range(2)]
        events = await wait_created(on_b, cand, 7)
        assert_stream(events, last, [*missed, *live])
        await assert_no_more(on_b, cand, 0.3)
    finally:
        await close_all(on_b)


# --- 3. Redis outage ----------------------------------------------------------------------


async def test_redis_outage_loses_nothing(nodes: Cluster, api_a: Api, api_b: Api) -> None:
    cand = "out"
    thread = await agency_thread(api_a, cand)
    stayer = await connect(nodes.url("b"), "mem")  # stays connected throughout
    leaver = await connect(nodes.url("a"), "coord")  # leaves, then resumes after the outage
    http = httpx.AsyncClient()
    try:
        start = (await subscribe(stayer, cand))["seq"]
        await subscribe(leaver, cand)
        before = await rest_send(api_a, thread, "before the outage")
        assert_stream(await wait_created(stayer, cand, 1), start, [before])
        leaver_last = (await wait_created(leaver, cand, 1))[-1]["seq"]
        await leaver.close()

        nodes.redis.pause()
        paused_at = time.monotonic()
        during: list[dict[str, Any]] = []
        for i in range(3):
            during.append(await rest_send(api_a, thread, f"outage via A {i}"))
            during.append(await rest_send(api_b, thread, f"outage via B {i}"))
        for name in ("a", "b"):
            deadline = time.monotonic() + 10
            response = await readyz(http, nodes.url(name), timeout=5)
            while response.status_code != 503 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                response = await readyz(http, nodes.url(name), timeout=5)
            assert response.status_code == 503, (name, response.text)
            assert "broker" in response.text, response.text
            assert "database" not in response.json().get("failing", []), response.text
        await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - paused_at)))
        nodes.redis.resume()

        for name in ("a", "b"):
            deadline = time.monotonic() + 15
            response = await readyz(http, nodes.url(name), timeout=5)
            while response.status_code != 200 and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
                response = await readyz(http, nodes.url(name), timeout=5)
            assert response.status_code == 200, (name, response.text)

        # The stayer never reconnected: it is caught up from the event log.
        events = await wait_created(stayer, cand, 1 + len(during), timeout=15)
        assert stayer.socket.close_code is None
        assert_stream(events, start, [before, *during])
        after = [await rest_send(api_a, thread, f"after the outage {i}") for i in range(2)]
        events = await wait_created(stayer, cand, 3 + len(during))
        assert_stream(events, start, [before, *during, *after])
        await assert_no_more(stayer, cand, 0.5)

        leaver = await connect(nodes.url("a"), "coord")
        await subscribe(leaver, cand, after=leaver_last)
        events = await wait_created(leaver, cand, len(during) + 2)
        assert_stream(events, leaver_last, [*during, *after])
        await assert_no_more(leaver, cand, 0.3)
    finally:
        if nodes.redis.process is None:
            nodes.redis.resume()
        await http.aclose()
        await close_all(stayer, leaver)


# --- 4. SIGTERM ---------------------------------------------------------------------------


async def test_sigterm_closes_with_1012_and_clients_resume_elsewhere(
    nodes: Cluster, api_b: Api
) -> None:
    cand = "term"
    thread = await agency_thread(api_b, cand)
    users = ("mem", "coord")
    clients = [await connect(nodes.url("a"), user) for user in users]
    moved: list[Client] = []
    try:
        for client in clients:
            await subscribe(client, cand)
        first = await rest_send(api_b, thread, "before SIGTERM")
        lasts = []
        for client in clients:
            events = await wait_created(client, cand, 1)
            assert [e["message"] for e in events] == [first]
            lasts.append(events[-1]["seq"])

        node_a = nodes.nodes["a"]
        stopping = asyncio.create_task(asyncio.to_thread(node_a.terminate, 20))
        meanwhile: list[dict[str, Any]] = []
        while not stopping.done() and len(meanwhile) < 40:
            meanwhile.append(await rest_send(api_b, thread, f"during shutdown {len(meanwhile)}"))
            await asyncio.sleep(0.02)
        try:
            code = await stopping
        except subprocess.TimeoutExpired:
            pytest.fail(f"node A did not exit within 20 s of SIGTERM\n{node_a.log()}")
        for client in clients:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(client.socket.wait_closed(), 5)
            assert client.socket.close_code == 1012, (
                client.socket.close_code,
                client.socket.close_reason,
            )
        meanwhile += [await rest_send(api_b, thread, f"after exit {i}") for i in range(2)]

        for user, last in zip(users, lasts, strict=True):
            client = await connect(nodes.url("b"), user)
            moved.append(client)
            await subscribe(client, cand, after=last)
        live = await rest_send(api_b, thread, "live on B")
        for client, last in zip(moved, lasts, strict=True):
            events = await wait_created(client, cand, len(meanwhile) + 1)
            assert_stream(events, last, [*meanwhile, live])
            await assert_no_more(client, cand, 0.3)
        # uvicorn re-raises a captured SIGTERM after its graceful shutdown unless told not to.
        assert code == 0, f"exit status {code} after SIGTERM\n{node_a.log()[-3000:]}"
    finally:
        await close_all(*clients, *moved)


# --- 5. access revoked --------------------------------------------------------------------


async def test_revocation_on_a_reaches_subscriber_on_b(nodes: Cluster, api_a: Api) -> None:
    cand = "c1"
    thread = await agency_thread(api_a, cand)
    member = await connect(nodes.url("b"), "mem")
    control = await connect(nodes.url("b"), "coord")
    try:
        start = (await subscribe(member, cand))["seq"]
        await subscribe(control, cand)
        first = await rest_send(api_a, thread, "seen by both")
        assert_stream(await wait_created(member, cand, 1), start, [first])
        await member.next_event(type="unread")

        await api_a.candidate(
            ORG, cand, coordinator="coord", members=["coord"], agency_users=[AGENT]
        )
        gone = await member.next_event(type="unsubscribed")
        assert gone == {"type": "unsubscribed", "candidate": cand, "reason": "access"}
        revoked_at = len(member.frames)

        hidden = await rest_send(api_a, thread, "no longer for mem")
        assert_stream(await wait_created(control, cand, 2), start, [first, hidden])
        await member.quiet(1.0)
        later = member.frames[revoked_at:]
        assert not [f for f in later if f.get("type", "").startswith("message.")], later
        # The revocation clears mem's dot on c1 (reported as 0); the hidden message never
        # lights it again.
        dots = [f for f in later if f.get("type") == "unread" and f.get("candidate") == cand]
        assert dots and all(f["unread"] == 0 and f["candidate_unread"] == 0 for f in dots), later
        again = await member.request("subscribe", candidate=cand)
        assert again["type"] == "error" and again["code"] == "not_found", again
    finally:
        await close_all(member, control)
        await api_a.candidate(
            ORG, cand, coordinator="coord", members=list(MEMBERS), agency_users=[AGENT]
        )


# --- 6. kill -9 mid-stream -----------------------------------------------------------------


async def test_kill_9_mid_stream_then_retry_with_client_id(nodes: Cluster, api_b: Api) -> None:
    cand = "kill"
    thread = await agency_thread(api_b, cand)
    total, kill_at = 60, 20
    clients = [await connect(nodes.url("a"), AGENT)]
    start = (await subscribe(clients[0], cand))["seq"]
    acked: dict[int, dict[str, Any]] = {}
    killer: asyncio.Task[None] | None = None
    reconnects = 0
    try:
        i = 0
        while i < total:
            if i == kill_at and killer is None:
                killer = asyncio.create_task(asyncio.to_thread(nodes.nodes["a"].kill))
            client = clients[-1]
            try:
                ack = await request_or_lost(
                    client, "send", thread=thread, body=f"k{i}", client_id=f"k-{i}"
                )
            except Lost:
                reconnects += 1
                assert reconnects == 1, "lost a connection to node B"
                last = max(c.last_seq(cand, start) for c in clients)
                moved = await connect(nodes.url("b"), AGENT)
                clients.append(moved)
                await subscribe(moved, cand, after=last)
                continue  # retry message i with the same client_id
            assert ack["type"] == "ack", ack
            assert ack["message"]["client_id"] == f"k-{i}"
            acked[i] = ack["message"]
            i += 1
        assert killer is not None
        await killer
        assert reconnects == 1, "the kill never interrupted the stream"

        await poll_until(lambda: sum(len(c.created(cand)) for c in clients) >= total, 10)
        await asyncio.sleep(0.3)
        stream = [e for c in clients for e in c.created(cand)]
        assert_stream(stream, start, [acked[i] for i in range(total)])

        stored = await history(api_b.client, nodes.url("b"), thread, org=ORG, user=AGENT)
        counts = Counter(m["client_id"] for m in stored)
        assert counts == Counter(f"k-{i}" for i in range(total)), counts
        assert [m["id"] for m in stored] == [acked[i]["id"] for i in range(total)]
    finally:
        if killer is not None:
            with contextlib.suppress(Exception):
                await killer
        await close_all(*clients)
