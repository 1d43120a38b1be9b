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
NAMES = {
    "am": "Agency Messaging (1 process, SQLite)",
    "bare": "bare websockets relay (the limit)",
}


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


async def provision_am(base: str, service: str, secret: str, receivers: int) -> dict[str, Any]:
    """An org with a publisher, `receivers` receiving members and one agency thread."""
    headers = {"Authorization": f"Bearer {service}"}
    users = [f"rec{i}" for i in range(receivers)]
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:

        async def put(path: str, body: dict[str, Any]) -> None:
            (await http.put(path, json=body)).raise_for_status()

        await put("/api/v1/orgs/bench", {"name": "Bench"})
        await put("/api/v1/orgs/bench/agencies/ag", {"name": "Agency"})
        ann = {"name": "Ann", "email": "a@b.example", "kind": "agency", "agency": "ag"}
        await put("/api/v1/orgs/bench/users/ann", ann)
        for user in ["pub", *users]:
            await put(
                f"/api/v1/orgs/bench/users/{user}",
                {"name": user, "email": f"{user}@b.example", "kind": "member"},
            )
        await put(
            "/api/v1/orgs/bench/candidates/c1",
            {
                "name": "C1",
                "coordinator": "pub",
                "members": ["pub", *users],
                "agency_users": ["ann"],
            },
        )
    pub = make_user_token(secret, "bench", "pub", 3600)
    auth = {"Authorization": f"Bearer {pub}"}
    async with httpx.AsyncClient(base_url=base, headers=auth) as http:
        thread = (
            await http.post("/api/v1/candidates/c1/threads", json={"agency_user": "ann"})
        ).json()
    return {
        "thread": thread["id"],
        "publisher": pub,
        "receivers": [make_user_token(secret, "bench", u, 3600) for u in users],
    }


def start_am(workdir: Path, receivers: int) -> tuple[subprocess.Popen[bytes], str, dict[str, Any]]:
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
    setup = asyncio.run(provision_am(f"http://127.0.0.1:{port}", service, secret, receivers))
    return process, f"ws://127.0.0.1:{port}/ws", setup


def start_bare() -> tuple[subprocess.Popen[bytes], str, dict[str, Any]]:
    port = free_port()
    process = subprocess.Popen(
        [PYTHON, str(ROOT / "bench" / "peers" / "bare_ws.py"), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_for_port(port)
    return process, f"ws://127.0.0.1:{port}/", {"thread": 0, "publisher": "", "receivers": []}


def _percentile(values: list[int], q: float) -> float:
    ordered = sorted(values)
    return (
        round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 2) if ordered else -1.0
    )


def drive(
    system: str, url: str, setup: dict[str, Any], server_pid: int, opts: argparse.Namespace
) -> list[dict[str, Any]]:
    """Receivers spread over several processes, one publisher process; stats per step."""
    loadgen = [PYTHON, str(ROOT / "bench" / "loadgen.py")]
    common = ["--system", system, "--url", url]
    per_process = opts.receivers // opts.procs
    receivers = []
    for index in range(opts.procs):
        tokens = setup["receivers"][index :: opts.procs] or [None]
        receivers.append(
            subprocess.Popen(
                [
                    *loadgen,
                    "receive",
                    *common,
                    "--count",
                    str(per_process),
                    "--tokens",
                    json.dumps(tokens),
                ],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    for process in receivers:
        assert process.stdout is not None
        json.loads(process.stdout.readline())
    log(f"{system}: {per_process * opts.procs} receivers connected in {opts.procs} processes")
    publisher = subprocess.Popen(
        [
            *loadgen,
            "publish",
            *common,
            "--tokens",
            setup["publisher"],
            "--thread",
            str(setup["thread"]),
            "--rates",
            opts.rates,
            "--step-seconds",
            str(opts.step_seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert publisher.stdout is not None
    steps: list[dict[str, Any]] = []
    cpu_before = cpu_seconds(server_pid)
    for line in publisher.stdout:
        step = json.loads(line)
        cpu_after = cpu_seconds(server_pid)
        step["server_cpu_seconds"], cpu_before = cpu_after - cpu_before, cpu_after
        steps.append(step)
        log(f"{system}: published {step['sent']} at {step['rate']:.0f} msg/s")
    publisher.wait(timeout=60)
    latencies: dict[str, list[int]] = {}
    for process in receivers:
        out, _ = process.communicate("", timeout=120)
        for key, values in json.loads(out.strip().splitlines()[-1]).items():
            latencies.setdefault(key, []).extend(values)
    for step in steps:
        values = latencies.get(str(step["step"]), [])
        expected = step["sent"] * per_process * opts.procs
        step.update(
            expected=expected,
            delivered=len(values),
            delivered_per_second=round(len(values) / step["seconds"], 1),
            p50_ms=_percentile(values, 0.50),
            p99_ms=_percentile(values, 0.99),
            server_cpu_us_per_delivery=round(
                step["server_cpu_seconds"] * 1e6 / max(len(values), 1), 1
            ),
        )
        log(
            f"{system}: {step['rate']:>5.0f} msg/s → "
            f"{step['delivered_per_second']:>8.0f} deliveries/s "
            f"({len(values)}/{expected}), p50 {step['p50_ms']} ms, p99 {step['p99_ms']} ms, "
            f"{step['server_cpu_us_per_delivery']} µs server CPU/delivery"
        )
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
    opts.procs = 2
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
            process, url, setup = (
                start_am(Path(tmp), min(50, opts.receivers)) if system == "am" else start_bare()
            )
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
    for system, data in results["systems"].items():
        top = data["best"]
        if top is None:
            rows.append(f"| {NAMES[system]} | n/a | n/a | n/a | n/a |")
        else:
            cells = [
                NAMES[system],
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
    plot(results, RESULTS / "latency.png")


def plot(results: dict[str, Any], path: Path) -> None:
    """p99 latency against offered rate, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4.2), dpi=110)
    for system, data in results["systems"].items():
        steps = [s for s in data["steps"] if s["p99_ms"] >= 0]
        axis.plot(
            [s["rate"] * results["receivers"] for s in steps],
            [s["p99_ms"] for s in steps],
            marker="o",
            label=NAMES[system],
        )
    axis.axhline(100, color="grey", linestyle="--", linewidth=1)
    axis.set_xscale("log")
    axis.set_yscale("log")
    axis.set_xlabel("offered deliveries per second (messages per second times receivers)")
    axis.set_ylabel("p99 send→deliver latency (ms)")
    axis.set_title(f"Fan-out: {results['receivers']} receivers on one candidate")
    axis.legend()
    axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
