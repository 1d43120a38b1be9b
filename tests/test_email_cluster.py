"""Email alerts across processes: each alert is sent once, whichever process sends it.

Real `agency-messaging serve` processes share one fresh PostgreSQL database and a private
Redis broker, and deliver to a real SMTP server (aiosmtpd). Messages are posted through both
nodes to ten (recipient, thread) pairs; the SMTP server must see exactly one email per pair,
with no Message-ID twice. Then the same with the serve processes' workers off
(`AM_EMAIL_WORKER=0`) and a separate `agency-messaging worker` process doing the sending.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import subprocess
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from sqlalchemy import func, select

from harness.services import VENV_BIN, PostgresServer, RedisServer, ServerProcess
from storage.database import Database
from storage.models import EmailOutbox, Event
from tests.support.cluster import node_env
from tests.support.smtp import Received, SmtpServer
from tests.support.world import Api, migrate_database

# Its tests share module-scoped fixtures: one worker runs them all.
pytestmark = pytest.mark.xdist_group("email_cluster")

ORG = "mail"
PAIRS = 10
SENT_LINE = re.compile(r"Alert (\d+) sent \(")
DOMAIN = "localhost"  # of the default AM_PUBLIC_URL, used in Message-IDs and References


@dataclass
class Cluster:
    env: dict[str, str]
    workdir: Path
    database_url: str
    redis: RedisServer
    nodes: list[ServerProcess] = field(default_factory=list)
    worker: subprocess.Popen[bytes] | None = None

    def start_nodes(self, count: int) -> None:
        for _ in range(count):
            node = ServerProcess.start(self.env, self.workdir)
            self.nodes.append(node)
            node.wait_ready()

    def start_worker(self) -> None:
        log = (self.workdir / "worker.log").open("ab")
        with log:
            self.worker = subprocess.Popen(
                [str(VENV_BIN / "agency-messaging"), "worker"],
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
            )

    def sent_by_process(self) -> dict[str, list[int]]:
        """The alert ids that each process logged as sent."""
        out = {node.url: SENT_LINE.findall(node.log()) for node in self.nodes}
        worker_log = self.workdir / "worker.log"
        if worker_log.exists():
            out["worker"] = SENT_LINE.findall(worker_log.read_text(errors="replace"))
        return {name: [int(i) for i in ids] for name, ids in out.items()}

    def logs(self) -> str:
        parts = [f"===== {node.url} =====\n{node.log()}" for node in self.nodes]
        worker_log = self.workdir / "worker.log"
        if worker_log.exists():
            parts.append(f"===== worker =====\n{worker_log.read_text(errors='replace')}")
        return "\n".join(parts)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.terminate()
            try:
                self.worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.worker.kill()
                self.worker.wait(timeout=10)
            self.worker = None
        for node in self.nodes:
            node.stop()
        self.redis.stop()


async def events_awaiting_alerts(url: str) -> int:
    db = Database(url)
    try:
        async with db.read() as session:
            count = await session.scalar(
                select(func.count()).select_from(Event).where(Event.alerts_pending.is_(True))
            )
            return int(count or 0)
    finally:
        await db.close()


async def outbox_rows(url: str) -> list[EmailOutbox]:
    db = Database(url)
    try:
        async with db.read() as session:
            return list(await session.scalars(select(EmailOutbox).order_by(EmailOutbox.id)))
    finally:
        await db.close()


MakeCluster = Callable[..., Awaitable[Cluster]]


@pytest.fixture(scope="module")
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


@pytest.fixture
def make_cluster(
    postgres: PostgresServer, smtp: SmtpServer, tmp_path: Path
) -> Iterator[MakeCluster]:
    """Builds a cluster on a fresh database and a private Redis; stops it after the test."""
    made: list[Cluster] = []

    async def build(*, serve_worker: bool) -> Cluster:
        name = f"am_email_{uuid.uuid4().hex[:12]}"
        postgres.create_database(name)
        url = postgres.url(name)
        await migrate_database(url)
        redis = await asyncio.to_thread(RedisServer.start)
        env = node_env(
            url,
            redis,
            AM_SMTP_URL=smtp.url,
            AM_EMAIL_DELAY_SECONDS="1",
            AM_EMAIL_WORKER="1" if serve_worker else "0",
        )
        workdir = tmp_path / f"cluster-{len(made)}"
        workdir.mkdir()
        cluster = Cluster(env, workdir, url, redis)
        made.append(cluster)
        await asyncio.to_thread(cluster.start_nodes, 2)
        return cluster

    smtp.reset()
    try:
        yield build
    finally:
        for cluster in made:
            cluster.stop()


def member(i: int) -> str:
    return f"m{i}"


def agent(i: int) -> str:
    return f"a{i}"


def address(user: str) -> str:
    return f"{user}@{ORG}.example" if user.startswith("m") else f"{user}@ag.example"


@dataclass(frozen=True)
class Pair:
    """One thread and the one user who must get an alert about it."""

    thread: int
    author: str
    recipient: str
    bodies: tuple[str, str]


async def provision_and_post(urls: list[str]) -> list[Pair]:
    """Ten candidates, each with its own coordinator and agency user; in each agency thread
    two messages (one through each node): the agency user writes to the coordinator on even
    pairs, the coordinator to the agency user on odd ones."""
    async with contextlib.AsyncExitStack() as stack:
        apis = [
            Api(await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=15)))
            for url in urls
        ]
        first = apis[0]
        await first.org(ORG)
        await first.agency(ORG, "ag")
        for i in range(PAIRS):
            await first.member(ORG, member(i))
            await first.agency_user(ORG, agent(i), "ag")
            await first.candidate(
                ORG, f"k{i}", coordinator=member(i), members=[member(i)], agency_users=[agent(i)]
            )
        pairs: list[Pair] = []
        for i in range(PAIRS):
            api = apis[i % 2]
            thread = await api.open_thread(ORG, agent(i), f"k{i}", {"private": False})
            author, recipient = (agent(i), member(i)) if i % 2 == 0 else (member(i), agent(i))
            bodies = (f"pair {i} first", f"pair {i} second")
            pairs.append(Pair(int(thread["id"]), author, recipient, bodies))
        # Each burst well inside the 1 s delay, so that each pair is one email.
        for round_ in range(2):
            await asyncio.gather(
                *(
                    apis[(i + round_) % 2].send(ORG, p.author, p.thread, p.bodies[round_])
                    for i, p in enumerate(pairs)
                )
            )
        return pairs


async def wait_emails(smtp: SmtpServer, count: int, timeout: float, cluster: Cluster) -> None:
    try:
        await smtp.wait_for(count, timeout=timeout)
    except AssertionError as error:
        raise AssertionError(f"{error}\n{cluster.logs()}") from None


def check_exactly_once(smtp: SmtpServer, pairs: list[Pair]) -> None:
    received = smtp.messages()
    ids = [str(r.message["Message-ID"]) for r in received]
    duplicates = [i for i, n in Counter(ids).items() if n > 1]
    assert duplicates == [], f"alerts sent more than once: {duplicates}"
    by_thread: dict[int, list[Received]] = {}
    for r in received:
        reference = str(r.message["References"])
        thread = int(reference.removeprefix("<thread-").removesuffix(f"@{DOMAIN}>"))
        by_thread.setdefault(thread, []).append(r)
    assert sorted(by_thread) == sorted(p.thread for p in pairs)
    for pair in pairs:
        emails = by_thread[pair.thread]
        assert len(emails) == 1, f"thread {pair.thread}: {len(emails)} emails"
        (only,) = emails
        assert only.rcpt_tos == (address(pair.recipient),)
        text = only.text()
        assert text.index(pair.bodies[0]) < text.index(pair.bodies[1])
    assert len(received) == PAIRS


async def check_outbox(url: str, pairs: list[Pair]) -> None:
    rows = await outbox_rows(url)
    assert sorted(r.thread_id for r in rows) == sorted(p.thread for p in pairs)
    assert {r.status for r in rows} == {"sent"}
    assert [r.attempts for r in rows] == [1] * PAIRS, "a row was claimed twice"


async def test_every_alert_is_sent_once_across_two_serving_nodes(
    make_cluster: MakeCluster, smtp: SmtpServer
) -> None:
    cluster = await make_cluster(serve_worker=True)
    pairs = await provision_and_post([node.url for node in cluster.nodes])
    await wait_emails(smtp, PAIRS, timeout=30, cluster=cluster)
    await asyncio.sleep(2.5)  # past another poll of both workers: nothing more comes
    check_exactly_once(smtp, pairs)
    await check_outbox(cluster.database_url, pairs)
    sent = cluster.sent_by_process()
    print(f"ALERTS SENT PER PROCESS: { {name: len(ids) for name, ids in sent.items()} }")
    every = [i for ids in sent.values() for i in ids]
    assert sorted(every) == sorted(set(every)) and len(every) == PAIRS, sent


async def test_a_separate_worker_process_sends_the_alerts(
    make_cluster: MakeCluster, smtp: SmtpServer
) -> None:
    cluster = await make_cluster(serve_worker=False)
    pairs = await provision_and_post([node.url for node in cluster.nodes])
    await asyncio.sleep(2.0)  # past the delay: with no worker running, nothing is sent
    assert smtp.messages() == []
    # Nor decided: the messages wait in the event log for a worker to decide their alerts.
    assert await outbox_rows(cluster.database_url) == []
    assert await events_awaiting_alerts(cluster.database_url) > 0

    cluster.start_worker()
    await wait_emails(smtp, PAIRS, timeout=30, cluster=cluster)
    await asyncio.sleep(1.5)
    check_exactly_once(smtp, pairs)
    await check_outbox(cluster.database_url, pairs)
    log = (cluster.workdir / "worker.log").read_text(errors="replace")
    assert f"Sending email alerts through {smtp.url}" in log, log
    sent = cluster.sent_by_process()
    assert sorted(sent["worker"]) == sorted({r.id for r in await outbox_rows(cluster.database_url)})
    assert all(ids == [] for name, ids in sent.items() if name != "worker"), sent
