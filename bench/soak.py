"""`make soak`: many connections for minutes, a rolling restart, then an audit.

Two server processes share PostgreSQL and Redis. Viewers (four per candidate, distinct
users) subscribe in client processes of their own; a publisher posts over REST at a steady
rate, round-robin over the candidates, with a client_id so that a post that meets a
restarting process is retried on the other one without doubling. Halfway through, one
process gets a rolling restart (SIGTERM: it closes its sockets with 1012); its viewers
reconnect to the other process and resubscribe with `after` = the last seq they saw.

At the end every viewer is audited against the ground truth (each candidate's seq, read
over REST): it must hold every seq from 1 to the last exactly once: zero lost, zero
duplicated. The memory of the process that ran the whole time must stay flat.

    python bench/soak.py [--seconds 180] [--candidates 500] [--rate 50]

Exits 0 when the audit passes; prints the figures either way.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import websockets

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.common import log, rss_bytes, start_am  # noqa: E402
from bench.realistic import am_world  # noqa: E402
from harness.services import PostgresServer, RedisServer  # noqa: E402

MEMORY_GROWTH_LIMIT = 0.10  # of the settled RSS, for the process never restarted
SETTLE_SECONDS = 20.0  # after the restart, for its viewers to move over


# --- the viewer client process ---------------------------------------------------------


class Viewer:
    def __init__(self, token: str, candidate: str, urls: list[str], first: int) -> None:
        self.token, self.candidate, self.urls = token, candidate, urls
        self.url_index = first
        self.seqs: list[int] = []
        self.last: int | None = None
        self.first: int | None = None  # where the stream stood at the first subscribe
        self.subscribed = asyncio.Event()
        self.reconnects = 0

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            with contextlib.suppress(OSError, websockets.WebSocketException, asyncio.TimeoutError):
                await self._session(stop)
            if stop.is_set():
                return
            # Reconnect elsewhere, as a load balancer would send us to a live process.
            self.reconnects += 1
            self.url_index = (self.url_index + 1) % len(self.urls)
            await asyncio.sleep(random.uniform(0.1, 1.0))

    async def _session(self, stop: asyncio.Event) -> None:
        async with websockets.connect(
            self.urls[self.url_index],
            additional_headers={"Authorization": f"Bearer {self.token}"},
            compression=None,
            open_timeout=30,
            ping_interval=None,
            proxy=None,
        ) as ws:
            frame: dict[str, Any] = {"op": "subscribe", "candidate": self.candidate, "ref": 1}
            if self.last is not None:
                frame["after"] = self.last
            await ws.send(json.dumps(frame))
            closing = asyncio.ensure_future(stop.wait())
            try:
                while True:
                    receive = asyncio.ensure_future(ws.recv())
                    done, _ = await asyncio.wait(
                        {receive, closing}, return_when=asyncio.FIRST_COMPLETED
                    )
                    if receive not in done:
                        receive.cancel()
                        return
                    data = orjson.loads(receive.result())
                    kind = data.get("type")
                    if kind == "ack" and data.get("ref") == 1 and self.last is None:
                        self.last = self.first = data.get("seq", 0)
                        self.subscribed.set()
                    elif kind == "message.created":
                        self.seqs.append(data["seq"])
                        self.last = max(self.last or 0, data["seq"])
            finally:
                closing.cancel()

    def report(self) -> dict[str, Any]:
        return {
            "candidate": self.candidate,
            "first": self.first or 0,
            "seqs": self.seqs,
            "reconnects": self.reconnects,
        }


async def client_main(spec: dict[str, Any]) -> None:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    viewers = [Viewer(t, c, spec["urls"], i % 2) for i, (t, c) in enumerate(spec["viewers"])]
    stop = asyncio.Event()
    tasks = []
    for start in range(0, len(viewers), 100):  # connect in waves
        tasks += [asyncio.create_task(v.run(stop)) for v in viewers[start : start + 100]]
        await asyncio.sleep(0.2)
    await asyncio.gather(*(v.subscribed.wait() for v in viewers))
    print(json.dumps({"subscribed": len(viewers)}), flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    print(json.dumps([v.report() for v in viewers]), flush=True)


# --- the orchestrator ------------------------------------------------------------------


async def publish(
    bases: list[str], token: str, threads: list[int], rate: float, seconds: float
) -> dict[str, int]:
    """Posts `rate` messages a second for `seconds`, several in flight at once; a post that
    fails is retried with the same client_id on the other process until it is stored."""
    counts = {"sent": 0, "retries": 0}
    headers = {"Authorization": f"Bearer {token}"}
    clients = [httpx.AsyncClient(base_url=b, headers=headers, timeout=10) for b in bases]
    in_flight = asyncio.Semaphore(16)

    async def post(n: int) -> None:
        thread = threads[n % len(threads)]
        body = {"body": f"soak {n}", "client_id": f"soak-{n}"}
        async with in_flight:
            for attempt in range(60):
                client = clients[(n + attempt) % len(clients)]
                with contextlib.suppress(httpx.HTTPError):
                    response = await client.post(f"/api/v1/threads/{thread}/messages", json=body)
                    if response.status_code in (200, 201):
                        counts["sent"] += 1
                        return
                counts["retries"] += 1
                await asyncio.sleep(0.2)
        raise RuntimeError(f"Message {n} could not be posted in 60 attempts.")

    started = time.monotonic()
    tasks = []
    try:
        for n in range(int(rate * seconds)):
            delay = started + n / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(post(n)))
        await asyncio.gather(*tasks)
    finally:
        for client in clients:
            await client.aclose()
    return counts


async def ground_truth(base: str, token: str, candidates: list[str]) -> dict[str, int]:
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as http:
        out = {}
        for candidate in candidates:
            response = await http.get(f"/api/v1/candidates/{candidate}")
            response.raise_for_status()
            out[candidate] = response.json()["seq"]
        return out


def audit(reports: list[dict[str, Any]], truth: dict[str, int]) -> dict[str, int]:
    lost = duplicated = 0
    for report in reports:
        seqs = report["seqs"]
        duplicated += len(seqs) - len(set(seqs))
        expected = range(report["first"] + 1, truth[report["candidate"]] + 1)
        missing = sorted(set(expected) - set(seqs))
        lost += len(missing)
        if missing or len(seqs) != len(set(seqs)):
            log(
                f"soak: viewer of {report['candidate']} (reconnected {report['reconnects']}x)"
                f" is missing seqs {missing[:10]}; got {seqs[:20]}"
            )
    return {"lost": lost, "duplicated": duplicated}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=180.0)
    parser.add_argument("--candidates", type=int, default=500)
    parser.add_argument("--rate", type=float, default=50.0, help="messages per second")
    parser.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        asyncio.run(client_main(json.loads(sys.stdin.readline())))
        return 0

    postgres, redis = PostgresServer.start(), RedisServer.start()
    clients: list[subprocess.Popen[str]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="am-soak-") as tmp:
            postgres.create_database("soak")
            cluster = start_am(
                Path(tmp), processes=2, database_url=postgres.url("soak"), broker_url=redis.url
            )
            try:
                return run(args, cluster, clients)
            finally:
                for process in clients:
                    if process.poll() is None:
                        process.kill()
                cluster.stop()
    finally:
        redis.stop()
        postgres.stop()


def run(args: argparse.Namespace, cluster: Any, clients: list[subprocess.Popen[str]]) -> int:
    world = asyncio.run(am_world(cluster, args.candidates))
    viewers = [
        (cluster.token("bench", user), candidate)
        for candidate, users in world["viewers"].items()
        for user in users
    ]
    log(f"soak: {len(viewers)} viewers over {args.candidates} candidates, 2 processes")
    urls = [cluster.ws_url(0), cluster.ws_url(1)]
    for half in (viewers[0::2], viewers[1::2]):
        process = subprocess.Popen(
            [sys.executable, __file__, "--client"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(json.dumps({"urls": urls, "viewers": half}) + "\n")
        process.stdin.flush()
        clients.append(process)
    for process in clients:
        assert process.stdout is not None
        json.loads(process.stdout.readline())
    # Every viewer is subscribed (the clients said so) before the first message.
    threads = [world["threads"][c] for c in world["viewers"]]
    memory: list[tuple[float, int]] = []
    settled_after: list[float] = []
    started = time.monotonic()

    async def drive() -> dict[str, int]:
        posting = asyncio.create_task(
            publish(
                [cluster.http_url(0), cluster.http_url(1)],
                world["publisher"],
                threads,
                args.rate,
                args.seconds,
            )
        )
        restarted: float | None = None
        while not posting.done():
            await asyncio.sleep(5)
            elapsed = time.monotonic() - started
            memory.append((round(elapsed), rss_bytes(cluster.pids[1])))
            if restarted is None and elapsed >= args.seconds / 2:
                log("soak: rolling restart of process 0")
                await asyncio.to_thread(cluster.restart, 0)
                restarted = time.monotonic() - started
                settled_after.append(restarted + SETTLE_SECONDS)
            log(f"soak: {elapsed:.0f} s, process 1 RSS {memory[-1][1] / 2**20:.0f} MiB")
        return await posting

    published = asyncio.run(drive())
    log(f"soak: posted {published['sent']} ({published['retries']} retries); catching up")
    time.sleep(15)
    reports: list[dict[str, Any]] = []
    for process in clients:
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write("\n")
        process.stdin.flush()
        reports += json.loads(process.stdout.readline())
        process.wait(timeout=60)
    candidates = list(world["viewers"])
    truth = asyncio.run(ground_truth(cluster.http_url(1), world["publisher"], candidates))
    result = audit(reports, truth)
    # The baseline is taken once the restart has settled: the restarted process's viewers
    # have moved to this one, and more sockets rightly take more memory.
    since = settled_after[0] if settled_after else 0.0
    baseline = [rss for at, rss in memory if at >= since] or [memory[-1][1]]
    warm = baseline[0]
    growth = (memory[-1][1] - warm) / warm
    figures = {
        "connections": len(viewers),
        "messages": published["sent"],
        "retried_posts": published["retries"],
        "reconnects": sum(r["reconnects"] for r in reports),
        "deliveries": sum(len(r["seqs"]) for r in reports),
        **result,
        "memory_mib_after_restart_settled": round(warm / 2**20, 1),
        "memory_mib_at_end": round(memory[-1][1] / 2**20, 1),
        "memory_growth": round(growth, 3),
        "seconds": round(time.monotonic() - started),
    }
    print(json.dumps(figures, indent=2))
    ok = result["lost"] == 0 and result["duplicated"] == 0 and growth < MEMORY_GROWTH_LIMIT
    log("soak: PASSED" if ok else "soak: FAILED")
    return 0 if ok else 1


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
