"""The peer systems the benchmarks compare with: install each in its own environment, start it.

Every peer is a "relay with rooms" (join a room, publish (room, body), the body goes to every
socket in the room); bench/loadgen.py speaks each one's protocol (`system`). Peers:

  bare             bench/peers/bare_ws.py: `websockets` + uvloop, one process, the main venv
  socketio_py      python-socketio AsyncServer under uvicorn, AsyncRedisManager with Redis
  socketio_node    Node.js Socket.IO, @socket.io/redis-adapter with Redis
  django_channels  Django Channels under uvicorn, channels_redis's RedisPubSubChannelLayer
                   with Redis (layer="core": RedisChannelLayer)

    install(name)                               idempotent: a stamp in the environment
    start(name, processes, redis_url)           -> (processes, ws_urls, system)

Without a Redis URL a peer runs in one process with its in-process room registry (bare
always does); with one, each of the N processes on its own port shares rooms through Redis.
"""

from __future__ import annotations

import hashlib
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench.common import ROOT, free_port, log, stop, wait_for_port

PEERS = ROOT / "bench" / "peers"
SYSTEM_PYTHON = os.environ.get("AM_BENCH_PEER_PYTHON", "python3")

NAMES = {
    "bare": "bare websockets relay (the limit)",
    "socketio_py": "python-socketio (uvicorn)",
    "socketio_node": "Socket.IO (Node.js)",
    "django_channels": "Django Channels (uvicorn)",
}
SYSTEMS = {
    "bare": "bare",
    "socketio_py": "sio",
    "socketio_node": "sio",
    "django_channels": "channels",
}


class PeerUnavailable(RuntimeError):
    """This peer cannot be installed or run here; the message says why."""


def _digest(*paths: Path) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def _run(cmd: list[str], cwd: Path, what: str, timeout: float = 900) -> None:
    try:
        done = subprocess.run(
            cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise PeerUnavailable(f"{what}: {error}") from None
    if done.returncode != 0:
        lines = [
            line
            for line in (done.stderr + done.stdout).splitlines()
            if line.strip() and not line.startswith("WARNING: Location")
        ]
        tail = " | ".join(lines[-6:])
        raise PeerUnavailable(f"{what} failed (exit {done.returncode}): {tail}")


def _install_python(name: str) -> None:
    directory = PEERS / name
    requirements = directory / "requirements.txt"
    venv = directory / ".venv"
    stamp = venv / ".am-bench-installed"
    digest = _digest(requirements)
    if stamp.exists() and stamp.read_text() == digest:
        return
    if shutil.which(SYSTEM_PYTHON) is None:
        raise PeerUnavailable(f"{name}: no {SYSTEM_PYTHON} to create its virtualenv")
    log(f"installing {name} into {venv.relative_to(ROOT)}")
    started = time.monotonic()
    if venv.exists():
        shutil.rmtree(venv)
    _run([SYSTEM_PYTHON, "-m", "venv", str(venv)], directory, f"{name}: python3 -m venv")
    pip = [
        str(venv / "bin" / "python"),
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
    ]
    _run([*pip, "-r", str(requirements)], directory, f"{name}: pip install")
    stamp.write_text(digest)
    log(f"installed {name} in {time.monotonic() - started:.0f} s")


def _install_node(name: str) -> None:
    directory = PEERS / name
    modules = directory / "node_modules"
    stamp = modules / ".am-bench-installed"
    digest = _digest(directory / "package.json", directory / "package-lock.json")
    if stamp.exists() and stamp.read_text() == digest:
        return
    npm = shutil.which("npm")
    if npm is None or shutil.which("node") is None:
        raise PeerUnavailable(f"{name}: Node.js and npm are not installed")
    log(f"installing {name} (npm ci)")
    started = time.monotonic()
    _run([npm, "ci", "--no-audit", "--no-fund", "--loglevel=error"], directory, f"{name}: npm ci")
    stamp.write_text(digest)
    log(f"installed {name} in {time.monotonic() - started:.0f} s")


def install(name: str) -> None:
    """Installs the peer's environment unless its stamp says it is already there."""
    if name not in NAMES:
        raise PeerUnavailable(f"no peer called {name!r}")
    if name == "bare":
        try:
            import websockets  # noqa: F401
        except ImportError:
            raise PeerUnavailable("bare: `websockets` is not in the main venv") from None
    elif name == "socketio_node":
        _install_node(name)
    else:
        _install_python(name)


def _raise_file_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _command(name: str, port: int, redis_url: str | None, layer: str) -> tuple[list[str], str]:
    """The command line of one server process, and its WebSocket URL."""
    base = f"ws://127.0.0.1:{port}"
    redis = ["--redis-url", redis_url] if redis_url else []
    if name == "bare":
        return [sys.executable, str(PEERS / "bare_ws.py"), "--port", str(port)], f"{base}/"
    if name == "socketio_py":
        python = str(PEERS / name / ".venv" / "bin" / "python")
        return (
            [python, str(PEERS / name / "server.py"), "--port", str(port), *redis],
            f"{base}/socket.io/?EIO=4&transport=websocket",
        )
    if name == "socketio_node":
        node = shutil.which("node") or "node"
        return (
            [node, str(PEERS / name / "server.js"), "--port", str(port), *redis],
            f"{base}/socket.io/?EIO=4&transport=websocket",
        )
    python = str(PEERS / name / ".venv" / "bin" / "python")
    return (
        [python, str(PEERS / name / "server.py"), "--port", str(port), "--layer", layer, *redis],
        f"{base}/ws/",
    )


def start(
    name: str,
    processes: int = 1,
    redis_url: str | None = None,
    *,
    logdir: Path | None = None,
    layer: str = "pubsub",
) -> tuple[list[subprocess.Popen[Any]], list[str], str]:
    """Installs (if need be) and starts `processes` servers of the peer on free ports.

    Returns the processes, their WebSocket URLs (for loadgen --urls) and the loadgen --system.
    More than one process needs `redis_url` (bare cannot run as more than one).
    `layer` picks the Django Channels layer: "pubsub" (RedisPubSubChannelLayer) or "core"
    (RedisChannelLayer). Server stderr goes to `logdir`/<name>-<port>.log when given.
    """
    install(name)
    if processes < 1:
        raise ValueError("processes must be at least 1")
    if processes > 1 and (name == "bare" or not redis_url):
        raise PeerUnavailable(
            f"{name}: {processes} processes need a shared broker"
            + (" (the bare relay has none)" if name == "bare" else ": give a Redis URL")
        )
    started: list[subprocess.Popen[Any]] = []
    urls: list[str] = []
    try:
        for _ in range(processes):
            port = free_port()
            cmd, url = _command(name, port, redis_url, layer)
            errors = open(logdir / f"{name}-{port}.log", "wb") if logdir else subprocess.DEVNULL  # noqa: SIM115
            started.append(
                subprocess.Popen(
                    cmd,
                    cwd=PEERS / name if name != "bare" else PEERS,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=errors,
                    preexec_fn=_raise_file_limit,
                )
            )
            urls.append(url)
        for process, url in zip(started, urls, strict=True):
            port = int(url.split(":")[2].split("/")[0])
            try:
                wait_for_port(port, timeout=30)
            except RuntimeError:
                code = process.poll()
                raise PeerUnavailable(
                    f"{name}: the server on port {port} "
                    + (f"exited with {code}" if code is not None else "did not listen in 30 s")
                ) from None
    except BaseException:
        stop(started)
        raise
    return started, urls, SYSTEMS[name]
