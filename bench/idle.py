"""Scenario 4, idle connections: the server's memory per open WebSocket.

One `agency-messaging serve` process on the embedded SQLite default (memory per socket does
not depend on the database). A client process of its own opens a few warm-up sockets,
then N more, each as a browser tab would: a distinct user, authenticated at the handshake,
subscribed to one of its candidates (five viewers a candidate), answering the server's
keepalive pings and sending the protocol's `ping` op every 30 s. The server's RSS is read
from /proc once it has settled after the warm-up, and again once it has settled with the N
sockets open: (after - before) / N is the memory per connection. The server offers no way
to run its garbage collector from outside, so its RSS is read as it stands.

For context, the same is measured for:
- *deflate*: clients that offer permessage-deflate, as browsers do (uvicorn accepts it with
  12-bit windows), on a fresh server process;
- *bare*: a bare Starlette WebSocket endpoint under the same uvicorn settings (accept, then
  answer every frame): the floor that uvicorn, its WebSocket implementation and the event
  loop set;
- *tracemalloc*: the real app (create_app, same uvicorn settings) in a harness process that
  traces allocations, collects garbage, and compares snapshots before and after opening
  the sockets, grouped by the line that allocated.

    python bench/idle.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import secrets
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
ORG = "idle"
VIEWERS_PER_CANDIDATE = 5
WARMUP = 20
TARGET_KIB = 30.0
PING_EVERY = 30.0  # the protocol's advice; the server closes a socket idle for 120 s


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


def uvicorn_config(app: Any, port: int) -> Any:
    """The settings `agency-messaging serve` runs uvicorn with (server/cli.py)."""
    import uvicorn

    return uvicorn.Config(
        app,
        host="127.0.0.1",
        port=port,
        access_log=False,
        proxy_headers=True,
        log_config=None,
        ws_max_size=64 * 1024,
        ws_ping_interval=20.0,
        ws_ping_timeout=20.0,
        timeout_graceful_shutdown=10,
    )


# --- the client process -----------------------------------------------------------------


async def client_main() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    sockets: list[Any] = []
    readers: list[asyncio.Task[None]] = []
    compressed: list[Any] = []  # sockets on which permessage-deflate was negotiated
    frames = 0

    async def read(ws: Any) -> None:
        nonlocal frames
        with contextlib.suppress(websockets.ConnectionClosed):
            async for _ in ws:
                frames += 1

    async def open_one(url: str, token: str, candidate: str, compression: str | None) -> bool:
        try:
            ws = await websockets.connect(
                url,
                additional_headers={"Authorization": f"Bearer {token}"},
                compression=compression,
                open_timeout=120,
                ping_interval=None,  # the server pings; the client answers
                max_size=None,
            )
            await ws.send(orjson.dumps({"op": "subscribe", "candidate": candidate}).decode())
            async with asyncio.timeout(120):
                while orjson.loads(await ws.recv()).get("type") != "ack":
                    pass
        except (OSError, TimeoutError, websockets.WebSocketException):
            return False
        sockets.append(ws)
        readers.append(asyncio.create_task(read(ws)))
        if ws.protocol.extensions:
            compressed.append(ws)
        return True

    async def pinger() -> None:
        while True:
            await asyncio.sleep(PING_EVERY)
            for ws in list(sockets):
                with contextlib.suppress(websockets.ConnectionClosed):
                    await ws.send('{"op": "ping"}')

    async def open_many(
        url: str, clients: list[tuple[str, str]], compression: str | None, concurrency: int
    ) -> list[bool]:
        gate = asyncio.Semaphore(concurrency)

        async def guarded(token: str, candidate: str) -> bool:
            async with gate:
                return await open_one(url, token, candidate, compression)

        return list(await asyncio.gather(*(guarded(t, c) for t, c in clients)))

    ping_task = asyncio.create_task(pinger())
    while line := await loop.run_in_executor(None, sys.stdin.readline):
        command = json.loads(line)
        if command["cmd"] == "open":
            started = time.monotonic()
            results = await open_many(
                command["url"], command["clients"], command["compression"], command["concurrency"]
            )
            print(
                json.dumps(
                    {
                        "event": "opened",
                        "opened": sum(results),
                        "failed": len(results) - sum(results),
                        "seconds": round(time.monotonic() - started, 1),
                        "open": sum(1 for ws in sockets if ws.close_code is None),
                        "deflate_negotiated": len(compressed),
                        "rss": common.rss_bytes(os.getpid()),
                    }
                ),
                flush=True,
            )
        elif command["cmd"] == "status":
            print(
                json.dumps(
                    {
                        "event": "status",
                        "open": sum(1 for ws in sockets if ws.close_code is None),
                        "closed_codes": sorted(
                            {str(ws.close_code) for ws in sockets if ws.close_code is not None}
                        ),
                        "frames": frames,
                    }
                ),
                flush=True,
            )
    ping_task.cancel()
    await asyncio.gather(
        *(asyncio.wait_for(ws.close(), 5) for ws in sockets), return_exceptions=True
    )


class ClientProcess:
    def __init__(self) -> None:
        self.process = subprocess.Popen(
            [common.PYTHON, SELF, "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    def ask(self, command: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("The client process ended early.")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the bare endpoint and the tracing harness (server-side processes) -------------------


def bare_main(port: int) -> None:
    """A Starlette WebSocket endpoint that accepts and answers each frame with an ack."""
    import uvicorn
    from starlette.applications import Starlette
    from starlette.routing import WebSocketRoute
    from starlette.websockets import WebSocket, WebSocketDisconnect

    async def endpoint(ws: WebSocket) -> None:
        await ws.accept()
        with contextlib.suppress(WebSocketDisconnect):
            while True:
                await ws.receive_text()
                await ws.send_text('{"type": "ack"}')

    app = Starlette(routes=[WebSocketRoute("/ws", endpoint)])
    uvicorn.Server(uvicorn_config(app, port)).run()


STDLIB = os.path.dirname(os.__file__) + "/"


def owner(frames: Any) -> Any:
    """The frame responsible for an allocation: the innermost one outside the standard
    library (so an asyncio.Event's deque counts against the line that made the Event)."""
    for frame in reversed(frames):  # innermost last
        if not frame.filename.startswith(STDLIB):
            return frame
    return frames[-1]


def package(filename: str) -> str:
    short = filename.replace(str(ROOT) + "/", "")
    for name in ("uvicorn", "websockets", "starlette", "sqlalchemy", "uvloop", "redis"):
        if f"/{name}/" in short:
            return name
    if short.startswith(("server/", "channels/", "storage/", "mailer/")):
        return "app (" + short.split("/", 1)[0] + ")"
    return "other: " + short.rsplit("/", 1)[-1]


def harness_main(port: int) -> None:
    """The real app, traced while the sockets open; stdin: `snap before` (gc, then tracing
    starts), `snap after` (gc, then a snapshot: what was allocated since and is still
    alive) and `diff before after <n>` (that growth per connection, by the line responsible
    and by package). Tracing starts late so that the app's start-up is not traced."""
    import gc
    import tracemalloc

    import uvicorn
    from uvicorn._compat import asyncio_run

    from server.app import create_app
    from server.settings import Settings

    config = uvicorn_config(create_app(Settings.from_env(dict(os.environ))), port)
    server = uvicorn.Server(config)
    snapshots: dict[str, tracemalloc.Snapshot] = {}

    def diff(after: tracemalloc.Snapshot, n: int) -> dict[str, Any]:
        by_line: dict[str, list[int]] = {}
        by_package: dict[str, int] = {}
        total = 0
        for stat in after.statistics("traceback"):
            frame = owner(stat.traceback)
            where = f"{frame.filename.replace(str(ROOT) + '/', '')}:{frame.lineno}"
            entry = by_line.setdefault(where[-100:], [0, 0])
            entry[0] += stat.size
            entry[1] += stat.count
            key = package(frame.filename)
            by_package[key] = by_package.get(key, 0) + stat.size
            total += stat.size
        lines = sorted(by_line.items(), key=lambda item: -item[1][0])[:30]
        return {
            "event": "diff",
            "traced_per_connection": round(total / n),
            "by_package": {
                k: round(v / n)
                for k, v in sorted(by_package.items(), key=lambda kv: -kv[1])[:10]
                if abs(v / n) >= 64
            },
            "by_line": [
                {
                    "where": where,
                    "bytes_per_connection": round(size / n),
                    "blocks_per_connection": round(count / n, 2),
                }
                for where, (size, count) in lines
            ],
        }

    async def commands() -> None:
        loop = asyncio.get_running_loop()
        while line := await loop.run_in_executor(None, sys.stdin.readline):
            name, *args = line.split()
            if name == "snap":
                gc.collect()
                if args[0] == "before":
                    tracemalloc.start(8)
                else:
                    snapshots[args[0]] = tracemalloc.take_snapshot().filter_traces(
                        [tracemalloc.Filter(False, tracemalloc.__file__)]
                    )
                answer = {
                    "event": "snap",
                    "rss": common.rss_bytes(os.getpid()),
                    "traced": tracemalloc.get_traced_memory()[0],
                }
            else:
                answer = diff(snapshots[args[1]], int(args[2]))
            print(json.dumps(answer), flush=True)
        server.should_exit = True

    async def main() -> None:
        task = asyncio.create_task(commands())
        await server.serve()
        task.cancel()

    asyncio_run(main(), loop_factory=config.get_loop_factory())


# --- the orchestrator ---------------------------------------------------------------------


def sizes(quick: bool) -> SimpleNamespace:
    if quick:
        return SimpleNamespace(n=1000, deflate=500, harness=300)
    return SimpleNamespace(n=5000, deflate=1000, harness=500)


def records(users: int) -> list[tuple[str, dict[str, Any]]]:
    org = f"/api/v1/orgs/{ORG}"
    puts: list[tuple[str, dict[str, Any]]] = [(org, {"name": "Idle"})]
    for i in range(users):
        puts.append(
            (
                f"{org}/users/u{i}",
                {"name": f"U{i}", "email": f"u{i}@idle.example", "kind": "member"},
            )
        )
    for c in range(0, users, VIEWERS_PER_CANDIDATE):
        members = [f"u{i}" for i in range(c, min(users, c + VIEWERS_PER_CANDIDATE))]
        puts.append(
            (
                f"{org}/candidates/c{c // VIEWERS_PER_CANDIDATE}",
                {"name": f"C{c}", "coordinator": members[0], "members": members},
            )
        )
    return puts


def viewers(secret: str, start: int, count: int) -> list[tuple[str, str]]:
    from server.domain.auth import make_user_token

    return [
        (make_user_token(secret, ORG, f"u{i}", 6 * 3600), f"c{i // VIEWERS_PER_CANDIDATE}")
        for i in range(start, start + count)
    ]


def settled_rss(pid: int, timeout: float = 20.0) -> int:
    """RSS once it has stopped moving (under 0.5% over 2 s), or after the timeout."""
    deadline = time.monotonic() + timeout
    readings = [common.rss_bytes(pid)]
    while time.monotonic() < deadline:
        time.sleep(0.5)
        readings.append(common.rss_bytes(pid))
        window = readings[-5:]
        if len(window) == 5 and max(window) - min(window) < 0.005 * max(window):
            break
    return readings[-1]


def ws_connections(http_url: str) -> float | None:
    with contextlib.suppress(httpx.HTTPError):
        for line in httpx.get(f"{http_url}/metrics", timeout=30).text.splitlines():
            if line.startswith("am_ws_connections "):
                return float(line.split()[1])
    return None


def measure(
    label: str,
    pid: int,
    url: str,
    warm: list[tuple[str, str]],
    main: list[tuple[str, str]],
    compression: str | None,
    http_url: str | None = None,
    harness: ServerProcess | None = None,
) -> dict[str, Any]:
    """Warm-up sockets, settled RSS, N more sockets, settled RSS."""
    client = ClientProcess()
    try:
        base = {"cmd": "open", "url": url, "compression": compression}
        warmed = client.ask({**base, "clients": warm, "concurrency": 10})
        if warmed["opened"] != len(warm):
            raise RuntimeError(f"{label}: warm-up opened {warmed}")
        time.sleep(2)
        before = settled_rss(pid)
        snap_before = harness.ask_line("snap before") if harness else None
        common.log(f"idle/{label}: RSS {before / 2**20:.1f} MiB after {len(warm)} warm-up sockets")
        opened = client.ask({**base, "clients": main, "concurrency": 100})
        common.log(
            f"idle/{label}: {opened['opened']} sockets opened in {opened['seconds']} s "
            f"({opened['failed']} failed)"
        )
        time.sleep(3)
        after = settled_rss(pid)
        snap_after = harness.ask_line("snap after") if harness else None
        status = client.ask({"cmd": "status"})
        n = opened["opened"]
        result = {
            "connections": n,
            "failed": opened["failed"],
            "deflate_negotiated": opened["deflate_negotiated"],
            "open_at_measure": status["open"] - len(warm),
            "closed_codes": status["closed_codes"],
            "server_gauge": ws_connections(http_url) if http_url else None,
            "rss_before": before,
            "rss_after": after,
            "kib_per_connection": round((after - before) / max(1, n) / 1024, 1),
            "client_rss_kib_per_connection": round(opened["rss"] / max(1, n) / 1024, 1),
            "open_seconds": opened["seconds"],
        }
        if harness and snap_before and snap_after:
            result["traced_rss_kib_per_connection"] = round(
                (snap_after["rss"] - snap_before["rss"]) / max(1, n) / 1024, 1
            )
            result["tracemalloc"] = harness.ask_line(f"diff before after {n}")
        common.log(
            f"idle/{label}: RSS {after / 2**20:.1f} MiB with {n} more: "
            f"{result['kib_per_connection']} KiB per connection"
        )
        return result
    finally:
        client.close()


class ServerProcess:
    """A server-side process of ours (bare endpoint or harness) answering on stdin/stdout."""

    def __init__(self, mode: str, port: int, env: dict[str, str], cwd: Path) -> None:
        self.process = subprocess.Popen(
            [common.PYTHON, SELF, mode, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=open(cwd / f"{mode.strip('-')}.log", "wb"),  # noqa: SIM115
            text=True,
            env=env,
            cwd=cwd,
        )
        common.wait_for_port(port)

    def ask_line(self, line: str) -> dict[str, Any]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(line + "\n")
        self.process.stdin.flush()
        answer: dict[str, Any] = json.loads(self.process.stdout.readline())
        return answer

    def stop(self) -> None:
        if self.process.stdin is not None:
            with contextlib.suppress(OSError):
                self.process.stdin.close()  # the harness stops serving at EOF
        common.stop([self.process])


def server_env(cluster: common.AmCluster) -> dict[str, str]:
    """What common.start_am gives `serve`, for the harness."""
    return {
        **os.environ,
        "AM_SECRET": cluster.secret,
        "AM_SERVICE_TOKEN": cluster.service_token,
        "AM_VAR_DIR": str(cluster.workdir / "var"),
        "AM_SEND_RATE_PER_MINUTE": "0",
        "AM_MAX_CONNECTIONS_PER_USER": "0",
        "AM_EMAIL_WORKER": "0",
        "AM_LOG_LEVEL": "WARNING",
    }


def scenario(opts: Any) -> dict[str, Any]:
    size = sizes(opts.quick)
    workdir = Path(opts.workdir) / "idle"
    users = WARMUP + size.n
    cluster = common.start_am(workdir)
    data: dict[str, Any] = {
        "database": "SQLite (embedded default)",
        "server_processes": 1,
        "client_processes": 1,
        "target_kib_per_connection": TARGET_KIB,
        "tree": source_tree(),
    }
    try:
        started = time.monotonic()
        asyncio.run(common.provision(cluster, ORG, records(users), concurrency=8))
        common.log(f"idle: provisioned {users} users in {time.monotonic() - started:.1f} s")
        warm = viewers(cluster.secret, 0, WARMUP)
        data["am"] = measure(
            "am",
            cluster.pids[0],
            cluster.ws_url(),
            warm,
            viewers(cluster.secret, WARMUP, size.n),
            None,
            http_url=cluster.http_url(),
        )
    finally:
        cluster.stop()

    port = common.free_port()
    bare = ServerProcess("--bare-server", port, dict(os.environ), workdir)
    try:
        data["bare"] = measure(
            "bare",
            bare.process.pid,
            f"ws://127.0.0.1:{port}/ws",
            [("-", "-")] * WARMUP,
            [("-", "-")] * size.n,
            None,
        )
    finally:
        bare.stop()
    if not getattr(opts, "diagnose", False):
        return data  # `make bench` stops here; `python bench/idle.py --diagnose` goes on

    # Browsers offer permessage-deflate: a fresh process, the same database.
    cluster = common.start_am(workdir)
    try:
        data["am_deflate"] = measure(
            "am+deflate",
            cluster.pids[0],
            cluster.ws_url(),
            viewers(cluster.secret, 0, WARMUP),
            viewers(cluster.secret, WARMUP, size.deflate),
            "deflate",
            http_url=cluster.http_url(),
        )
    finally:
        cluster.stop()

    # Where the memory goes: the real app under tracemalloc (a fresh secret is fine:
    # users are in the database, tokens are checked against the secret the harness gets).
    port = common.free_port()
    env_cluster = common.AmCluster(
        workdir, secrets.token_urlsafe(32), secrets.token_urlsafe(32), [port]
    )
    harness = ServerProcess("--harness", port, server_env(env_cluster), workdir)
    try:
        data["harness"] = measure(
            "tracemalloc",
            harness.process.pid,
            f"ws://127.0.0.1:{port}/ws",
            viewers(env_cluster.secret, 0, WARMUP),
            viewers(env_cluster.secret, WARMUP, size.harness),
            None,
            harness=harness,
        )
    finally:
        harness.stop()
    return data


def markdown(d: dict[str, Any]) -> str:
    am, bare = d["am"], d["bare"]
    deflate, harness = d.get("am_deflate"), d.get("harness")
    rows = [("Agency Messaging, 1 process, SQLite", am)]
    if deflate:
        rows.append(
            (
                "the same, clients offering permessage-deflate as browsers do "
                f"(negotiated on {deflate['deflate_negotiated']})",
                deflate,
            )
        )
    rows.append(("bare Starlette endpoint, same uvicorn settings (the floor)", bare))
    lines = []
    for label, r in rows:
        lines.append(
            f"| {label} | {r['connections']} | {r['rss_before'] / 2**20:.0f} → "
            f"{r['rss_after'] / 2**20:.0f} MiB | {r['kib_per_connection']:.1f} |"
        )
    verdict = "within" if am["kib_per_connection"] <= d["target_kib_per_connection"] else "over"
    return (
        "## 4. Idle connections\n\n"
        f"A separate client process opens sockets that authenticate and subscribe like browser "
        f"tabs (distinct users, {VIEWERS_PER_CANDIDATE} per candidate) and then stay idle; "
        "memory per connection is the server's settled RSS growth divided by the sockets "
        f"opened after {WARMUP} warm-up ones.\n\n"
        "| server | sockets | RSS | KiB per connection |\n|---|---|---|---|\n"
        + "\n".join(lines)
        + f"\n\nTarget: under {d['target_kib_per_connection']:.0f} KiB per connection "
        f"({verdict}).\n" + (_traced(harness) if harness else "")
    )


def _traced(harness: dict[str, Any]) -> str:
    traced = harness["tracemalloc"]
    packages = ", ".join(f"{k} {v / 1024:.1f}" for k, v in list(traced["by_package"].items())[:6])
    lines_top = ", ".join(
        f"`{t['where'].rsplit('/', 1)[-1]}` {t['bytes_per_connection'] / 1024:.1f}"
        for t in traced["by_line"][:6]
    )
    return (
        f"\nUnder tracemalloc ({harness['connections']} sockets, after gc) the Python heap "
        f"grows {traced['traced_per_connection'] / 1024:.1f} KiB per connection; by package "
        f"(KiB): {packages}; top lines: {lines_top}.\n"
    )


def run(opts: Any) -> dict[str, Any]:
    data = scenario(opts)
    return {"name": "idle", "markdown": markdown(data), "data": data}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--diagnose", action="store_true", help="also deflate and tracemalloc")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--bare-server", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--harness", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main())
        return
    if args.bare_server:
        bare_main(args.bare_server)
        return
    if args.harness:
        harness_main(args.harness)
        return
    with tempfile.TemporaryDirectory(prefix="am-idle-") as workdir:
        opts = SimpleNamespace(
            quick=args.quick,
            diagnose=args.diagnose,
            workdir=Path(workdir),
            postgres=None,
            redis_url="",
        )
        result = run(opts)
        print(result["markdown"])
        print(json.dumps(result["data"], indent=1))


if __name__ == "__main__":
    main()
