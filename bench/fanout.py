"""Scenario 1, fan-out: one candidate (one room), N subscribed sockets, one publisher; the
publish rate steps up until p99 passes 100 ms. Every system runs as one process with its own
in-process fan-out (no Redis), driven by the same load generator in other processes.

Agency Messaging does its whole job here: every receiver is a distinct user authenticated
by token, every message is stored (SQLite) before it is published, and every receiver also
gets its `unread` (blue dot) events.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httpx

from bench import peers
from bench.common import AmCluster, log, provision, start_am, stop
from bench.drive import Load, best, drive

NAME_AM = "Agency Messaging (SQLite, in-process broker)"


async def am_fanout_world(cluster: AmCluster, receivers: int) -> dict[str, Any]:
    """One candidate whose members are the receivers and a publisher; one agency thread."""
    users = [f"rec{i}" for i in range(receivers)]
    puts: list[tuple[str, dict[str, Any]]] = [
        ("/api/v1/orgs/bench", {"name": "Bench"}),
        ("/api/v1/orgs/bench/agencies/ag", {"name": "Agency"}),
        (
            "/api/v1/orgs/bench/users/ann",
            {"name": "Ann", "email": "ann@b.example", "kind": "agency", "agency": "ag"},
        ),
    ]
    for user in ["pub", *users]:
        puts.append(
            (
                f"/api/v1/orgs/bench/users/{user}",
                {"name": user, "email": f"{user}@b.example", "kind": "member"},
            )
        )
    puts.append(
        (
            "/api/v1/orgs/bench/candidates/c1",
            {
                "name": "C1",
                "coordinator": "pub",
                "members": ["pub", *users],
                "agency_users": ["ann"],
            },
        )
    )
    await provision(cluster, "bench", puts)

    publisher = cluster.token("bench", "pub")
    async with httpx.AsyncClient(
        base_url=cluster.http_url(), headers={"Authorization": f"Bearer {publisher}"}
    ) as http:
        response = await http.post("/api/v1/candidates/c1/threads", json={"agency_user": "ann"})
        response.raise_for_status()
    return {
        "thread": response.json()["id"],
        "publisher": publisher,
        "receivers": [cluster.token("bench", u) for u in users],
    }


def run_system(name: str, opts: argparse.Namespace) -> dict[str, Any]:
    label = f"fan-out {name}"
    log(f"{label}: starting")
    if name == "am":
        cluster = start_am(opts.workdir / "fanout-am")
        try:
            world = asyncio.run(am_fanout_world(cluster, opts.fanout_receivers))
            load = Load(
                system="am",
                urls=[cluster.ws_url()],
                receivers=opts.fanout_receivers,
                rooms=["c1"],
                targets=[world["thread"]],
                rates=opts.fanout_rates,
                step_seconds=opts.step_seconds,
                server_pids=cluster.pids,
                tokens=world["receivers"],
                publisher_token=world["publisher"],
            )
            return {"steps": drive(load, label)}
        finally:
            cluster.stop()
    # One process each, in the setup its users would run: Django Channels' in-memory layer
    # is for tests only (it drops messages under load), so Channels gets its Redis layer.
    redis_url = opts.redis_url if name == "django_channels" else None
    processes, urls, system = peers.start(name, 1, redis_url, logdir=opts.workdir)
    try:
        load = Load(
            system=system,
            urls=urls,
            receivers=opts.fanout_receivers,
            rooms=["c1"],
            targets=["c1"],
            rates=opts.fanout_rates,
            step_seconds=opts.step_seconds,
            server_pids=[p.pid for p in processes],
        )
        return {"steps": drive(load, label)}
    finally:
        stop(processes)


def run(opts: argparse.Namespace) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for name in opts.systems:
        try:
            data = run_system(name, opts)
        except Exception as error:  # a peer that cannot run here is reported, not dropped
            log(f"fan-out {name}: could not run: {error}")
            systems[name] = {"error": str(error), "steps": [], "best": None}
            continue
        data["best"] = best(data["steps"])
        systems[name] = data
    return {
        "name": "fanout",
        "receivers": opts.fanout_receivers,
        "systems": systems,
        "markdown": markdown(systems, opts),
    }


def display_name(name: str) -> str:
    return NAME_AM if name == "am" else peers.NAMES[name]


def markdown(systems: dict[str, Any], opts: argparse.Namespace) -> str:
    limit = systems.get("bare", {}).get("best")
    rows = [
        "| system | deliveries/s at p99 ≤ 100 ms | ratio to the limit | p50 ms | p99 ms "
        "| server CPU µs/delivery |",
        "|---|---|---|---|---|---|",
    ]
    for name, data in systems.items():
        top = data.get("best")
        if data.get("error"):
            rows.append(f"| {display_name(name)} | could not run: {data['error']} | | | | |")
        elif top is None:
            rows.append(f"| {display_name(name)} | p99 over 100 ms at every rate | | | | |")
        else:
            ratio = (
                f"{top['delivered_per_second'] / limit['delivered_per_second']:.2f}"
                if limit
                else "n/a"
            )
            rows.append(
                f"| {display_name(name)} | {top['delivered_per_second']:,.0f} | {ratio} "
                f"| {top['p50_ms']} | {top['p99_ms']} | {top['server_cpu_us_per_delivery']} |"
            )
    return (
        f"## 1. Fan-out: {opts.fanout_receivers} sockets on one candidate\n\n"
        "One process per system, each with its in-process fan-out (Django Channels with its "
        "Redis pub/sub layer, its production setup); one publisher; the rate steps through "
        f"{', '.join(f'{r:g}' for r in opts.fanout_rates)} messages/s "
        f"({opts.step_seconds:g} s each). Best step with p99 ≤ 100 ms and nothing lost.\n\n"
        + "\n".join(rows)
        + "\n"
    )
