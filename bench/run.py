"""`make bench`: the fan-out scenario against this server and the bare-websockets limit.

Starts each system as its own process on a free port, drives it with bench/loadgen.py in
another process, reads the server's CPU time from /proc, and writes bench/results/:
results.json (raw, with machine details) and results.md (the table).

    python -m bench.run [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from server.auth import make_user_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"Nothing listens on port {port}.")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


async def provision_am(base: str, service: str, secret: str) -> dict[str, Any]:
    headers = {"Authorization": f"Bearer {service}"}
    async with httpx.AsyncClient(base_url=base, headers=headers) as http:
        for path, body in [
            ("/api/v1/orgs/bench", {"name": "Bench"}),
            ("/api/v1/orgs/bench/agencies/ag", {"name": "Agency"}),
            (
                "/api/v1/orgs/bench/users/pub",
                {"name": "Publisher", "email": "p@b.example", "kind": "member"},
            ),
            (
                "/api/v1/orgs/bench/users/rec",
                {"name": "Receiver", "email": "r@b.example", "kind": "member"},
            ),
            (
                "/api/v1/orgs/bench/users/ann",
                {"name": "Ann", "email": "a@b.example", "kind": "agency", "agency": "ag"},
            ),
            (
                "/api/v1/orgs/bench/candidates/c1",
                {
                    "name": "C1",
                    "coordinator": "pub",
                    "members": ["pub", "rec"],
                    "agency_users": ["ann"],
                },
            ),
        ]:
            (await http.put(path, json=body)).raise_for_status()
    pub = make_user_token(secret, "bench", "pub", 3600)
    async with httpx.AsyncClient(base_url=base, headers={"Authorization": f"Bearer {pub}"}) as http:
        thread = (
            await http.post("/api/v1/candidates/c1/threads", json={"agency_user": "ann"})
        ).json()
    return {
        "thread": thread["id"],
        "tokens": {"publisher": pub, "receiver": make_user_token(secret, "bench", "rec", 3600)},
    }


def start_am(workdir: Path) -> tuple[subprocess.Popen[bytes], str, dict[str, Any]]:
    port = free_port()
    secret, service = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    env = {
        **os.environ,
        "AM_SECRET": secret,
        "AM_SERVICE_TOKEN": service,
        "AM_VAR_DIR": str(workdir / "var"),
        "AM_SEND_RATE_PER_MINUTE": "0",
        "AM_MAX_CONNECTIONS_PER_USER": "0",
        "AM_EMAIL_WORKER": "0",
        "AM_LOG_LEVEL": "WARNING",
    }
    process = subprocess.Popen(
        [str(Path(PYTHON).parent / "agency-messaging"), "serve", "--port", str(port)],
        env=env,
        cwd=workdir,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    setup = asyncio.run(provision_am(f"http://127.0.0.1:{port}", service, secret))
    return process, f"ws://127.0.0.1:{port}/ws", setup


def start_bare() -> tuple[subprocess.Popen[bytes], str, dict[str, Any]]:
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, str(ROOT / "bench" / "peers" / "bare_ws.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process, f"ws://127.0.0.1:{port}/", {"thread": 0, "tokens": {}}


def drive(
    system: str, url: str, setup: dict[str, Any], server_pid: int, opts: argparse.Namespace
) -> list[dict[str, Any]]:
    command = [
        PYTHON,
        str(ROOT / "bench" / "loadgen.py"),
        "--system",
        system,
        "--url",
        url,
        "--receivers",
        str(opts.receivers),
        "--rates",
        opts.rates,
        "--step-seconds",
        str(opts.step_seconds),
        "--thread",
        str(setup["thread"]),
        "--tokens",
        json.dumps(setup["tokens"]),
    ]
    steps: list[dict[str, Any]] = []
    loadgen = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert loadgen.stdout is not None
    cpu_before = cpu_seconds(server_pid)
    for line in loadgen.stdout:
        event = json.loads(line)
        if event["event"] == "connected":
            log(f"{system}: {event['receivers']} receivers connected")
            cpu_before = cpu_seconds(server_pid)
            continue
        cpu_after = cpu_seconds(server_pid)
        event["server_cpu_us_per_delivery"] = round(
            (cpu_after - cpu_before) * 1e6 / max(event["delivered"], 1), 1
        )
        cpu_before = cpu_after
        steps.append(event)
        log(
            f"{system}: {event['rate']:>5.0f} msg/s → "
            f"{event['delivered_per_second']:>8.0f} deliveries/s, "
            f"p50 {event['p50_ms']} ms, p99 {event['p99_ms']} ms, "
            f"{event['server_cpu_us_per_delivery']} µs CPU/delivery"
        )
    loadgen.wait(timeout=120)
    return steps


def best(steps: list[dict[str, Any]], limit_ms: float) -> dict[str, Any] | None:
    passing = [
        s for s in steps if s["p99_ms"] <= limit_ms and s["delivered"] >= 0.99 * s["expected"]
    ]
    return max(passing, key=lambda s: s["delivered_per_second"]) if passing else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    opts = parser.parse_args()
    opts.receivers = 200 if opts.quick else 1000
    opts.rates = "5,10,20,40,80" if opts.quick else "5,10,20,40,80,160,320"
    opts.step_seconds = 1.5 if opts.quick else 3.0
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "scenario": "fan-out: one candidate, N subscribed connections, one publisher",
        "receivers": opts.receivers,
        "systems": {},
    }
    with tempfile.TemporaryDirectory(prefix="am-bench-") as tmp:
        for system in ("bare", "am"):
            log(f"starting {system}")
            process, url, setup = start_am(Path(tmp)) if system == "am" else start_bare()
            try:
                steps = drive(system, url, setup, process.pid, opts)
            finally:
                process.terminate()
                process.wait(timeout=30)
            results["systems"][system] = {"steps": steps, "best": best(steps, 100.0)}
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2))
    rows = [
        "| system | deliveries/s at p99 ≤ 100 ms | p50 ms | p99 ms | server CPU µs/delivery |",
        "|---|---|---|---|---|",
    ]
    names = {
        "am": "Agency Messaging (1 process, SQLite)",
        "bare": "bare websockets relay (the limit)",
    }
    for system, data in results["systems"].items():
        top = data["best"]
        if top is None:
            rows.append(f"| {names[system]} | n/a | n/a | n/a | n/a |")
        else:
            cells = [
                names[system],
                f"{top['delivered_per_second']:.0f}",
                top["p50_ms"],
                top["p99_ms"],
                top["server_cpu_us_per_delivery"],
            ]
            rows.append("| " + " | ".join(str(c) for c in cells) + " |")
    table = "\n".join(rows)
    (RESULTS / "results.md").write_text(
        f"# Fan-out benchmark\n\n{results['receivers']} receivers on one candidate, one publisher, "
        f"rate stepped up until p99 passes 100 ms. Machine: {results['machine']}.\n\n{table}\n"
    )
    print(table)


if __name__ == "__main__":
    main()
