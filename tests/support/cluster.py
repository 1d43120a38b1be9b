"""Several `agency-messaging serve` processes over one database and one private Redis, and
a socket client for them.

`Cluster` runs the nodes (each test module starts its own, with the environment it needs);
`Client` is a `WsClient` that also notes when each frame arrived; `request_or_lost` asks
over a socket that may die meanwhile and raises `Lost` if it does.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import websockets

from harness.services import RedisServer, ServerProcess
from tests.support.realtime import WsClient
from tests.support.world import SECRET, SERVICE_TOKEN


def node_env(database_url: str, redis: RedisServer, **extra: str) -> dict[str, str]:
    """The environment every process of a test cluster shares: one PostgreSQL database, one
    private Redis, the tests' secrets, no send rate limit; `extra` adds or overrides."""
    return {
        "AM_DATABASE_URL": database_url,
        "AM_BROKER_URL": redis.url,
        "AM_SECRET": SECRET,
        "AM_SERVICE_TOKEN": SERVICE_TOKEN,
        "AM_SEND_RATE_PER_MINUTE": "0",
        "AM_LOG_LEVEL": "INFO",
        **extra,
    }


@dataclass
class Cluster:
    """Named nodes ("a", "b") run with one environment `env` (the same database, the broker
    `redis`); `ensure_running` replaces a node that was stopped or killed."""

    env: dict[str, str]
    workdir: Path
    redis: RedisServer
    nodes: dict[str, ServerProcess] = field(default_factory=dict)
    retired: list[ServerProcess] = field(default_factory=list)

    def url(self, name: str) -> str:
        return self.nodes[name].url

    def start_node(self, name: str) -> None:
        old = self.nodes.get(name)
        if old is not None:
            old.stop()
            self.retired.append(old)
        node = ServerProcess.start(self.env, self.workdir)
        self.nodes[name] = node
        node.wait_ready()

    def ensure_running(self) -> None:
        for name, node in list(self.nodes.items()):
            if node.process is None or node.process.poll() is not None:
                self.start_node(name)

    def logs(self) -> str:
        parts = []
        for label, node in [*self.nodes.items(), *(("old", n) for n in self.retired)]:
            parts.append(f"===== node {label} ({node.url}) =====\n{node.log()}")
        return "\n".join(parts)

    def stop(self) -> None:
        for node in [*self.nodes.values(), *self.retired]:
            node.stop()
        self.redis.stop()


class Client(WsClient):
    """A WsClient that also notes when each frame arrived (time.perf_counter())."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.arrivals: list[float] = []
        super().__init__(socket)

    def _received(self, frame: dict[str, Any]) -> None:
        self.arrivals.append(time.perf_counter())

    def created(self, candidate: str) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if f.get("type") == "message.created" and f.get("candidate") == candidate
        ]

    def last_seq(self, candidate: str, floor: int) -> int:
        seqs = [
            f["seq"]
            for f in self.frames
            if f.get("type", "").startswith("message.") and f.get("candidate") == candidate
        ]
        return max([floor, *seqs])


class Lost(Exception):
    """The connection went away before the answer came."""


async def request_or_lost(client: Client, op: str, **fields: Any) -> dict[str, Any]:
    """The answer to `op`, or `Lost` if the socket closed before it came."""
    request = asyncio.create_task(client.request(op, timeout=15, **fields))
    await asyncio.wait({request, client._reader}, timeout=15, return_when=asyncio.FIRST_COMPLETED)
    if not request.done():  # an answer read just before the close still counts
        await asyncio.wait({request}, timeout=0.2)
    if request.done() and request.exception() is None:
        return request.result()
    request.cancel()
    with contextlib.suppress(BaseException):
        await request
    raise Lost(f"{op}: connection closed, code {client.socket.close_code}")
