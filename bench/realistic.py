"""Scenario 2, realistic: many candidates with a handful of viewers each, two server
processes behind Redis (and PostgreSQL for Agency Messaging); messages go round-robin over
the candidates. Reports p50/p99 at 200 messages/s and the highest rate sustained with p99
under 100 ms and nothing lost.

Agency Messaging's viewers of a candidate are three members and the candidate's agency
user (each agency user has several candidates); a coordinator posts into each candidate's
agency thread. Peers get the same sockets, rooms and rate.
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

import httpx

from bench import peers
from bench.common import AmCluster, log, provision, start_am, stop
from bench.drive import Load, best, drive
from bench.fanout import display_name as _display_name

MEMBERS_PER_CANDIDATE = 3
CANDIDATES_PER_AGENCY_USER = 5


async def am_world(cluster: AmCluster, candidates: int) -> dict[str, Any]:
    agency_users = max(1, candidates // CANDIDATES_PER_AGENCY_USER)
    puts: list[tuple[str, dict[str, Any]]] = [
        ("/api/v1/orgs/bench", {"name": "Bench"}),
        ("/api/v1/orgs/bench/agencies/ag", {"name": "Agency"}),
        (
            "/api/v1/orgs/bench/users/pub",
            {"name": "Coordinator", "email": "pub@b.example", "kind": "member"},
        ),
    ]
    for a in range(agency_users):
        puts.append(
            (
                f"/api/v1/orgs/bench/users/a{a}",
                {"name": f"a{a}", "email": f"a{a}@b.example", "kind": "agency", "agency": "ag"},
            )
        )
    viewers: dict[str, list[str]] = {}
    for c in range(candidates):
        members = [f"m{c}-{k}" for k in range(MEMBERS_PER_CANDIDATE)]
        agency_user = f"a{c % agency_users}"
        viewers[f"c{c}"] = [*members, agency_user]
        for member in members:
            puts.append(
                (
                    f"/api/v1/orgs/bench/users/{member}",
                    {"name": member, "email": f"{member}@b.example", "kind": "member"},
                )
            )
        puts.append(
            (
                f"/api/v1/orgs/bench/candidates/c{c}",
                {
                    "name": f"C{c}",
                    "coordinator": "pub",
                    "members": ["pub", *members],
                    "agency_users": [agency_user],
                },
            )
        )
    await provision(cluster, "bench", puts, concurrency=16)
    publisher = cluster.token("bench", "pub")
    threads: dict[str, int] = {}
    gate = asyncio.Semaphore(16)
    async with httpx.AsyncClient(
        base_url=cluster.http_url(), headers={"Authorization": f"Bearer {publisher}"}, timeout=60
    ) as http:

        async def open_thread(candidate: str) -> None:
            async with gate:
                response = await http.post(
                    f"/api/v1/candidates/{candidate}/threads",
                    json={"agency_user": viewers[candidate][-1]},
                )
                response.raise_for_status()
                threads[candidate] = response.json()["id"]

        await asyncio.gather(*(open_thread(c) for c in viewers))
    return {"viewers": viewers, "threads": threads, "publisher": publisher}


def _rooms(candidates: int, receivers: int) -> list[str]:
    # Socket i joins rooms[i % len(rooms)]: receivers / candidates sockets per candidate.
    return [f"c{c}" for c in range(candidates)]


def run_system(name: str, opts: argparse.Namespace) -> dict[str, Any]:
    label = f"realistic {name}"
    log(f"{label}: starting")
    candidates, receivers = opts.realistic_candidates, opts.realistic_receivers
    rooms = _rooms(candidates, receivers)
    common = dict(
        receivers=receivers,
        rooms=rooms,
        rates=opts.realistic_rates,
        step_seconds=opts.step_seconds,
        # Many people post at once: several publisher sockets, as a socket's ops are
        # carried out in order, one at a time.
        publisher_connections=16,
        # The warm-up posts once to every candidate, at the rate of the first step.
        warmup_rate=len(rooms) / opts.step_seconds,
    )
    if name == "am":
        database = "realistic"
        opts.postgres.create_database(database)
        cluster = start_am(
            opts.workdir / "realistic-am",
            processes=2,
            database_url=opts.postgres.url(database),
            broker_url=opts.redis_url,
        )
        try:
            world = asyncio.run(am_world(cluster, candidates))
            # Socket i watches candidate rooms[i % n] as the (i // n)-th of its viewers.
            tokens = [
                cluster.token("bench", world["viewers"][rooms[i % candidates]][i // candidates % 4])
                for i in range(receivers)
            ]
            load = Load(
                system="am",
                urls=[cluster.ws_url(0), cluster.ws_url(1)],
                targets=[world["threads"][room] for room in rooms],
                server_pids=cluster.pids,
                tokens=tokens,
                publisher_token=world["publisher"],
                **common,  # type: ignore[arg-type]
            )
            return {"steps": drive(load, label)}
        finally:
            cluster.stop()
    processes, urls, system = peers.start(name, 2, opts.redis_url, logdir=opts.workdir)
    try:
        load = Load(
            system=system,
            urls=urls,
            targets=rooms,
            server_pids=[p.pid for p in processes],
            **common,  # type: ignore[arg-type]
        )
        return {"steps": drive(load, label)}
    finally:
        stop(processes)


def at_rate(steps: list[dict[str, Any]], rate: float) -> dict[str, Any] | None:
    return next((s for s in steps if s["rate"] == rate), None)


def run(opts: argparse.Namespace) -> dict[str, Any]:
    systems: dict[str, Any] = {}
    for name in opts.systems:
        if name == "bare":
            systems[name] = {
                "error": "the bare relay has no cross-process fan-out (it is one process)",
                "steps": [],
                "best": None,
            }
            continue
        try:
            data = run_system(name, opts)
        except Exception as error:
            log(f"realistic {name}: could not run: {error}")
            systems[name] = {"error": str(error), "steps": [], "best": None}
            continue
        data["best"] = best(data["steps"])
        systems[name] = data
    return {
        "name": "realistic",
        "candidates": opts.realistic_candidates,
        "receivers": opts.realistic_receivers,
        "systems": systems,
        "markdown": markdown(systems, opts),
    }


def display_name(name: str) -> str:
    return "Agency Messaging (PostgreSQL, Redis)" if name == "am" else _display_name(name)


def markdown(systems: dict[str, Any], opts: argparse.Namespace) -> str:
    rows = [
        "| system | p50 ms at 200 msg/s | p99 ms at 200 msg/s | lost | highest rate with p99 "
        "≤ 100 ms (msg/s) | server CPU µs/delivery at 200 msg/s |",
        "|---|---|---|---|---|---|",
    ]
    for name, data in systems.items():
        if data.get("error"):
            rows.append(f"| {display_name(name)} | n/a: {data['error']} | | | | |")
            continue
        step = at_rate(data["steps"], 200.0)
        top = data.get("best")
        cells = (
            [step["p50_ms"], step["p99_ms"], step["lost"], step["server_cpu_us_per_delivery"]]
            if step
            else ["n/a"] * 4
        )
        highest = f"{top['rate']:g}" if top else "none"
        rows.append(
            f"| {display_name(name)} | {cells[0]} | {cells[1]} | {cells[2]} | {highest} "
            f"| {cells[3]} |"
        )
    return (
        f"## 2. Realistic: {opts.realistic_receivers} sockets over "
        f"{opts.realistic_candidates} candidates, two processes behind Redis\n\n"
        "Four sockets per candidate; messages round-robin over the candidates at "
        f"{', '.join(f'{r:g}' for r in opts.realistic_rates)} messages/s "
        f"({opts.step_seconds:g} s each). Agency Messaging stores in PostgreSQL.\n\n"
        + "\n".join(rows)
        + "\n"
    )
