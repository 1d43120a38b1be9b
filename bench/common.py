"""What every scenario shares: ports, processes, CPU and memory readings, percentiles, and
Agency Messaging servers (one or several processes) with a provisioned org.

Backing services (PostgreSQL, Redis) come from `harness.services`: the same throwaway
launchers the test suite uses, started on private ports and stopped at the end.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from harness import services
from harness.services import free_port
from server.domain.auth import make_user_token

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
PYTHON = sys.executable
CLI = str(Path(PYTHON).parent / "agency-messaging")
LOADGEN = [PYTHON, str(ROOT / "bench" / "loadgen.py")]


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", flush=True)


def wait_for_port(port: int, timeout: float = 60.0) -> None:
    services.wait_for_port(port, timeout)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User plus system CPU time of these processes, from /proc."""
    total = 0.0
    ticks = os.sysconf("SC_CLK_TCK")
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"No VmRSS for process {pid}.")


def percentile_ms(values_us: list[int], q: float) -> float:
    """The q-quantile of latencies given in microseconds, in milliseconds (-1: no data)."""
    if not values_us:
        return -1.0
    ordered = sorted(values_us)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))] / 1000, 2)


def stop(processes: Iterable[subprocess.Popen[Any]]) -> None:
    for process in processes:
        if process.poll() is None:
            process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class AmCluster:
    """One or more `agency-messaging serve` processes sharing a database and a broker."""

    workdir: Path
    secret: str
    service_token: str
    ports: list[int]
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.processes]

    def http_url(self, index: int = 0) -> str:
        return f"http://127.0.0.1:{self.ports[index % len(self.ports)]}"

    def ws_url(self, index: int = 0) -> str:
        return f"ws://127.0.0.1:{self.ports[index % len(self.ports)]}/ws"

    def token(self, org: str, user: str, ttl: int = 6 * 3600) -> str:
        return make_user_token(self.secret, org, user, ttl)

    def stop(self) -> None:
        stop(self.processes)

    def launch(self, index: int) -> None:
        port = self.ports[index]
        process = subprocess.Popen(
            [CLI, "serve", "--port", str(port)],
            env=self.env,
            cwd=self.workdir,
            stdout=subprocess.DEVNULL,
            stderr=open(self.workdir / f"server-{port}.log", "ab"),  # noqa: SIM115
        )
        if index < len(self.processes):
            self.processes[index] = process
        else:
            self.processes.append(process)

    def restart(self, index: int) -> None:
        """A rolling restart of one process: SIGTERM (it closes its sockets with 1012),
        wait for it to exit, start it again on the same port."""
        stop([self.processes[index]])
        self.launch(index)
        wait_for_port(self.ports[index])


def start_am(
    workdir: Path,
    *,
    processes: int = 1,
    database_url: str | None = None,
    broker_url: str | None = None,
    extra_env: dict[str, str] | None = None,
) -> AmCluster:
    """Migrates the database, then starts `processes` servers on free ports."""
    workdir.mkdir(parents=True, exist_ok=True)
    cluster = AmCluster(
        workdir,
        secrets.token_urlsafe(32),
        secrets.token_urlsafe(32),
        [free_port() for _ in range(processes)],
    )
    env = {
        **os.environ,
        "AM_SECRET": cluster.secret,
        "AM_SERVICE_TOKEN": cluster.service_token,
        "AM_VAR_DIR": str(workdir / "var"),
        # The load generator is one user sending far past any human rate, from many sockets.
        "AM_SEND_RATE_PER_MINUTE": "0",
        "AM_MAX_CONNECTIONS_PER_USER": "0",
        "AM_EMAIL_WORKER": "0",
        "AM_LOG_LEVEL": "WARNING",
        **({"AM_DATABASE_URL": database_url} if database_url else {}),
        **({"AM_BROKER_URL": broker_url} if broker_url else {}),
        **(extra_env or {}),
    }
    subprocess.run([CLI, "migrate"], env=env, cwd=workdir, check=True, capture_output=True)
    cluster.env = env
    for index in range(processes):
        cluster.launch(index)
    for port in cluster.ports:
        wait_for_port(port)
    return cluster


async def provision(
    cluster: AmCluster, org: str, puts: list[tuple[str, dict[str, Any]]], concurrency: int = 8
) -> None:
    """PUTs provisioning records in order of kind (orgs, agencies, users, candidates); records
    of one kind go `concurrency` at a time."""
    headers = {"Authorization": f"Bearer {cluster.service_token}"}
    async with httpx.AsyncClient(base_url=cluster.http_url(), headers=headers, timeout=60) as http:

        async def put(path: str, body: dict[str, Any]) -> None:
            response = await http.put(path, json=body)
            if response.status_code >= 300:
                raise RuntimeError(f"PUT {path} answered {response.status_code}: {response.text}")

        def kind(path: str) -> int:
            for rank, part in enumerate(("/candidates/", "/users/", "/agencies/")):
                if part in path:
                    return 3 - rank
            return 0

        gate = asyncio.Semaphore(concurrency)

        async def guarded(path: str, body: dict[str, Any]) -> None:
            async with gate:
                await put(path, body)

        for rank in range(4):
            batch = [(p, b) for p, b in puts if kind(p) == rank]
            await asyncio.gather(*(guarded(p, b) for p, b in batch))
