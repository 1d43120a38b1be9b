"""The deployment's proxy, run for real: deploy/nginx/agency-messaging.conf in front of two
server processes.

A private nginx (the Debian package) serves the site file as it is written; only what
depends on the environment is changed: the upstream addresses (app1:8000, app2:8000 become
the two `agency-messaging serve` processes on loopback ports), the listen ports and the
certificate (a self-signed one made with the openssl CLI). The processes share PostgreSQL
and a private Redis as in tests/test_cluster.py. Through the proxy, over TLS:

- REST and the WebSocket work, with the browser Origin of AM_PUBLIC_URL;
- a message sent on one process reaches a socket on the other;
- a rolling restart (SIGTERM each process in turn, start it again) loses and doubles
  nothing for viewers that reconnect through the proxy and resume;
- the proxy's own limits match the server's (header sizes, head timeout, body size), and
  the server enforces the same limits when reached directly.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import socket
import ssl
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import websockets

from harness.services import PostgresServer, RedisServer, ServerProcess, free_port
from server.domain.auth import make_user_token
from tests.support.delivery import history
from tests.support.realtime import WsClient
from tests.support.world import SECRET, SERVICE_TOKEN, Api, migrate_database

pytestmark = [pytest.mark.postgres, pytest.mark.xdist_group("deploy_proxy")]

ROOT = Path(__file__).resolve().parent.parent
SITE_CONF = ROOT / "deploy" / "nginx" / "agency-messaging.conf"
NGINX = "/usr/sbin/nginx"

ORG = "dep"
MEMBERS = ("coord", "mem", "max")
AGENT = "ann"
CANDIDATES = ("tls", "live", "roll")
VIEWERS = ("mem", "coord", "max")


# --- the proxy ------------------------------------------------------------------------------


def _directives(text: str) -> str:
    """The config without its comments (no value in the site file contains '#')."""
    return "\n".join(line.split("#", 1)[0] for line in text.splitlines())


def site_config(
    text: str, *, app1: int, app2: int, https_port: int, http_port: int, cert: Path, key: Path
) -> str:
    """The site file with only its environment-specific parts replaced. Each replacement
    must happen exactly once, so that a change to the file cannot leave this test testing
    something other than what is deployed."""
    replacements = [
        (r"\bserver\s+app1:8000\b", f"server 127.0.0.1:{app1}"),
        (r"\bserver\s+app2:8000\b", f"server 127.0.0.1:{app2}"),
        (r"\blisten\s+443\s+ssl\s*;", f"listen 127.0.0.1:{https_port} ssl;"),
        (r"\blisten\s+80\s*;", f"listen 127.0.0.1:{http_port};"),
        (r"\bssl_certificate\s+/etc/nginx/certs/fullchain\.pem\s*;", f"ssl_certificate {cert};"),
        (
            r"\bssl_certificate_key\s+/etc/nginx/certs/privkey\.pem\s*;",
            f"ssl_certificate_key {key};",
        ),
    ]
    for pattern, replacement in replacements:
        text, count = re.subn(pattern, lambda _m, r=replacement: r, text)
        assert count == 1, f"{pattern!r} matched {count} times in {SITE_CONF}, not once"
    directives = _directives(text)
    for leftover in ("app1", "app2", "/etc/nginx/"):
        assert leftover not in directives, f"{leftover!r} is still in the config:\n{directives}"
    listens = re.findall(r"\blisten\s+([^;]*);", directives)
    assert len(listens) == 2 and all(x.startswith("127.0.0.1:") for x in listens), listens
    return text


def make_certificate(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "fullchain.pem", directory / "privkey.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


# $upstream_addr and $upstream_status list every process tried, the one that answered last.
LOG_FORMAT = "$status|$upstream_addr|$upstream_status|$request"


@dataclass
class Proxy:
    directory: Path
    https_port: int
    http_port: int
    cafile: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def base_url(self) -> str:
        return f"https://127.0.0.1:{self.https_port}"

    @property
    def ws_url(self) -> str:
        return f"wss://127.0.0.1:{self.https_port}/ws"

    @property
    def access_log(self) -> Path:
        return self.directory / "access.log"

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cafile))

    @classmethod
    def start(
        cls, directory: Path, site: str, https_port: int, http_port: int, cafile: Path
    ) -> Proxy:
        proxy = cls(directory, https_port, http_port, cafile)
        (directory / "agency-messaging.conf").write_text(site)
        temp = "\n".join(
            f"    {name}_temp_path {directory / name};"
            for name in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
        )
        # pytest's temporary directories are private to their owner: as root, workers that
        # dropped to `nobody` could not write nginx's temporary files there.
        user = "user root;\n" if _is_root() else ""
        (directory / "nginx.conf").write_text(
            f"""{user}daemon off;
master_process on;
worker_processes 1;
error_log {directory / "error.log"} info;
pid {directory / "nginx.pid"};
events {{
    worker_connections 1024;
}}
http {{
    include /etc/nginx/mime.types;
    default_type application/octet-stream;
    log_format upstreams '{LOG_FORMAT}';
    access_log {proxy.access_log} upstreams;
{temp}
    include {directory / "agency-messaging.conf"};
}}
"""
        )
        with (directory / "stderr.log").open("ab") as stderr:
            proxy.process = subprocess.Popen(
                [NGINX, "-p", str(directory), "-c", str(directory / "nginx.conf")],
                stdout=stderr,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 15
        while True:
            if proxy.process.poll() is not None:
                raise RuntimeError(f"nginx did not start:\n{proxy.logs()}")
            try:
                with socket.create_connection(("127.0.0.1", https_port), timeout=0.5):
                    return proxy
            except OSError:
                if time.monotonic() > deadline:
                    proxy.stop()
                    raise RuntimeError(f"nginx does not listen:\n{proxy.logs()}") from None
                time.sleep(0.05)

    def log_size(self) -> int:
        return self.access_log.stat().st_size if self.access_log.exists() else 0

    def answered_by(self, port: int, since: int) -> bool:
        """Whether a request logged after byte `since` was answered (2xx) by 127.0.0.1:port."""
        with self.access_log.open("rb") as log:
            log.seek(since)
            lines = log.read().decode(errors="replace").splitlines()
        for line in lines:
            parts = line.split("|", 3)
            if len(parts) < 4:
                continue
            addr = parts[1].replace(" : ", ", ").split(", ")[-1]
            status = parts[2].replace(" : ", ", ").split(", ")[-1]
            if addr == f"127.0.0.1:{port}" and status.startswith("2"):
                return True
        return False

    def logs(self) -> str:
        parts = []
        for name in ("stderr.log", "error.log"):
            path = self.directory / name
            if path.exists():
                parts.append(
                    f"===== nginx {name} =====\n{path.read_text(errors='replace')[-5000:]}"
                )
        return "\n".join(parts)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)
        self.process = None


def _is_root() -> bool:
    return os.geteuid() == 0


# --- the stack: PostgreSQL, Redis, two processes, nginx -------------------------------------


@dataclass
class Stack:
    env: dict[str, str]
    workdir: Path
    redis: RedisServer
    nodes: dict[str, ServerProcess] = field(default_factory=dict)
    proxy: Proxy | None = None

    @property
    def edge(self) -> Proxy:
        assert self.proxy is not None
        return self.proxy

    def ensure_running(self) -> None:
        for node in self.nodes.values():
            if node.process is None or node.process.poll() is not None:
                node.process = None
                node.launch()  # the same port: nginx's upstream stays valid
                node.wait_ready()

    def logs(self) -> str:
        parts = [
            f"===== node {n} ({p.url}) =====\n{p.log()[-5000:]}" for n, p in self.nodes.items()
        ]
        if self.proxy is not None:
            parts.append(self.proxy.logs())
        return "\n".join(parts)

    def stop(self) -> None:
        if self.proxy is not None:
            self.proxy.stop()
        for node in self.nodes.values():
            node.stop()
        self.redis.stop()


def token(user: str) -> str:
    return make_user_token(SECRET, ORG, user)


def https_client(stack: Stack, **kwargs: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=stack.edge.base_url, verify=stack.edge.ssl_context(), timeout=15, **kwargs
    )


async def _provision(stack: Stack) -> None:
    async with https_client(stack) as client:
        await Api(client).team(ORG, members=MEMBERS, agent=AGENT, candidates=CANDIDATES)


@pytest.fixture(scope="module")
def stack(postgres: PostgresServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    name = f"am_deploy_{uuid.uuid4().hex[:12]}"
    postgres.create_database(name)
    url = postgres.url(name)
    asyncio.run(migrate_database(url))
    workdir = tmp_path_factory.mktemp("deploy")
    https_port, http_port = free_port(), free_port()
    env = {
        "AM_DATABASE_URL": url,
        "AM_SECRET": SECRET,
        "AM_SERVICE_TOKEN": SERVICE_TOKEN,
        "AM_SEND_RATE_PER_MINUTE": "0",
        "AM_LOG_LEVEL": "INFO",
        "AM_EMAIL_WORKER": "0",  # as in deploy/compose.yaml: a separate worker sends email
        # The settings deploy/compose.yaml gives the servers behind the proxy.
        "AM_PUBLIC_URL": f"https://127.0.0.1:{https_port}",
        "AM_TRUSTED_PROXIES": "127.0.0.1",
        "AM_MAX_SOCKETS_PER_ADDRESS": "500",
        "AM_MAX_HANDSHAKES_PER_ADDRESS": "50",
    }
    redis = RedisServer.start()
    env["AM_BROKER_URL"] = redis.url
    stack = Stack(env, workdir, redis)
    try:
        for name in ("a", "b"):
            # Registered before it starts, so that `finally` stops it even if it fails to.
            node = stack.nodes[name] = ServerProcess(env, free_port(), workdir / f"{name}.log")
            node.launch()
            node.wait_ready()
        nginx_dir = workdir / "nginx"
        nginx_dir.mkdir()
        cert, key = make_certificate(nginx_dir)
        site = site_config(
            SITE_CONF.read_text(),
            app1=stack.nodes["a"].port,
            app2=stack.nodes["b"].port,
            https_port=https_port,
            http_port=http_port,
            cert=cert,
            key=key,
        )
        stack.proxy = Proxy.start(nginx_dir, site, https_port, http_port, cert)
        asyncio.run(_provision(stack))
        yield stack
    finally:
        stack.stop()


@pytest.fixture
def running(stack: Stack) -> Iterator[Stack]:
    """The stack with both processes serving (one stopped by an earlier test is restarted).
    Afterwards it prints the processes' and nginx's logs, which pytest shows on failure."""
    stack.ensure_running()
    yield stack
    print(stack.logs())


# --- helpers --------------------------------------------------------------------------------


async def open_socket(
    stack: Stack, user: str, *, origin: str | None = None
) -> websockets.ClientConnection:
    """A WebSocket through the proxy (wss), with the browser Origin of AM_PUBLIC_URL."""
    return await websockets.connect(
        stack.edge.ws_url,
        ssl=stack.edge.ssl_context(),
        origin=origin or stack.edge.base_url,  # type: ignore[arg-type]
        additional_headers={"Authorization": f"Bearer {token(user)}"},
        max_size=None,
        open_timeout=10,
    )


async def wait_until(
    condition: Callable[[], Awaitable[bool] | bool],
    timeout: float,
    what: str,
    watch: tuple[asyncio.Task[Any], ...] = (),
) -> None:
    """Polls `condition` until it holds; fails naming `what` after `timeout` seconds, or at
    once if a watched task has failed."""
    deadline = time.monotonic() + timeout
    while True:
        for task in watch:
            if task.done() and not task.cancelled() and task.exception() is not None:
                raise AssertionError(f"{task.get_name()} failed while waiting for {what}") from (
                    task.exception()
                )
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        await asyncio.sleep(0.05)


async def open_sockets_of(stack: Stack, name: str) -> int:
    """A process's `am_ws_connections` gauge (its open WebSockets), read from the process."""
    async with httpx.AsyncClient(timeout=5) as client:
        text = (await client.get(f"{stack.nodes[name].url}/metrics")).text
    found = re.search(r"^am_ws_connections\s+([0-9.e+]+)$", text, re.MULTILINE)
    assert found is not None, text[:2000]
    return int(float(found.group(1)))


async def open_sockets(stack: Stack) -> dict[str, int]:
    return {name: await open_sockets_of(stack, name) for name in stack.nodes}


async def agency_thread(api: Api, cand: str) -> int:
    thread = await api.open_thread(ORG, AGENT, cand, {"private": False})
    return int(thread["id"])


# --- a. REST and WebSocket through TLS ------------------------------------------------------


async def test_rest_and_websocket_through_the_tls_proxy(running: Stack) -> None:
    stack = running
    async with https_client(stack) as http:
        api = Api(http)
        health = await http.get("/healthz")
        assert health.status_code == 200 and health.json() == {"status": "ok"}
        assert health.headers["server"] == "nginx"  # server_tokens off: no version
        assert "max-age=" in health.headers["strict-transport-security"]

        me = await api.get(ORG, AGENT, "/api/v1/me")
        assert me.status_code == 200, me.text
        assert me.json() == {
            "id": AGENT,
            "name": "Ann",
            "kind": "agency",
            "agency": {"id": "ag", "name": "Ag"},
            "org": ORG,
        }

        # The server sees https (X-Forwarded-Proto from a trusted proxy): its session cookie
        # is Secure through the proxy, and not when reached over plain HTTP directly.
        session = await http.post("/api/v1/session", json={"token": token(AGENT)})
        assert session.status_code == 200, session.text
        assert "secure" in session.headers["set-cookie"].lower(), session.headers["set-cookie"]
        async with httpx.AsyncClient(timeout=5) as direct:
            plain = await direct.post(
                f"{stack.nodes['a'].url}/api/v1/session", json={"token": token(AGENT)}
            )
            assert plain.status_code == 200
            assert "secure" not in plain.headers["set-cookie"].lower()
            # Metrics are per process, scraped directly, never published by the proxy.
            assert (await direct.get(f"{stack.nodes['a'].url}/metrics")).status_code == 200
        assert (await http.get("/metrics")).status_code == 404

    async with httpx.AsyncClient(timeout=5) as plain_http:
        redirect = await plain_http.get(f"http://127.0.0.1:{stack.edge.http_port}/api/v1/me?x=1")
        assert redirect.status_code == 301
        assert redirect.headers["location"] == "https://127.0.0.1/api/v1/me?x=1"

    async with https_client(stack) as http:
        thread = await agency_thread(Api(http), "tls")
    client = WsClient(await open_socket(stack, "mem"))
    try:
        ack = await client.request("subscribe", candidate="tls")
        assert ack["type"] == "ack" and ack["reset"] is False, ack
        assert (await client.request("ping"))["type"] == "pong"
        sent = await client.request("send", thread=thread, body="over wss", client_id="tls-1")
        assert sent["type"] == "ack", sent
        event = await client.next_event(type="message.created")
        assert event["message"] == sent["message"]
    finally:
        await client.close()

    # Another origin is refused through the proxy as it is directly: the Origin header
    # reaches the server unchanged.
    with pytest.raises(websockets.InvalidStatus) as refused:
        await open_socket(stack, "mem", origin="https://evil.example")
    assert refused.value.response.status_code == 403


# --- b. live delivery across processes ------------------------------------------------------


async def _socket_on_other_process(
    stack: Stack, user: str, avoid: str | None, baseline: dict[str, int]
) -> tuple[WsClient, str]:
    """A socket through the proxy, and the process it landed on (other than `avoid`).

    nginx picks the process (round robin), so the test asks the processes: each one's
    `am_ws_connections` gauge, read directly, goes up by one on the process that accepted
    the socket. A socket that lands on `avoid` is closed and opened again."""
    for _ in range(6):
        client = WsClient(await open_socket(stack, user))
        expected = sum(baseline.values()) + 1
        counts: dict[str, int] = {}

        async def settled(expected: int = expected) -> bool:
            nonlocal counts
            counts = await open_sockets(stack)
            return sum(counts.values()) == expected

        await wait_until(settled, 10, f"{expected} open sockets in total")
        landed = next(n for n in counts if counts[n] == baseline[n] + 1)
        if landed != avoid:
            return client, landed
        await client.close()
        await wait_until(
            lambda: _equal(open_sockets(stack), baseline), 10, "the extra socket to close"
        )
    raise AssertionError("six sockets in a row landed on the same process")


async def _equal(counts: Awaitable[dict[str, int]], expected: dict[str, int]) -> bool:
    return await counts == expected


async def test_live_delivery_across_processes_through_the_proxy(running: Stack) -> None:
    stack = running
    cand = "live"
    async with https_client(stack) as http:
        api = Api(http)
        thread = await agency_thread(api, cand)
        zero = {name: 0 for name in stack.nodes}
        await wait_until(lambda: _equal(open_sockets(stack), zero), 10, "no open sockets")
        sender, sender_on = await _socket_on_other_process(stack, AGENT, None, zero)
        receiver: WsClient | None = None
        try:
            receiver, receiver_on = await _socket_on_other_process(
                stack, "mem", sender_on, {**zero, sender_on: 1}
            )
            assert receiver_on != sender_on
            start = (await receiver.request("subscribe", candidate=cand))["seq"]
            await sender.request("subscribe", candidate=cand)

            sent = await sender.request("send", thread=thread, body="across", client_id="x-1")
            assert sent["type"] == "ack", sent
            event = await receiver.next_event(type="message.created")
            assert event["message"] == sent["message"] and event["seq"] == start + 1

            reply = await receiver.request("send", thread=thread, body="and back", client_id="x-2")
            assert reply["type"] == "ack", reply
            mine = await sender.next_event(type="message.created")  # its own, on its process
            assert mine["message"] == sent["message"]
            back = await sender.next_event(type="message.created")
            assert back["message"] == reply["message"] and back["seq"] == start + 2

            by_rest = await api.send(ORG, AGENT, thread, "by REST through the proxy")
            for client in (receiver, sender):
                await wait_until(
                    lambda c=client: any(
                        f.get("type") == "message.created" and f["message"]["id"] == by_rest["id"]
                        for f in c.frames
                    ),
                    10,
                    "the REST message on both sockets",
                )
                frames = [f for f in client.frames if f.get("type") == "message.created"]
                assert [f["seq"] for f in frames] == [start + 1, start + 2, start + 3], frames
        finally:
            await sender.close()
            if receiver is not None:
                await receiver.close()


# --- c. rolling restart ---------------------------------------------------------------------


class Viewer:
    """A browser-like client through the proxy: on any close it reconnects (through the
    proxy, to whichever process nginx picks) and resumes with `after` = the last seq seen."""

    def __init__(self, stack: Stack, user: str, candidate: str, after: int) -> None:
        self.stack = stack
        self.user = user
        self.candidate = candidate
        self.last = after
        self.events: list[dict[str, Any]] = []
        self.closes: list[int | None] = []
        self.problems: list[Any] = []
        self.connections = 0
        self.live = False

    async def run(self) -> None:
        while True:
            try:
                ws = await open_socket(self.stack, self.user)
            except (OSError, TimeoutError, websockets.InvalidHandshake):
                await asyncio.sleep(0.05)  # the proxy had no live process yet: try again
                continue
            self.connections += 1
            try:
                subscribe = {"op": "subscribe", "candidate": self.candidate, "ref": "sub"}
                await ws.send(json.dumps({**subscribe, "after": self.last}))
                async for raw in ws:
                    frame = json.loads(raw)
                    kind = frame.get("type")
                    if kind == "ack" and frame.get("ref") == "sub":
                        if frame.get("reset") is not False:
                            self.problems.append(frame)
                        self.live = True
                    elif kind == "error":
                        self.problems.append(frame)
                    elif kind == "message.created" and frame["candidate"] == self.candidate:
                        self.events.append(frame)
                        self.last = max(self.last, frame["seq"])
            except websockets.ConnectionClosed:
                pass
            finally:
                self.live = False
                await ws.close()
            self.closes.append(ws.close_code)
            await asyncio.sleep(0.05)


class Sender:
    """Posts a steady sequence through the proxy, each with its own client_id; a failed
    attempt (no answer, or the proxy's 502/503/504) is retried with the same client_id."""

    def __init__(self, api: Api, thread: int) -> None:
        self.api = api
        self.thread = thread
        self.acked: list[dict[str, Any]] = []
        self.client_ids: list[str] = []
        self.retries = 0
        self.stopping = False

    async def run(self) -> None:
        i = 0
        while not self.stopping:
            client_id = f"roll-{i}"
            self.client_ids.append(client_id)
            while True:
                try:
                    response = await self.api.post(
                        ORG,
                        AGENT,
                        f"/api/v1/threads/{self.thread}/messages",
                        {"body": f"message {i}", "client_id": client_id},
                    )
                except httpx.TransportError:
                    response = None
                if response is not None and response.status_code in (200, 201):
                    self.acked.append(response.json())
                    break
                if response is not None and response.status_code not in (502, 503, 504):
                    raise AssertionError(f"{response.status_code}: {response.text}")
                self.retries += 1
                await asyncio.sleep(0.05)
            i += 1
            await asyncio.sleep(0.02)


async def test_rolling_restart_behind_the_proxy_loses_and_doubles_nothing(running: Stack) -> None:
    stack = running
    cand = "roll"
    async with https_client(stack) as http:
        api = Api(http)
        thread = await agency_thread(api, cand)
        start = (await api.get(ORG, AGENT, f"/api/v1/candidates/{cand}")).json()["seq"]
        viewers = [Viewer(stack, user, cand, start) for user in VIEWERS]
        tasks = [asyncio.create_task(v.run(), name=f"viewer {v.user}") for v in viewers]
        sender = Sender(api, thread)
        sending = asyncio.create_task(sender.run(), name="sender")
        watch = (*tasks, sending)
        try:
            await wait_until(lambda: all(v.live for v in viewers), 15, "viewers subscribed", watch)
            await wait_until(
                lambda: all(len(v.events) >= 5 for v in viewers), 15, "first messages", watch
            )
            for name, other in (("a", "b"), ("b", "a")):
                node = stack.nodes[name]
                code = await asyncio.to_thread(node.terminate, 30)
                assert code == 0, f"exit status {code} after SIGTERM\n{stack.logs()}"
                progress = len(sender.acked)
                # Every viewer is now on the other process, subscribed again, and the sender
                # still gets its messages stored.
                total = len(viewers)

                async def moved(other: str = other, total: int = total) -> bool:
                    counts = await open_sockets_of(stack, other)
                    return counts == total and all(v.live for v in viewers)

                await wait_until(moved, 20, f"viewers to move to node {other}", watch)
                await wait_until(
                    lambda p=progress: len(sender.acked) >= p + 10, 20, "sends meanwhile", watch
                )
                mark = stack.edge.log_size()
                await asyncio.to_thread(node.launch)  # the same port as before
                await asyncio.to_thread(node.wait_ready)
                # nginx keeps a process that failed out of rotation for fail_timeout (5 s):
                # the next one is stopped only once the proxy answers from this one again.
                await wait_until(
                    lambda n=node, m=mark: stack.edge.answered_by(n.port, m),
                    20,
                    f"the proxy to send requests to the restarted node {name}",
                    watch,
                )
            progress = len(sender.acked)
            await wait_until(lambda: len(sender.acked) >= progress + 10, 20, "sends after", watch)
            sender.stopping = True
            await asyncio.wait_for(sending, 30)

            stored = await history(http, stack.edge.base_url, thread, org=ORG, user=AGENT)
            expected = [m["id"] for m in stored]
            await wait_until(
                lambda: all(len(v.events) >= len(stored) for v in viewers),
                20,
                "every viewer to catch up",
                watch,
            )
            await asyncio.sleep(0.5)  # anything doubled would arrive now
            closes = {v.user: list(v.closes) for v in viewers}
        finally:
            sender.stopping = True
            for task in (*tasks, sending):
                task.cancel()
            await asyncio.gather(*tasks, sending, return_exceptions=True)

    # The REST history: every send stored exactly once, in the order acknowledged.
    assert Counter(m["client_id"] for m in stored) == Counter(sender.client_ids)
    assert expected == [m["id"] for m in sender.acked]
    # Each viewer: every message exactly once, in seq order, across its reconnections.
    for viewer in viewers:
        got = [e["message"]["id"] for e in viewer.events]
        lost = set(expected) - set(got)
        doubled = [i for i, n in Counter(got).items() if n > 1]
        assert not lost and not doubled, (viewer.user, sorted(lost), doubled)
        assert got == expected, viewer.user
        assert [e["seq"] for e in viewer.events] == list(range(start + 1, start + 1 + len(got)))
        assert viewer.problems == [], viewer.problems
        # It was on a restarted process at least once, and every close was the restart's.
        assert closes[viewer.user] and set(closes[viewer.user]) == {1012}, closes
    print(
        f"ROLLING RESTART messages={len(stored)} sender_retries={sender.retries} "
        f"reconnections={ {v.user: v.connections - 1 for v in viewers} }"
    )


# --- d. the limits, at the proxy and at the server ------------------------------------------


@dataclass
class Answer:
    data: bytes  # what the peer sent before closing (or before its answer's head ended)
    seconds: float
    hung: bool  # neither an answer nor a close within the timeout

    @property
    def status(self) -> int:
        found = re.match(rb"HTTP/1\.[01] (\d{3}) ", self.data)
        assert found is not None, self.data[:300]
        return int(found.group(1))

    @property
    def dropped(self) -> bool:
        """Closed without an answer, or with 408 (Request Timeout)."""
        return not self.hung and (self.data == b"" or self.status == 408)


def exchange(
    port: int, payload: bytes, *, context: ssl.SSLContext | None, timeout: float
) -> Answer:
    """Sends `payload` on a new connection (TLS when `context` is given) and reads until the
    answer's head is complete or the peer closes, for at most `timeout` seconds."""
    started = time.monotonic()
    data = b""
    hung = False
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as raw:
        conn: socket.socket = (
            context.wrap_socket(raw, server_hostname="127.0.0.1") if context else raw
        )
        conn.settimeout(max(0.1, timeout - (time.monotonic() - started)))
        try:
            conn.sendall(payload)
            while b"\r\n\r\n" not in data:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
        except TimeoutError:
            hung = True
        except (ConnectionResetError, ssl.SSLEOFError):
            pass  # closed
    return Answer(data, time.monotonic() - started, hung)


def request_head(*headers: str) -> bytes:
    lines = ["GET /healthz HTTP/1.1", "Host: 127.0.0.1", *headers, "Connection: close"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


# nginx answers 400 (logged as 494); the server behind it would answer 431, so a 431 here
# would mean the proxy let the head through.
REFUSED_BY_PROXY = (400, 494)


def test_the_proxy_refuses_what_the_server_refuses_and_passes_the_rest(running: Stack) -> None:
    tls = running.edge.ssl_context()
    port = running.edge.https_port
    # A header line the server accepts (under 8 KiB) passes the proxy...
    ok = exchange(port, request_head("X-Fill: " + "a" * 7000), context=tls, timeout=5)
    assert not ok.hung and ok.status == 200, ok
    # ...one over 8 KiB, which the server refuses with 431, is refused here, at once.
    big = exchange(port, request_head("X-Big: " + "a" * 9000), context=tls, timeout=5)
    assert not big.hung and big.status in REFUSED_BY_PROXY, big
    # Three lines of 7,000 bytes: each under 8 KiB, together a head over 16 KiB.
    fill = [f"X-Fill-{i}: " + "a" * 7000 for i in range(3)]
    head = exchange(port, request_head(*fill), context=tls, timeout=5)
    assert not head.hung and head.status in REFUSED_BY_PROXY, head
    # A body over the server's 1 MiB is refused before it is sent.
    post = (
        b"POST /api/v1/threads/1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 2000000\r\n\r\n"
    )
    large = exchange(port, post, context=tls, timeout=5)
    assert not large.hung and large.status == 413, large


def test_the_server_refuses_an_oversized_header_line_directly(running: Stack) -> None:
    """Reached without the proxy, a server process refuses a header line over 8 KiB (431)."""
    port = running.nodes["a"].port
    ok = exchange(port, request_head("X-Fill: " + "a" * 7000), context=None, timeout=5)
    assert not ok.hung and ok.status == 200, ok
    big = exchange(port, request_head("X-Big: " + "a" * 9000), context=None, timeout=5)
    assert not big.hung, f"no answer within 5 s to a 9,000-byte header line: {big}"
    assert 400 <= big.status < 500, big


PARTIAL_HEAD = b"GET /healthz HTTP/1.1\r\nHost: x\r\n"  # and nothing more, ever


def test_an_incomplete_request_head_is_dropped_by_the_proxy_and_by_the_server(
    running: Stack,
) -> None:
    """client_header_timeout 10s at the proxy, AM_HANDSHAKE_TIMEOUT_SECONDS (default 10) at
    the server: a head that never completes is dropped within about ten seconds by each.
    Both wait at once, so that the test takes ten seconds, not twenty."""
    with ThreadPoolExecutor(2) as pool:
        at_proxy = pool.submit(
            exchange,
            running.edge.https_port,
            PARTIAL_HEAD,
            context=running.edge.ssl_context(),
            timeout=20,
        )
        at_server = pool.submit(
            exchange, running.nodes["b"].port, PARTIAL_HEAD, context=None, timeout=20
        )
        proxy, server = at_proxy.result(), at_server.result()
    assert proxy.dropped, f"the proxy kept an incomplete head for 20 s: {proxy}"
    # Dropped by the timeout, not refused at once.
    assert 5 <= proxy.seconds < 20, proxy
    assert server.dropped, f"the server kept an incomplete head for 20 s: {server}"
