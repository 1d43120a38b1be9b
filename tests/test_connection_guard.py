"""The connection layer under hostile clients: every request head and handshake is answered
in bounded time, whatever a client sends or fails to send.

Raw sockets against real `agency-messaging serve` processes (the listener as deployed):
oversized heads get 431 at once, heads that never complete get 408, the number of heads in
progress is capped (the longest waiting is dropped), per-address caps hold with and without
a trusted proxy, a slowloris crowd does not keep a normal client from chatting, and client
faults are not logged as server errors. Nothing here asserts a duration: a hang shows as a
read that times out, which fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from asgi_lifespan import LifespanManager

from harness.services import ServerProcess
from server.app import create_app
from server.domain.auth import make_user_token
from server.edge.guard import ConnectionGuard, scan_head
from server.edge.serving import ClientFaultFilter
from server.settings import ConfigError, GuardLimits, Settings, parse_networks
from tests.support.metrics import metric
from tests.support.realtime import WsClient, serve, ws_url
from tests.support.world import SECRET, SERVICE_TOKEN, Api, make_settings, populate_world

# Its tests share module-scoped fixtures: one worker runs them all.
pytestmark = pytest.mark.xdist_group("connection_guard")

UPGRADE = (
    b"GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
)
HEALTHZ = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n"
READ_BOUND = 20.0  # a read that takes longer than this means the server hung


# --- servers --------------------------------------------------------------------------------


def _start(sqlite_template: Path, workdir: Path, **env: str) -> ServerProcess:
    workdir.mkdir(parents=True, exist_ok=True)
    database = workdir / "guard.db"
    shutil.copyfile(sqlite_template, database)
    server = ServerProcess.start(
        {
            "AM_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
            "AM_SECRET": SECRET,
            "AM_SERVICE_TOKEN": SERVICE_TOKEN,
            "AM_VAR_DIR": str(workdir / "var"),
            "AM_SEND_RATE_PER_MINUTE": "0",
            "AM_LOG_LEVEL": "INFO",
            **env,
        },
        workdir,
    )
    server.wait_ready()

    async def provision() -> None:
        async with httpx.AsyncClient(base_url=server.url, timeout=20) as client:
            await populate_world(Api(client))

    asyncio.run(provision())
    return server


@pytest.fixture(scope="module")
def quick(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Default caps, a 2-second handshake timeout."""
    server = _start(
        sqlite_template, tmp_path_factory.mktemp("quick"), AM_HANDSHAKE_TIMEOUT_SECONDS="2"
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def capped(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Small caps; 127.0.0.1 plays the trusted proxy, 127.0.0.2-9 direct clients."""
    server = _start(
        sqlite_template,
        tmp_path_factory.mktemp("capped"),
        AM_HANDSHAKE_TIMEOUT_SECONDS="60",
        AM_MAX_PENDING_HANDSHAKES="20",
        AM_MAX_HANDSHAKES_PER_ADDRESS="5",
        AM_MAX_SOCKETS_PER_ADDRESS="3",
        AM_TRUSTED_PROXIES="127.0.0.1",
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def default(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """Every setting at its default (a 10-second handshake timeout)."""
    server = _start(sqlite_template, tmp_path_factory.mktemp("default"))
    try:
        yield server
    finally:
        server.stop()


# --- raw clients ------------------------------------------------------------------------------


class Raw:
    """A raw TCP client: writes bytes as they are, reads whatever comes back."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, server: ServerProcess, source: str = "127.0.0.1") -> Raw:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", server.port, local_addr=(source, 0), limit=1 << 20
        )
        return cls(reader, writer)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def answer(self, bound: float = READ_BOUND) -> bytes:
        """Everything the server sends until it closes the connection."""
        return await asyncio.wait_for(self.reader.read(), bound)

    async def response_head(self, bound: float = READ_BOUND) -> bytes:
        return await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), bound)

    def close(self) -> None:
        self.writer.close()


def status_of(answer: bytes) -> int:
    return int(answer.split(b" ", 2)[1])


def error_code(answer: bytes) -> str:
    body = answer.split(b"\r\n\r\n", 1)[1]
    code: str = orjson.loads(body)["error"]["code"]
    return code


async def exchange(server: ServerProcess, data: bytes, source: str = "127.0.0.1") -> bytes:
    raw = await Raw.open(server, source)
    try:
        await raw.send(data)
        return await raw.answer()
    finally:
        raw.close()


def token(user: str, org: str = "acme") -> str:
    return make_user_token(SECRET, org, user)


def refused_metric(server: ServerProcess, reason: str) -> float:
    return metric(server, f'am_connections_refused_total{{reason="{reason}"}}', READ_BOUND)


# --- oversized heads: 431 at once ---------------------------------------------------------


OVERSIZED = {
    "a 9,000-character Authorization on the upgrade": UPGRADE
    + b"Authorization: Bearer "
    + b"a" * 9000
    + b"\r\n\r\n",
    "a 9 KB Cookie on the upgrade": UPGRADE + b"Cookie: am_session=" + b"b" * 9216 + b"\r\n\r\n",
    "a 100 KB Cookie on plain HTTP": HEALTHZ + b"Cookie: " + b"c" * 100_000 + b"\r\n\r\n",
    "a 64 KB header line that never ends": HEALTHZ + b"X-Long: " + b"d" * 65536,
    "a 9 KB request line": b"GET /healthz?" + b"q" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "200 header fields on the upgrade": UPGRADE
    + b"".join(b"X-Field-%d: v\r\n" % i for i in range(200))
    + b"\r\n",
    "17 KB of head in three 6 KB lines": HEALTHZ
    + b"".join(b"X-Part-%d: " % i + b"e" * 6000 + b"\r\n" for i in range(3))
    + b"\r\n",
}


@pytest.mark.parametrize("request_bytes", OVERSIZED.values(), ids=list(OVERSIZED))
async def test_an_oversized_request_head_is_answered_431_at_once(
    quick: ServerProcess, request_bytes: bytes
) -> None:
    before = refused_metric(quick, "headers_too_large")
    answer = await exchange(quick, request_bytes)
    assert status_of(answer) == 431, answer[:200]
    assert error_code(answer) == "too_large"
    assert refused_metric(quick, "headers_too_large") == before + 1


async def test_an_oversized_header_sent_in_small_pieces_is_answered_431(
    quick: ServerProcess,
) -> None:
    raw = await Raw.open(quick)
    try:
        await raw.send(UPGRADE + b"Authorization: Bearer ")
        for _ in range(10):
            await raw.send(b"f" * 1000)
        answer = await raw.answer()
    finally:
        raw.close()
    assert status_of(answer) == 431


async def test_heads_within_the_limits_reach_the_endpoint(quick: ServerProcess) -> None:
    # An 8,000-character token is within the limits: refused as a bad token, not as too big.
    answer = await exchange(quick, UPGRADE + b"Authorization: Bearer " + b"a" * 8000 + b"\r\n\r\n")
    assert status_of(answer) == 403
    cookies = b"".join(b"Cookie: k%d=" % i + b"v" * 3000 + b"\r\n" for i in range(4))
    answer = await exchange(quick, HEALTHZ + cookies + b"Connection: close\r\n\r\n")
    assert status_of(answer) == 200


async def test_a_body_with_long_lines_is_not_taken_for_a_header(quick: ServerProcess) -> None:
    body = orjson.dumps({"name": "x" * 20_000})
    head = (
        b"PUT /api/v1/orgs/acme HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Authorization: Bearer " + SERVICE_TOKEN.encode() + b"\r\n"
        b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body)
    )
    answer = await exchange(quick, head + body)
    # Past the head, the body is the endpoint's business: it validates the name's length.
    assert status_of(answer) == 422, answer[:300]


# --- heads that never complete: 408 --------------------------------------------------------


async def test_a_partial_request_head_is_answered_408_and_closed(quick: ServerProcess) -> None:
    before = refused_metric(quick, "header_timeout")
    answer = await exchange(quick, HEALTHZ)
    assert status_of(answer) == 408
    assert error_code(answer) == "timeout"
    assert refused_metric(quick, "header_timeout") == before + 1


async def test_a_client_that_sends_nothing_is_answered_408_and_closed(
    quick: ServerProcess,
) -> None:
    raw = await Raw.open(quick)
    try:
        answer = await raw.answer()
    finally:
        raw.close()
    assert status_of(answer) == 408


async def test_a_head_trickled_byte_by_byte_is_cut_off(quick: ServerProcess) -> None:
    """Each byte arrives well within the timeout; the head as a whole does not."""
    raw = await Raw.open(quick)
    sent = 0

    async def trickle() -> None:
        nonlocal sent
        for byte in (HEALTHZ + b"X-Slow: " + b"s" * 1000)[: 1 << 20]:
            await raw.send(bytes([byte]))
            sent += 1
            await asyncio.sleep(0.2)

    trickler = asyncio.create_task(trickle())
    try:
        answer = await raw.response_head()
    finally:
        trickler.cancel()
        raw.close()
    assert status_of(answer) == 408
    assert sent < len(HEALTHZ) + 1008  # cut off before it could finish


async def test_the_second_request_on_a_kept_alive_connection_is_bounded_too(
    quick: ServerProcess,
) -> None:
    raw = await Raw.open(quick)
    try:
        await raw.send(HEALTHZ + b"\r\n")
        first = await raw.response_head()
        assert status_of(first) == 200
        await raw.reader.readexactly(int(_header(first, b"content-length")))
        await raw.send(HEALTHZ)  # the next head starts and stalls
        answer = await raw.answer()
    finally:
        raw.close()
    assert status_of(answer) == 408


async def test_a_body_that_does_not_arrive_in_time_closes_the_connection(
    quick: ServerProcess,
) -> None:
    raw = await Raw.open(quick)
    try:
        await raw.send(
            b"POST /api/v1/candidates/c1/threads HTTP/1.1\r\nHost: x\r\n"
            b"Authorization: Bearer " + token("coord").encode() + b"\r\n"
            b'Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{"kind"'
        )
        answer = await raw.answer()
    finally:
        raw.close()
    assert answer == b""  # closed without an answer: the request never arrived
    log = quick.log()
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def _header(head: bytes, name: bytes) -> bytes:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name:
            return value.strip()
    raise AssertionError(f"no {name!r} in {head!r}")


# --- the cap on heads in progress --------------------------------------------------------------


async def test_at_the_cap_the_longest_waiting_head_is_dropped_to_make_room(
    capped: ServerProcess,
) -> None:
    # 127.0.0.1 is the trusted proxy here: its connections count toward the process-wide
    # cap of 20 only, not toward an address's. The server takes connections in the order
    # they were opened.
    held = [await _held(capped) for _ in range(25)]
    try:
        for raw in held[:5]:
            assert status_of(await raw.answer()) == 408
        # A client that sends its request at once is served all the same.
        answer = await exchange(capped, HEALTHZ + b"Connection: close\r\n\r\n")
        assert status_of(answer) == 200
        assert status_of(await held[5].answer()) == 408
        await asyncio.sleep(0.3)  # the others stay: nothing more arrives for them
        assert all(not raw.reader.at_eof() and not raw.reader._buffer for raw in held[6:])
    finally:
        for raw in held:
            raw.close()


async def _held(server: ServerProcess, source: str = "127.0.0.1") -> Raw:
    """A connection that has begun its request head and stalls."""
    raw = await Raw.open(server, source)
    await raw.send(b"GET /healthz HTTP/1.1\r\n")
    return raw


# --- per-address caps --------------------------------------------------------------------------


async def test_handshakes_in_progress_are_capped_per_address(capped: ServerProcess) -> None:
    before = refused_metric(capped, "address_handshakes")
    held = [await Raw.open(capped, "127.0.0.2") for _ in range(5)]
    try:
        for raw in held:
            await raw.send(b"GET /healthz HTTP/1.1\r\n")
        answer = await exchange(capped, HEALTHZ + b"\r\n", source="127.0.0.2")
        assert status_of(answer) == 429
        assert error_code(answer) == "rate_limited"
        # Another address is not affected.
        answer = await exchange(capped, HEALTHZ + b"Connection: close\r\n\r\n", "127.0.0.3")
        assert status_of(answer) == 200
        # A head that completes frees its place.
        await held[0].send(b"Host: x\r\nConnection: close\r\n\r\n")
        assert status_of(await held[0].answer()) == 200
        answer = await exchange(capped, HEALTHZ + b"Connection: close\r\n\r\n", "127.0.0.2")
        assert status_of(answer) == 200
    finally:
        for raw in held:
            raw.close()
    assert refused_metric(capped, "address_handshakes") >= before + 1


async def _socket(
    server: ServerProcess, user: str, source: str, **headers: str
) -> websockets.ClientConnection:
    return await websockets.connect(
        ws_url(server.url),
        additional_headers={"Authorization": f"Bearer {token(user)}", **headers},
        local_addr=(source, 0),
    )


async def _refused_with_4029(socket: websockets.ClientConnection) -> dict[str, Any]:
    frame = orjson.loads(await asyncio.wait_for(socket.recv(), READ_BOUND))
    with pytest.raises(websockets.ConnectionClosed):
        await asyncio.wait_for(socket.recv(), READ_BOUND)
    assert socket.close_code == 4029
    result: dict[str, Any] = frame
    return result


async def _open_and_usable(socket: websockets.ClientConnection) -> None:
    await socket.send(orjson.dumps({"op": "ping", "ref": 1}).decode())
    frame = orjson.loads(await asyncio.wait_for(socket.recv(), READ_BOUND))
    while frame.get("type") != "pong":
        frame = orjson.loads(await asyncio.wait_for(socket.recv(), READ_BOUND))


@contextlib.asynccontextmanager
async def _sockets() -> AsyncIterator[list[websockets.ClientConnection]]:
    opened: list[websockets.ClientConnection] = []
    try:
        yield opened
    finally:
        for socket in opened:
            await socket.close()


async def test_open_sockets_are_capped_per_address(capped: ServerProcess) -> None:
    async with _sockets() as opened:
        for user in ("coord", "mem", "ann"):
            opened.append(await _socket(capped, user, "127.0.0.4"))
            await _open_and_usable(opened[-1])
        extra = await _socket(capped, "coord", "127.0.0.4")
        frame = await _refused_with_4029(extra)
        assert frame["code"] == "rate_limited"
        assert "address" in frame["message"]
        opened.append(await _socket(capped, "coord", "127.0.0.5"))  # another address
        await _open_and_usable(opened[-1])
        await opened.pop(0).close()
        again = await _poll_for_a_socket(capped, "coord", "127.0.0.4")
        opened.append(again)


async def _poll_for_a_socket(
    server: ServerProcess, user: str, source: str
) -> websockets.ClientConnection:
    """The server frees a socket's place when it has seen the close: retry until then."""
    for _ in range(100):
        socket = await _socket(server, user, source)
        try:
            await _open_and_usable(socket)
            return socket
        except websockets.ConnectionClosed:
            await asyncio.sleep(0.05)
    raise AssertionError("the freed place was never given to a new socket")


async def test_behind_a_trusted_proxy_the_forwarded_address_is_capped(
    capped: ServerProcess,
) -> None:
    async with _sockets() as opened:
        for user in ("coord", "mem", "ann"):
            opened.append(
                await _socket(capped, user, "127.0.0.1", **{"X-Forwarded-For": "203.0.113.5"})
            )
            await _open_and_usable(opened[-1])
        extra = await _socket(capped, "mem", "127.0.0.1", **{"X-Forwarded-For": "203.0.113.5"})
        assert (await _refused_with_4029(extra))["code"] == "rate_limited"
        # Another client behind the same proxy has places of its own.
        opened.append(
            await _socket(capped, "mem", "127.0.0.1", **{"X-Forwarded-For": "203.0.113.6"})
        )
        await _open_and_usable(opened[-1])


async def test_an_untrusted_peer_cannot_spread_itself_over_forged_addresses(
    capped: ServerProcess,
) -> None:
    async with _sockets() as opened:
        for n, user in enumerate(("coord", "mem", "ann")):
            forged = {"X-Forwarded-For": f"198.51.100.{n + 1}"}
            opened.append(await _socket(capped, user, "127.0.0.6", **forged))
            await _open_and_usable(opened[-1])
        extra = await _socket(capped, "mem", "127.0.0.6", **{"X-Forwarded-For": "198.51.100.9"})
        assert (await _refused_with_4029(extra))["code"] == "rate_limited"


# --- the WebSocket handshake is bounded too --------------------------------------------------


async def test_a_websocket_handshake_that_cannot_finish_in_time_is_refused_with_503(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = tmp_path / "slow.db"
    shutil.copyfile(sqlite_template, database)
    settings = make_settings(
        f"sqlite+aiosqlite:///{database}", tmp_path, handshake_timeout_seconds=0.5
    )
    app = create_app(settings, auto_migrate=False)
    stalled = asyncio.Event()

    async def stalled_authentication(*args: Any, **kwargs: Any) -> Any:
        stalled.set()
        await asyncio.Event().wait()  # a database that never answers

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            await populate_world(Api(c))
        monkeypatch.setattr("server.edge.ws.authenticate_token", stalled_authentication)
        async with serve(app, lifespan="off") as url:
            with pytest.raises(websockets.InvalidStatus) as caught:
                await websockets.connect(
                    ws_url(url),
                    additional_headers={"Authorization": f"Bearer {token('coord')}"},
                )
        assert stalled.is_set()
        response = caught.value.response
        assert response.status_code == 503
        assert orjson.loads(response.body)["error"]["code"] == "unavailable"
        guard: ConnectionGuard = app.state.guard
        assert len(guard.handshakes) == 0 and len(guard.sockets) == 0  # nothing held on to


async def test_a_handshake_abandoned_by_its_client_stops_and_its_retry_reads_nothing_again(
    sqlite_template: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A client that gives up mid-handshake and retries must not leave the server doing
    each attempt to the end: the abandoned handshake stops at once, and the retry joins the
    user's unread read still in flight instead of starting another."""
    database = tmp_path / "abandoned.db"
    shutil.copyfile(sqlite_template, database)
    app = create_app(make_settings(f"sqlite+aiosqlite:///{database}", tmp_path), auto_migrate=False)
    started, release = asyncio.Event(), asyncio.Event()
    reads = 0
    real_snapshot: Any = None

    async def slow_snapshot(connection: Any) -> Any:
        nonlocal reads
        reads += 1
        started.set()
        await release.wait()  # a database that takes its time
        return await real_snapshot(connection)

    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            await populate_world(Api(c))
        hub = app.state.services.realtime.hub
        guard: ConnectionGuard = app.state.guard
        real_snapshot = hub.source.unread_snapshot
        monkeypatch.setattr(hub.source, "unread_snapshot", slow_snapshot)
        async with serve(app, lifespan="off") as url:
            port = int(url.rsplit(":", 1)[1])
            _, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(
                UPGRADE.replace(b"127.0.0.1", b"127.0.0.1:%d" % port)
                + b"Authorization: Bearer "
                + token("coord").encode()
                + b"\r\n\r\n"
            )
            await asyncio.wait_for(started.wait(), READ_BOUND)  # the server is at work
            writer.close()  # the client gives up
            for _ in range(500):  # the handshake stops: no connection, no places held
                if not hub.users and not len(guard.handshakes):
                    break
                await asyncio.sleep(0.01)
            assert not hub.users and len(guard.handshakes) == 0 and len(guard.sockets) == 0
            # The retry waits for the read in flight; once it is in, the socket is served.
            retry = asyncio.create_task(WsClient.connect(url, token("coord")))
            for _ in range(500):
                if hub.users:
                    break
                await asyncio.sleep(0.01)
            assert hub.users and not retry.done()
            release.set()
            client = await asyncio.wait_for(retry, READ_BOUND)
            try:
                assert (await client.request("ping"))["type"] == "pong"
            finally:
                await client.close()
            assert reads == 1


# --- slowloris ------------------------------------------------------------------------------


async def test_a_thousand_slow_clients_do_not_keep_a_normal_client_from_chatting(
    default: ServerProcess,
) -> None:
    sources = [f"127.0.1.{n}" for n in range(1, 11)]
    slow = [await Raw.open(default, sources[n % 10]) for n in range(1000)]
    stop = asyncio.Event()

    async def trickle(raw: Raw) -> None:
        with contextlib.suppress(ConnectionError):
            await raw.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ")
            while not stop.is_set() and not raw.reader.at_eof():
                await raw.send(b"s")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 1.0)

    tricklers = [asyncio.create_task(trickle(raw)) for raw in slow]
    try:
        assert not any(raw.reader.at_eof() for raw in slow)  # all held open by the server
        # A normal client: REST, a socket, a conversation with live delivery.
        async with httpx.AsyncClient(base_url=default.url, timeout=READ_BOUND) as client:
            api = Api(client)
            assert (await api.get("acme", "coord", "/api/v1/me")).status_code == 200
            thread = await api.open_thread("acme", "ann", "c1", {"private": False})
            viewer = await WsClient.connect(default.url, api.token("acme", "ann"))
            writer = await WsClient.connect(default.url, api.token("acme", "coord"))
            try:
                ack = await viewer.request("subscribe", candidate="c1")
                assert ack["type"] == "ack"
                sent = await writer.request("send", thread=thread["id"], body="Still here?")
                assert sent["type"] == "ack"
                event = await viewer.next_event(READ_BOUND, "message.created")
                assert event["message"]["body"] == "Still here?"
            finally:
                await viewer.close()
                await writer.close()
        # The crowd is cut off by the handshake timeout, each with a 408.
        answers = await asyncio.gather(*(raw.answer(60) for raw in slow))
        assert all(status_of(answer) == 408 for answer in answers)
    finally:
        stop.set()
        await asyncio.gather(*tricklers, return_exceptions=True)
        for raw in slow:
            raw.close()


# --- log levels ---------------------------------------------------------------------------------


async def test_invalid_utf8_closes_with_1007_and_is_not_logged_as_an_error(
    quick: ServerProcess,
) -> None:
    socket = await _socket(quick, "coord", "127.0.0.1")
    await socket.send(b'{"op": "ping", "x": "\xff\xfe"}', text=True)
    with pytest.raises(websockets.ConnectionClosed):
        while True:
            await asyncio.wait_for(socket.recv(), READ_BOUND)
    assert socket.close_code == 1007
    log = quick.log()
    assert "INFO uvicorn.error: Invalid UTF-8 sequence received from client." in log
    assert "Traceback" not in log and " ERROR " not in log, log[-3000:]


def test_client_fault_records_become_info_without_a_traceback() -> None:
    record = logging.LogRecord(
        "uvicorn.error",
        logging.ERROR,
        __file__,
        1,
        "Invalid UTF-8 sequence received from client.",
        None,
        (ValueError, ValueError(), None),
    )
    assert ClientFaultFilter().filter(record)
    assert record.levelno == logging.INFO and record.exc_info is None
    other = logging.LogRecord(
        "uvicorn.error", logging.ERROR, __file__, 1, "Exception in ASGI application", None, None
    )
    ClientFaultFilter().filter(other)
    assert other.levelno == logging.ERROR


# --- the pure parts -----------------------------------------------------------------------------


def test_scan_head_measures_lines_across_chunks_and_stops_at_the_head_end() -> None:
    assert scan_head(0, b"GET / HTTP/1.1\r\nHost: x\r\n", 20) == (True, 0)
    assert scan_head(0, b"X-A: 12345", 20) == (True, 10)
    assert scan_head(10, b"6789012345", 20) == (True, 20)
    assert scan_head(20, b"6", 20)[0] is False
    assert scan_head(0, b"X: 1\r\n\r\n" + b"b" * 100, 20) == (True, 0)  # the body is not read
    assert scan_head(0, b"\r", 20) == (True, 1)
    assert scan_head(1, b"\n" + b"b" * 100, 20) == (True, 0)  # "\r" + "\n": the end


class _Pending:
    def __init__(self) -> None:
        self.dropped = False

    def drop_pending(self) -> None:
        self.dropped = True


def test_the_guard_drops_the_oldest_head_and_keeps_address_counts_exact() -> None:
    reasons: list[str] = []
    guard = ConnectionGuard(
        GuardLimits(max_pending_handshakes=2, max_handshakes_per_address=2),
        on_refused=reasons.append,
    )
    first, second, third = _Pending(), _Pending(), _Pending()
    assert guard.begin_head(first, "192.0.2.1")
    assert guard.begin_head(second, "192.0.2.1")
    assert not guard.begin_head(_Pending(), "192.0.2.1")  # that address's cap
    assert guard.begin_head(third, "192.0.2.2")  # the global cap: `first` makes room
    assert first.dropped and not second.dropped and guard.pending == 2
    guard.forget_head("192.0.2.1")  # what the dropped protocol does
    guard.end_head(second, "192.0.2.1")
    guard.end_head(second, "192.0.2.1")  # twice: counted once
    guard.end_head(third, "192.0.2.2")
    assert guard.pending == 0 and len(guard.handshakes) == 0
    assert reasons == ["address_handshakes", "pending_cap"]


def test_trusted_proxies_are_addresses_and_networks() -> None:
    guard = ConnectionGuard(GuardLimits(trusted_proxies=parse_networks("10.0.0.0/8, ::1")))
    assert guard.is_trusted_proxy("10.1.2.3") and guard.is_trusted_proxy("::1")
    assert not guard.is_trusted_proxy("11.0.0.1")
    assert not guard.is_trusted_proxy("unix-socket") and not guard.is_trusted_proxy(None)
    assert not ConnectionGuard().is_trusted_proxy("127.0.0.1")  # none trusted by default


def test_the_connection_settings_are_read_and_checked() -> None:
    env = {"AM_SECRET": SECRET, "AM_SERVICE_TOKEN": SERVICE_TOKEN}
    settings = Settings.from_env(
        {**env, "AM_TRUSTED_PROXIES": "10.0.0.0/8,192.0.2.7", "AM_MAX_SOCKETS_PER_ADDRESS": "9"}
    )
    limits = settings.guard_limits
    assert [str(n) for n in limits.trusted_proxies] == ["10.0.0.0/8", "192.0.2.7/32"]
    assert limits.max_sockets_per_address == 9 and limits.handshake_timeout_seconds == 10.0
    assert Settings.from_env(env).guard_limits == GuardLimits()
    with pytest.raises(ConfigError, match=r"AM_TRUSTED_PROXIES holds 'proxy\.local'"):
        Settings.from_env({**env, "AM_TRUSTED_PROXIES": "proxy.local"})
    with pytest.raises(ConfigError, match="AM_HANDSHAKE_TIMEOUT_SECONDS"):
        Settings.from_env({**env, "AM_HANDSHAKE_TIMEOUT_SECONDS": "0"})
    with pytest.raises(ConfigError, match="AM_MAX_PENDING_HANDSHAKES"):
        Settings.from_env({**env, "AM_MAX_PENDING_HANDSHAKES": "many"})
