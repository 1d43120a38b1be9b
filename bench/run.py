"""`make bench`: every scenario, side by side with the peers, in one run on this machine.

    python bench/run.py [--quick] [--only fanout,realistic,storm,idle,storage]

Each phase logs a line when it starts and one when it ends, with the time since the run
began. Writes bench/results/: results.json (raw, with machine details, and each target's
figure and verdict), results.md (the targets table, then every scenario's tables) and
latency.png (p99 latency against offered load, one line per system); both files are
rewritten after each scenario. The targets table (bench/targets.py) is printed last.
A scenario that fails is logged and recorded, the others still run (its targets show "not
measured"), and the run then exits with status 1.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from importlib import metadata
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import fanout, peers, realistic, targets
from bench.common import RESULTS, elapsed, log, phase
from harness.services import PostgresServer, RedisServer

SCENARIOS = ["fanout", "realistic", "storm", "idle", "storage"]  # modules of bench/
SYSTEMS = ["bare", "socketio_py", "socketio_node", "django_channels", "am"]
COLORS = dict(
    zip(SYSTEMS, ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple"], strict=True)
)


def options(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller and shorter (under 3 min)")
    parser.add_argument("--only", default=",".join(SCENARIOS), help="scenarios to run")
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="systems of scenarios 1-2")
    opts = parser.parse_args(argv)
    opts.scenarios = [s for s in opts.only.split(",") if s]
    unknown = set(opts.scenarios) - set(SCENARIOS)
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(sorted(unknown))}")
    opts.systems = [s for s in opts.systems.split(",") if s]
    quick = opts.quick
    opts.step_seconds = 1.5 if quick else 2.5
    opts.fanout_receivers = 200 if quick else 1000
    opts.fanout_rates = [5.0, 10.0, 20.0, 40.0] if quick else [4, 6, 8, 10, 15, 20.0]
    opts.realistic_candidates = 100 if quick else 500
    opts.realistic_receivers = 400 if quick else 2000
    opts.realistic_rates = [200.0] if quick else [100.0, 200.0, 400.0, 800.0]
    return opts


def machine() -> dict[str, Any]:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    versions = {}
    for package in ("starlette", "uvicorn", "websockets", "sqlalchemy", "asyncpg", "redis"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "not installed"
    node = subprocess.run(["node", "--version"], capture_output=True, text=True, check=False)
    return {
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "memory_gib": round(memory_kib / 2**20, 1),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "node": node.stdout.strip() or "not found",
        "packages": versions,
    }


def main(argv: list[str] | None = None) -> None:
    opts = options(argv)
    started = time.monotonic()
    RESULTS.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "machine": machine(),
        "quick": opts.quick,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "scenarios": {},
    }
    log(
        f"make bench{' QUICK=1' if opts.quick else ''}: scenarios {', '.join(opts.scenarios)}; "
        f"systems {', '.join(opts.systems)}; results in {RESULTS}"
    )
    failed: list[str] = []
    peers_needed = [name for name in opts.systems if name != "am"]
    if {"fanout", "realistic"} & set(opts.scenarios) and peers_needed:
        with phase("installing the peers (once; later runs reuse them)"):
            for name in peers_needed:
                log(f"installing {name}")
                try:
                    peers.install(name)
                except Exception as error:  # recorded by the scenarios when they start it
                    log(f"{name} could not be installed: {error}")
    with phase("starting PostgreSQL and Redis"):
        postgres, redis = PostgresServer.start(), RedisServer.start()
    try:
        with tempfile.TemporaryDirectory(prefix="am-bench-") as tmp:
            opts.workdir, opts.postgres, opts.redis_url = Path(tmp), postgres, redis.url
            for index, name in enumerate(opts.scenarios, 1):
                began = time.monotonic()
                try:
                    with phase(f"scenario {index}/{len(opts.scenarios)}: {name}"):
                        outcome = importlib.import_module(f"bench.{name}").run(opts)
                except Exception as error:
                    traceback.print_exc(file=sys.stdout)
                    failed.append(name)
                    outcome = {
                        "name": name,
                        "error": f"{type(error).__name__}: {error}",
                        "markdown": f"## {name}: could not run\n\n{type(error).__name__}: "
                        f"{error}\n",
                    }
                outcome["seconds"] = round(time.monotonic() - began, 1)
                results["scenarios"][name] = outcome
                write(results)
    finally:
        redis.stop()
        postgres.stop()
    results["seconds"] = round(time.monotonic() - started, 1)
    outcomes = write(results)
    with phase("plotting latency.png"):
        plot(results, RESULTS / "latency.png")
    print("\n".join(s["markdown"] for s in results["scenarios"].values()))
    log(
        f"done in {elapsed()}; results in {RESULTS}"
        + (f"; scenarios that could not run: {', '.join(failed)}" if failed else "")
    )
    print("\n" + targets.markdown(outcomes, quick=opts.quick), flush=True)
    if failed:
        raise SystemExit(1)


def write(results: dict[str, Any]) -> list[targets.Outcome]:
    """results.json and results.md as they stand (after each scenario, and at the end)."""
    outcomes = targets.evaluate(results)
    results["targets"] = targets.as_json(outcomes)
    (RESULTS / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    m = results["machine"]
    header = (
        f"# Benchmark results{' (QUICK)' if results['quick'] else ''}\n\n"
        f"{results['date']}; {m['cpus']} cores ({m['cpu']}), {m['memory_gib']} GiB; "
        f"Python {m['python']}, Node {m['node']}. Produced by `make bench"
        f"{' QUICK=1' if results['quick'] else ''}`; raw numbers in results.json.\n"
    )
    sections = [s["markdown"] for s in results["scenarios"].values()]
    (RESULTS / "results.md").write_text(
        "\n".join([header, targets.markdown(outcomes, quick=results["quick"]), *sections])
    )
    return outcomes


def plot(results: dict[str, Any], path: Path) -> None:
    """p99 latency against offered deliveries per second, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [s for s in ("fanout", "realistic") if "systems" in results["scenarios"].get(s, {})]
    if not panels:
        return
    figure, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 4.4), dpi=110)
    axes = [axes] if len(panels) == 1 else list(axes)
    for axis, name in zip(axes, panels, strict=True):
        scenario = results["scenarios"][name]
        for system, data in scenario["systems"].items():
            steps = [s for s in data["steps"] if s["p99_ms"] >= 0]
            if not steps:
                continue
            label = (realistic if name == "realistic" else fanout).display_name(system)
            axis.plot(
                [s["expected"] / s["seconds"] for s in steps],
                [s["p99_ms"] for s in steps],
                marker="o",
                label=label,
                color=COLORS.get(system),  # one colour per system in both panels
            )
        axis.axhline(100, color="grey", linestyle="--", linewidth=1)
        axis.set_xscale("log")
        axis.set_yscale("log")
        axis.set_xlabel("offered deliveries per second")
        axis.set_ylabel("p99 send→deliver latency (ms)")
        title = (
            f"Fan-out: {scenario['receivers']} sockets, one candidate"
            if name == "fanout"
            else f"Realistic: {scenario['receivers']} sockets, {scenario['candidates']} "
            "candidates, 2 processes"
        )
        axis.set_title(title, fontsize=10)
        axis.legend(fontsize=8)
        axis.grid(True, which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


if __name__ == "__main__":
    main()
