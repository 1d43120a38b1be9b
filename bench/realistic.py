"""Scenario 2, realistic: many candidates with a handful of viewers each, two server
processes behind Redis (and PostgreSQL for Agency Messaging); messages go round-robin over
the candidates. Reports p50/p99 at 200 messages/s and the highest rate sustained with p99
under 100 ms and nothing lost.

Agency Messaging's viewers of a candidate are three members and the candidate's agency
user (each agency user has several candidates); a coordinator posts into each candidate's
agency thread. Peers get the same sockets, rooms and rate.

For Agency Messaging, an observer process also holds a second tab of a sample of the viewers
(every agency user of OBSERVE_AGENCY_EVERY, subscribed to all its candidates, and the first
member of one candidate in OBSERVE_MEMBER_EVERY) for the whole run, and records when each
unread frame (`unread`, `unread.summary` or `unread.batch`) and each `message.created`
frame arrives: the most unread frames a tab got within any 50 ms, and unread frames per
message delivered. The tabs offer protocol 2, as the browser client does (one
`unread.batch` frame per batch); one in OBSERVE_PROTOCOL_1_EVERY does not, and is reported
apart (`protocol_1`), to compare with protocol 1's frame per thread.

    python bench/realistic.py --observe   (the observer; started by the scenario)
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as a script (the observer), this file's folder comes first on sys.path, where it would
# shadow the product's `storage` package: put the repository root there instead.
ROOT = Path(__file__).resolve().parent.parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != ROOT / "bench"]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import argparse  # noqa: E402
import asyncio  # noqa: E402
import bisect  # noqa: E402
import contextlib  # noqa: E402
import json  # noqa: E402
import resource  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from typing import Any  # noqa: E402

import httpx  # noqa: E402
import orjson  # noqa: E402
import websockets  # noqa: E402

from bench import peers  # noqa: E402
from bench.common import PYTHON, AmCluster, log, provision, start_am, stop  # noqa: E402
from bench.drive import Load, best, drive  # noqa: E402
from bench.fanout import display_name as _display_name  # noqa: E402
from channels.protocol import SUBPROTOCOL_V2  # noqa: E402

MEMBERS_PER_CANDIDATE = 3
CANDIDATES_PER_AGENCY_USER = 5
OBSERVE_AGENCY_EVERY = 4
OBSERVE_MEMBER_EVERY = 10
OBSERVE_PROTOCOL_1_EVERY = 4  # observed tabs that stay on protocol 1, for comparison
UNREAD_FRAMES = frozenset({"unread", "unread.summary", "unread.batch"})
UNREAD_WINDOW_SECONDS = 0.05
SELF = str(Path(__file__).resolve())


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


# --- the unread observer ------------------------------------------------------------------


def most_within(times: list[float], window: float) -> int:
    """The most of these (sorted) times that fall within any interval shorter than window."""
    most = 0
    for index, start in enumerate(times):
        most = max(most, bisect.bisect_left(times, start + window, lo=index) - index)
    return most


def unread_figures(tabs: list[dict[str, Any]]) -> dict[str, Any]:
    """What the observed tabs got: the most unread frames within 50 ms (and a second) on
    one tab, and unread frames per message delivered."""
    windows = [most_within(r["unread"], UNREAD_WINDOW_SECONDS) for r in tabs]
    unread = sum(len(r["unread"]) for r in tabs)
    messages = sum(r["messages"] for r in tabs)
    return {
        "tabs": len(tabs),
        "unread_frames": unread,
        "messages": messages,
        "unread_frames_per_message": round(unread / messages, 3) if messages else None,
        "most_unread_frames_in_50ms": max(windows, default=0),
        "tabs_over_one_in_50ms": sum(1 for w in windows if w > 1),
        "most_unread_frames_in_1s": max((most_within(r["unread"], 1.0) for r in tabs), default=0),
    }


async def observer_main() -> None:
    """stdin: one JSON line {"urls": [...], "tabs": [[token, [candidate, ...], protocol_2],
    ...]}; prints {"ready": n} once every tab is subscribed, then at EOF on stdin one JSON
    report: the figures of the tabs that offered protocol 2 (counting whatever unread frames
    they got, so a server that does not speak it is measured all the same), with those of
    the protocol 1 tabs under `protocol_1`."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    loop = asyncio.get_running_loop()
    config = json.loads(await loop.run_in_executor(None, sys.stdin.readline))
    tabs: list[dict[str, Any]] = []

    async def tab(index: int, token: str, candidates: list[str], protocol_2: bool) -> None:
        ws = await websockets.connect(
            config["urls"][index % len(config["urls"])],
            additional_headers={"Authorization": f"Bearer {token}"},
            subprotocols=[websockets.Subprotocol(SUBPROTOCOL_V2)] if protocol_2 else None,
            compression=None,
            open_timeout=60,
            ping_interval=None,
            max_size=None,
        )
        record: dict[str, Any] = {
            "ws": ws,
            "protocol_2": protocol_2,
            "unread": [],
            "messages": 0,
            "other": 0,
        }
        for candidate in candidates:
            await ws.send(orjson.dumps({"op": "subscribe", "candidate": candidate}).decode())
        acks = 0
        while acks < len(candidates):
            if orjson.loads(await ws.recv()).get("type") == "ack":
                acks += 1
        tabs.append(record)

    async def read(record: dict[str, Any]) -> None:
        unread, now = record["unread"], time.monotonic
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in record["ws"]:
                kind = orjson.loads(raw).get("type")
                if kind in UNREAD_FRAMES:
                    unread.append(now())
                elif kind == "message.created":
                    record["messages"] += 1
                else:
                    record["other"] += 1

    async def keepalive() -> None:
        while True:
            await asyncio.sleep(30)
            for record in tabs:
                with contextlib.suppress(websockets.ConnectionClosed):
                    await record["ws"].send('{"op": "ping"}')

    await asyncio.gather(*(tab(i, *spec) for i, spec in enumerate(config["tabs"])))
    readers = [asyncio.create_task(read(record)) for record in tabs]
    pinger = asyncio.create_task(keepalive())
    print(json.dumps({"ready": len(tabs)}), flush=True)
    await loop.run_in_executor(None, sys.stdin.read)  # until EOF
    pinger.cancel()
    for task in readers:
        task.cancel()
    offered = [r for r in tabs if r["protocol_2"]]
    report = unread_figures(offered)
    report["protocol_2_negotiated"] = sum(
        1 for r in offered if r["ws"].subprotocol == SUBPROTOCOL_V2
    )
    report["protocol_1"] = unread_figures([r for r in tabs if not r["protocol_2"]])
    print(json.dumps(report), flush=True)
    await asyncio.gather(*(r["ws"].close() for r in tabs), return_exceptions=True)


def observed_tabs(cluster: AmCluster, world: dict[str, Any]) -> list[tuple[str, list[str], bool]]:
    """(token, candidates, offers protocol 2) of the sample: agency users with all their
    candidates, and one member of some candidates; one tab in OBSERVE_PROTOCOL_1_EVERY of
    each kind stays on protocol 1."""
    agency: dict[str, list[str]] = {}
    members: list[tuple[str, list[str]]] = []
    for index, (candidate, viewers) in enumerate(world["viewers"].items()):
        agency.setdefault(viewers[-1], []).append(candidate)
        if index % OBSERVE_MEMBER_EVERY == 0:
            members.append((cluster.token("bench", viewers[0]), [candidate]))
    agents = [
        (cluster.token("bench", user), candidates)
        for index, (user, candidates) in enumerate(agency.items())
        if index % OBSERVE_AGENCY_EVERY == 0
    ]
    return [
        (token, candidates, index % OBSERVE_PROTOCOL_1_EVERY != OBSERVE_PROTOCOL_1_EVERY - 1)
        for kind in (members, agents)
        for index, (token, candidates) in enumerate(kind)
    ]


class Observer:
    def __init__(self, urls: list[str], tabs: list[tuple[str, list[str], bool]]) -> None:
        self.process = subprocess.Popen(
            [PYTHON, SELF, "--observe"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps({"urls": urls, "tabs": tabs}) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("The unread observer could not open its tabs.")
        self.tabs = int(json.loads(line)["ready"])

    def report(self) -> dict[str, Any]:
        out, _ = self.process.communicate("", timeout=60)
        report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
        return report

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


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
            observer = Observer(load.urls, observed_tabs(cluster, world))
            try:
                log(f"{label}: {observer.tabs} observer tabs count unread frames")
                steps = drive(load, label)
                unread = observer.report()
            finally:
                observer.kill()
            log(
                f"{label}: unread frames (protocol 2): at most "
                f"{unread['most_unread_frames_in_50ms']} in 50 ms on one tab, "
                f"{unread['unread_frames_per_message']} per message delivered; protocol 1: "
                f"{unread['protocol_1']['most_unread_frames_in_50ms']} and "
                f"{unread['protocol_1']['unread_frames_per_message']}"
            )
            return {"steps": steps, "unread": unread}
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


def unread_note(unread: dict[str, Any], protocol: str) -> str:
    negotiated = unread.get("protocol_2_negotiated")
    # Tabs that offered protocol 2 to a server that did not take it got protocol 1's frames.
    taken = "" if negotiated is None else f", {negotiated} of them answered in it"
    return (
        f"With {protocol} ({unread['tabs']} tabs{taken}): at most "
        f"{unread['most_unread_frames_in_50ms']} within 50 ms on one tab "
        f"({unread['tabs_over_one_in_50ms']} tabs got more than one), at most "
        f"{unread['most_unread_frames_in_1s']} within a second; "
        f"{unread['unread_frames']:,} unread frames for {unread['messages']:,} messages "
        f"delivered ({unread['unread_frames_per_message']} per message)."
    )


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
    unread = systems.get("am", {}).get("unread")
    note = ""
    if unread:
        note = (
            f"\nUnread frames (Agency Messaging, observer tabs: one agency user in "
            f"{OBSERVE_AGENCY_EVERY} with all its candidates, one member of one candidate in "
            f"{OBSERVE_MEMBER_EVERY}; the whole run). {unread_note(unread, 'protocol 2')}"
        )
        if unread.get("protocol_1"):
            note += f" {unread_note(unread['protocol_1'], 'protocol 1')}"
        note += "\n"
    return (
        f"## 2. Realistic: {opts.realistic_receivers} sockets over "
        f"{opts.realistic_candidates} candidates, two processes behind Redis\n\n"
        "Four sockets per candidate; messages round-robin over the candidates at "
        f"{', '.join(f'{r:g}' for r in opts.realistic_rates)} messages/s "
        f"({opts.step_seconds:g} s each). Agency Messaging stores in PostgreSQL.\n\n"
        + "\n".join(rows)
        + "\n"
        + note
    )


if __name__ == "__main__":
    if "--observe" in sys.argv:
        asyncio.run(observer_main())
    else:
        raise SystemExit("Run by bench/run.py; `--observe` starts the unread observer.")
