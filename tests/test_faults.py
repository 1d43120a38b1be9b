"""Faults, with real processes: a server killed with SIGKILL, Redis down, PostgreSQL
restarted, an SMTP relay that defers, stalls and refuses.

Two real `agency-messaging serve` processes (nodes A and B) share a private PostgreSQL
cluster (started here, so that restarting it disturbs no other test) and a private Redis.
Clients are `Follower`s: each follows a few candidates and, when its socket dies, reconnects
and resumes every candidate from the last `seq` it saw, as docs/protocol.md tells clients to.
Publishers (`Poster`s) post with a `client_id` each and retry what failed with the same
`client_id`. Both, and the checks described next, live in tests/support/delivery.py.

At the end of each scenario the REST history is the ground truth: every follower must hold
exactly the messages of each candidate, each once, in seq order, and every `client_id` must
be stored exactly once. Nothing asserts speed; timeouts are generous liveness bounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets
from sqlalchemy import select, update

from harness.services import PostgresServer, RedisServer, ServerProcess, _pg_bin
from mailer import outbox
from server.domain.auth import make_user_token
from storage.database import Database
from storage.models import EmailOutbox, User, utcnow
from tests.support.cluster import Cluster, node_env
from tests.support.delivery import (
    ORG,
    Follower,
    Poster,
    assert_each_once,
    assert_exact_stream,
    auth,
    connect,
    histories,
    poll_until,
    readyz,
    wait_readyz,
)
from tests.support.smtp import SmtpServer
from tests.support.world import SECRET, SERVICE_TOKEN, Api, migrate_database

# Its tests share module-scoped fixtures: one worker runs them all.
pytestmark = pytest.mark.xdist_group("faults")

MEMBERS = ("coord", "mem")
AGENT = "ann"
KILL_CANDIDATES = ("k1", "k2", "k3")
REDIS_CANDIDATES = ("r1", "r2")
PG_CANDIDATES = ("p1", "p2")
CANDIDATES = (*KILL_CANDIDATES, *REDIS_CANDIDATES, *PG_CANDIDATES)


# --- services -----------------------------------------------------------------------------


def _pg_ctl(pg: PostgresServer, *args: str, check: bool = True) -> int:
    data = str(pg.directory / "data")
    return pg._run(_pg_bin("pg_ctl"), "-D", data, *args, check=check).returncode


def pg_stop(pg: PostgresServer) -> None:
    """Stops the cluster (open sessions are terminated) and keeps its data."""
    _pg_ctl(pg, "-m", "fast", "-w", "stop")


def pg_start(pg: PostgresServer) -> None:
    """Starts a cluster stopped by `pg_stop`, with the options of `PostgresServer.start`."""
    options = (
        f"-p {pg.port} -k {pg.socket_dir} -c listen_addresses=127.0.0.1 "
        "-c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
    )
    _pg_ctl(pg, "-o", options, "-l", str(pg.directory / "log"), "-w", "-t", "60", "start")


def pg_restart(pg: PostgresServer) -> None:
    """A quick restart. (Not `PostgresServer.restart`: `pg_ctl restart` gives the new server
    pg_ctl's own stdout, the pipe that `subprocess.run` then waits on until its timeout.)"""
    pg_stop(pg)
    pg_start(pg)


def pg_running(pg: PostgresServer) -> bool:
    return _pg_ctl(pg, "status", check=False) == 0


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL cluster of this module alone: the restart test stops it."""
    server = PostgresServer.start()
    try:
        yield server
    finally:
        server.stop()


async def _provision(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=15) as client:
        await Api(client).team(ORG, members=MEMBERS, agent=AGENT, candidates=CANDIDATES)


@pytest.fixture(scope="module")
def cluster(pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    pg.create_database("am_faults")
    url = pg.url("am_faults")
    asyncio.run(migrate_database(url))
    redis = RedisServer.start()
    env = node_env(url, redis)
    cluster = Cluster(env, tmp_path_factory.mktemp("faults"), redis)
    try:
        cluster.start_node("a")
        cluster.start_node("b")
        asyncio.run(_provision(cluster.url("a")))
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def nodes(cluster: Cluster, pg: PostgresServer) -> Cluster:
    """The cluster with its services up and both nodes serving (a node killed by an earlier
    test is replaced)."""
    if not pg_running(pg):
        pg_start(pg)
    if cluster.redis.process is None:
        cluster.redis.resume()
    cluster.ensure_running()
    return cluster


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=15) as client:
        yield client


# --- clients ------------------------------------------------------------------------------


async def follow(
    name: str, user: str, base_url: str, candidates: tuple[str, ...], target: Callable[[], str]
) -> Follower:
    follower = Follower(name, user, candidates)
    await follower.open(base_url)
    follower.keep_following(target)
    return follower


async def wait_caught_up(
    followers: list[Follower], by_cand: dict[str, list[dict[str, Any]]], timeout: float = 30
) -> None:
    """Waits until every follower holds as many events of each candidate as are stored
    (then `assert_exact_stream` says whether they are the right ones)."""
    try:
        await poll_until(
            lambda: all(f.holds(c, len(m)) for f in followers for c, m in by_cand.items()),
            timeout,
            "every follower caught up",
        )
    except AssertionError as error:
        state = {
            f.name: {
                "got": {c: len(f.created(c)) for c in by_cand},
                "floor": f.floor,
                "reconnects": f.reconnects,
                "connected": f.connected,
                "failed attempts": f.failed_attempts[-3:],
            }
            for f in followers
        }
        stored = {c: len(m) for c, m in by_cand.items()}
        raise AssertionError(f"{error}: stored {stored}, followers {state}") from None


async def close_followers(followers: list[Follower]) -> None:
    for follower in followers:
        await follower.close()


# --- REST ---------------------------------------------------------------------------------


async def open_thread(http: httpx.AsyncClient, base_url: str, cand: str) -> int:
    response = await http.post(
        f"{base_url}/api/v1/candidates/{cand}/threads",
        json={"private": False},
        headers=auth(AGENT),
    )
    assert response.status_code in (200, 201), response.text
    return int(response.json()["id"])


def assert_clean_503(response: httpx.Response) -> None:
    """A backing service is down: a JSON 503 with an error code, and no traceback."""
    assert response.status_code == 503, (response.status_code, response.text)
    assert response.headers.get("content-type", "").startswith("application/json"), response
    error = response.json()["error"]
    assert error["code"] == "unavailable", error
    assert isinstance(error["message"], str) and error["message"], error
    assert "Traceback" not in response.text and 'File "' not in response.text, response.text


# --- 1. kill -9 under load ----------------------------------------------------------------


async def test_kill_9_under_load_loses_and_duplicates_nothing(
    nodes: Cluster, http: httpx.AsyncClient
) -> None:
    """Followers on both nodes, a publisher on B, a socket sender and a REST sender on A;
    node A is killed with SIGKILL mid-stream. A's followers resume on B after their last
    seq; A's senders retry on B what went unanswered, with the same client_id."""
    a, b = nodes.url("a"), nodes.url("b")
    cands = KILL_CANDIDATES
    threads = [await open_thread(http, b, cand) for cand in cands]
    followers: list[Follower] = []
    posters: list[Poster] = []
    killer: asyncio.Task[None] | None = None
    try:
        for node, url in (("a", a), ("b", b)):
            for user in (*MEMBERS, AGENT):
                followers.append(await follow(f"{user}@{node}", user, url, cands, lambda: b))
        on_a = [f for f in followers if f.name.endswith("@a")]

        ws_a = Poster(AGENT, http, a, ws=True)
        rest_a = Poster("coord", http, a)
        publisher_b = Poster("mem", http, b)
        posters = [ws_a, rest_a, publisher_b]
        count = 60
        time_to_kill = asyncio.Event()
        retried: dict[str, str] = {}  # client_id -> the status of its retry on B

        async def killer_job() -> None:
            await time_to_kill.wait()
            await asyncio.to_thread(nodes.nodes["a"].kill)

        async def run(poster: Poster, prefix: str) -> None:
            for i in range(count):
                cid, thread = f"{prefix}-{i}", threads[i % len(threads)]
                attempt = await poster.post(cid, thread, f"{prefix} message {i}")
                if attempt.outcome.startswith("lost"):
                    assert poster.base_url == a, f"lost a request to node B: {attempt}"
                    poster.base_url = b  # the killed node's clients move to B
                    again = await poster.rest(cid, thread, f"{prefix} message {i}")
                    assert again.outcome in ("200", "201"), again
                    retried[cid] = again.outcome
                else:
                    assert attempt.stored, (attempt, attempt.response and attempt.response.text)
                if prefix == "kill-ws-a" and i == 15:
                    time_to_kill.set()
                await asyncio.sleep(0.01)

        killer = asyncio.create_task(killer_job())
        await asyncio.gather(
            run(ws_a, "kill-ws-a"), run(rest_a, "kill-rest-a"), run(publisher_b, "kill-pub-b")
        )
        await killer
        assert ws_a.base_url == b, "the kill never interrupted the socket sender on A"

        stored = await histories(http, b, threads)
        assert_each_once(stored, posters)
        by_cand = dict(zip(cands, (stored[t] for t in threads), strict=True))
        assert sum(len(m) for m in by_cand.values()) == 3 * count

        await wait_caught_up(followers, by_cand)
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would come meanwhile
        for follower in followers:
            for cand in cands:
                assert_exact_stream(follower, cand, by_cand[cand])
        for follower in on_a:
            assert follower.reconnects == 1 and follower.connected, (
                follower.name,
                follower.reconnects,
                follower.failed_attempts,
            )
        for follower in followers:
            if follower not in on_a:
                assert follower.reconnects == 0, (follower.name, follower.failed_attempts)
        outcomes = Counter(retried.values())
        print(
            f"KILL -9: {3 * count} messages, {len(retried)} unanswered on A and retried on B "
            f"({outcomes['200']} had been committed: 200, {outcomes['201']} had not: 201)"
        )
    finally:
        if killer is not None and not killer.done():
            killer.cancel()
        with contextlib.suppress(BaseException):
            if killer is not None:
                await killer
        await close_followers(followers)
        for poster in posters:
            await poster.close()


# --- 2. Redis down for 10 s under load ----------------------------------------------------


OUTAGE_SECONDS = 10.0


async def test_redis_down_for_ten_seconds_under_load(
    nodes: Cluster, http: httpx.AsyncClient
) -> None:
    """Redis stops for 10 s while publishers post through both nodes (REST and a socket).
    Every post succeeds (persisted first), /readyz names the broker meanwhile, a client may
    still connect, and once Redis is back every follower, never reconnected, holds exactly
    the history: caught up from the event log, then live again."""
    a, b = nodes.url("a"), nodes.url("b")
    cands = REDIS_CANDIDATES
    threads = [await open_thread(http, a, cand) for cand in cands]
    followers: list[Follower] = []
    posters: list[Poster] = []
    stop = asyncio.Event()
    load: asyncio.Future[list[None]] | None = None
    try:
        for node, url in (("a", a), ("b", b)):
            for user in MEMBERS:
                followers.append(
                    await follow(f"{user}@{node}", user, url, cands, lambda url=url: url)
                )
        posters = [
            Poster(AGENT, http, a),
            Poster("mem", http, b),
            Poster("coord", http, a, ws=True),
        ]

        async def run(poster: Poster, prefix: str) -> None:
            i = 0
            while not stop.is_set():
                cid = f"{prefix}-{i}"
                attempt = await poster.post(cid, threads[i % len(threads)], f"{prefix} {i}")
                assert attempt.stored, (attempt, attempt.response and attempt.response.text)
                i += 1
                await asyncio.sleep(0.05)

        load = asyncio.gather(
            *(
                run(p, name)
                for p, name in zip(
                    posters, ("redis-rest-a", "redis-rest-b", "redis-ws-a"), strict=True
                )
            )
        )
        await asyncio.sleep(1.0)

        await asyncio.to_thread(nodes.redis.pause)
        down_at = time.monotonic()
        for url in (a, b):
            response = await wait_readyz(http, url, 503, timeout=OUTAGE_SECONDS)
            body = response.json()
            assert "broker" in body["failing"] and "database" not in body["failing"], body
            assert body["error"]["code"] == "unavailable" and "broker" in body["error"]["message"]
        # A client arriving during the outage is served, and follows like the others.
        followers.append(await follow("late@b", "coord", b, cands, lambda: b))
        await asyncio.sleep(max(0.0, OUTAGE_SECONDS - (time.monotonic() - down_at)))
        if load.done():
            await load  # a publisher failed: its assertion shows
        during = [t for p in posters for t in p.tries if down_at < t.at]
        assert len(during) >= 3, "nothing was posted during the outage"
        for url in (a, b):  # still down at the end of the outage
            assert (await readyz(http, url)).status_code == 503
        await asyncio.to_thread(nodes.redis.resume)
        up_at = time.monotonic()

        for url in (a, b):
            response = await wait_readyz(http, url, 200, timeout=30)
            assert response.json()["status"] == "ok"
        ready_at = time.monotonic()
        await asyncio.sleep(1.0)  # live traffic after the link came back
        stop.set()
        await load

        assert posters[2].connects == 1, "the socket sender lost its socket"
        stored = await histories(http, a, threads)
        assert_each_once(stored, posters)
        by_cand = dict(zip(cands, (stored[t] for t in threads), strict=True))
        await wait_caught_up(followers, by_cand)
        caught_up_at = time.monotonic()
        await asyncio.sleep(0.5)
        for follower in followers:
            for cand in cands:
                assert_exact_stream(follower, cand, by_cand[cand])
            assert follower.reconnects == 0 and follower.connected, (
                follower.name,
                follower.failed_attempts,
            )
        print(
            f"REDIS DOWN {OUTAGE_SECONDS:.0f} s: {sum(len(m) for m in by_cand.values())} messages, "
            f"{len(during)} posted while it was down; ready {ready_at - up_at:.1f} s after "
            f"Redis came back, caught up {caught_up_at - ready_at:.1f} s after that"
        )
    finally:
        stop.set()
        if load is not None:
            with contextlib.suppress(BaseException):
                await load
        if nodes.redis.process is None:
            nodes.redis.resume()
        await close_followers(followers)
        for poster in posters:
            await poster.close()


# --- 3. PostgreSQL restarted under load ---------------------------------------------------


async def test_postgres_restart_under_load_fails_cleanly_and_recovers(
    nodes: Cluster, pg: PostgresServer, http: httpx.AsyncClient
) -> None:
    """PostgreSQL stops for a few seconds (then is restarted once more, quickly) while
    publishers post and readers read through both nodes. Meanwhile every request that fails
    is a clean JSON 503 (never a 500, never a traceback), a socket send gets an
    `unavailable` error, a new socket is refused with 503, and /readyz names the database.
    Afterwards both processes serve again by themselves; what failed is retried with its
    client_id and stored once; followers hold exactly the history."""
    a, b = nodes.url("a"), nodes.url("b")
    log_from = {name: len(node.log()) for name, node in nodes.nodes.items()}
    cands = PG_CANDIDATES
    threads = [await open_thread(http, a, cand) for cand in cands]
    followers: list[Follower] = []
    posters: list[Poster] = []
    reads: list[httpx.Response | str] = []
    handshakes: dict[str, int] = {}
    stop = asyncio.Event()
    load: asyncio.Future[list[None]] | None = None
    try:
        for node, url in (("a", a), ("b", b)):
            for user in MEMBERS:
                followers.append(
                    await follow(f"{user}@{node}", user, url, cands, lambda url=url: url)
                )
        posters = [
            Poster(AGENT, http, a),
            Poster("mem", http, b),
            Poster("coord", http, b, ws=True),
        ]

        async def publish(poster: Poster, prefix: str) -> None:
            i = 0
            while not stop.is_set():
                await poster.post(f"{prefix}-{i}", threads[i % len(threads)], f"{prefix} {i}")
                i += 1
                await asyncio.sleep(0.05)

        async def read(url: str) -> None:
            paths = [
                f"/api/v1/candidates/{cands[0]}",
                f"/api/v1/threads/{threads[1]}/messages",
                "/api/v1/unread",
                f"/api/v1/candidates/{cands[1]}/threads",
            ]
            i = 0
            while not stop.is_set():
                try:
                    reads.append(
                        await http.get(f"{url}{paths[i % len(paths)]}", headers=auth("coord"))
                    )
                except httpx.TransportError as error:
                    reads.append(f"{url}: {type(error).__name__}")
                i += 1
                await asyncio.sleep(0.05)

        load = asyncio.gather(
            publish(posters[0], "pg-rest-a"),
            publish(posters[1], "pg-rest-b"),
            publish(posters[2], "pg-ws-b"),
            read(a),
            read(b),
        )
        await asyncio.sleep(1.0)

        # -- a stop of a few seconds --
        await asyncio.to_thread(pg_stop, pg)
        down_at = time.monotonic()
        for url in (a, b):
            body = (await wait_readyz(http, url, 503, timeout=10)).json()
            assert "database" in body["failing"], body
            assert body["error"]["code"] == "unavailable", body
            # Requests made now, with the database surely down:
            assert_clean_503(
                await http.post(
                    f"{url}/api/v1/threads/{threads[0]}/messages",
                    json={"body": "while the database is down", "client_id": f"down-{url}"},
                    headers=auth(AGENT),
                )
            )
            assert_clean_503(await http.get(f"{url}/api/v1/unread", headers=auth("mem")))
            assert_clean_503(
                await http.put(
                    f"{url}/api/v1/orgs/{ORG}/users/late",
                    json={
                        "name": "Late",
                        "email": "late@flt.example",
                        "kind": "member",
                        "agency": None,
                    },
                    headers={"Authorization": f"Bearer {SERVICE_TOKEN}"},
                )
            )
            assert (await http.get(f"{url}/healthz")).status_code == 200  # still serving
            # A socket opened now is refused (checked at the end, after everything else).
            with pytest.raises(websockets.InvalidStatus) as refused:
                await connect(url, "mem")
            handshakes[url] = refused.value.response.status_code
        # Ops on an open socket fail with `unavailable`, and the socket lives on.
        socket = posters[2].socket
        assert socket is not None
        for op, fields in (
            ("subscribe", {"candidate": cands[0]}),
            ("read", {"thread": threads[0], "message_id": 1}),
        ):
            frame = await socket.request(op, **fields)
            assert (frame["type"], frame["code"]) == ("error", "unavailable"), frame
        assert (await socket.request("ping"))["type"] == "pong"
        await poll_until(
            lambda: all(
                any(t.outcome in ("503", "error:unavailable") and t.at > down_at for t in p.tries)
                for p in posters
            ),
            10,
            "every publisher saw the outage",
        )
        await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - down_at)))
        await asyncio.to_thread(pg_start, pg)
        for url in (a, b):
            await wait_readyz(http, url, 200, timeout=30)

        # -- then a quick restart: every pooled connection dies while the server is back --
        await asyncio.sleep(1.0)
        await asyncio.to_thread(pg_restart, pg)
        for url in (a, b):
            await wait_readyz(http, url, 200, timeout=30)
        await poll_until(
            lambda: all(p.tries and p.tries[-1].stored for p in posters),
            30,
            "every publisher's posts succeed again",
        )
        await asyncio.sleep(1.0)
        stop.set()
        await load

        # Both processes serve again, without a restart: a run of requests all succeed.
        for url in (a, b):
            for i in range(10):
                response = await http.post(
                    f"{url}/api/v1/threads/{threads[i % 2]}/messages",
                    json={"body": f"after recovery {i}", "client_id": f"after-{url}-{i}"},
                    headers=auth("mem"),
                )
                assert response.status_code == 201, response.text
                response = await http.get(f"{url}/api/v1/unread", headers=auth("coord"))
                assert response.status_code == 200, response.text
        # Whatever failed during the outage failed cleanly; the socket sender kept its socket.
        assert posters[2].connects == 1, "the socket sender lost its socket"
        outcomes = Counter(t.outcome for p in posters for t in p.tries)
        unclean = [
            (p.user, t.via, t.client_id, round(t.at - down_at, 2), t.outcome, t.response.text)
            for p in posters
            for t in p.tries
            if t.outcome not in ("201", "503", "ack", "error:unavailable")
            and t.response is not None
        ]
        assert set(outcomes) <= {"201", "503", "ack", "error:unavailable"}, (outcomes, unclean[:8])
        for attempt in (t for p in posters for t in p.tries if t.outcome == "503"):
            assert attempt.response is not None
            assert_clean_503(attempt.response)
        statuses = Counter(r.status_code if isinstance(r, httpx.Response) else r for r in reads)
        assert set(statuses) <= {200, 503}, statuses
        for response in reads:
            if isinstance(response, httpx.Response) and response.status_code == 503:
                assert_clean_503(response)
        assert statuses[503] > 0 and statuses[200] > 0, statuses

        # Retried with the same client_id, each failed message is stored once.
        retried: Counter[str] = Counter()
        for poster in posters:
            poster.ws = False  # retries by REST, to see whether each had been stored
            for cid, attempt in poster.last_try().items():
                if not attempt.stored:
                    thread = threads[int(cid.rsplit("-", 1)[1]) % len(threads)]
                    again = await poster.rest(cid, thread, f"retry of {cid}")
                    assert again.outcome in ("200", "201"), (again, again.response)
                    retried[again.outcome] += 1
        stored = await histories(http, a, threads)
        after = [f"after-{url}-{i}" for url in (a, b) for i in range(10)]
        assert_each_once(stored, posters, *after)

        by_cand = dict(zip(cands, (stored[t] for t in threads), strict=True))
        await wait_caught_up(followers, by_cand)
        await asyncio.sleep(0.5)
        for follower in followers:
            for cand in cands:
                assert_exact_stream(follower, cand, by_cand[cand])
            assert follower.connected, (follower.name, follower.failed_attempts)
        for node in nodes.nodes.values():
            assert node.process is not None and node.process.poll() is None, node.log()[-3000:]
        print(
            f"POSTGRES RESTART: {sum(outcomes.values())} posts {dict(outcomes)}, reads "
            f"{dict(statuses)}, retries {dict(retried)}, follower reconnects "
            f"{ {f.name: f.reconnects for f in followers} }, handshakes during the outage "
            f"{handshakes}"
        )
        for name, node in nodes.nodes.items():
            logged = node.log()[log_from[name] :]
            print(f"node {name} logged {logged.count('Traceback')} tracebacks meanwhile")
        # A handshake with a valid token during the outage: 503 (try again later), not the
        # 403 that tells a client its credentials are bad.
        assert handshakes == {a: 503, b: 503}, handshakes
    finally:
        stop.set()
        if load is not None:
            with contextlib.suppress(BaseException):
                await load
        if not pg_running(pg):
            pg_start(pg)
        await close_followers(followers)
        for poster in posters:
            await poster.close()


# --- 4. an SMTP relay that defers, stalls, then refuses -----------------------------------


MAIL_ORG = "post"
ANN = "ann@ag.example"
ABE = "abe@ag.example"


@dataclass
class MailNode:
    node: ServerProcess
    database_url: str
    smtp: SmtpServer
    db: Database

    @property
    def url(self) -> str:
        return self.node.url

    async def rows(self) -> dict[str, EmailOutbox]:
        """The outbox rows by recipient (one alert each here)."""
        async with self.db.read() as session:
            result = await session.execute(
                select(User.ext_id, EmailOutbox).join(User, User.pk == EmailOutbox.user_pk)
            )
            return {user: row for user, row in result.all()}

    async def row(self, user: str) -> EmailOutbox:
        """The user's alert, once the worker has queued it (it decides alerts from the event
        log on its next round)."""
        deadline = time.monotonic() + 20
        while (found := (await self.rows()).get(user)) is None:
            assert time.monotonic() < deadline, f"no alert was ever queued for {user}"
            await asyncio.sleep(0.05)
        return found

    async def make_due(self) -> None:
        """What the delay or a backoff would wait for runs out now (see Env.release in
        tests/test_email.py): the test decides when a retry is due, not the clock."""
        async with self.db.write() as session:
            await session.execute(
                update(EmailOutbox)
                .where(EmailOutbox.status == outbox.PENDING)
                .values(due_at=utcnow())
            )

    async def wait_row(
        self, user: str, what: str, condition: Callable[[EmailOutbox], bool]
    ) -> EmailOutbox:
        deadline = time.monotonic() + 20
        while True:
            row = await self.row(user)
            if condition(row):
                return row
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{user}'s alert never {what}: {row.status}, {row.attempts} attempts, "
                    f"{row.last_error}\n{self.node.log()[-3000:]}"
                )
            await asyncio.sleep(0.05)

    async def metric(self, http: httpx.AsyncClient, outcome: str) -> float:
        text = (await http.get(f"{self.url}/metrics")).text
        prefix = f'am_emails_total{{outcome="{outcome}"}} '
        values = [
            float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)
        ]
        return values[0] if values else 0.0


@pytest.fixture
async def mail_node(pg: PostgresServer, tmp_path: Path) -> AsyncIterator[MailNode]:
    """One serve process (its alert worker on) over a fresh database, sending through a
    real SMTP server; the SMTP timeout is 1 s and alerts wait until the test makes them due."""
    if not pg_running(pg):
        pg_start(pg)
    name = f"am_mail_{uuid.uuid4().hex[:12]}"
    await asyncio.to_thread(pg.create_database, name)
    url = pg.url(name)
    await migrate_database(url)
    with SmtpServer() as smtp:
        env = {
            "AM_DATABASE_URL": url,
            "AM_BROKER_URL": "memory://",
            "AM_SECRET": SECRET,
            "AM_SERVICE_TOKEN": SERVICE_TOKEN,
            "AM_SEND_RATE_PER_MINUTE": "0",
            "AM_SMTP_URL": smtp.url,
            "AM_SMTP_TIMEOUT_SECONDS": "1",
            "AM_EMAIL_DELAY_SECONDS": "3600",
            "AM_LOG_LEVEL": "INFO",
        }
        node = await asyncio.to_thread(ServerProcess.start, env, tmp_path)
        db = Database(url)
        try:
            await asyncio.to_thread(node.wait_ready)
            async with httpx.AsyncClient(base_url=node.url, timeout=15) as client:
                api = Api(client)
                await api.org(MAIL_ORG)
                await api.agency(MAIL_ORG, "ag")
                await api.member(MAIL_ORG, "coord")
                for agent, cand in (("ann", "c1"), ("abe", "c2")):
                    await api.agency_user(MAIL_ORG, agent, "ag")
                    await api.candidate(
                        MAIL_ORG, cand, coordinator="coord", members=["coord"], agency_users=[agent]
                    )
            yield MailNode(node, url, smtp, db)
        finally:
            await db.close()
            node.stop()


async def post_as_coord(http: httpx.AsyncClient, node: MailNode, cand: str, agent: str) -> int:
    headers = {"Authorization": f"Bearer {make_user_token(SECRET, MAIL_ORG, 'coord')}"}
    agent_headers = {"Authorization": f"Bearer {make_user_token(SECRET, MAIL_ORG, agent)}"}
    response = await http.post(
        f"{node.url}/api/v1/candidates/{cand}/threads",
        json={"private": False},
        headers=agent_headers,
    )
    assert response.status_code in (200, 201), response.text
    thread = int(response.json()["id"])
    response = await http.post(
        f"{node.url}/api/v1/threads/{thread}/messages",
        json={"body": f"news about {cand} for {agent}"},
        headers=headers,
    )
    assert response.status_code == 201, response.text
    return thread


def seconds_until(due_at: datetime) -> float:
    return (due_at - utcnow()).total_seconds()


async def test_smtp_defers_then_stalls_then_refuses(
    mail_node: MailNode, http: httpx.AsyncClient
) -> None:
    """One alert meets a 421, then a relay that never answers (the 1 s timeout fires): each
    time it goes back to pending with a backoff, and is not tried again before it is due;
    once the relay recovers it is sent exactly once (the same Message-ID on every try).
    Another alert meets a 421, then a 550: failed for good, and never tried again."""
    node, smtp = mail_node, mail_node.smtp
    smtp.fail_next(421)  # the first DATA is deferred
    smtp.stall_next(1)  # the second gets no answer at all

    await post_as_coord(http, node, "c1", "ann")
    row = await node.row("ann")
    assert (row.status, row.attempts) == (outbox.PENDING, 0)
    backoffs = []

    # A 421: retried later, with a backoff.
    await node.make_due()
    row = await node.wait_row(
        "ann", "was deferred", lambda r: r.attempts == 1 and r.status == outbox.PENDING
    )
    assert "421" in (row.last_error or ""), row.last_error
    assert smtp.data_commands == 1 and smtp.messages() == []
    backoffs.append(seconds_until(row.due_at))
    assert backoffs[-1] > 5, f"retried after {backoffs[-1]:.1f} s only: no backoff"
    await asyncio.sleep(2.5)  # more than two polls of the worker: no retry before it is due
    assert smtp.transactions == 1, "retried before its backoff ran out"

    # A relay that never answers: the timeout fires, retried later again.
    await node.make_due()
    row = await node.wait_row(
        "ann", "timed out", lambda r: r.attempts == 2 and r.status == outbox.PENDING
    )
    assert "timeout" in (row.last_error or "").lower(), row.last_error
    assert smtp.data_commands == 2 and smtp.messages() == []
    backoffs.append(seconds_until(row.due_at))
    assert backoffs[-1] > 5, f"retried after {backoffs[-1]:.1f} s only: no backoff"
    await asyncio.sleep(2.5)
    assert smtp.transactions == 2, "retried before its backoff ran out"

    # The relay recovers: sent, exactly once.
    await node.make_due()
    await smtp.wait_for(1, to=ANN, timeout=20)
    row = await node.wait_row("ann", "was sent", lambda r: r.status == outbox.SENT)
    await asyncio.sleep(2.5)
    assert row.attempts == 3, row.attempts
    assert len(smtp.messages()) == 1 and smtp.data_commands == 3 and smtp.transactions == 3
    (alert,) = smtp.to(ANN)
    assert "news about c1 for ann" in alert.text()
    assert len(set(smtp.attempted_message_ids())) == 1, smtp.attempted_message_ids()
    assert (await node.row("ann")).status == outbox.SENT

    # Another alert: deferred (421), then refused (550): failed for good, not retried.
    smtp.fail_next(421)
    smtp.fail_next(550)
    await post_as_coord(http, node, "c2", "abe")
    await node.row("abe")  # queued by the worker's next round
    await node.make_due()
    row = await node.wait_row(
        "abe", "was deferred", lambda r: r.attempts == 1 and r.status != outbox.SENDING
    )
    assert (row.status, row.attempts) == (outbox.PENDING, 1), (row.status, row.last_error)
    await node.make_due()
    row = await node.wait_row(
        "abe", "was tried again", lambda r: r.attempts == 2 and r.status != outbox.SENDING
    )
    assert (row.status, row.attempts) == (outbox.FAILED, 2), (row.status, row.last_error)
    assert "550" in (row.last_error or ""), row.last_error
    for _ in range(2):  # whatever may be due is due: still nothing for the failed alert
        await node.make_due()
        await asyncio.sleep(1.5)
    row = await node.row("abe")
    assert (row.status, row.attempts) == (outbox.FAILED, 2)
    assert smtp.transactions == 5 and smtp.data_commands == 5 and smtp.to(ABE) == []
    assert len(smtp.messages()) == 1

    assert await node.metric(http, "retried") == 3
    assert await node.metric(http, "sent") == 1
    assert await node.metric(http, "failed") == 1
    print(f"SMTP: backoffs after 421 and after the timeout: {[round(s) for s in backoffs]} s")
