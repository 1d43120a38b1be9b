"""Replies by email with the receiver in a process of its own, as production runs it.

A real `agency-messaging serve` and a real `agency-messaging inbound` share one fresh
PostgreSQL database and a private Redis broker; alerts go to a real SMTP server (aiosmtpd).
The agency user replies over SMTP to the `Reply-To` of the alert that `serve` sent; the
member watching the candidate on `serve` gets the reply live, though another process posted
it. The command also refuses to start without a reply domain.
"""

from __future__ import annotations

import asyncio
import os
import smtplib
import subprocess
import uuid
from collections.abc import Iterator
from email.utils import getaddresses
from pathlib import Path

import httpx
import pytest

from harness.services import (
    VENV_BIN,
    PostgresServer,
    RedisServer,
    ServerProcess,
    free_port,
    wait_for_port,
)
from tests.support.cluster import node_env
from tests.support.realtime import WsClient
from tests.support.smtp import SmtpServer, send_reply
from tests.support.world import SECRET, SERVICE_TOKEN, Api, migrate_database

pytestmark = pytest.mark.xdist_group("email_cluster")

ORG = "replies"
ANN = "ann@ag.example"
DOMAIN = "reply.cluster.example"


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    with SmtpServer() as server:
        yield server


def start_inbound(env: dict[str, str], workdir: Path, port: int) -> subprocess.Popen[bytes]:
    log = (workdir / "inbound.log").open("ab")
    with log:
        process = subprocess.Popen(
            [str(VENV_BIN / "agency-messaging"), "inbound", "--port", str(port)],
            env={**os.environ, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
        )
    wait_for_port(port, timeout=30)
    return process


async def test_a_reply_received_by_its_own_process_reaches_viewers_on_another_live(
    postgres: PostgresServer, smtp: SmtpServer, tmp_path: Path
) -> None:
    name = f"am_replies_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    url = postgres.url(name)
    await migrate_database(url)
    redis = await asyncio.to_thread(RedisServer.start)
    env = node_env(
        url, redis, AM_SMTP_URL=smtp.url, AM_EMAIL_DELAY_SECONDS="0.2", AM_REPLY_DOMAIN=DOMAIN
    )
    inbound_port = free_port()
    node: ServerProcess | None = None
    inbound: subprocess.Popen[bytes] | None = None
    try:
        node = await asyncio.to_thread(ServerProcess.start, env, tmp_path)
        await asyncio.to_thread(node.wait_ready)
        inbound = await asyncio.to_thread(start_inbound, env, tmp_path, inbound_port)
        async with httpx.AsyncClient(base_url=node.url, timeout=15) as client:
            api = Api(client)
            await api.team(ORG, members=("coord",), agent="ann", candidates=("c1",))
            thread = int((await api.open_thread(ORG, "ann", "c1", {"private": False}))["id"])
            await api.send(ORG, "coord", thread, "Could you send the updated CV?")
            await smtp.wait_for(1, to=ANN, timeout=30)
            (alert,) = smtp.to(ANN)
            ((_, reply_to),) = getaddresses([str(alert.message["Reply-To"])])
            assert reply_to.endswith("@" + DOMAIN)

            watcher = await WsClient.connect(node.url, api.token(ORG, "coord"))
            try:
                await watcher.request("subscribe", candidate="c1")
                body = "Sent it this morning.\n\nOn Tue, Dec 1, 2026 Coord wrote:\n> earlier\n"
                code, text = await asyncio.to_thread(
                    send_reply, inbound_port, sender=ANN, to=reply_to, body=body
                )
                assert code == 250, text
                event = await watcher.next_event(type="message.created", timeout=15)
            finally:
                await watcher.close()
            assert event["message"]["body"] == "Sent it this morning."
            assert event["message"]["author"]["id"] == "ann"
            response = await api.get(ORG, "coord", f"/api/v1/threads/{thread}/messages")
            bodies = [m["body"] for m in response.json()["messages"]]
            assert bodies == ["Could you send the updated CV?", "Sent it this morning."]
        log = (tmp_path / "inbound.log").read_text(errors="replace")
        assert "Receiving replies for @reply.cluster.example over SMTP" in log
        assert "reply-" not in log  # reply addresses carry tokens: never logged
        assert "Sent it this morning" not in log  # nor bodies
    finally:
        if inbound is not None:
            inbound.terminate()
            assert inbound.wait(timeout=20) == 0  # SIGTERM is a clean stop
        if node is not None:
            node.stop()
        redis.stop()


def test_inbound_refuses_to_start_without_a_reply_domain(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "AM_SECRET": SECRET,
        "AM_SERVICE_TOKEN": SERVICE_TOKEN,
        "AM_VAR_DIR": str(tmp_path),
        "AM_REPLY_DOMAIN": "",
    }
    done = subprocess.run(
        [str(VENV_BIN / "agency-messaging"), "inbound", "--port", str(free_port())],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert b"inbound needs AM_REPLY_DOMAIN" in done.stderr


def test_inbound_alone_on_the_in_process_broker_warns_and_receives(tmp_path: Path) -> None:
    """The embedded defaults (SQLite, memory://) in a process of its own: it migrates the
    database, says that open pages see its replies only on reload, and receives."""
    port = free_port()
    env = {
        "AM_DEMO": "1",
        "AM_VAR_DIR": str(tmp_path / "var"),
        "AM_REPLY_DOMAIN": DOMAIN,
        "AM_DATABASE_URL": "",
        "AM_BROKER_URL": "",
    }
    inbound = start_inbound(env, tmp_path, port)
    try:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
            assert client.ehlo("mx.example")[0] == 250
            client.mail(ANN)
            code, text = client.rcpt("nobody@" + DOMAIN)
            assert code == 550 and b"no such reply address" in text.lower()
    finally:
        inbound.terminate()
        assert inbound.wait(timeout=20) == 0
    log = (tmp_path / "inbound.log").read_text(errors="replace")
    assert "AM_BROKER_URL is memory://" in log
    assert (tmp_path / "var" / "agency-messaging.db").exists()


def test_serve_refuses_an_inbound_port_without_a_reply_domain(tmp_path: Path) -> None:
    env = {**os.environ, "AM_DEMO": "1", "AM_VAR_DIR": str(tmp_path), "AM_REPLY_DOMAIN": ""}
    done = subprocess.run(
        [
            str(VENV_BIN / "agency-messaging"),
            "serve",
            "--port",
            str(free_port()),
            "--inbound-port",
            str(free_port()),
        ],
        env=env,
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert b"--inbound-port needs AM_REPLY_DOMAIN" in done.stderr
