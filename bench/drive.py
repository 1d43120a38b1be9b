"""Drives one system with bench/loadgen.py: receivers in several processes, one publisher
process, the publish rate stepped up; per step, latency percentiles, losses, duplicates and
the server's CPU time per delivered message."""

from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.common import LOADGEN, cpu_seconds, log, percentile_ms


@dataclass
class Load:
    system: str  # loadgen --system
    urls: list[str]  # server WebSocket URLs; sockets go round-robin
    receivers: int
    rooms: list[str]  # socket i joins rooms[i % len(rooms)]
    targets: list[Any]  # published round-robin (am: thread ids; peers: room names)
    rates: list[float]
    step_seconds: float
    server_pids: list[int]
    tokens: list[str] = field(default_factory=list)  # am: receivers' tokens, round-robin
    publisher_token: str = ""
    receiver_processes: int = 2
    publisher_connections: int = 1
    drain_seconds: float = 1.0
    p99_limit_ms: float = 100.0
    # A first step at a low rate, left out of the results: connections warm up, and a
    # server that loads per-user state on first use (ours: unread counts) does it here.
    warmup_rate: float = 2.0


def _receiver(load: Load, index: int, count: int) -> subprocess.Popen[str]:
    share = slice(index, None, load.receiver_processes)
    # Each process takes every n-th socket, so its sockets keep their rooms and tokens.
    rooms = [load.rooms[i % len(load.rooms)] for i in range(load.receivers)][share]
    urls = [load.urls[i % len(load.urls)] for i in range(load.receivers)][share]
    args = [
        *LOADGEN,
        "receive",
        "--system",
        load.system,
        "--urls",
        json.dumps(urls),
        "--count",
        str(count),
        "--rooms",
        json.dumps(rooms),
    ]
    for flag, values in (("--rooms", rooms), ("--urls", urls)):
        args[args.index(flag) + 1] = _as_file(values)
    if load.tokens:
        tokens = [load.tokens[i % len(load.tokens)] for i in range(load.receivers)][share]
        args += ["--tokens", _as_file(tokens)]
    return subprocess.Popen(args, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)


def _as_file(values: list[Any]) -> str:
    """ "@path" of a temporary file holding the JSON list (loadgen reads it)."""
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as file:
        json.dump(values, file)
    _TEMPORARY.append(Path(file.name))
    return f"@{file.name}"


_TEMPORARY: list[Path] = []  # removed when a drive ends


def drive(load: Load, label: str) -> list[dict[str, Any]]:
    counts = [
        len(range(i, load.receivers, load.receiver_processes))
        for i in range(load.receiver_processes)
    ]
    receivers = [_receiver(load, i, n) for i, n in enumerate(counts) if n]
    try:
        for process in receivers:
            assert process.stdout is not None
            line = process.stdout.readline()
            if not line:
                raise RuntimeError(f"{label}: a receiver process could not connect its sockets")
        log(f"{label}: {load.receivers} receivers connected")
        steps = _publish(load, label)
        latencies: dict[str, list[int]] = {}
        duplicates: dict[str, int] = {}
        for process in receivers:
            out, _ = process.communicate("", timeout=180)
            lines = out.strip().splitlines()
            for key, value in json.loads(lines[-2]).get("duplicates", {}).items():
                duplicates[key] = duplicates.get(key, 0) + value
            for key, values in json.loads(lines[-1]).items():
                latencies.setdefault(key, []).extend(values)
    finally:
        for process in receivers:
            if process.poll() is None:
                process.kill()
        while _TEMPORARY:
            _TEMPORARY.pop().unlink(missing_ok=True)
    steps = [s for s in steps if s["step"] > 0]  # step 0 is the warm-up
    for step in steps:
        _summarise(step, latencies.get(str(step["step"]), []), load)
        step["duplicates"] = duplicates.get(str(step["step"]), 0)
        log(
            f"{label}: {step['rate']:>6.0f} msg/s → {step['delivered_per_second']:>8.0f} "
            f"deliveries/s ({step['delivered']}/{step['expected']}), p50 {step['p50_ms']} ms, "
            f"p99 {step['p99_ms']} ms, {step['server_cpu_us_per_delivery']} µs CPU/delivery"
        )
    return steps


def _publish(load: Load, label: str) -> list[dict[str, Any]]:
    args = [
        *LOADGEN,
        "publish",
        "--system",
        load.system,
        "--urls",
        json.dumps(load.urls),
        "--targets",
        _as_file(load.targets),
        "--connections",
        str(load.publisher_connections),
        "--rates",
        ",".join(str(r) for r in [load.warmup_rate, *load.rates]),
        "--step-seconds",
        str(load.step_seconds),
        "--drain-seconds",
        str(load.drain_seconds),
    ]
    if load.publisher_token:
        args += ["--tokens", load.publisher_token]
    publisher = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    assert publisher.stdout is not None
    steps: list[dict[str, Any]] = []
    cpu_before = cpu_seconds(load.server_pids)
    for line in publisher.stdout:
        step = json.loads(line)
        cpu_after = cpu_seconds(load.server_pids)
        step["server_cpu_seconds"], cpu_before = cpu_after - cpu_before, cpu_after
        steps.append(step)
        log(f"{label}: published {step['sent']} at {step['rate']:.0f} msg/s")
    publisher.wait(timeout=120)
    return steps


def _summarise(step: dict[str, Any], values: list[int], load: Load) -> None:
    per_room = max(1, load.receivers // len(load.rooms))
    # Every message reaches the sockets of its room; rooms are filled evenly.
    expected = step["sent"] * per_room
    step.update(
        expected=expected,
        delivered=len(values),
        lost=max(0, expected - len(values)),
        delivered_per_second=round(len(values) / step["seconds"], 1),
        p50_ms=percentile_ms(values, 0.50),
        p99_ms=percentile_ms(values, 0.99),
        server_cpu_us_per_delivery=round(step["server_cpu_seconds"] * 1e6 / max(len(values), 1), 1),
    )


def best(steps: list[dict[str, Any]], limit_ms: float = 100.0) -> dict[str, Any] | None:
    """The step with the most deliveries per second whose p99 stayed within the limit and
    which delivered (nearly) everything."""
    passing = [
        s for s in steps if 0 <= s["p99_ms"] <= limit_ms and s["delivered"] >= 0.999 * s["expected"]
    ]
    return max(passing, key=lambda s: s["delivered_per_second"]) if passing else None
