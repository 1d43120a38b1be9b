"""What every scenario shares: ports, processes, CPU and memory readings, percentiles, and
Agency Messaging servers (one or several processes) with a provisioned org.

Backing services (PostgreSQL, Redis) come from `harness.services`: the same throwaway
launchers the test suite uses, started on private ports and stopped at the end.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness import services
from harness.services import free_port
from server.domain.auth import make_user_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
CLI = str(Path(PYTHON).parent / "agency-messaging")
LOADGEN = [PYTHON, str(ROOT / "bench" / "loadgen.py")]


STARTED = time.monotonic()  # when the run began: every log line shows the time since


def elapsed() -> str:
    """Time since the run began, as m:ss (or h:mm:ss)."""
    seconds = int(time.monotonic() - STARTED)
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{seconds:02d}" if hours else f"{minutes}:{seconds:02d}"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')} +{elapsed()}] {message}", flush=True)


@contextlib.contextmanager
def phase(name: str) -> Iterator[None]:
    """One line when a phase of the run starts, one when it ends, with how long it took."""
    log(f"==> {name}")
    began = time.monotonic()
    try:
        yield
    except BaseException:
        log(f"<== {name}: failed after {time.monotonic() - began:.1f} s")
        raise
    log(f"<== {name}: done in {time.monotonic() - began:.1f} s")


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    services.wait_for_port(port, timeout)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time of these processes, from /proc."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def cpu_ns(pids: Iterable[int]) -> dict[tuple[int, int], int]:
    """Nanoseconds on a CPU of every thread of these processes (/proc/PID/task/TID/schedstat),
    by (pid, tid): precise enough for a few milliseconds of work, where /proc/PID/stat counts
    in 10 ms ticks. `cpu_ns_between` turns two readings into a duration."""
    out: dict[tuple[int, int], int] = {}
    for pid in pids:
        with contextlib.suppress(OSError):  # the process has ended
            for task in Path(f"/proc/{pid}/task").iterdir():
                with contextlib.suppress(OSError, ValueError, IndexError):
                    out[(pid, int(task.name))] = int((task / "schedstat").read_text().split()[0])
    return out


def cpu_ns_between(before: dict[tuple[int, int], int], after: dict[tuple[int, int], int]) -> int:
    """CPU time spent between two `cpu_ns` readings by the threads alive at the second one
    (a thread started meanwhile counts whole; one that ended meanwhile is not seen)."""
    return sum(ns - before.get(key, 0) for key, ns in after.items())


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"No VmRSS for process {pid}.")


def percentile_ms(values_us: list[int], q: float) -> float:
    """The q-quantile of latencies given in microseconds, in milliseconds (-1: no data)."""
    if not values_us:
        return -1.0
    ordered = sorted(values_us)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 2)


def stop(processes: Iterable[subprocess.Popen[Any]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class AmCluster:
    """One or more `agency-messaging serve` processes sharing a database and a broker."""

    workdir: Path
    secret: str
    service_token: str
    ports: list[int]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def http_url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index % len(self.ports)]}"

    def ws_url(self, index: int = 0) -> str:
        return f"ws://127.0.0.1:{self.ports[index % len(self.ports)]}/ws"

    def token(self, org: str, user: str, ttl: int = 6 * 3600) -> str:
        return make_user_token(self.secret, org, user, ttl)

    def stop(self) -> None:
        stop(self.processes)

    def launch(self, index: int) -> None:
        port = self.ports[index]
        process = subprocess.Popen(
            [CLI, "serve", "--port", str(port)],
            env=self.env,
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"server-{port}.log", "ab"),  # noqa: SIM115
        )
        if index < len(self.processes):
            self.processes[index] = process
        else:
            self.processes.append(process)

    def restart(self, index: int) -> None:
        """A rolling restart of one process: SIGTERM (it closes its sockets with 1012),
        wait for it to exit, start it again on the same port."""
        stop([self.processes[index]])
        self.launch(index)
        wait_for_port(self.ports[index])


def start_am(
    workdir: Path,
    *,
    processes: int = 1,
    database_url: str | None = None,
    broker_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> AmCluster:
    """Migrates the database, then starts `processes` servers on free ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = AmCluster(
        workdir,
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(32),
        [free_port() for _ in range(processes)],
    )
    env = {
        **os.environ,
        "AM_SECRET": cluster.secret,
        "AM_SERVICE_TOKEN": cluster.service_token,
        "AM_VAR_DIR": str(workdir / "var"),
        # The load generator is one user sending far past any human rate, from many sockets.
        "AM_SEND_RATE_PER_MINUTE": "0",
        "AM_MAX_CONNECTIONS_PER_USER": "0",
        "AM_EMAIL_WORKER": "0",
        "AM_LOG_LEVEL": "WARNING",
        **({"AM_DATABASE_URL": database_url} if database_url else {}),
        **({"AM_BROKER_URL": broker_url} if broker_url else {}),
        **(extra_env or {}),
    }
    subprocess.run([CLI, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
    cluster.env = env
    for index in range(processes):
        cluster.launch(index)
    for port in cluster.ports:
        wait_for_port(port)
    return cluster


async def provision(
    cluster: AmCluster, org: str, puts: list[tuple[str, dict[str, Any]]], concurrency: int = 8
) -> None:
    """PUTs provisioning records in order of kind (orgs, agencies, users, candidates); records
    of one kind go `concurrency` at a time."""
    headers = {"Authorization": f"Bearer {cluster.service_token}"}
    async with httpx.AsyncClient(base_url=cluster.http_url(), headers=headers, timeout=60) as http:

        async def put(path: str, body: dict[str, Any]) -> None:
            response = await http.put(path, json=body)
            if response.status_code >= 300:
                raise RuntimeError(f"PUT {path} answered {response.status_code}: {response.text}")

        def kind(path: str) -> int:
            for rank, part in enumerate(("/candidates/", "/users/", "/agencies/")):
                if part in path:
                    return 3 - rank
            return 0

        gate = asyncio.Semaphore(concurrency)

        async def guarded(path: str, body: dict[str, Any]) -> None:
            async with gate:
                await put(path, body)

        for rank in range(4):
            batch = [(p, b) for p, b in puts if kind(p) == rank]
            await asyncio.gather(*(guarded(p, b) for p, b in batch))


class TripCounter:
    """A TCP relay in front of a database or broker server, counting round trips.

    Point a server process at `port` instead of the real server's: every byte passes through
    unchanged, and each time a client sends after the server last answered on that
    connection (or for the first time), one round trip begins. Requests a client pipelines
    before it waits for answers count once; messages the server pushes on its own (Redis
    pub/sub, PostgreSQL notices) cost the client no round trip. It runs its own event loop in
    a thread; `trips` may be read at any time.
    """

    def __init__(self, target_port: int, host: str = "127.0.0.1") -> None:
        self.target = (host, target_port)
        self.trips = 0
        self.connections = 0
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="trip-counter", daemon=True)
        self._thread.start()
        if not self._ready.wait(10) or not self.port:
            raise RuntimeError("The round-trip counter did not start.")

    def url(self, url: str) -> str:
        """The same URL, pointed at this relay instead of the server."""
        host, port = self.target
        return url.replace(f"{host}:{port}", f"127.0.0.1:{self.port}", 1)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            self._server = await asyncio.start_server(self._relay, "127.0.0.1", 0)
            self.port = self._server.sockets[0].getsockname()[1]
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _relay(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.close()
            return
        self.connections += 1
        for writer in (client_w, server_w):
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        last = ["server"]  # who sent last on this connection

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, side: str) -> None:
            try:
                while data := await source.read(65536):
                    if side == "client" and last[0] != "client":
                        self.trips += 1
                    last[0] = side
                    sink.write(data)
                    await sink.drain()
            except OSError:
                pass
            finally:
                with contextlib.suppress(OSError, RuntimeError):
                    sink.close()

        await asyncio.gather(pipe(client_r, server_w, "client"), pipe(server_r, client_w, "server"))

    def stop(self) -> None:
        def close() -> None:
            if self._server is not None:
                self._server.close()
            self._loop.stop()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)


class LeanHttp:
    """A minimal HTTP/1.1 client on one keep-alive connection, for timing a server's
    answers: it costs the client a few microseconds per request where a full client library
    costs a fraction of a millisecond, which on a small shared machine would be part of
    every time measured."""

    def __init__(self, base_url: str, headers: dict[str, str] | None = None) -> None:
        host_port = base_url.split("://", 1)[1].split("/", 1)[0]
        host, _, port = host_port.partition(":")
        self.address = (host, int(port or 80))
        self.host = host_port
        self.headers = dict(headers or {})
        self.sock: socket.socket | None = None
        self.buffer = b""

    def _connect(self) -> socket.socket:
        if self.sock is None:
            self.sock = socket.create_connection(self.address, timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.buffer = b""
        return self.sock

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def __enter__(self) -> LeanHttp:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _read_until(self, sock: socket.socket, marker: bytes) -> bytes:
        while marker not in self.buffer:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError("The server closed the connection.")
            self.buffer += chunk
        head, _, self.buffer = self.buffer.partition(marker)
        return head

    def _read_exactly(self, sock: socket.socket, size: int) -> bytes:
        while len(self.buffer) < size:
            chunk = sock.recv(max(65536, size - len(self.buffer)))
            if not chunk:
                raise ConnectionError("The server closed the connection.")
            self.buffer += chunk
        body, self.buffer = self.buffer[:size], self.buffer[size:]
        return body

    def get(self, path: str) -> tuple[int, bytes]:
        """(status, body) of GET path; keeps the connection for the next request."""
        sock = self._connect()
        lines = [f"GET {path} HTTP/1.1", f"Host: {self.host}"]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode())
        head = self._read_until(sock, b"\r\n\r\n").decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        fields = {}
        for line in head[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if fields.get("transfer-encoding", "").lower() == "chunked":
            parts = []
            while size := int(self._read_until(sock, b"\r\n").split(b";")[0], 16):
                parts.append(self._read_exactly(sock, size))
                self._read_exactly(sock, 2)
            self._read_until(sock, b"\r\n")  # the empty trailer
            body = b"".join(parts)
        else:
            body = self._read_exactly(sock, int(fields.get("content-length", "0")))
        if fields.get("connection", "").lower() == "close":
            self.close()
        return status, body


def metric_samples(text: str) -> dict[str, float]:
    """Every sample of a Prometheus text exposition, by its name with labels as written."""
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            with contextlib.suppress(ValueError):
                out[name] = float(value)
    return out
