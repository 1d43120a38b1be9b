"""Scenario 3, the reconnect storm: every client drops at once and resumes with `after`.

Two server processes share PostgreSQL and Redis, as in production. Viewers (distinct member
users, a handful per candidate, each candidate's viewers split over both processes) run in
client processes of their own and subscribe before the first message is posted. A publisher
(the member "pub", in every candidate) posts 50 messages a second round-robin over the
candidates' agency threads with the WebSocket `send` op. After a warm-up and a calm phase
(which measures the SQL statements one send costs), every client socket is reset at once
(TCP RST), the publisher keeps posting, and after a short offline gap every client
reconnects at once, to the *other* process (as a load balancer may), and resubscribes with
`after` = the highest seq it saw.

Definitions:
- A client is *caught up* once it holds the resubscribe ack (whose `seq` is where the
  candidate's stream stood) and has received every seq from 1 up to that ack seq (each
  candidate has one thread, visible to all its viewers, and nothing is deleted, so its seqs
  have no legitimate gaps).
- *Lost*: a message stored in the client's candidate thread (ground truth: REST history read
  after the run) that the client never received; every message counts, since clients
  subscribed before the first one was posted.
- *Duplicated*: a message id delivered more than once to the same client.
- *SQL statements per resume*: the rise of `am_sql_statements` summed over both processes
  from just before the drop until every client is caught up, less the statements of the
  sends acked in that window (statements per send measured in the calm phase, with every
  client connected), divided by the number of resumes. It includes the handshake, the
  subscribe and the replay.

    python bench/storm.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import math
import os
import random
import resource
import socket
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import httpx
import orjson
import websockets

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import common  # noqa: E402

SELF = str(Path(__file__).resolve())
ORG = "storm"
RATE = 50.0  # messages per second, over all candidates
PUBLISHER_SOCKETS = 8  # pipelined over both processes: sends on one socket are handled in turn
IN_FLIGHT = 4  # unanswered sends per publisher socket


def source_tree() -> str:
    """The commit measured, and how many tracked files differ from it."""

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=False
        ).stdout

    dirty = git("status", "--porcelain", "--untracked-files=no").splitlines()
    return git("rev-parse", "--short", "HEAD").strip() + (
        f" +{len(dirty)} modified" if dirty else ""
    )


# --- client processes -------------------------------------------------------------------


def raise_nofile() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def ws_connect(url: str, token: str, open_timeout: float = 60) -> Any:
    return await websockets.connect(
        url,
        additional_headers={"Authorization": f"Bearer {token}"},
        compression=None,
        open_timeout=open_timeout,
        ping_interval=None,
        close_timeout=2,
        max_size=None,
    )


class Shared:
    def __init__(self) -> None:
        self.dropping = False
        self.pending = 0
        self.done = asyncio.Event()


class Client:
    """One viewer: its socket, and everything it has received over the whole run."""

    def __init__(self, shared: Shared, token: str, candidate: str, home: int) -> None:
        self.shared = shared
        self.token = token
        self.candidate = candidate
        self.home = home
        self.ws: Any = None
        self.task: asyncio.Task[None] | None = None
        self.ids: set[int] = set()
        self.seqs: set[int] = set()
        self.max_seq = 0  # the highest seq seen, from events and acks: the resume point
        self.contiguous = 0  # every seq up to this one has been received
        self.dups = 0
        self.out_of_order = 0
        self.resets = 0
        self.errors: list[str] = []
        self.closes: list[int | None] = []
        self.resuming = False
        self.ack_seq: int | None = None
        self.t_open = self.t_ack = self.t_caught = 0.0
        self.replayed_before_ack = 0
        self.received_after_reconnect = 0
        self.attempts = 0

    def on_frame(self, frame: dict[str, Any]) -> None:
        kind = frame.get("type")
        if kind == "message.created":
            seq, mid = frame["seq"], frame["message"]["id"]
            if frame["candidate"] != self.candidate:
                self.errors.append("foreign-candidate")
                return
            if mid in self.ids:
                self.dups += 1
            else:
                self.ids.add(mid)
            if seq <= self.max_seq and seq in self.seqs:
                self.out_of_order += 1
            self.seqs.add(seq)
            self.max_seq = max(self.max_seq, seq)
            while self.contiguous + 1 in self.seqs:
                self.contiguous += 1
            if self.resuming:
                self.received_after_reconnect += 1
                if self.ack_seq is None:
                    self.replayed_before_ack += 1
            self.check()
        elif kind == "ack" and frame.get("ref") == "sub":
            self.ack_seq = frame["seq"]
            self.max_seq = max(self.max_seq, frame["seq"])
            self.t_ack = time.monotonic()
            if frame.get("reset"):
                self.resets += 1
            self.check()
        elif kind == "error":
            self.errors.append(str(frame.get("code")))
        elif kind == "unsubscribed":
            self.errors.append("unsubscribed")

    def check(self) -> None:
        if (
            self.resuming
            and not self.t_caught
            and self.ack_seq is not None
            and self.contiguous >= self.ack_seq
        ):
            self.t_caught = time.monotonic()
            self.shared.pending -= 1
            if self.shared.pending <= 0:
                self.shared.done.set()

    async def pump(self, ws: Any) -> None:
        try:
            async for raw in ws:
                self.on_frame(orjson.loads(raw))
        except websockets.ConnectionClosed:
            pass
        if not self.shared.dropping:
            self.closes.append(ws.close_code)

    async def open(self, url: str, after: int | None, deadline: float) -> None:
        """Connects (retrying until the deadline), starts reading, then subscribes."""
        while True:
            self.attempts += 1
            try:
                ws = await ws_connect(
                    url, self.token, open_timeout=max(1.0, deadline - time.monotonic())
                )
                break
            except (OSError, TimeoutError, websockets.InvalidHandshake) as error:
                if time.monotonic() > deadline:
                    self.errors.append(f"connect: {error!r}"[:200])
                    return
                await asyncio.sleep(0.2 + random.random() * 0.3)
        self.t_open = time.monotonic()
        self.ws = ws
        self.task = asyncio.create_task(self.pump(ws))
        frame: dict[str, Any] = {"op": "subscribe", "candidate": self.candidate, "ref": "sub"}
        if after is not None:
            frame["after"] = after
        await ws.send(orjson.dumps(frame).decode())

    def abort(self) -> None:
        """Drops the socket the hard way: SO_LINGER 0, then close (the peer gets a RST)."""
        if self.task is not None:
            self.task.cancel()
        if self.ws is None:
            return
        transport = self.ws.transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        transport.abort()

    def report(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "ids": sorted(self.ids),
            "dups": self.dups,
            "out_of_order": self.out_of_order,
            "resets": self.resets,
            "errors": self.errors,
            "closes": self.closes,
            "max_seq": self.max_seq,
            "resumed": self.ack_seq is not None,  # by the time of the report
        }


def emit(body: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(body) + "\n")
    sys.stdout.flush()


async def client_main() -> None:
    raise_nofile()
    loop = asyncio.get_running_loop()

    async def command() -> str:
        return (await loop.run_in_executor(None, sys.stdin.readline)).strip()

    config = json.loads(await command())
    urls: list[str] = config["urls"]
    shared = Shared()
    clients = [Client(shared, t, c, h) for t, c, h in config["clients"]]
    started = time.monotonic()
    gate = asyncio.Semaphore(100)

    async def first(client: Client) -> None:
        async with gate:
            await client.open(urls[client.home], None, time.monotonic() + 60)

    await asyncio.gather(*(first(c) for c in clients))
    # Wait for every first subscribe ack: from then on, every message posted is expected.
    for _ in range(600):
        if all(c.ack_seq is not None for c in clients):
            break
        await asyncio.sleep(0.05)
    emit(
        {
            "event": "ready",
            "connected": sum(c.ack_seq is not None for c in clients),
            "seconds": time.monotonic() - started,
        }
    )
    while line := await command():
        name, _, arg = line.partition(" ")
        if name == "storm":
            gap, timeout = (float(x) for x in arg.split())
            shared.dropping = True
            t_drop = time.monotonic()
            for client in clients:
                client.abort()
            await asyncio.gather(*(c.task for c in clients if c.task), return_exceptions=True)
            await asyncio.sleep(gap)
            for client in clients:
                client.ws = client.task = None
                client.resuming = True
                client.ack_seq = None
                client.attempts = 0
            shared.pending = len(clients)
            shared.done.clear()
            shared.dropping = False
            t_reconnect = time.monotonic()
            deadline = t_reconnect + timeout
            # Everyone at once, each to the other process, resuming after its last seq.
            await asyncio.gather(
                *(c.open(urls[(c.home + 1) % len(urls)], c.max_seq, deadline) for c in clients)
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(shared.done.wait(), max(0.1, deadline - time.monotonic()))
            emit(
                {
                    "event": "resumed",
                    "t_drop": t_drop,
                    "t_reconnect": t_reconnect,
                    "clients": [
                        {
                            "open": c.t_open or None,
                            "ack": c.t_ack if c.ack_seq is not None else None,
                            "caught": c.t_caught or None,
                            "attempts": c.attempts,
                            "replayed_before_ack": c.replayed_before_ack,
                        }
                        for c in clients
                    ],
                }
            )
            for client in clients:
                client.resuming = False
        elif name == "report":
            emit({"event": "report", "clients": [c.report() for c in clients]})
    shared.dropping = True
    await asyncio.gather(
        *(asyncio.wait_for(c.ws.close(), 3) for c in clients if c.ws is not None),
        return_exceptions=True,
    )


# --- the orchestrator -------------------------------------------------------------------


class ClientProcess:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process

    @classmethod
    async def start(cls, config: dict[str, Any]) -> ClientProcess:
        process = await asyncio.create_subprocess_exec(
            common.PYTHON,
            SELF,
            "--client",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            limit=2**28,
        )
        self = cls(process)
        self.send(json.dumps(config))
        return self

    def send(self, line: str) -> None:
        assert self.process.stdin is not None
        self.process.stdin.write((line + "\n").encode())

    async def receive(self, wait: float = 180) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), wait)
        if not line:
            raise RuntimeError("A client process ended early.")
        result: dict[str, Any] = json.loads(line)
        return result

    async def finish(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 20)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()


class Publisher:
    """Posts RATE messages a second round-robin over the threads, pipelined over several
    sockets on both processes. At most IN_FLIGHT sends wait for their ack on a socket: a
    server that cannot keep up slows the publisher down (the achieved rate is reported)
    rather than piling up frames until its keepalive pings time out."""

    def __init__(self, cluster: common.AmCluster, threads: list[tuple[str, int]]) -> None:
        self.cluster = cluster
        self.threads = threads
        self.sockets: list[Any] = []
        self.room: list[asyncio.Semaphore] = []
        self.where: dict[int, int] = {}  # ref -> socket index, while unanswered
        self.sent: dict[int, float] = {}  # ref -> send time
        self.acks: dict[int, tuple[float, int]] = {}  # ref -> (ack time, message id)
        self.errors: list[str] = []
        self.stopping = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.started = 0.0
        self.stopped = 0.0

    async def start(self) -> None:
        token = self.cluster.token(ORG, "pub")
        for index in range(PUBLISHER_SOCKETS):
            ws = await ws_connect(self.cluster.ws_url(index), token)
            self.sockets.append(ws)
            self.room.append(asyncio.Semaphore(IN_FLIGHT))
            self.tasks.append(asyncio.create_task(self._read(index, ws)))
        self.tasks.append(asyncio.create_task(self._post()))

    def _answered(self, ref: Any) -> None:
        index = self.where.pop(ref, None)
        if index is not None:
            self.room[index].release()

    async def _read(self, index: int, ws: Any) -> None:
        try:
            async for raw in ws:
                frame = orjson.loads(raw)
                if frame.get("type") == "ack" and "message" in frame:
                    self.acks[frame["ref"]] = (time.monotonic(), frame["message"]["id"])
                    self._answered(frame["ref"])
                elif frame.get("type") == "error":
                    self.errors.append(f"{frame.get('code')}: {frame.get('message')}")
                    self._answered(frame.get("ref"))
        except websockets.ConnectionClosed:
            pass
        if not self.stopping.is_set():
            self.errors.append(f"publisher socket {index} closed: {ws.close_code}")

    async def _post(self) -> None:
        self.started = time.monotonic()
        n = 0
        while not self.stopping.is_set():
            delay = self.started + n / RATE - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -0.5:  # behind (the server was slow): catch up half a second at most
                self.started -= delay + 0.5
            index = n % len(self.sockets)
            await self.room[index].acquire()
            if self.stopping.is_set():
                break
            candidate, thread = self.threads[n % len(self.threads)]
            frame = {
                "op": "send",
                "thread": thread,
                "body": f"storm {n} to {candidate}",
                "client_id": f"storm-{n}",
                "ref": n,
            }
            self.sent[n] = time.monotonic()
            self.where[n] = index
            try:
                await self.sockets[index].send(orjson.dumps(frame).decode())
            except websockets.ConnectionClosed:
                self.errors.append(f"send {n}: publisher socket {index} closed")
            n += 1
        self.stopped = time.monotonic()

    def acked_between(self, start: float, end: float) -> int:
        return sum(1 for t, _ in self.acks.values() if start <= t < end)

    async def stop(self, drain: float = 10.0) -> None:
        self.stopping.set()
        for room in self.room:
            room.release()  # a poster waiting for room sees the stop
        await asyncio.gather(self.tasks[-1], return_exceptions=True)
        for _ in range(int(drain / 0.05)):  # every send answered, or the drain is over
            if not self.where:
                break
            await asyncio.sleep(0.05)
        for ws in self.sockets:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(ws.close(), 3)
        for task in self.tasks[:-1]:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def pg_sessions(postgres: Any, database: str) -> int:
    """Sessions PostgreSQL has opened on the database so far (pg_stat_database)."""
    import asyncpg

    connection = await asyncpg.connect(
        host="127.0.0.1", port=postgres.port, user="postgres", database=database
    )
    try:
        value = await connection.fetchval(
            "SELECT sessions FROM pg_stat_database WHERE datname = $1", database
        )
        return int(value or 0)
    finally:
        await connection.close()


async def read_metrics(http: httpx.AsyncClient, cluster: common.AmCluster) -> dict[str, float]:
    totals: dict[str, float] = {"am_sql_statements": 0.0, "am_ws_connections": 0.0}
    for index in range(len(cluster.ports)):
        text = (await http.get(f"{cluster.http_url(index)}/metrics")).text
        for line in text.splitlines():
            name, _, value = line.partition(" ")
            if name in totals:
                totals[name] += float(value)
    return totals


def machine_seconds() -> tuple[float, float]:
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat: in
    processes (user, nice, system) and outside them (irq, softirq, steal)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(fields[0:3]) / ticks, sum(fields[5:8]) / ticks


def postgres_pids(postgres: Any) -> list[int]:
    """The postmaster and its children (the backends serving our servers)."""
    try:
        root = int((Path(postgres.directory) / "data" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return []
    pids = [root]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == root:
                pids.append(int(stat.parent.name))
    return pids


def redis_pids(redis_url: str) -> list[int]:
    """The local redis-server serving this URL (it retitles itself "redis-server host:port")."""
    port = redis_url.rsplit(":", 1)[-1].split("/", 1)[0]
    found = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        with contextlib.suppress(OSError):
            text = cmdline.read_bytes().replace(b"\0", b" ")
            if b"redis-server" in text and (
                f":{port} ".encode() in text or f" {port} ".encode() in text
            ):
                found.append(int(cmdline.parent.name))
    return found


def reaped_children_seconds(pid: int) -> float:
    """CPU time of a process's children that have ended (PostgreSQL backends that closed)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[13]) + int(fields[14])) / os.sysconf("SC_CLK_TCK")


def _cpu(pids: list[int]) -> dict[int, float]:
    out: dict[int, float] = {}
    for pid in pids:
        with contextlib.suppress(OSError):
            out[pid] = common.cpu_seconds([pid])
    return out


def postgres_cpu(postgres: Any) -> dict[int, float]:
    """Per process; the postmaster also carries the backends that ended (under key 0)."""
    pids = postgres_pids(postgres)
    out = _cpu(pids)
    if pids:
        with contextlib.suppress(OSError):
            out[0] = reaped_children_seconds(pids[0])
    return out


def cpu_snapshot(
    cluster: common.AmCluster, clients: list[ClientProcess], opts: Any
) -> dict[str, Any]:
    return {
        "wall": time.monotonic(),
        "servers": _cpu(cluster.pids),
        "clients": _cpu([c.process.pid for c in clients]),
        "postgres": postgres_cpu(opts.postgres),
        "redis": _cpu(redis_pids(opts.redis_url)),
        "orchestrator": _cpu([os.getpid()]),
        "machine": machine_seconds()[0],
        "kernel": machine_seconds()[1],
    }


def cpu_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    """CPU seconds over a window, per group of processes. `others`: every process not of
    this benchmark, i.e. how busy the machine was with something else; `irq_softirq_steal`:
    CPU time outside any process (loopback networking, the hypervisor)."""
    wall = after["wall"] - before["wall"]
    groups = ("servers", "clients", "postgres", "redis", "orchestrator")
    out: dict[str, float] = {}
    for group in groups:
        a, b = after[group], before[group]
        # A process that ended meanwhile counts up to its last reading, except under a
        # parent that tracks its reaped children (key 0), which counts it whole.
        ended = 0.0 if 0 in a else None
        out[group] = round(
            sum(a.get(pid, b[pid] if ended is None else ended) - b.get(pid, 0.0) for pid in a | b),
            2,
        )
    out["machine"] = round(after["machine"] - before["machine"], 2)
    out["others"] = round(out["machine"] - sum(out[g] for g in groups), 2)
    out["irq_softirq_steal"] = round(after["kernel"] - before["kernel"], 2)
    busy = out["machine"] + out["irq_softirq_steal"]
    out["machine_busy_share"] = round(busy / (wall * (os.cpu_count() or 1)), 2)
    return out


def sizes(quick: bool) -> SimpleNamespace:
    if quick:
        return SimpleNamespace(
            clients=500, candidates=125, procs=2, calm=4.0, gap=1.0, after=2.0, timeout=60.0
        )
    return SimpleNamespace(
        clients=2000, candidates=500, procs=2, calm=6.0, gap=2.0, after=3.0, timeout=150.0
    )


def records(n_clients: int, n_candidates: int) -> list[tuple[str, dict[str, Any]]]:
    org = f"/api/v1/orgs/{ORG}"
    puts: list[tuple[str, dict[str, Any]]] = [
        (org, {"name": "Storm"}),
        (f"{org}/agencies/ag", {"name": "Agency"}),
        (
            f"{org}/users/ann",
            {"name": "Ann", "email": "ann@storm.example", "kind": "agency", "agency": "ag"},
        ),
    ]
    for user in ["pub", *(f"v{i}" for i in range(n_clients))]:
        puts.append(
            (
                f"{org}/users/{user}",
                {"name": user, "email": f"{user}@storm.example", "kind": "member"},
            )
        )
    for c in range(n_candidates):
        viewers = [f"v{i}" for i in range(c, n_clients, n_candidates)]
        puts.append(
            (
                f"{org}/candidates/c{c}",
                {
                    "name": f"C{c}",
                    "coordinator": "pub",
                    "members": ["pub", *viewers],
                    "agency_users": ["ann"],
                },
            )
        )
    return puts


async def provision_both(cluster: common.AmCluster, puts: list[tuple[str, Any]]) -> None:
    """common.provision, each kind's records split over both processes (twice as fast)."""
    other = dataclasses.replace(cluster, ports=cluster.ports[::-1], processes=[])
    for part in ("/agencies/", "/users/", "/candidates/"):
        batch = [p for p in puts if part in p[0]]
        if part == "/agencies/":  # the org first, alone
            await common.provision(cluster, ORG, [p for p in puts if p[0].count("/") == 4])
        await asyncio.gather(
            common.provision(cluster, ORG, batch[0::2], concurrency=8),
            common.provision(other, ORG, batch[1::2], concurrency=8),
        )


async def open_threads(cluster: common.AmCluster, n_candidates: int) -> list[tuple[str, int]]:
    """The agency thread of every candidate, opened by the publisher on either process."""
    auth = {"Authorization": f"Bearer {cluster.token(ORG, 'pub')}"}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(headers=auth, timeout=60) as http:

        async def one(c: int) -> tuple[str, int]:
            async with gate:
                response = await http.post(
                    f"{cluster.http_url(c)}/api/v1/candidates/c{c}/threads",
                    json={"agency_user": "ann", "private": False},
                )
                response.raise_for_status()
                return f"c{c}", int(response.json()["id"])

        return list(await asyncio.gather(*(one(c) for c in range(n_candidates))))


async def history(cluster: common.AmCluster, threads: list[tuple[str, int]]) -> dict[str, set[int]]:
    """Ground truth: every message of every thread, paged forward over REST."""
    auth = {"Authorization": f"Bearer {cluster.token(ORG, 'pub')}"}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(headers=auth, timeout=60) as http:

        async def one(index: int, candidate: str, thread: int) -> tuple[str, set[int]]:
            ids: set[int] = set()
            after = 0
            async with gate:
                while True:
                    response = await http.get(
                        f"{cluster.http_url(index)}/api/v1/threads/{thread}/messages",
                        params={"after": after, "limit": 100},
                    )
                    response.raise_for_status()
                    page = response.json()
                    ids.update(m["id"] for m in page["messages"])
                    if not page["messages"] or not page["has_more"]:
                        return candidate, ids
                    after = page["messages"][-1]["id"]

        pairs = await asyncio.gather(*(one(i, c, t) for i, (c, t) in enumerate(threads)))
        return dict(pairs)


async def scenario(opts: Any) -> dict[str, Any]:
    size = sizes(opts.quick)
    database = f"storm_{int(time.time())}"
    opts.postgres.create_database(database)
    common.log(f"storm: 2 processes, PostgreSQL database {database}, Redis {opts.redis_url}")
    cluster = common.start_am(
        Path(opts.workdir) / "storm",
        processes=2,
        database_url=opts.postgres.url(database),
        broker_url=opts.redis_url,
    )
    clients: list[ClientProcess] = []
    publisher: Publisher | None = None
    try:
        t0 = time.monotonic()
        await provision_both(cluster, records(size.clients, size.candidates))
        threads = await open_threads(cluster, size.candidates)
        common.log(
            f"storm: provisioned {size.clients} viewers over {size.candidates} candidates "
            f"in {time.monotonic() - t0:.1f} s"
        )
        viewers = [
            (cluster.token(ORG, f"v{i}"), f"c{i % size.candidates}", (i // size.candidates) % 2)
            for i in range(size.clients)
        ]
        urls = [cluster.ws_url(i) for i in range(len(cluster.ports))]
        for p in range(size.procs):
            clients.append(
                await ClientProcess.start({"urls": urls, "clients": viewers[p :: size.procs]})
            )
        ready = [await c.receive() for c in clients]
        connected = sum(r["connected"] for r in ready)
        common.log(
            f"storm: {connected} clients connected and subscribed in "
            f"{max(r['seconds'] for r in ready):.1f} s, in {size.procs} client processes"
        )
        if connected != size.clients:
            raise RuntimeError(f"Only {connected} of {size.clients} clients subscribed.")

        publisher = Publisher(cluster, threads)
        await publisher.start()
        async with httpx.AsyncClient(timeout=30) as http:
            # Warm-up: every candidate gets a message (and each process its first unread
            # reads for every user) before the calm phase measures what a send costs.
            await asyncio.sleep(size.candidates / RATE + 1.5)
            calm_start, before = time.monotonic(), await read_metrics(http, cluster)
            calm_cpu0 = cpu_snapshot(cluster, clients, opts)
            await asyncio.sleep(size.calm)
            calm_end, after = time.monotonic(), await read_metrics(http, cluster)
            calm_cpu = cpu_delta(calm_cpu0, cpu_snapshot(cluster, clients, opts))
            calm_sends = publisher.acked_between(calm_start, calm_end)
            per_send = (after["am_sql_statements"] - before["am_sql_statements"]) / max(
                1, calm_sends
            )
            common.log(
                f"storm: calm phase: {calm_sends} sends, {per_send:.1f} SQL statements per send "
                f"(with every client connected)"
            )

            common.log(
                f"storm: dropping all {size.clients} clients (RST), {size.gap:.1f} s offline"
            )
            storm_start, before = time.monotonic(), await read_metrics(http, cluster)
            storm_cpu0 = cpu_snapshot(cluster, clients, opts)
            sessions_before = await pg_sessions(opts.postgres, database)
            for c in clients:
                c.send(f"storm {size.gap} {size.timeout}")
            resumed = [await c.receive(wait=size.timeout + 60) for c in clients]
            storm_end, after = time.monotonic(), await read_metrics(http, cluster)
            storm_cpu = cpu_delta(storm_cpu0, cpu_snapshot(cluster, clients, opts))
            storm_sessions = await pg_sessions(opts.postgres, database) - sessions_before - 1
            storm_sends = publisher.acked_between(storm_start, storm_end)
            storm_statements = after["am_sql_statements"] - before["am_sql_statements"]
            resume_statements = storm_statements - per_send * storm_sends
            await asyncio.sleep(size.after)
            await publisher.stop()
            await asyncio.sleep(1.5)  # the last events reach every client
            final = await read_metrics(http, cluster)

        t_drop = min(r["t_drop"] for r in resumed)
        t_reconnect = min(r["t_reconnect"] for r in resumed)
        per_client = [row for r in resumed for row in r["clients"]]
        caught = [row["caught"] for row in per_client if row["caught"]]
        acks = [row["ack"] for row in per_client if row["ack"]]
        opened = [row["open"] for row in per_client if row["open"]]
        n = len(per_client)

        def at(times: list[float], q: float, origin: float) -> float | None:
            """When the first q of all n clients had got there (None: fewer ever did)."""
            rank = max(1, math.ceil(q * n - 1e-9))
            if len(times) < rank:
                return None
            return round(sorted(times)[rank - 1] - origin, 3)

        for c in clients:
            c.send("report")
        reports = [row for c in clients for row in (await c.receive())["clients"]]
        for c in clients:
            await c.finish()
        clients = []

        truth = await history(cluster, threads)
        stored = sum(len(ids) for ids in truth.values())
        acked_ids = {mid for _, mid in publisher.acks.values()}
        all_ids = set().union(*truth.values())
        lost = sum(len(truth[r["candidate"]] - set(r["ids"])) for r in reports)
        # Loss among clients whose resubscribe was answered (by the end): a protocol failure;
        # the rest never got back in, and missing what was posted meanwhile is expected.
        lost_resumed = sum(
            len(truth[r["candidate"]] - set(r["ids"])) for r in reports if r["resumed"]
        )
        extra = sum(len(set(r["ids"]) - truth[r["candidate"]]) for r in reports)
        clients_losing = sum(1 for r in reports if truth[r["candidate"]] - set(r["ids"]))
        data: dict[str, Any] = {
            "tree": source_tree(),
            "clients": size.clients,
            "candidates": size.candidates,
            "server_processes": 2,
            "client_processes": size.procs,
            "rate_per_second": RATE,
            "offline_gap_seconds": size.gap,
            "messages_sent": len(publisher.sent),
            "messages_acked": len(publisher.acks),
            "messages_stored": stored,
            "acked_not_stored": len(acked_ids - all_ids),
            "publisher_errors": publisher.errors[:10],
            "sql_per_send": round(per_send, 2),
            "calm_seconds": round(calm_end - calm_start, 2),
            "calm_sends": calm_sends,
            "calm_send_rate": round(calm_sends / (calm_end - calm_start), 1),
            "calm_cpu_seconds": calm_cpu,
            "server_cpu_ms_per_send": round(1000 * calm_cpu["servers"] / max(1, calm_sends), 1),
            "resume_window_cpu_seconds": storm_cpu,
            "resume_window_postgres_sessions_opened": storm_sessions,
            "server_cpu_ms_per_resume": round(
                1000
                * (storm_cpu["servers"] - calm_cpu["servers"] / max(1, calm_sends) * storm_sends)
                / n,
                1,
            ),
            "resume_window_seconds": round(storm_end - storm_start, 2),
            "resume_window_sql_statements": storm_statements,
            "resume_window_sends": storm_sends,
            "sql_per_resume": round(resume_statements / n, 2),
            "resumed": len(acks),
            "caught_up": len(caught),
            "reconnect_retries": sum(row["attempts"] for row in per_client) - n,
            "replayed_before_ack": sum(row["replayed_before_ack"] for row in per_client),
            "from_drop": {
                "reconnected_p50": at(opened, 0.5, t_drop),
                "reconnected_p99": at(opened, 0.99, t_drop),
                "acked_p99": at(acks, 0.99, t_drop),
                "caught_up_p50": at(caught, 0.5, t_drop),
                "caught_up_p99": at(caught, 0.99, t_drop),
                "caught_up_all": at(caught, 1.0, t_drop),
            },
            "from_reconnect": {
                "caught_up_p50": at(caught, 0.5, t_reconnect),
                "caught_up_p99": at(caught, 0.99, t_reconnect),
                "caught_up_all": at(caught, 1.0, t_reconnect),
            },
            "messages_expected": sum(len(truth[r["candidate"]]) for r in reports),
            "messages_lost": lost,
            "clients_losing": clients_losing,
            "messages_lost_by_resumed_clients": lost_resumed,
            "clients_never_resumed": sum(1 for r in reports if not r["resumed"]),
            "messages_unknown": extra,
            "messages_duplicated": sum(r["dups"] for r in reports),
            "out_of_order": sum(r["out_of_order"] for r in reports),
            "resets": sum(r["resets"] for r in reports),
            "client_errors": sorted({e for r in reports for e in r["errors"]})[:10],
            "unexpected_closes": sorted({str(c) for r in reports for c in r["closes"]}),
            "ws_connections_at_end": final["am_ws_connections"],
        }
    finally:
        if publisher is not None and not publisher.stopping.is_set():
            with contextlib.suppress(Exception):
                await publisher.stop(drain=0)
        for c in clients:
            with contextlib.suppress(Exception):
                c.process.kill()
        cluster.stop()
    common.log(
        f"storm: caught up p99 {_seconds(data['from_drop']['caught_up_p99'])}, "
        f"all {_seconds(data['from_drop']['caught_up_all'])} after the drop "
        f"({data['caught_up']} of {data['clients']} caught up); lost {lost}, "
        f"duplicated {data['messages_duplicated']}, {data['sql_per_resume']} SQL per resume"
    )
    return data


def _seconds(value: float | None) -> str:
    return "not reached" if value is None else f"{value:.2f} s"


def markdown(d: dict[str, Any]) -> str:
    fd, fr = d["from_drop"], d["from_reconnect"]
    cpu = d["resume_window_cpu_seconds"]
    rows = [
        ("clients (distinct users) / candidates", f"{d['clients']} / {d['candidates']}"),
        ("offline gap before reconnecting", f"{d['offline_gap_seconds']:.1f} s"),
        (
            "99% caught up, from the drop (from the reconnect)",
            f"{_seconds(fd['caught_up_p99'])} ({_seconds(fr['caught_up_p99'])})",
        ),
        (
            "100% caught up, from the drop (from the reconnect)",
            f"{_seconds(fd['caught_up_all'])} ({_seconds(fr['caught_up_all'])})",
        ),
        ("99% reconnected (socket open), from the drop", _seconds(fd["reconnected_p99"])),
        (
            "messages posted (acked / stored)",
            f"{d['messages_sent']} ({d['messages_acked']} / {d['messages_stored']})",
        ),
        ("deliveries expected", str(d["messages_expected"])),
        (
            "messages lost (clients affected; of them by clients that resumed)",
            f"{d['messages_lost']} ({d['clients_losing']}; "
            f"{d['messages_lost_by_resumed_clients']})",
        ),
        ("messages duplicated", str(d["messages_duplicated"])),
        (
            "resets (`reset: true` acks) / clients never resumed",
            f"{d['resets']} / {d['clients_never_resumed']}",
        ),
        ("SQL statements per resume", f"{d['sql_per_resume']:.1f}"),
        ("server CPU per resume", f"{d['server_cpu_ms_per_resume']:.0f} ms"),
        (
            "SQL statements / server CPU per send (calm phase)",
            f"{d['sql_per_send']:.1f} / {d['server_cpu_ms_per_send']:.0f} ms",
        ),
        (
            "send rate achieved in the calm phase (offered)",
            f"{d['calm_send_rate']:.0f}/s ({d['rate_per_second']:.0f}/s)",
        ),
        (
            "CPU-s in the storm: servers / PostgreSQL / clients / not ours (of 2 cores x wall)",
            f"{cpu['servers']:.0f} / {cpu['postgres']:.0f} / {cpu['clients']:.0f} / "
            f"{cpu['others']:.0f} (of {2 * d['resume_window_seconds']:.0f})",
        ),
    ]
    table = "\n".join(f"| {k} | {v} |" for k, v in rows)
    return (
        "## 3. Reconnect storm\n\n"
        f"{d['clients']} WebSocket clients in {d['client_processes']} processes, subscribed to "
        f"{d['candidates']} candidates on 2 server processes (PostgreSQL + Redis) while "
        f"{d['rate_per_second']:.0f} messages/s are offered, are all reset at once, stay offline "
        f"{d['offline_gap_seconds']:.0f} s, then reconnect at once to the other process and "
        "resubscribe with `after` (caught up: holds the resubscribe ack and every seq up to "
        "it; lost and duplicated: against the REST history read afterwards).\n\n"
        "| measure | value |\n|---|---|\n"
        f"{table}\n"
    )


def run(opts: Any) -> dict[str, Any]:
    data = asyncio.run(scenario(opts))
    return {"name": "storm", "markdown": markdown(data), "data": data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main())
        return
    from harness.services import PostgresServer, RedisServer

    postgres, redis = PostgresServer.start(), RedisServer.start()
    try:
        with tempfile.TemporaryDirectory(prefix="am-storm-") as workdir:
            opts = SimpleNamespace(
                quick=args.quick, workdir=Path(workdir), postgres=postgres, redis_url=redis.url
            )
            result = run(opts)
            print(result["markdown"])
            print(json.dumps(result["data"], indent=1))
    finally:
        redis.stop()
        postgres.stop()


if __name__ == "__main__":
    main()
