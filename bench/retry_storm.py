"""Retry storm against a slow database: a client that gives up and retries must not multiply
the server's work.

Clients whose WebSocket handshake is not answered within a short client-side timeout abandon
it (the TCP connection is reset) and retry at once. The handshake waits on the database (the
token's user is looked up, then `hub.register` reads the user's unread counts, both before
accept), and the database is slow: a TCP relay in front of PostgreSQL delays every chunk by
--delay-ms in each direction. A server that carries on with the work of a handshake whose
client has gone does the work of every abandoned attempt; one that cancels it does not.

One run:
- a private PostgreSQL (harness.services); the relay (this script with --proxy, a process of
  its own) in front of it; the database migrated directly, not through the relay;
- one `agency-messaging serve` process of the tree under test (--tree; default: the repo
  this script lives in), started with that tree first on sys.path (the path of the
  `server.edge.ws` it imported is checked and recorded), its AM_DATABASE_URL on the relay,
  AM_BROKER_URL=memory://, AM_MAX_CONNECTIONS_PER_USER=0, AM_LOG_LEVEL=WARNING;
- an org, --users members over candidates of 10 (one agency thread with a message each,
  so every user has unread counts), provisioned through the service REST API while the
  relay adds no delay; then the delay is set to --delay-ms;
- --clients client loops (this script with --load, a process of its own), each a distinct
  user (client i is user u<i>), for --duration seconds: websockets.connect with
  open_timeout=--timeout; on timeout the attempt is abandoned and retried at once; a socket
  that is accepted is closed at once (close handshake) and the loop connects again
  (--accepted keep: it is kept open and that loop ends);
- alongside, --patient clients (distinct users too) with open_timeout=--patient-timeout
  (10 s), which connect, close once accepted, and connect again: does anybody get served?
- meanwhile GET /healthz every 0.25 s on a new connection (timeout 2 s);
- then a drain: until the server's SQL statement count has not moved for 2 s (at most
  --drain-max seconds), since work left over from abandoned handshakes goes on after the
  clients stop.

Measured: the server process's CPU seconds (utime+stime, /proc/PID/stat), the SQL statements
it sent (the `am_sql_statements` gauge of GET /metrics, read before and after), both over the
run and over the run plus the drain; the relay's count of TCP connections, of PostgreSQL
protocol messages (Query and Execute are counted as queries; CancelRequests separately) and
bytes; the CPU of PostgreSQL, the relay, the clients and of the whole machine (/proc/stat:
what other work on a shared machine took shows as "outside these processes"); /healthz
latency. The run first waits (--wait-quiet, at most 120 s) for the machine to be idle.

    python bench/retry_storm.py [--tree PATH] [--label NAME] [--delay-ms 100] [--clients 100]
        [--users 200] [--timeout 0.3] [--duration 20] [--record FILE.jsonl]
    python bench/retry_storm.py --table FILE.jsonl     # a markdown table of recorded runs

Loopback addresses only; every loop is bounded in time and count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import platform
import resource
import secrets
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SELF = str(Path(__file__).resolve())
PYTHON = sys.executable
ORG = "retry"
LOOPBACK = "127.0.0.1"
MAX_ATTEMPTS_PER_CLIENT = 200_000
HEALTH_EVERY = 0.25
HEALTH_TIMEOUT = 2.0
QUIET_SECONDS = 2.0

# The server is started with this code, run with cwd = the tree: the tree goes first on
# sys.path (ahead of any editable install), and the server.edge.ws it imported must be the tree's.
BOOT = """
import os, sys
tree = os.path.realpath(os.getcwd())
sys.path.insert(0, tree)
import server.edge.ws
where = os.path.realpath(server.edge.ws.__file__)
print("retry_storm: server.edge.ws imported from", where, file=sys.stderr, flush=True)
if not where.startswith(tree + os.sep):
    sys.exit("retry_storm: server.edge.ws is not the tree's")
from server.cli import main
sys.exit(main(sys.argv[1:]))
"""


def log(message: str) -> None:
    print(f"[retry_storm {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


# --- the latency-adding relay (its own process) -------------------------------------------

SSL_REQUEST, GSS_REQUEST, CANCEL_REQUEST = 80877103, 80877104, 80877102


class PgCounter:
    """Counts the PostgreSQL frontend messages of one connection (client to server)."""

    def __init__(self, stats: Counter[str]) -> None:
        self.stats = stats
        self.buffer = bytearray()
        self.startup = True  # untyped messages: SSLRequest, StartupMessage, CancelRequest
        self.broken = False

    def feed(self, data: bytes) -> None:
        if self.broken:
            return
        buf = self.buffer
        buf += data
        while True:
            if self.startup:
                if len(buf) < 8:
                    return
                size = int.from_bytes(buf[0:4], "big")
                if not 8 <= size <= 65536:
                    self.broken = True
                    return
                if len(buf) < size:
                    return
                code = int.from_bytes(buf[4:8], "big")
                if code == CANCEL_REQUEST:
                    self.stats["pg_cancel_requests"] += 1
                elif code in (SSL_REQUEST, GSS_REQUEST):
                    self.stats["pg_ssl_requests"] += 1
                else:
                    self.startup = False
                    self.stats["pg_startups"] += 1
                del buf[:size]
            else:
                if len(buf) < 5:
                    return
                size = int.from_bytes(buf[1:5], "big")
                if size < 4:
                    self.broken = True
                    return
                if len(buf) < 1 + size:
                    return
                kind = chr(buf[0])
                self.stats[f"pg_msg_{kind}"] += 1
                if kind in ("Q", "E"):
                    self.stats["pg_queries"] += 1
                del buf[: 1 + size]


class Relay:
    """Relays loopback TCP connections to the upstream port, each chunk in each direction
    delayed by `delay` seconds, in order per connection and direction."""

    def __init__(self, upstream: int, delay: float) -> None:
        self.upstream = upstream
        self.delay = delay
        self.stats: Counter[str] = Counter()
        self.open = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["connections"] += 1
        try:
            up_reader, up_writer = await asyncio.open_connection(LOOPBACK, self.upstream)
        except OSError:
            self.stats["upstream_refused"] += 1
            writer.close()
            return
        self.open += 1
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, "up", PgCounter(self.stats)),
                self._pipe(up_reader, writer, "down", None),
            )
        except asyncio.CancelledError:
            return  # the relay is stopping: nothing to report
        finally:
            self.open -= 1

    async def _pipe(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        direction: str,
        counter: PgCounter | None,
    ) -> None:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while True:
                    due, data = await queue.get()
                    wait = due - loop.time()
                    if wait > 0:
                        await asyncio.sleep(wait)
                    if not data:
                        break
                    writer.write(data)
                    await writer.drain()
            writer.close()  # the PostgreSQL protocol has no half-close: end both ways

        forwarder = asyncio.create_task(forward())
        try:
            while not forwarder.done():
                try:
                    data = await reader.read(65536)
                except (ConnectionError, OSError):
                    data = b""
                queue.put_nowait((loop.time() + self.delay, data))
                if not data:
                    break
                self.stats[f"bytes_{direction}"] += len(data)
                self.stats[f"chunks_{direction}"] += 1
                if counter is not None:
                    counter.feed(data)
            await forwarder
        finally:
            forwarder.cancel()
            writer.close()

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One command a connection: `stats`, or `delay <ms>`; answered with the stats."""
        line = (await reader.readline()).decode().split()
        if line[:1] == ["delay"] and len(line) == 2:
            self.delay = float(line[1]) / 1000
        body = {**self.stats, "open": self.open, "delay_ms": self.delay * 1000}
        writer.write(json.dumps(body).encode() + b"\n")
        await writer.drain()
        writer.close()


async def proxy_main(listen: int, upstream: int, control: int, delay_ms: float) -> None:
    relay = Relay(upstream, delay_ms / 1000)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    relay_server = await asyncio.start_server(relay.handle, LOOPBACK, listen)
    control_server = await asyncio.start_server(relay.control, LOOPBACK, control)
    async with relay_server, control_server:
        await stop.wait()


async def relay_command(port: int, command: str) -> dict[str, Any]:
    reader, writer = await asyncio.open_connection(LOOPBACK, port)
    writer.write(command.encode() + b"\n")
    await writer.drain()
    line = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    return dict(json.loads(line))


# --- the retrying clients (their own process) ---------------------------------------------


async def load_main(config: dict[str, Any]) -> None:
    """Client loops; a JSON line of counts every second, then one of totals ("done").
    Counts of the patient clients (config "patient") are prefixed with "patient_"."""
    import websockets

    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    url = config["url"]
    keep = config["accepted"] == "keep"
    counts: Counter[str] = Counter()
    accept_ms: dict[str, list[float]] = {"": [], "patient_": []}
    kept: list[Any] = []
    start = time.monotonic()
    end = start + float(config["duration"])

    async def client(token: str, patience: float, kind: str) -> None:
        headers = {"Authorization": f"Bearer {token}"}
        for _ in range(MAX_ATTEMPTS_PER_CLIENT):
            if time.monotonic() >= end:
                return
            counts[f"{kind}attempts"] += 1
            began = time.monotonic()
            try:
                ws = await websockets.connect(
                    url,
                    additional_headers=headers,
                    open_timeout=patience,
                    compression=None,
                    ping_interval=None,
                    close_timeout=1,
                )
            except TimeoutError:  # websockets resets the TCP connection: abandoned
                counts[f"{kind}abandoned"] += 1
                continue
            except websockets.InvalidStatus as error:
                counts[f"{kind}refused_{error.response.status_code}"] += 1
                continue
            except (OSError, websockets.InvalidHandshake, websockets.ConnectionClosed):
                counts[f"{kind}errors"] += 1
                await asyncio.sleep(0.05)
                continue
            counts[f"{kind}accepted"] += 1
            accept_ms[kind].append((time.monotonic() - began) * 1000)
            if keep:
                kept.append(ws)
                return
            with contextlib.suppress(Exception):
                await ws.close()

    async def progress() -> None:
        while True:
            await asyncio.sleep(1.0)
            print(json.dumps({"t": round(time.monotonic() - start, 2), **counts}), flush=True)

    reporter = asyncio.create_task(progress())
    await asyncio.gather(
        *(client(token, float(config["timeout"]), "") for token in config["tokens"]),
        *(
            client(token, float(config["patient_timeout"]), "patient_")
            for token in config["patient"]
        ),
    )
    elapsed = time.monotonic() - start
    reporter.cancel()
    for ws in kept:
        with contextlib.suppress(Exception):
            await ws.close()

    def quantile(values: list[float], q: float) -> float | None:
        if not values:
            return None
        values = sorted(values)
        return round(values[min(len(values) - 1, int(q * len(values)))], 1)

    usage = resource.getrusage(resource.RUSAGE_SELF)
    latencies = {
        f"{kind}accept_ms_{name}": quantile(values, q)
        for kind, values in accept_ms.items()
        for name, q in (("p50", 0.5), ("p99", 0.99))
    }
    print(
        json.dumps(
            {
                "done": True,
                "seconds": round(elapsed, 2),
                **counts,
                **latencies,
                "cpu": round(usage.ru_utime + usage.ru_stime, 2),
            }
        ),
        flush=True,
    )


# --- readings ---------------------------------------------------------------------------


def proc_cpu(pid: int, children: bool = False) -> float:
    """utime+stime (and, with children, the reaped children's) of a process, in seconds."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    ticks = sum(int(f) for f in fields[11 : 15 if children else 13])
    return ticks / os.sysconf("SC_CLK_TCK")


def postgres_cpu(data_dir: Path) -> float:
    """The postmaster's CPU, its reaped children's, and its live children's."""
    try:
        root = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = proc_cpu(root, children=True)
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            if int(stat.read_text().rsplit(")", 1)[1].split()[1]) == root:
                total += proc_cpu(int(stat.parent.name))
    return total


def machine_busy() -> float:
    """CPU seconds the whole machine (all cores) has been busy, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[0:3]) + sum(fields[5:8])) / os.sysconf("SC_CLK_TCK")


async def maybe_metrics(http: Any, base: str, wait: float) -> dict[str, float] | None:
    """server_metrics, or None when the server does not answer in time."""
    import httpx

    try:
        return await server_metrics(http, base, wait)
    except httpx.HTTPError:
        log("the server did not answer GET /metrics")
        return None


async def server_metrics(http: Any, base: str, wait: float) -> dict[str, float]:
    """am_sql_statements, am_ws_connections, am_connections_refused by reason and, where the
    server has them, its event-loop lag figures."""
    text = (await http.get(f"{base}/metrics", timeout=wait)).text
    found: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        name, _, value = line.rpartition(" ")
        if name in ("am_sql_statements", "am_ws_connections") or name.startswith(
            ("am_connections_refused_total", "am_event_loop_lag_seconds_", "am_event_loop_b")
        ):
            found[name] = float(value)
    return found


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    return {k: v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0)}


def tree_fingerprint(tree: Path) -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(tree), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    ws = tree / "server" / "ws.py"
    return {
        "commit": git("rev-parse", "--short", "HEAD"),
        "modified": git("status", "--porcelain", "--untracked-files=no").splitlines(),
        "ws_py_sha256": hashlib.sha256(ws.read_bytes()).hexdigest()[:16],
    }


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "loadavg_before": os.getloadavg()[0],
    }


# --- one run --------------------------------------------------------------------------------


def records(users: int) -> list[tuple[str, dict[str, Any]]]:
    org = f"/api/v1/orgs/{ORG}"
    puts: list[tuple[str, dict[str, Any]]] = [
        (org, {"name": "Retry"}),
        (f"{org}/agencies/ag", {"name": "Agency"}),
        (
            f"{org}/users/ann",
            {"name": "Ann", "email": "ann@r.example", "kind": "agency", "agency": "ag"},
        ),
        (f"{org}/users/pub", {"name": "Pub", "email": "pub@r.example", "kind": "member"}),
    ]
    for u in range(users):
        puts.append(
            (f"{org}/users/u{u}", {"name": f"U{u}", "email": f"u{u}@r.example", "kind": "member"})
        )
    candidates = max(1, users // 10)
    for c in range(candidates):
        members = ["pub", *(f"u{u}" for u in range(c, users, candidates))]
        puts.append(
            (
                f"{org}/candidates/c{c}",
                {
                    "name": f"C{c}",
                    "coordinator": "pub",
                    "members": members,
                    "agency_users": ["ann"],
                },
            )
        )
    return puts


async def provision(base: str, service_token: str, secret: str, users: int) -> None:
    import httpx

    from server.domain.auth import make_user_token

    service = {"Authorization": f"Bearer {service_token}"}
    pub = {"Authorization": f"Bearer {make_user_token(secret, ORG, 'pub')}"}
    gate = asyncio.Semaphore(8)
    async with httpx.AsyncClient(base_url=base, timeout=60) as http:

        async def put(path: str, body: dict[str, Any]) -> None:
            async with gate:
                response = await http.put(path, json=body, headers=service)
            if response.status_code >= 300:
                raise RuntimeError(f"PUT {path}: {response.status_code} {response.text}")

        puts = records(users)
        for part in ("/agencies/", "/users/", "/candidates/"):
            if part == "/agencies/":
                await put(*puts[0])
            await asyncio.gather(*(put(p, b) for p, b in puts[1:] if part in p))

        async def thread(c: int) -> None:
            async with gate:
                response = await http.post(
                    f"/api/v1/candidates/c{c}/threads",
                    json={"agency_user": "ann", "private": False},
                    headers=pub,
                )
                response.raise_for_status()
                thread_id = response.json()["id"]
                response = await http.post(
                    f"/api/v1/threads/{thread_id}/messages", json={"body": "hello"}, headers=pub
                )
                response.raise_for_status()

        await asyncio.gather(*(thread(c) for c in range(max(1, users // 10))))
        user = {"Authorization": f"Bearer {make_user_token(secret, ORG, 'u0')}"}
        unread = (await http.get("/api/v1/unread", headers=user)).json()
        log(f"provisioned {users} users; u0's unread: {json.dumps(unread)[:120]}")


async def health_probe(
    port: int, until: float, samples: list[tuple[float, float]], failures: Counter[str]
) -> None:
    """GET /healthz on a new connection every HEALTH_EVERY seconds: (connect ms, total ms
    to the status line) of each answer, and failures by phase."""
    request = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    while time.monotonic() < until:
        began = time.monotonic()
        connected: float | None = None
        writer: asyncio.StreamWriter | None = None
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                reader, writer = await asyncio.open_connection(LOOPBACK, port)
                connected = time.monotonic()
                writer.write(request)
                status = await reader.readline()
            if b" 200 " in status:
                samples.append(((connected - began) * 1000, (time.monotonic() - began) * 1000))
            else:
                failures[f"status {status[:16]!r}"] += 1
        except TimeoutError:
            failures["connect_timeout" if connected is None else "response_timeout"] += 1
        except OSError as error:
            failures[type(error).__name__] += 1
        finally:
            if writer is not None:
                writer.close()
        await asyncio.sleep(max(0.0, HEALTH_EVERY - (time.monotonic() - began)))


def quantile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 1)


def measure(opts: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    """Starts PostgreSQL, the relay and the server, provisions, drives the storm, stops all."""
    from harness.services import PostgresServer, wait_for_port

    tree = Path(opts.tree).resolve()
    record: dict[str, Any] = {
        "label": opts.label or tree.name,
        "tree": str(tree),
        "source": tree_fingerprint(tree),
        "machine": machine(),
        "params": {
            "delay_ms": opts.delay_ms,
            "clients": opts.clients,
            "users": opts.users,
            "timeout": opts.timeout,
            "duration": opts.duration,
            "accepted": opts.accepted,
            "patient": opts.patient,
            "patient_timeout": opts.patient_timeout,
            "drain_max": opts.drain_max,
            "broker": "memory://",
        },
        "command": " ".join([".venv/bin/python", "bench/retry_storm.py", *sys.argv[1:]]),
    }
    if opts.wait_quiet:
        record["quiet"] = wait_for_quiet(opts.wait_quiet)
        log(f"machine before the run: {record['quiet']}")
    wall = time.monotonic()
    postgres = PostgresServer.start()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        postgres.create_database("retry")
        relay_port, control_port, port = free_port(), free_port(), free_port()
        relay_command_line = [PYTHON, SELF, "--proxy", "--delay-ms", "0"]
        relay_command_line += ["--listen", str(relay_port), "--upstream", str(postgres.port)]
        relay_command_line += ["--control", str(control_port)]
        relay = subprocess.Popen(relay_command_line)
        processes.append(relay)
        wait_for_port(relay_port)
        wait_for_port(control_port)
        secret, service_token = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
        env = {
            **os.environ,
            "AM_SECRET": secret,
            "AM_SERVICE_TOKEN": service_token,
            "AM_VAR_DIR": str(workdir / "var"),
            "AM_DATABASE_URL": postgres.url("retry"),  # migrations go straight to PostgreSQL
            "AM_BROKER_URL": "memory://",
            "AM_MAX_CONNECTIONS_PER_USER": "0",
            "AM_SEND_RATE_PER_MINUTE": "0",
            "AM_EMAIL_WORKER": "0",
            "AM_LOG_LEVEL": "WARNING",
        }
        env.pop("PYTHONPATH", None)
        subprocess.run(
            [PYTHON, "-c", BOOT, "migrate"], env=env, cwd=tree, check=True, capture_output=True
        )
        # The server reaches PostgreSQL through the relay.
        env["AM_DATABASE_URL"] = f"postgresql+asyncpg://postgres@{LOOPBACK}:{relay_port}/retry"
        server_log = workdir / "server.log"
        with server_log.open("ab") as sink:
            server = subprocess.Popen(
                [PYTHON, "-c", BOOT, "serve", "--port", str(port)],
                env=env,
                cwd=tree,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        processes.append(server)
        wait_for_port(port, timeout=30)
        record["server_ws_file"] = next(
            (
                line.split("imported from", 1)[1].strip()
                for line in server_log.read_text().splitlines()
                if "imported from" in line
            ),
            None,
        )
        log(f"{record['label']}: server.edge.ws from {record['server_ws_file']}")
        ports = {"http": port, "control": control_port}
        pids = {"server": server.pid, "relay": relay.pid}
        readings = asyncio.run(
            drive(opts, ports, pids, postgres.directory / "data", secret, service_token)
        )
        record["server_log_tail"] = server_log.read_text(errors="replace").splitlines()[-5:]
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.terminate()
        for process in reversed(processes):
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        postgres.stop()
    record.update(readings)
    record["wall_seconds"] = round(time.monotonic() - wall, 1)
    return record


def cpu_snapshot(pids: dict[str, int], pg_data: Path) -> dict[str, float]:
    """CPU seconds so far: the server, PostgreSQL, the relay, the clients (while they run),
    this process, and the whole machine."""
    return {
        "server": proc_cpu(pids["server"]),
        "pg": postgres_cpu(pg_data),
        "relay": proc_cpu(pids["relay"]),
        "load": proc_cpu(pids["load"]) if "load" in pids else 0.0,
        "main": proc_cpu(os.getpid()),
        "machine": machine_busy(),
    }


def cpu_delta(after: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Deltas, and `other`: the machine's busy time outside these processes (other work
    sharing the machine, and interrupts)."""
    moved = {k: round(after[k] - before[k], 2) for k in after}
    mine = sum(v for k, v in moved.items() if k != "machine")
    moved["other"] = round(moved["machine"] - mine, 2)
    return moved


def wait_for_quiet(limit: float, cores: float = 0.3, window: float = 2.0) -> dict[str, float]:
    """Waits (at most `limit` seconds) until the machine is busy less than `cores` over a
    window: other work on a shared machine skews every CPU figure."""
    began = time.monotonic()
    busy = 0.0
    while True:
        first = machine_busy()
        time.sleep(window)
        busy = (machine_busy() - first) / window
        if busy < cores or time.monotonic() - began >= limit:
            return {"waited_s": round(time.monotonic() - began, 1), "busy_cores": round(busy, 2)}


async def drive(
    opts: argparse.Namespace,
    ports: dict[str, int],
    pids: dict[str, int],
    pg_data: Path,
    secret: str,
    service_token: str,
) -> dict[str, Any]:
    """Provisions, sets the delay, runs the clients and the drain; the readings."""
    import httpx

    from server.domain.auth import make_user_token

    base, control_port = f"http://{LOOPBACK}:{ports['http']}", ports["control"]
    await provision(base, service_token, secret, opts.users)
    tokens = [make_user_token(secret, ORG, f"u{i}") for i in range(opts.clients)]
    patient = [
        make_user_token(secret, ORG, f"u{i}")
        for i in range(opts.clients, opts.clients + opts.patient)
    ]

    await relay_command(control_port, f"delay {opts.delay_ms}")
    async with httpx.AsyncClient() as http:
        await asyncio.sleep(1.0)
        before_metrics = await server_metrics(http, base, wait=60)
        before_relay = await relay_command(control_port, "stats")
        config = {
            "url": f"ws://{LOOPBACK}:{ports['http']}/ws",
            "timeout": opts.timeout,
            "duration": opts.duration,
            "accepted": opts.accepted,
            "tokens": tokens,
            "patient": patient,
            "patient_timeout": opts.patient_timeout,
        }
        before_cpu = cpu_snapshot(pids, pg_data)
        load = await asyncio.create_subprocess_exec(
            PYTHON,
            SELF,
            "--load",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert load.stdin is not None and load.stdout is not None
        load.stdin.write(json.dumps(config).encode())
        load.stdin.close()
        running = {**pids, "load": load.pid}
        started = time.monotonic()
        health: list[tuple[float, float]] = []
        health_failures: Counter[str] = Counter()
        prober = asyncio.create_task(
            health_probe(ports["http"], started + opts.duration, health, health_failures)
        )
        timeline: list[dict[str, Any]] = []
        final: dict[str, Any] = {}
        last_cpu = cpu_snapshot(running, pg_data)
        last_sql: float | None = before_metrics["am_sql_statements"]
        limit = started + opts.duration + max(opts.timeout, opts.patient_timeout) + 30
        while time.monotonic() < limit:
            try:
                line = await asyncio.wait_for(load.stdout.readline(), limit - time.monotonic())
            except TimeoutError:
                break
            if not line:
                break
            counts = json.loads(line)
            if counts.get("done"):
                final = counts
                break
            cpu = cpu_snapshot(running, pg_data)
            sql: float | None = None
            # Within 0.5 s, so that a server too busy to answer leaves a gap, not a backlog.
            with contextlib.suppress(httpx.HTTPError):
                sql = (await server_metrics(http, base, wait=0.5))["am_sql_statements"]
            moved = None if sql is None or last_sql is None else int(sql - last_sql)
            timeline.append({**counts, "cpu": cpu_delta(cpu, last_cpu), "sql": moved})
            last_cpu, last_sql = cpu, sql
        if load.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                load.kill()
        await load.wait()
        await prober
        run_end_cpu = cpu_snapshot(pids, pg_data)
        run_end_t = time.monotonic()
        run_end_metrics = await maybe_metrics(http, base, wait=10)
        run_end_relay = await relay_command(control_port, "stats")
        # The drain: what the server still does for the clients once they have stopped.
        # A server that does not answer /metrics any more gets no drain.
        sql_now = run_end_metrics and run_end_metrics["am_sql_statements"]
        quiet_since = time.monotonic()
        drain_end = time.monotonic() + (opts.drain_max if run_end_metrics else 0)
        while time.monotonic() < drain_end and time.monotonic() - quiet_since < QUIET_SECONDS:
            await asyncio.sleep(0.25)
            moved_sql = (await server_metrics(http, base, wait=60))["am_sql_statements"]
            if moved_sql != sql_now:
                quiet_since, sql_now = time.monotonic(), moved_sql
        after_cpu = cpu_snapshot(pids, pg_data)
        after_t = time.monotonic()
        after_metrics = await maybe_metrics(http, base, wait=5)
        after_relay = await relay_command(control_port, "stats")
        try:
            healthz_after: int | str = (await http.get(f"{base}/healthz", timeout=5)).status_code
        except httpx.HTTPError as error:
            healthz_after = type(error).__name__

    def relay_delta(end: dict[str, Any]) -> dict[str, float]:
        """Counters moved since `before`: connections, bytes, PostgreSQL messages by type."""
        keys = {"connections", "pg_queries", "pg_cancel_requests", "pg_startups"}
        keys |= {k for k in end if k not in ("open", "delay_ms")}
        return {k: end.get(k, 0) - before_relay.get(k, 0) for k in sorted(keys)}

    # The clients' process has exited by now: its CPU is what it reported itself.
    load_cpu = float(final.get("cpu", 0.0))
    cpu_run = cpu_delta({**run_end_cpu, "load": load_cpu}, before_cpu)
    cpu_all = cpu_delta({**after_cpu, "load": load_cpu}, before_cpu)
    attempts = int(final.get("attempts", 0))
    accepted = int(final.get("accepted", 0))

    def sql_since_before(end: dict[str, float] | None) -> int | None:
        if end is None:  # the server did not answer /metrics
            return None
        return int(end["am_sql_statements"] - before_metrics["am_sql_statements"])

    sql_run, sql_all = sql_since_before(run_end_metrics), sql_since_before(after_metrics)
    server_all = cpu_all["server"]
    totals = [total for _, total in health]
    connects = [c for c, _ in health]
    return {
        "clients_result": final,
        "attempts": attempts,
        "abandoned": int(final.get("abandoned", 0)),
        "accepted": accepted,
        "refused": {k: v for k, v in final.items() if k.startswith("refused_")},
        "accept_ms_p50": final.get("accept_ms_p50"),
        "errors": int(final.get("errors", 0)),
        "patient": {
            "attempts": int(final.get("patient_attempts", 0)),
            "accepted": int(final.get("patient_accepted", 0)),
            "abandoned": int(final.get("patient_abandoned", 0)),
            "accept_ms_p50": final.get("patient_accept_ms_p50"),
            "accept_ms_p99": final.get("patient_accept_ms_p99"),
            "refused": {k: v for k, v in final.items() if k.startswith("patient_refused")},
        },
        "server_cpu_run": cpu_run["server"],
        "server_cpu_total": server_all,
        "cpu_run": cpu_run,
        "cpu_total": cpu_all,
        "drain_seconds": round(after_t - run_end_t, 1),
        "server_answered_metrics_after_run": run_end_metrics is not None,
        "sql_run": sql_run,
        "sql_total": sql_all,
        "cpu_ms_per_attempt": round(server_all * 1000 / attempts, 2) if attempts else None,
        "sql_per_attempt": round(sql_all / attempts, 2)
        if attempts and sql_all is not None
        else None,
        "cpu_ms_per_accepted": round(server_all * 1000 / accepted, 1) if accepted else None,
        "sql_per_accepted": round(sql_all / accepted, 1)
        if accepted and sql_all is not None
        else None,
        "server_metrics_delta": delta(after_metrics or run_end_metrics or {}, before_metrics),
        "relay_run": relay_delta(run_end_relay),
        "relay_total": relay_delta(after_relay),
        "healthz": {
            "probes": len(health) + sum(health_failures.values()),
            "failed": dict(health_failures),
            "p50_ms": quantile(totals, 0.5),
            "p99_ms": quantile(totals, 0.99),
            "max_ms": round(max(totals), 1) if totals else None,
            "connect_p50_ms": quantile(connects, 0.5),
            "connect_max_ms": round(max(connects), 1) if connects else None,
            "status_after": healthz_after,
        },
        "timeline": timeline,
    }


# --- reporting ------------------------------------------------------------------------------


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float):
        return f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def table(rows: list[dict[str, Any]]) -> str:
    """Two tables: the server's work, then the rest of the machine and /healthz."""
    lines = [
        "| run | tree | DB delay each way | attempts | abandoned | accepted | server CPU-s "
        "(run + drain) | CPU ms / attempt | SQL statements (run + drain) | statements / "
        "attempt | CPU ms / accepted | statements / accepted |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        src = r["source"]
        tree = src["commit"] + (f" +{len(src['modified'])} modified" if src["modified"] else "")
        drain_cpu = r["server_cpu_total"] - r["server_cpu_run"]
        lines.append(
            _row(
                [
                    r["label"],
                    tree,
                    f"{r['params']['delay_ms']:g} ms",
                    _fmt(r["attempts"]),
                    _fmt(r["abandoned"]),
                    _fmt(r["accepted"]),
                    f"{r['server_cpu_run']:.2f} + {drain_cpu:.2f}",
                    _fmt(r["cpu_ms_per_attempt"]),
                    (
                        f"{r['sql_run']:,} + {r['sql_total'] - r['sql_run']:,}"
                        if r["sql_total"] is not None and r["sql_run"] is not None
                        else "no answer from /metrics"
                    ),
                    _fmt(r["sql_per_attempt"]),
                    _fmt(r["cpu_ms_per_accepted"]),
                    _fmt(r["sql_per_accepted"]),
                ]
            )
        )
    lines += [
        "",
        "| run | server handshake timeouts (10 s) | relay: TCP connections to PostgreSQL "
        "| StartupMessages | queries (Query + Execute) | CancelRequests | PostgreSQL "
        "CPU-s | CPU-s outside these processes (machine busy) | /healthz p50 / p99 / max ms "
        "| patient clients: accepted / attempts, p50 ms |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        h, relay, cpu = r["healthz"], r["relay_total"], r["cpu_total"]
        patient = r["patient"]
        timeouts = sum(v for k, v in r["server_metrics_delta"].items() if "handshake_timeout" in k)
        failed = sum(h["failed"].values())
        lines.append(
            _row(
                [
                    r["label"],
                    _fmt(int(timeouts))
                    if r.get("server_answered_metrics_after_run", True)
                    else "n/a (no answer)",
                    _fmt(int(relay["connections"])),
                    _fmt(int(relay["pg_startups"])),
                    _fmt(int(relay["pg_queries"])),
                    _fmt(int(relay["pg_cancel_requests"])),
                    _fmt(cpu["pg"]),
                    f"{_fmt(cpu['other'])} ({_fmt(cpu['machine'])})",
                    f"{_fmt(h['p50_ms'])} / {_fmt(h['p99_ms'])} / {_fmt(h['max_ms'])}"
                    + (f"; {failed} of {h['probes']} over 2 s" if failed else ""),
                    f"{patient['accepted']} / {patient['attempts']}, "
                    f"{_fmt(patient['accept_ms_p50'])}",
                ]
            )
        )
    return "\n".join(lines)


def summary(r: dict[str, Any]) -> str:
    return (
        f"{r['label']}: {r['attempts']} attempts, {r['abandoned']} abandoned, "
        f"{r['accepted']} accepted, refused {r['refused']}, errors {r['errors']}; "
        f"server CPU {r['server_cpu_run']} s (+drain {r['server_cpu_total']:.2f} s over "
        f"{r['drain_seconds']} s); SQL {r['sql_run']} (total {r['sql_total']}); per attempt "
        f"{r['cpu_ms_per_attempt']} ms CPU, {r['sql_per_attempt']} statements; relay "
        f"{r['relay_total']}; CPU over the run {r['cpu_run']}; healthz {r['healthz']}; "
        f"wall {r['wall_seconds']} s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tree", default=str(ROOT), help="the source tree whose server runs")
    parser.add_argument("--label", default="", help="the run's name in the table")
    parser.add_argument("--delay-ms", type=float, default=100.0, help="added each way")
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--users", type=int, default=200)
    parser.add_argument("--timeout", type=float, default=0.3, help="client open_timeout, s")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of retrying")
    parser.add_argument("--accepted", choices=("close", "keep"), default="close")
    parser.add_argument(
        "--patient", type=int, default=5, help="extra clients with a long timeout (goodput)"
    )
    parser.add_argument("--patient-timeout", type=float, default=10.0)
    parser.add_argument("--drain-max", type=float, default=15.0)
    parser.add_argument(
        "--wait-quiet",
        type=float,
        default=120.0,
        help="first wait up to this many seconds for the machine to be idle (0: do not)",
    )
    parser.add_argument("--record", help="append the run's JSON to this file (JSON lines)")
    parser.add_argument("--table", nargs="+", metavar="FILE", help="print recorded runs")
    # Internal roles.
    parser.add_argument("--proxy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--load", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--listen", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--control", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.proxy:
        asyncio.run(proxy_main(args.listen, args.upstream, args.control, args.delay_ms))
        return
    if args.load:
        asyncio.run(load_main(json.loads(sys.stdin.read())))
        return
    if args.table:
        rows = [
            json.loads(line)
            for name in args.table
            for line in Path(name).read_text().splitlines()
            if line.strip()
        ]
        print(table(rows))
        return
    if args.clients + args.patient > args.users:
        parser.error("--clients + --patient must not exceed --users: each is a distinct user")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    with tempfile.TemporaryDirectory(prefix="am-retry-") as workdir:
        record = measure(args, Path(workdir))
    print(summary(record))
    print(table([record]))
    if args.record:
        with Path(args.record).open("a") as sink:
            sink.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
