"""Connect storms: many sockets opened at the same moment, by one user and by many, some of
them given up on halfway; then the reconnect wave after a process dies, and a Redis restart
under load.

Behind it, an issue: one user opening about ten sockets at once could freeze a server
process for good (100% CPU, no handshake accepted, /healthz dead), because the first read of
that user's unread counts, shared by its concurrent handshakes, could be awaited in a loop
that never yielded. So every storm here is made of users new to the process (no socket of
theirs opened before), each with unread counts to read, and a poller in another thread asks
/healthz every 50 ms throughout.

Everything runs against real `agency-messaging serve` processes over real sockets: one
process on SQLite with the in-process broker, and two processes sharing PostgreSQL and a
private Redis (as in tests/test_cluster.py). Nothing asserts a duration: the bounds are
generous liveness bounds that catch a hang; the wave and Redis figures are printed
(pytest -s shows them).

The org is `ORG` of tests/support/delivery.py (test_faults uses it too): the `Follower` and
`Poster` from there make their tokens for it. Each process here has a database of its own.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
import shutil
import socket
import statistics
import struct
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import websockets

from harness.services import PostgresServer, RedisServer, ServerProcess
from tests.support.cluster import Client, Cluster
from tests.support.delivery import (
    ORG,
    Follower,
    Poster,
    assert_each_once,
    assert_exact_stream,
    histories,
    poll_until,
    token,
    wait_readyz,
)
from tests.support.metrics import metric
from tests.support.realtime import ws_url
from tests.support.world import SECRET, SERVICE_TOKEN, Api, migrate_database

# Its tests share module-scoped fixtures: one worker runs them all.
pytestmark = pytest.mark.xdist_group("connect_storm")

BOSS = "boss"  # coordinator of every candidate; posts by REST, never opens a socket
AGENT = "ann"  # the agency user of the candidates no single agency user owns; never connects
READER = "mem"  # a member of every candidate, never connects: support.delivery.history reads as it
HEAVY_MEMBERS = 3
SOCKETS_PER_HEAVY = 50
SINGLE_MEMBERS = 25
SINGLE_AGENTS = 25
BOUND = 60.0  # a liveness bound: waiting longer than this means something hung
MIN_POLLS = 3  # /healthz polls that must overlap a storm for "it stayed alive" to mean much
SEND_INTERVAL = 0.05  # the steady sender's pause between two posts

BASE_ENV = {
    "AM_SECRET": SECRET,
    "AM_SERVICE_TOKEN": SERVICE_TOKEN,
    "AM_SEND_RATE_PER_MINUTE": "0",
    # Off: a storm opens 50 sockets of one user, and the per-user cap (20 by default) would
    # accept and then close (4029) every one over it; here every socket must be served.
    "AM_MAX_CONNECTIONS_PER_USER": "0",
    "AM_LOG_LEVEL": "INFO",
}


# --- deployments ----------------------------------------------------------------------------


async def provision_org(base_url: str) -> None:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        api = Api(client)
        await api.org(ORG)
        await api.agency(ORG, "ag")
        await api.member(ORG, BOSS)
        await api.member(ORG, READER)
        await api.agency_user(ORG, AGENT, "ag")


@pytest.fixture
def single(sqlite_template: Path, tmp_path: Path) -> Iterator[ServerProcess]:
    """One process with the embedded defaults: a SQLite file, the in-process broker. One per
    test (it starts in about a second): a process frozen by one storm fails that test only."""
    workdir = tmp_path
    database = workdir / "storm.db"
    shutil.copyfile(sqlite_template, database)
    env = {
        **BASE_ENV,
        "AM_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
        "AM_BROKER_URL": "memory://",
        "AM_VAR_DIR": str(workdir / "var"),
    }
    server = ServerProcess.start(env, workdir)
    try:
        server.wait_ready()
        asyncio.run(provision_org(server.url))
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def cluster(
    postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    """Nodes A and B over one PostgreSQL database and a Redis of this module alone (the
    Redis test restarts it)."""
    name = f"am_storm_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    url = postgres.url(name)
    asyncio.run(migrate_database(url))
    redis = RedisServer.start()
    env = {**BASE_ENV, "AM_DATABASE_URL": url, "AM_BROKER_URL": redis.url}
    nodes = Cluster(env, tmp_path_factory.mktemp("storm-cluster"), redis)
    try:
        nodes.start_node("a")
        nodes.start_node("b")
        asyncio.run(provision_org(nodes.url("a")))
        yield nodes
    finally:
        nodes.stop()


@pytest.fixture
def nodes(cluster: Cluster) -> Cluster:
    """The cluster with Redis up and both nodes serving (a node killed earlier is replaced)."""
    if cluster.redis.process is None:
        cluster.redis.resume()
    cluster.ensure_running()
    return cluster


@dataclass
class Deployment:
    kind: str
    servers: list[ServerProcess]

    @property
    def urls(self) -> list[str]:
        return [server.url for server in self.servers]

    def logs(self, tail: int = 3000) -> str:
        return "\n".join(
            f"===== {server.url} (last {tail} characters of its log) =====\n{server.log()[-tail:]}"
            for server in self.servers
        )


@pytest.fixture(params=["sqlite", pytest.param("cluster", marks=pytest.mark.postgres)])
def deployment(request: pytest.FixtureRequest) -> Deployment:
    if request.param == "sqlite":
        return Deployment("sqlite", [request.getfixturevalue("single")])
    cluster: Cluster = request.getfixturevalue("nodes")
    return Deployment("cluster", [cluster.nodes["a"], cluster.nodes["b"]])


@pytest.fixture
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


# --- the world of one test ------------------------------------------------------------------


@dataclass
class World:
    """Users new to every process, each seeing candidates with unread messages.

    Candidate k has one thread: the agency thread of `agent_of(k)` (single agency user k, or
    `AGENT` past them), opened by BOSS, who posts every message. Every member sees every
    candidate; single agency user k sees candidate k. Nobody reads, so every message is
    unread for everyone who sees it, and a member's counts cover every candidate."""

    prefix: str
    heavy: list[str]
    members: list[str]
    agents: list[str]
    candidates: list[str]
    threads: list[int] = field(default_factory=list)
    posts: list[int] = field(default_factory=list)  # messages stored in each thread
    initial_ids: list[str] = field(default_factory=list)  # client_ids of the first posts

    def agent_of(self, k: int) -> str:
        return self.agents[k] if k < len(self.agents) else AGENT

    def is_member(self, user: str) -> bool:
        return user in self.heavy or user in self.members

    def sees(self, user: str) -> list[int]:
        if self.is_member(user):
            return list(range(len(self.candidates)))
        return [self.agents.index(user)]

    def total_unread(self, user: str) -> int:
        return sum(self.posts[k] for k in self.sees(user))

    def unread_frame(self, user: str, k: int) -> dict[str, Any]:
        return {
            "type": "unread",
            "candidate": self.candidates[k],
            "thread": self.threads[k],
            "unread": self.posts[k],
            "candidate_unread": self.posts[k],
            "total_unread": self.total_unread(user),
        }


async def provision_world(base_url: str, prefix: str, candidates: int) -> World:
    world = World(
        prefix,
        heavy=[f"{prefix}-h{i}" for i in range(HEAVY_MEMBERS)],
        members=[f"{prefix}-m{i}" for i in range(SINGLE_MEMBERS)],
        agents=[f"{prefix}-a{i}" for i in range(SINGLE_AGENTS)],
        candidates=[f"{prefix}-c{k}" for k in range(candidates)],
    )
    limit = asyncio.Semaphore(8)

    async def limited(job: Any) -> Any:
        async with limit:
            return await job

    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        api = Api(client)
        await asyncio.gather(
            *(limited(api.member(ORG, user)) for user in (*world.heavy, *world.members)),
            *(limited(api.agency_user(ORG, user, "ag")) for user in world.agents),
        )
        every_member = [*world.heavy, *world.members, READER]
        await asyncio.gather(
            *(
                limited(
                    api.candidate(
                        ORG,
                        cand,
                        coordinator=BOSS,
                        members=every_member,
                        agency_users=[world.agent_of(k)],
                    )
                )
                for k, cand in enumerate(world.candidates)
            )
        )
        opened = await asyncio.gather(
            *(
                limited(
                    api.open_thread(
                        ORG, BOSS, cand, {"private": False, "agency_user": world.agent_of(k)}
                    )
                )
                for k, cand in enumerate(world.candidates)
            )
        )
        world.threads = [int(thread["id"]) for thread in opened]
        world.initial_ids = [f"{prefix}-first-{k}" for k in range(candidates)]
        await asyncio.gather(
            *(
                limited(api.send(ORG, BOSS, thread, f"first of {cand}", client_id=cid))
                for thread, cand, cid in zip(
                    world.threads, world.candidates, world.initial_ids, strict=True
                )
            )
        )
        world.posts = [1] * candidates
        # The world is what the model says it is (REST reads do not make a user known to
        # the real-time layer: these users stay new to every process).
        for user in (world.heavy[0], world.members[0], world.agents[0]):
            assert await rest_unread(api, user) == world.total_unread(user), user
    return world


async def rest_unread(api: Api, user: str) -> int:
    response = await api.get(ORG, user, "/api/v1/unread")
    assert response.status_code == 200, response.text
    return sum(int(item["unread"]) for item in response.json()["candidates"])


async def boss_posts(world: World, base_url: str, k: int, body: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
        message = await Api(client).send(
            ORG, BOSS, world.threads[k], body, client_id=f"{world.prefix}-{uuid.uuid4().hex}"
        )
    world.posts[k] += 1
    return message


# --- /healthz, polled from another thread ---------------------------------------------------


@dataclass(frozen=True)
class Poll:
    url: str
    started: float
    ended: float
    outcome: int | str  # the status code, or what went wrong


class HealthPoller:
    """GETs /healthz on each URL every ~50 ms (timeout 5 s) from a thread of its own, so that
    neither the test's event loop nor its sockets can delay or excuse a poll."""

    def __init__(self, urls: list[str]) -> None:
        self.urls = urls
        self.polls: list[Poll] = []
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(url,), name=f"healthz {url}", daemon=True)
            for url in urls
        ]

    def __enter__(self) -> HealthPoller:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=10)

    def _run(self, url: str) -> None:
        with httpx.Client(timeout=5.0) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                outcome: int | str
                try:
                    outcome = client.get(f"{url}/healthz").status_code
                except httpx.HTTPError as error:
                    outcome = f"{type(error).__name__}: {error}"
                self.polls.append(Poll(url, started, time.monotonic(), outcome))
                self._stop.wait(0.05)

    async def running(self) -> None:
        """Waits until every URL has been polled once (the poller is surely going)."""
        await poll_until(
            lambda: all(any(p.url == url for p in self.polls) for url in self.urls),
            BOUND,
            "a first /healthz poll of every process",
        )

    async def cover(self, start: float, end: float) -> float:
        """`end`, or later: a storm that is over before MIN_POLLS polls of each process could
        overlap it is watched on until they have, so that "it stayed alive" means something
        however fast the storm went."""

        def overlapping(url: str) -> int:
            return sum(1 for p in self.polls if p.url == url and p.ended >= start)

        await poll_until(
            lambda: all(overlapping(url) >= MIN_POLLS for url in self.urls),
            BOUND,
            "enough /healthz polls during and after the storm",
        )
        return max(end, time.monotonic())

    def summary(self) -> str:
        outcomes = Counter((p.url, p.outcome) for p in self.polls)
        return ", ".join(f"{url}: {outcome} x{n}" for (url, outcome), n in outcomes.items())

    def assert_alive(self, start: float, end: float) -> dict[str, int]:
        """Every poll was answered 200, and at least MIN_POLLS of each URL overlapped
        [start, end]; returns how many did."""
        bad = [p for p in self.polls if p.outcome != 200]
        assert bad == [], f"/healthz failed: {bad[:5]} ({self.summary()})"
        during = {
            url: sum(
                1 for p in self.polls if p.url == url and p.started <= end and p.ended >= start
            )
            for url in self.urls
        }
        assert all(n >= MIN_POLLS for n in during.values()), (
            f"too few /healthz polls during the storm to tell: {during} in {end - start:.2f} s"
        )
        return during


# --- storms ---------------------------------------------------------------------------------


@dataclass
class Sock:
    client: Client
    user: str
    url: str
    candidate: int | None = None  # the candidate it subscribed to (an index in the world)


@dataclass(frozen=True)
class Attempt:
    """One connect of a storm: to `url` as `user`; completed, or given up on (`give_up`):
    "close" (the upgrade request sent on a raw socket, closed at once), "reset" (the same,
    closed with a TCP reset) or "cancel" (a `websockets.connect` cancelled right away)."""

    url: str
    user: str
    give_up: str | None = None


def upgrade_request(base_url: str, user: str) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /ws HTTP/1.1\r\nHost: {urlsplit(base_url).netloc}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
        f"Authorization: Bearer {token(user)}\r\n\r\n"
    ).encode()


async def give_up(attempt: Attempt, jitter: float) -> str:
    """Starts a handshake and walks away from it; returns what happened."""
    if attempt.give_up == "cancel":

        async def connecting() -> websockets.ClientConnection:
            return await websockets.connect(
                ws_url(attempt.url),
                additional_headers={"Authorization": f"Bearer {token(attempt.user)}"},
                open_timeout=BOUND,
            )

        task = asyncio.create_task(connecting())
        await asyncio.sleep(jitter)  # spreads the cancels over the handshake's stages
        task.cancel()
        try:
            opened = await task
        except asyncio.CancelledError:
            return "cancel: cancelled"
        await opened.close()  # it was faster than the cancel: closed at once instead
        return "cancel: completed first, closed at once"
    split = urlsplit(attempt.url)
    assert split.hostname is not None and split.port is not None
    _, writer = await asyncio.open_connection(split.hostname, split.port)
    writer.write(upgrade_request(attempt.url, attempt.user))
    await writer.drain()
    if attempt.give_up == "reset":
        raw: socket.socket = writer.get_extra_info("socket")
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return str(attempt.give_up)


def describe(error: BaseException) -> str:
    if isinstance(error, websockets.InvalidStatus):
        response = error.response
        return f"HTTP {response.status_code} {response.body!r}"[:200]
    return f"{type(error).__name__}: {error}"[:200]


async def storm(attempts: list[Attempt], opened: list[Sock]) -> tuple[list[str], Counter[str]]:
    """Starts every attempt at the same moment (no delay between them) and waits for all.
    The sockets that opened are appended to `opened` (the caller closes them); returns the
    failures and what the given-up attempts did."""

    async def complete(attempt: Attempt) -> Sock:
        client = await Client.connect(
            attempt.url, token(attempt.user), open_timeout=BOUND, close_timeout=2
        )
        assert isinstance(client, Client)
        sock = Sock(client, attempt.user, attempt.url)
        opened.append(sock)
        return sock

    jitters = itertools.cycle([0.0, 0.001, 0.002, 0.005, 0.01])
    results = await asyncio.gather(
        *(
            complete(attempt) if attempt.give_up is None else give_up(attempt, next(jitters))
            for attempt in attempts
        ),
        return_exceptions=True,
    )
    failures = [
        f"{attempt.user}@{attempt.url} ({attempt.give_up or 'completing'}): {describe(result)}"
        for attempt, result in zip(attempts, results, strict=True)
        if isinstance(result, BaseException)
    ]
    given_up = Counter(result for result in results if isinstance(result, str))
    return failures, given_up


def report(what: str, problems: list[str], deployment: Deployment, health: HealthPoller) -> str:
    kinds = Counter(problem.split(": ", 1)[-1][:80] for problem in problems)
    return (
        f"{what}: {len(problems)} failed, {dict(kinds)}; e.g. {problems[:3]}\n"
        f"/healthz: {health.summary()}\n{deployment.logs()}"
    )


async def check_usable(
    world: World,
    socks: list[Sock],
    deployment: Deployment,
    health: HealthPoller,
    candidate: int | None = None,
) -> None:
    """Every socket answers a ping and acks a subscribe to a candidate its user sees (the
    given one, or one by the socket's position)."""

    async def use(i: int, sock: Sock) -> None:
        pong = await sock.client.request("ping", timeout=BOUND)
        assert pong["type"] == "pong", pong
        seen = world.sees(sock.user)
        k = seen[i % len(seen)] if candidate is None else candidate
        ack = await sock.client.request("subscribe", timeout=BOUND, candidate=world.candidates[k])
        assert ack["type"] == "ack", ack
        assert (ack["seq"], ack["reset"]) == (world.posts[k], False), ack
        sock.candidate = k

    results = await asyncio.gather(
        *(use(i, sock) for i, sock in enumerate(socks)), return_exceptions=True
    )
    problems = [
        f"{sock.user}@{sock.url}: {describe(result)}"
        for sock, result in zip(socks, results, strict=True)
        if isinstance(result, BaseException)
    ]
    assert problems == [], report("sockets not usable", problems, deployment, health)


def unread_frames(client: Client, thread: int) -> list[dict[str, Any]]:
    return [f for f in client.frames if f.get("type") == "unread" and f.get("thread") == thread]


def created_frames(client: Client, candidate: str) -> list[dict[str, Any]]:
    return [
        f
        for f in client.frames
        if f.get("type") == "message.created" and f.get("candidate") == candidate
    ]


async def check_post_reaches(
    world: World, socks: list[Sock], k: int, post_url: str, deployment: Deployment
) -> None:
    """BOSS posts in candidate k's thread: every socket of a user who sees it gets an unread
    frame with that user's exact counts (the counts read during the storm, moved by one),
    every socket subscribed to k gets the message with the next seq, and no socket of a user
    who does not see k hears of it."""
    message = await boss_posts(world, post_url, k, f"after the storm {uuid.uuid4().hex[:6]}")
    cand, thread = world.candidates[k], world.threads[k]
    viewers = [s for s in socks if k in world.sees(s.user)]
    others = [s for s in socks if k not in world.sees(s.user)]
    subscribed = [s for s in socks if s.candidate == k]

    def told(sock: Sock) -> bool:
        frames = unread_frames(sock.client, thread)
        return bool(frames) and frames[-1] == world.unread_frame(sock.user, k)

    def delivered(sock: Sock) -> bool:
        return [(f["seq"], f["message"]["id"]) for f in created_frames(sock.client, cand)] == [
            (world.posts[k], message["id"])
        ]

    try:
        await poll_until(
            lambda: all(told(s) for s in viewers) and all(delivered(s) for s in subscribed),
            BOUND,
            f"the post in {cand} reached every socket that sees it",
        )
    except AssertionError as error:
        wrong = [
            (s.user, s.url, unread_frames(s.client, thread)[-2:]) for s in viewers if not told(s)
        ]
        late = [
            (s.user, s.url, created_frames(s.client, cand)) for s in subscribed if not delivered(s)
        ]
        raise AssertionError(
            f"{error}: {len(wrong)} of {len(viewers)} sockets without the right unread frame "
            f"(expected e.g. {world.unread_frame(viewers[0].user, k)}), e.g. {wrong[:3]}; "
            f"{len(late)} of {len(subscribed)} subscribed without the message, e.g. {late[:3]}"
            f"\n{deployment.logs()}"
        ) from None
    strays = [
        s.user for s in others if unread_frames(s.client, thread) or created_frames(s.client, cand)
    ]
    assert strays == [], f"sockets of users who do not see {cand} heard of it: {strays}"


async def close_socks(socks: list[Sock]) -> None:
    await asyncio.gather(*(sock.client.close() for sock in socks), return_exceptions=True)


def interleave(*lists: list[str]) -> list[str]:
    """Round robin over the lists, so that every user's connects are spread over the storm."""
    out: list[str] = []
    for group in itertools.zip_longest(*lists):
        out.extend(user for user in group if user is not None)
    return out


async def wait_open_sockets(deployment: Deployment, expected: dict[str, int], what: str) -> None:
    """Waits until each process counts exactly `expected[url]` open sockets."""
    deadline = time.monotonic() + BOUND
    while True:
        counts = {
            server.url: await asyncio.to_thread(metric, server, "am_ws_connections")
            for server in deployment.servers
        }
        if counts == {url: float(n) for url, n in expected.items()}:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: open sockets {counts}, expected {expected}")
        await asyncio.sleep(0.1)


@dataclass
class LogWatch:
    """What the processes logged at WARNING and above from now on (printed with the figures:
    a warning is not a failure, but a storm should not make the server complain)."""

    servers: list[ServerProcess]
    offsets: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.offsets = [len(server.log()) for server in self.servers]

    def complaints(self) -> dict[str, int]:
        found: Counter[str] = Counter()
        for server, offset in zip(self.servers, self.offsets, strict=True):
            for line in server.log()[offset:].splitlines():
                if " WARNING " in line or " ERROR " in line or line.startswith("Traceback"):
                    found[line[24:].strip()[:90]] += 1  # without the timestamp
        return dict(found)


def print_storm(
    name: str,
    deployment: Deployment,
    sockets: int,
    seconds: float,
    polls: dict[str, int],
    logs: LogWatch,
) -> None:
    print(
        f"STORM {name} [{deployment.kind}]: {sockets} sockets accepted and usable in "
        f"{seconds:.2f} s; /healthz polls during it {polls}, all 200; server warnings "
        f"{logs.complaints()}"
    )


# --- 1 and 2. storms ------------------------------------------------------------------------


async def test_one_user_opens_fifty_sockets_at_once(deployment: Deployment) -> None:
    """One member, new to the process(es), opens 50 sockets at the same moment (alternately
    on each process): every handshake is accepted, every socket is usable, the member's
    counts are right on every socket, and /healthz answers throughout."""
    urls = deployment.urls
    world = await provision_world(urls[0], "one", SINGLE_AGENTS)
    user = world.heavy[0]
    attempts = [Attempt(urls[j % len(urls)], user) for j in range(SOCKETS_PER_HEAVY)]
    socks: list[Sock] = []
    logs = LogWatch(deployment.servers)
    try:
        with HealthPoller(urls) as health:
            await health.running()
            start = time.monotonic()
            failures, _ = await storm(attempts, socks)
            assert failures == [], report("handshakes", failures, deployment, health)
            await check_usable(world, socks, deployment, health)
            end = time.monotonic()
            end = await health.cover(start, end)
            await check_post_reaches(world, socks, 0, urls[-1], deployment)
        polls = health.assert_alive(start, end)
        assert len(socks) == SOCKETS_PER_HEAVY
        print_storm("1 user x 50", deployment, len(socks), end - start, polls, logs)
    finally:
        await close_socks(socks)


async def test_three_members_and_fifty_single_users_at_once(deployment: Deployment) -> None:
    """3 members x 50 sockets and 50 users with one socket each (25 members, 25 agency
    users), all new to the process(es), 200 connects at the same moment: every handshake
    accepted, every socket usable, every user's counts right on every socket."""
    urls = deployment.urls
    world = await provision_world(urls[0], "many", SINGLE_AGENTS)
    singles = interleave(world.members, world.agents)
    users = interleave(*([heavy] * SOCKETS_PER_HEAVY for heavy in world.heavy), singles)
    attempts = [Attempt(urls[j % len(urls)], user) for j, user in enumerate(users)]
    assert len(attempts) == HEAVY_MEMBERS * SOCKETS_PER_HEAVY + SINGLE_MEMBERS + SINGLE_AGENTS
    socks: list[Sock] = []
    logs = LogWatch(deployment.servers)
    try:
        with HealthPoller(urls) as health:
            await health.running()
            start = time.monotonic()
            failures, _ = await storm(attempts, socks)
            assert failures == [], report("handshakes", failures, deployment, health)
            await check_usable(world, socks, deployment, health)
            end = time.monotonic()
            end = await health.cover(start, end)
            # Candidate 0 is seen by every member and by single agency user 0 only.
            await check_post_reaches(world, socks, 0, urls[-1], deployment)
            await check_post_reaches(world, socks, 7, urls[0], deployment)
        polls = health.assert_alive(start, end)
        assert Counter(s.user for s in socks) == Counter(users)
        print_storm("3 x 50 + 50 x 1", deployment, len(socks), end - start, polls, logs)
    finally:
        await close_socks(socks)


async def test_handshakes_given_up_on_leave_nothing_broken(deployment: Deployment) -> None:
    """50 connects of one new user at the same moment, half of them given up on right after
    the upgrade request (raw sockets closed or reset, connects cancelled): the other half
    are accepted and usable, and nothing of the abandoned ones is left behind: no open
    socket, and a fresh socket of the user, then one opened after all of them closed and
    messages came meanwhile, each gets the events and the user's exact counts."""
    urls = deployment.urls
    world = await provision_world(urls[0], "quit", SINGLE_AGENTS)
    user = world.heavy[0]
    kinds = itertools.cycle(["close", "reset", "cancel"])
    attempts = [
        Attempt(urls[(j // 2) % len(urls)], user, None if j % 2 == 0 else next(kinds))
        for j in range(SOCKETS_PER_HEAVY)
    ]
    socks: list[Sock] = []
    fresh: list[Sock] = []
    logs = LogWatch(deployment.servers)
    try:
        await wait_open_sockets(
            deployment, {url: 0 for url in urls}, "sockets of earlier tests still open"
        )
        with HealthPoller(urls) as health:
            await health.running()
            start = time.monotonic()
            failures, given_up = await storm(attempts, socks)
            assert failures == [], report("handshakes", failures, deployment, health)
            await check_usable(world, socks, deployment, health)
            completing = sum(1 for a in attempts if a.give_up is None)
            assert len(socks) == completing
            assert sum(given_up.values()) == len(attempts) - completing, given_up
            # Nothing of the given-up handshakes stays open: each process counts exactly
            # the sockets this test holds there (the storm lasts until it does).
            held = Counter(s.url for s in socks)
            await wait_open_sockets(
                deployment, {url: held[url] for url in urls}, "after the handshakes given up on"
            )
            end = time.monotonic()
            end = await health.cover(start, end)
        polls = health.assert_alive(start, end)

        # A fresh socket on each process: accepted, subscribed, then a post reaches it with
        # the user's exact counts (and reaches every socket of the user).
        for url in urls:
            client = await Client.connect(url, token(user), open_timeout=BOUND, close_timeout=2)
            assert isinstance(client, Client)
            fresh.append(Sock(client, user, url))
        await check_usable(world, fresh, deployment, health, candidate=0)
        await check_post_reaches(world, [*socks, *fresh], 0, urls[-1], deployment)
        last_seq = world.posts[0]

        # Every socket of the user closed: the processes forget the user. Messages come
        # while it is away; a new socket resumes after its last seq and is told the counts
        # as they are now (read again, not remembered from before).
        await close_socks([*socks, *fresh])
        await wait_open_sockets(deployment, {url: 0 for url in urls}, "after every close")
        away = [
            await boss_posts(world, urls[0], 0, "while away 1"),
            await boss_posts(world, urls[-1], 0, "while away 2"),
        ]
        await boss_posts(world, urls[0], 1, "while away 3")
        back: list[Sock] = []
        for url in urls:
            client = await Client.connect(url, token(user), open_timeout=BOUND, close_timeout=2)
            assert isinstance(client, Client)
            back.append(Sock(client, user, url, candidate=0))
        fresh.extend(back)
        c0 = world.candidates[0]
        for sock in back:
            ack = await sock.client.request(
                "subscribe", timeout=BOUND, candidate=c0, after=last_seq
            )
            assert ack["type"] == "ack", ack
            assert (ack["seq"], ack["reset"]) == (world.posts[0], False), ack
        await poll_until(
            lambda: all(len(created_frames(s.client, c0)) >= 2 for s in back),
            BOUND,
            "the messages sent while away were replayed",
        )
        for sock in back:
            replayed = created_frames(sock.client, c0)
            assert [(f["seq"], f["message"]["id"]) for f in replayed] == [
                (last_seq + 1, away[0]["id"]),
                (last_seq + 2, away[1]["id"]),
            ], replayed
        # Subscribed to candidate 0; the post is in candidate 1: only the counts come.
        await check_post_reaches(world, back, 1, urls[-1], deployment)
        frame = unread_frames(back[0].client, world.threads[1])[-1]
        assert frame["total_unread"] == world.total_unread(user) == sum(world.posts), frame
        async with httpx.AsyncClient(base_url=urls[0], timeout=30) as rest:
            assert await rest_unread(Api(rest), user) == world.total_unread(user)
        print(
            f"STORM 25 completed + 25 given up {dict(given_up)} [{deployment.kind}]: "
            f"{len(socks)} accepted and usable, the rest left nothing open, in "
            f"{end - start:.2f} s; /healthz polls during it {polls}, all 200; the user's next "
            f"sockets got every event and its exact counts; server warnings {logs.complaints()}"
        )
    finally:
        await close_socks([*socks, *fresh])


# --- 3 and 4. the wave after kill -9, and a Redis restart -----------------------------------


def follower_plan(world: World) -> list[tuple[str, tuple[str, ...]]]:
    """200 clients: 3 members x 50 sockets and 25 single members, each following two of the
    candidates; 25 single agency users, each following the one it sees."""
    half = len(world.candidates) // 2
    plan: list[tuple[str, tuple[str, ...]]] = []
    for j in range(SOCKETS_PER_HEAVY):
        for heavy in world.heavy:
            k = (j + world.heavy.index(heavy)) % half
            plan.append((heavy, (world.candidates[k], world.candidates[k + half])))
    for i, member in enumerate(world.members):
        plan.append((member, (world.candidates[i % half], world.candidates[i % half + half])))
    for agent in world.agents:
        plan.append((agent, (world.candidates[world.agents.index(agent)],)))
    return plan


class Progress:
    """How many message.created frames of each candidate each follower holds, counted
    incrementally: rescanning every frame of 200 clients every 20 ms would cost the test's
    event loop more than the clients themselves."""

    def __init__(self, followers: list[Follower]) -> None:
        self.followers = followers
        self._scanned: dict[Client, int] = {}
        self._created: Counter[tuple[str, str]] = Counter()

    def update(self) -> None:
        for follower in self.followers:
            for client in follower.sockets:
                frames = client.frames
                start = self._scanned.get(client, 0)
                for frame in frames[start:]:
                    if frame.get("type") == "message.created":
                        self._created[(follower.name, frame["candidate"])] += 1
                self._scanned[client] = len(frames)

    def holds(self, follower: Follower, stored: Mapping[str, int]) -> bool:
        return all(
            self._created[(follower.name, cand)] >= stored[cand] - follower.floor[cand]
            for cand in follower.candidates
        )

    def state(self, follower: Follower) -> dict[str, Any]:
        return {
            "got": {c: self._created[(follower.name, c)] for c in follower.candidates},
            "floor": follower.floor,
            "reconnects": follower.reconnects,
            "connected": follower.connected,
            "failed attempts": follower.failed_attempts[-2:],
        }


async def wait_each(
    progress: Progress,
    ready: Callable[[Follower], bool],
    since: float,
    what: str,
    before: Callable[[Follower], bool] | None = None,
) -> tuple[dict[str, float], dict[str, float]]:
    """Waits until `ready` held for every follower; returns, for each, the seconds from
    `since` to the first poll that found it so, and the same for `before` (a weaker
    condition, checked in the same polls: its time is never later)."""
    at: dict[str, float] = {}
    first: dict[str, float] = {}
    deadline = time.monotonic() + BOUND
    while True:
        progress.update()
        now = time.monotonic()
        for follower in progress.followers:
            if before is not None and follower.name not in first and before(follower):
                first[follower.name] = now - since
            if follower.name not in at and ready(follower):
                at[follower.name] = now - since
                first.setdefault(follower.name, now - since)
        if len(at) == len(progress.followers):
            return at, first
        if now > deadline:
            late = [f for f in progress.followers if f.name not in at]
            raise AssertionError(
                f"not within {BOUND} s: {what}: {len(late)} of {len(progress.followers)} "
                f"clients not yet, e.g. {[(f.name, progress.state(f)) for f in late[:3]]}"
            )
        await asyncio.sleep(0.02)


def stored_counts(world: World) -> dict[str, int]:
    return dict(zip(world.candidates, world.posts, strict=True))


def subscribed_anew(follower: Follower) -> bool:
    """Its latest socket is open and has every candidate's subscribe acked."""
    acked = {f.get("candidate") for f in follower.sockets[-1].frames if f.get("type") == "ack"}
    return follower.connected and set(follower.candidates) <= acked


@dataclass
class Sender:
    """BOSS posting steadily, round robin over the world's threads and over `posters`, each
    post with a client_id of its own, retried with the same client_id until it is stored."""

    world: World
    posters: list[Poster]
    prefix: str
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    posted: list[float] = field(default_factory=list)  # when each post was acknowledged
    retries: int = 0

    async def run(self) -> None:
        for i in itertools.count():
            if self.stop.is_set():
                return
            k = i % len(self.world.threads)
            poster = self.posters[i % len(self.posters)]
            cid, body = f"{self.prefix}-{i}", f"{self.prefix} {i}"
            deadline = time.monotonic() + BOUND
            while not (attempt := await poster.post(cid, self.world.threads[k], body)).stored:
                assert time.monotonic() < deadline, f"{cid} was never stored: {attempt}"
                self.retries += 1
                await asyncio.sleep(0.1)
            self.world.posts[k] += 1
            self.posted.append(time.monotonic())
            await asyncio.sleep(SEND_INTERVAL)

    def count_since(self, moment: float) -> int:
        return sum(1 for at in self.posted if at > moment)


def tally(
    followers: list[Follower], stored: Mapping[str, list[dict[str, Any]]]
) -> tuple[int, int, int]:
    """(delivered, lost, duplicated) over every follower and candidate it follows: lost are
    stored messages after its start point it never got; duplicated, deliveries of a seq
    beyond its first (or of a seq that is not stored)."""
    delivered = lost = duplicated = 0
    for follower in followers:
        for cand in follower.candidates:
            counts = Counter(e["seq"] for e in follower.created(cand))
            wanted = set(range(follower.floor[cand] + 1, len(stored[cand]) + 1))
            delivered += sum(counts.values())
            lost += len(wanted - set(counts))
            duplicated += sum(n - 1 if seq in wanted else n for seq, n in counts.items())
    return delivered, lost, duplicated


def seconds(values: list[float]) -> str:
    return (
        f"first {min(values):.2f} s, median {statistics.median(values):.2f} s, "
        f"last {max(values):.2f} s"
    )


async def open_followers(
    plan: list[tuple[str, tuple[str, ...]]], urls: list[str], label: str
) -> tuple[list[Follower], list[str]]:
    """Opens one follower per entry at the same moment, alternately on each URL."""
    followers = [
        Follower(f"{user}#{j}@{label}", user, cands) for j, (user, cands) in enumerate(plan)
    ]
    results = await asyncio.gather(
        *(f.open(urls[j % len(urls)]) for j, f in enumerate(followers)), return_exceptions=True
    )
    failures = [
        f"{f.name}: {describe(r)}"
        for f, r in zip(followers, results, strict=True)
        if isinstance(r, BaseException)
    ]
    return followers, failures


def always(url: str) -> Callable[[], str]:
    """Where a follower reconnects to."""
    return lambda: url


async def close_followers(followers: list[Follower]) -> None:
    await asyncio.gather(*(f.close() for f in followers), return_exceptions=True)


@pytest.mark.postgres
async def test_reconnect_wave_after_kill_9(nodes: Cluster, http: httpx.AsyncClient) -> None:
    """200 clients on node A (3 members x 50 sockets, 50 single users), each following one
    or two of 50 candidates; BOSS posts steadily through node B. A is killed with SIGKILL
    mid-stream: every client reconnects to B at once and resumes after the last seq it saw.
    The time until every client is back (open on B, resubscribed, holding everything stored
    so far) is printed; then each holds exactly the stored history after its start point."""
    a, b = nodes.url("a"), nodes.url("b")
    world = await provision_world(b, "wave", 2 * SINGLE_AGENTS)
    followers: list[Follower] = []
    controls: list[Follower] = []
    sender = Sender(world, [Poster(BOSS, http, b)], "wave")
    sending: asyncio.Task[None] | None = None
    logs = LogWatch(list(nodes.nodes.values()))
    try:
        followers, failures = await open_followers(follower_plan(world), [a], "a")
        assert failures == [], f"{failures[:5]}\n{nodes.logs()[-6000:]}"
        # Two clients on B that must never notice anything.
        controls, failures = await open_followers(
            [(world.heavy[0], (world.candidates[0],)), (world.members[0], (world.candidates[1],))],
            [b],
            "b",
        )
        assert failures == [], failures
        for follower in [*followers, *controls]:
            follower.keep_following(always(b))
        everyone = [*followers, *controls]
        progress = Progress(followers)

        sending = asyncio.create_task(sender.run())
        await poll_until(lambda: len(sender.posted) >= 20, BOUND, "20 posts before the kill")
        with HealthPoller([b]) as health:
            await health.running()
            killed_at = time.monotonic()
            await asyncio.to_thread(nodes.nodes["a"].kill)
            # Back: open on B, resubscribed to each candidate, and holding everything stored
            # so far (a moving target: the sender goes on meanwhile).
            back, reconnected = await wait_each(
                progress,
                lambda f: (
                    f.reconnects >= 1
                    and subscribed_anew(f)
                    and progress.holds(f, stored_counts(world))
                ),
                killed_at,
                "every client back on B and caught up",
                before=lambda f: f.reconnects >= 1 and subscribed_anew(f),
            )
            all_back_at = killed_at + max(back.values())
            # Live traffic after the wave, then the sender stops.
            await poll_until(
                lambda: sender.count_since(all_back_at) >= 20, BOUND, "20 posts after the wave"
            )
            wave_end = time.monotonic()
            wave_end = await health.cover(killed_at, wave_end)
        polls = health.assert_alive(killed_at, wave_end)
        sender.stop.set()
        await sending

        stored_by_thread = await histories(http, b, world.threads)
        assert_each_once(stored_by_thread, sender.posters, *world.initial_ids)
        stored = {
            cand: stored_by_thread[thread]
            for cand, thread in zip(world.candidates, world.threads, strict=True)
        }
        assert [len(m) for m in stored.values()] == world.posts
        final = Progress(everyone)
        await wait_each(
            final, lambda f: final.holds(f, stored_counts(world)), time.monotonic(), "all held"
        )
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would come meanwhile
        delivered, lost, duplicated = tally(everyone, stored)
        failed = Counter(attempt.split(":")[0] for f in followers for attempt in f.failed_attempts)
        during = sender.count_since(killed_at) - sender.count_since(all_back_at)
        print(
            f"RECONNECT WAVE after kill -9: {len(followers)} clients on A "
            f"({sum(len(f.candidates) for f in followers)} subscriptions) moved to B; "
            f"kill -> open on B and resubscribed: {seconds(list(reconnected.values()))}; "
            f"kill -> back and caught up: {seconds(list(back.values()))}; "
            f"{sum(world.posts)} messages stored, {during} posted between the kill and the "
            f"last client back, {sender.retries} post retries; reconnect attempts that failed "
            f"and were retried: {dict(failed)}; {delivered} deliveries, lost {lost}, "
            f"duplicated {duplicated}; /healthz on B polled {polls[b]} times during the wave, "
            f"all 200; server warnings {logs.complaints()}"
        )
        assert (lost, duplicated) == (0, 0)
        for follower in everyone:
            for cand in follower.candidates:
                assert_exact_stream(follower, cand, stored[cand])
        for follower in followers:
            assert follower.reconnects == 1 and follower.connected, (
                follower.name,
                follower.reconnects,
                follower.failed_attempts,
            )
        for follower in controls:
            assert follower.reconnects == 0 and follower.connected, follower.name
    finally:
        sender.stop.set()
        if sending is not None:
            with contextlib.suppress(BaseException):
                await sending
        await close_followers([*followers, *controls])


@pytest.mark.postgres
async def test_redis_restart_under_load(nodes: Cluster, http: httpx.AsyncClient) -> None:
    """200 clients spread over nodes A and B, BOSS posting steadily through both; Redis is
    stopped and started again on the same port mid-stream. No client reconnects: each
    process catches its channels up from the event log. The time until every client holds
    every message is printed; each holds exactly the stored history after its start."""
    a, b = nodes.url("a"), nodes.url("b")
    world = await provision_world(a, "redis", 2 * SINGLE_AGENTS)
    followers: list[Follower] = []
    sender = Sender(world, [Poster(BOSS, http, a), Poster(BOSS, http, b)], "redis")
    sending: asyncio.Task[None] | None = None
    logs = LogWatch(list(nodes.nodes.values()))
    try:
        followers, failures = await open_followers(follower_plan(world), [a, b], "ab")
        assert failures == [], f"{failures[:5]}\n{nodes.logs()[-6000:]}"
        for j, follower in enumerate(followers):
            follower.keep_following(always((a, b)[j % 2]))
        progress = Progress(followers)

        sending = asyncio.create_task(sender.run())
        await poll_until(lambda: len(sender.posted) >= 20, BOUND, "20 posts before the restart")
        with HealthPoller([a, b]) as health:
            await health.running()
            down_at = time.monotonic()
            await asyncio.to_thread(nodes.redis.pause)
            # Down until both processes know it and posts were made meanwhile (their
            # publishes are lost: only the event log has them).
            for url in (a, b):
                await wait_readyz(http, url, 503, timeout=BOUND)
            await poll_until(
                lambda: sender.count_since(down_at) >= 5, BOUND, "posts while Redis is down"
            )
            await asyncio.to_thread(nodes.redis.resume)
            up_at = time.monotonic()
            before = stored_counts(world)  # every post acknowledged until Redis was back
            caught_up, _ = await wait_each(
                progress,
                lambda f: progress.holds(f, before),
                up_at,
                "every client holds every message posted before Redis came back",
            )
            for url in (a, b):
                await wait_readyz(http, url, 200, timeout=BOUND)
            ready_at = time.monotonic()
            await poll_until(
                lambda: sender.count_since(up_at + max(caught_up.values())) >= 20,
                BOUND,
                "20 posts after the restart",
            )
            sender.stop.set()
            await sending
            last_post_at = sender.posted[-1]
            everything, _ = await wait_each(
                progress,
                lambda f: progress.holds(f, stored_counts(world)),
                up_at,
                "every client holds every message",
            )
            end = time.monotonic()
            end = await health.cover(down_at, end)
        polls = health.assert_alive(down_at, end)

        stored_by_thread = await histories(http, a, world.threads)
        assert_each_once(stored_by_thread, sender.posters, *world.initial_ids)
        stored = {
            cand: stored_by_thread[thread]
            for cand, thread in zip(world.candidates, world.threads, strict=True)
        }
        assert [len(m) for m in stored.values()] == world.posts
        await asyncio.sleep(0.5)  # anything extra (a duplicate) would come meanwhile
        delivered, lost, duplicated = tally(followers, stored)
        during = sender.count_since(down_at) - sender.count_since(up_at)
        print(
            f"REDIS RESTART under load: {len(followers)} clients on A and B, Redis down "
            f"{up_at - down_at:.2f} s with {during} posts meanwhile; both nodes ready "
            f"{ready_at - up_at:.2f} s after Redis was back; Redis back -> every client holds "
            f"every message posted until then: {max(caught_up.values()):.2f} s; every client "
            f"held all {sum(world.posts)} messages within "
            f"{up_at + max(everything.values()) - last_post_at:.2f} s of the last post; "
            f"{sender.retries} post retries; {delivered} deliveries, lost {lost}, duplicated "
            f"{duplicated}; /healthz polls {polls}, all 200; server warnings "
            f"{logs.complaints()}"
        )
        assert (lost, duplicated) == (0, 0)
        for follower in followers:
            for cand in follower.candidates:
                assert_exact_stream(follower, cand, stored[cand])
            assert follower.reconnects == 0 and follower.connected, (
                follower.name,
                follower.failed_attempts,
            )
    finally:
        sender.stop.set()
        if sending is not None:
            with contextlib.suppress(BaseException):
                await sending
        await close_followers(followers)
