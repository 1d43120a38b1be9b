"""Frames written straight to the transport (server/edge/direct.py, server/edge/ws.py).

Over a real uvicorn, each live test runs twice: with our protocol, which offers the app the
direct writer, and with uvicorn's own (`websockets-sansio`), where the app falls back to
its queue and writer. Frames must arrive whole and in order either way: written at once,
queued behind a transport that a client stopped draining, or both in turn; a client that
never reads again is closed as too slow without holding up anyone else.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import shutil
import socket
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
import websockets
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode

from channels.connection import Connection, ConnectionLimits
from channels.protocol import CLOSE_CLIENT_GONE, CLOSE_TOO_SLOW
from harness.services import free_port
from server.app import create_app
from server.edge import direct
from server.edge.direct import DIRECT, DirectWebSocketProtocol, Flag, FrameCache, Inbox
from server.edge.serving import uvicorn_config
from tests.support.realtime import WsClient, ws_url
from tests.support.world import Api, make_settings, populate_world

# 4-byte characters: 20 KB frames, so that a few hundred fill any loopback buffering.
BIG = "\N{GRINNING FACE}" * 4996

# --- the frame bytes --------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_a_text_frame_is_what_websockets_would_send(length: int) -> None:
    text = ("é" * length)[:length]  # 2-byte characters: the length is in bytes
    expected = Frame(Opcode.TEXT, text.encode()).serialize(mask=False)
    assert direct.text_frame(text) == expected


def test_a_frame_object_is_encoded_once_for_all_its_recipients() -> None:
    cache = FrameCache()
    frame = json.dumps({"type": "message.created", "body": "x" * 200})
    first = cache.encode(frame)
    assert cache.encode(frame) is first  # the same object: the same bytes, not encoded again
    twin = "".join(list(frame))  # equal, but another object
    assert twin is not frame and cache.encode(twin) == first
    assert cache.encode("other") == direct.text_frame("other")


# --- the lighter queue and flag ---------------------------------------------------------


async def test_the_inbox_hands_items_in_order_and_a_cancelled_get_loses_none() -> None:
    inbox = Inbox()
    getting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    getting.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await getting
    waiting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"type": "websocket.receive", "text": "1"})
    inbox.put_nowait({"type": "websocket.receive", "text": "2"})
    assert (await asyncio.wait_for(waiting, 5))["text"] == "1"
    assert not inbox.empty()
    assert (await inbox.get())["text"] == "2" and inbox.empty()


async def test_an_item_put_as_its_getter_is_cancelled_stays_for_the_next_get() -> None:
    inbox = Inbox()
    getting = asyncio.create_task(inbox.get())
    await asyncio.sleep(0)
    inbox.put_nowait({"type": "websocket.disconnect", "code": 1000})
    getting.cancel()  # woken, but cancelled before it ran
    with contextlib.suppress(asyncio.CancelledError):
        await getting
    assert (await asyncio.wait_for(inbox.get(), 5))["type"] == "websocket.disconnect"


async def test_the_flag_wakes_every_waiter_when_set() -> None:
    flag = Flag()
    assert flag.is_set() and await flag.wait()
    flag.clear()
    waiters = [asyncio.create_task(flag.wait()) for _ in range(3)]
    await asyncio.sleep(0)
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.wait_for(asyncio.gather(*waiters), 5) == [True] * 3


# --- what the protocol relies on in uvicorn (pinned in pyproject.toml) ------------------


def test_uvicorn_uses_only_what_the_lighter_queue_and_flag_offer() -> None:
    source = inspect.getsource(WebSocketsSansIOProtocol)
    assert _methods_used(source, "queue") == {"put_nowait", "get", "empty"}
    assert _methods_used(source, "writable") == {"set", "clear", "wait"}
    assert "self.queue: asyncio.Queue" in source and "self.writable = asyncio.Event()" in source


def test_uvicorn_reads_the_handshake_response_only_to_answer_the_handshake() -> None:
    for name, method in inspect.getmembers(WebSocketsSansIOProtocol, inspect.isfunction):
        if name not in ("handle_connect", "send"):
            assert "self.response" not in inspect.getsource(method), name
    send = inspect.getsource(WebSocketsSansIOProtocol.send)
    accept = send.split('if message["type"] == "websocket.accept":')[1].split("elif")[0]
    assert send.count("self.response") == accept.count("self.response")


def test_the_protocol_overrides_only_methods_uvicorn_has() -> None:
    ours = {n for n, v in vars(DirectWebSocketProtocol).items() if callable(v)}
    assert ours - {"write_text"} <= set(dir(WebSocketsSansIOProtocol))
    for name in ours - {"write_text", "__init__"}:
        theirs = inspect.signature(getattr(WebSocketsSansIOProtocol, name))
        mine = inspect.signature(getattr(DirectWebSocketProtocol, name))
        assert list(theirs.parameters) == list(mine.parameters), name


def _methods_used(source: str, attribute: str) -> set[str]:
    """The names called on `self.<attribute>` in `source`."""
    marker = f"self.{attribute}."
    return {part.split("(")[0] for part in source.split(marker)[1:]}


# --- a live server, with our protocol or uvicorn's --------------------------------------


@dataclass
class Served:
    app: Starlette
    api: Api
    url: str
    server: uvicorn.Server
    direct: bool  # our protocol: the app writes frames straight to the transport

    def connections(self) -> set[Connection]:
        hub = self.app.state.services.realtime.hub
        return {conn for conns in hub.users.values() for conn in conns}

    def protocol_of(self, client: socket.socket) -> Any:
        """The server's WebSocket protocol for the client socket `client`."""
        address = client.getsockname()
        found = [
            p
            for p in self.server.server_state.connections
            if isinstance(p, WebSocketsSansIOProtocol) and p.client == address
        ]
        assert len(found) == 1
        return found[0]


@pytest.fixture(params=["direct", "stock"])
def ws_protocol(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sqlite_url(sqlite_template: Path, tmp_path: Path) -> str:
    """The transport does not depend on the database: SQLite only."""
    path = tmp_path / "direct.db"
    shutil.copyfile(sqlite_template, path)
    return f"sqlite+aiosqlite:///{path}"


@contextlib.asynccontextmanager
async def served(
    db_url: str,
    tmp_path: Path,
    ws_protocol: str,
    *,
    limits: ConnectionLimits | None = None,
    **config: Any,
) -> AsyncIterator[Served]:
    settings = make_settings(db_url, tmp_path, max_connections_per_user=0)
    app = create_app(settings, auto_migrate=False, limits=limits)
    ws: Any = DirectWebSocketProtocol if ws_protocol == "direct" else "websockets-sansio"
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            api = await populate_world(Api(client))
            port = free_port()
            options = {"lifespan": "off", "log_level": "warning", "ws": ws, **config}
            server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", port, **options))
            task = asyncio.create_task(server.serve())
            while not server.started:
                assert not task.done(), "the server stopped during start-up"
                await asyncio.sleep(0.02)
            try:
                yield Served(app, api, f"http://127.0.0.1:{port}", server, ws_protocol == "direct")
            finally:
                server.should_exit = True
                await asyncio.wait_for(task, 30)


async def eventually(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    """Waits for `condition`, polling; fails after `timeout` seconds (a liveness bound)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():
        if loop.time() > deadline:
            pytest.fail("The condition was not met in time.")
        await asyncio.sleep(0.02)


async def new_connection(s: Served, before: set[Connection]) -> Connection:
    await eventually(lambda: len(s.connections() - before) == 1)
    (conn,) = s.connections() - before
    assert (conn.direct is not None) is s.direct
    return conn


async def reluctant_reader(s: Served, user: str) -> tuple[Any, socket.socket]:
    """A client socket with a tiny receive buffer, which reads only when told to."""
    raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    raw.connect(("127.0.0.1", int(s.url.rsplit(":", 1)[1])))
    client = await websockets.connect(
        ws_url(s.url),
        sock=raw,
        additional_headers={"Authorization": f"Bearer {s.api.token('acme', user)}"},
        max_queue=1,
        max_size=None,
        compression=None,
        ping_interval=None,
    )
    return client, raw


async def recv(client: Any) -> dict[str, Any]:
    frame: dict[str, Any] = json.loads(await asyncio.wait_for(client.recv(), 30))
    return frame


def writer_idle(conn: Connection) -> bool:
    """No writer task runs for the connection (ws.py's _Socket, behind `wake`)."""
    assert conn.wake is not None
    writer = conn.wake.__self__.writer  # type: ignore[attr-defined]
    return writer is None or bool(writer.done())


async def test_frames_queued_behind_a_paused_transport_keep_their_order(
    sqlite_url: str, tmp_path: Path, ws_protocol: str
) -> None:
    async with served(sqlite_url, tmp_path, ws_protocol) as s:
        thread = await s.api.open_thread("acme", "ann", "c1", {"private": False})
        before = s.connections()
        client, raw = await reluctant_reader(s, "coord")
        try:
            conn = await new_connection(s, before)
            await client.send(json.dumps({"op": "subscribe", "candidate": "c1", "ref": 1}))
            assert (await recv(client))["type"] == "ack"
            protocol = s.protocol_of(raw)

            # The client reads no more: sends go out until the server's transport pauses,
            # then a few more queue behind it.
            bodies: list[str] = []

            async def send() -> None:
                bodies.append(f"{len(bodies):04d}{BIG}")
                await s.api.send("acme", "ann", thread["id"], bodies[-1])

            while protocol.writable.is_set():
                assert len(bodies) < 2000, "the transport never paused"
                await send()
            for _ in range(3):
                await send()
            await eventually(lambda: conn.queued >= 3)

            # An op answered now: its ack queues behind the events, however writable the
            # transport may be by the time it is sent.
            await client.send(json.dumps({"op": "ping", "ref": "late"}))
            await eventually(lambda: any('"pong"' in f for f in conn._queue))

            frames = []
            while not frames or frames[-1]["type"] != "pong":
                frames.append(await recv(client))
            events = [f for f in frames if f["type"] == "message.created"]
            assert [e["message"]["body"] for e in events] == bodies  # whole, all, in order
            seqs = [e["seq"] for e in events]
            assert seqs == list(range(seqs[0], seqs[0] + len(bodies)))
            assert frames[-1]["ref"] == "late"

            # Drained: the next frames go out at once again, and no writer is left running.
            await eventually(lambda: conn.queued == 0 and writer_idle(conn))
            await s.api.send("acme", "ann", thread["id"], "after")
            while (frame := await recv(client))["type"] != "message.created":
                pass
            assert frame["message"]["body"] == "after" and frame["seq"] == seqs[-1] + 1
        finally:
            await client.close()


async def test_a_client_that_stops_reading_is_closed_as_too_slow_and_others_go_on(
    sqlite_url: str, tmp_path: Path, ws_protocol: str
) -> None:
    limits = ConnectionLimits(send_queue_frames=8)
    async with served(sqlite_url, tmp_path, ws_protocol, limits=limits) as s:
        thread = await s.api.open_thread("acme", "ann", "c1", {"private": False})
        fast = await WsClient.connect(s.url, s.api.token("acme", "mem"))
        assert (await fast.request("subscribe", candidate="c1"))["type"] == "ack"
        before = s.connections()
        slow, _ = await reluctant_reader(s, "coord")
        try:
            conn = await new_connection(s, before)
            await slow.send(json.dumps({"op": "subscribe", "candidate": "c1", "ref": 1}))
            assert (await recv(slow))["type"] == "ack"
            ids = []
            while conn.close_code is None:
                assert len(ids) < 2000, "the slow client was never closed"
                ids.append((await s.api.send("acme", "ann", thread["id"], BIG))["id"])
            assert conn.close_code == CLOSE_TOO_SLOW and conn.queued == 0
            received = await fast.events_of("message.created", len(ids), timeout=60)
            assert [e["message"]["id"] for e in received] == ids
            assert (await fast.request("ping"))["type"] == "pong"
            # The slow socket's writer is given up on after its grace; the hub lets it go.
            await eventually(lambda: conn not in s.connections())
        finally:
            slow.transport.abort()
            await fast.close()


async def test_many_sockets_of_one_user_get_a_concurrent_burst_in_order(
    sqlite_url: str, tmp_path: Path, ws_protocol: str
) -> None:
    async with served(sqlite_url, tmp_path, ws_protocol) as s:
        thread = await s.api.open_thread("acme", "ann", "c1", {"private": False})
        token = s.api.token("acme", "mem")
        tabs = await asyncio.gather(*(WsClient.connect(s.url, token) for _ in range(16)))
        try:
            acks = await asyncio.gather(*(t.request("subscribe", candidate="c1") for t in tabs))
            assert all(ack["type"] == "ack" for ack in acks)
            # Messages sent at once, while every tab also asks for pongs.
            sends = [s.api.send("acme", "ann", thread["id"], f"m{i}") for i in range(40)]
            pings = [t.request("ping") for t in tabs for _ in range(3)]
            results = await asyncio.gather(*sends, *pings)
            assert all(r["type"] == "pong" for r in results[40:])
            ids = sorted(r["id"] for r in results[:40])
            for tab in tabs:
                events = await tab.events_of("message.created", 40, timeout=60)
                seqs = [e["seq"] for e in events]
                assert seqs == list(range(seqs[0], seqs[0] + 40))
                assert [e["message"]["id"] for e in events] == ids  # ids follow the seqs
        finally:
            await asyncio.gather(*(t.close() for t in tabs))


async def test_pings_pongs_and_the_close_handshake_around_direct_writes(
    sqlite_url: str, tmp_path: Path, ws_protocol: str
) -> None:
    # The server pings every 50 ms while frames are written.
    async with served(sqlite_url, tmp_path, ws_protocol, ws_ping_interval=0.05) as s:
        thread = await s.api.open_thread("acme", "ann", "c1", {"private": False})
        before = s.connections()
        client = await WsClient.connect(s.url, s.api.token("acme", "mem"), ping_interval=None)
        conn = await new_connection(s, before)
        assert (await client.request("subscribe", candidate="c1"))["type"] == "ack"
        bodies = [f"{i:02d}{BIG}" for i in range(30)]
        for body in bodies:
            await s.api.send("acme", "ann", thread["id"], body)
            await asyncio.sleep(0.01)
        events = await client.events_of("message.created", len(bodies), timeout=60)
        assert [e["message"]["body"] for e in events] == bodies
        pong = await client.socket.ping()  # the client's ping, answered by the server
        await asyncio.wait_for(pong, 10)

        # Closed by the server: what was sent before the close arrives, then the close.
        (sub,) = conn.subscriptions.values()
        await s.api.send("acme", "ann", thread["id"], "last")
        await eventually(lambda: sub.last_seq > events[-1]["seq"])  # handed to the socket
        conn.close(4001, "bye")
        await asyncio.wait_for(client.socket.wait_closed(), 10)
        assert (client.socket.close_code, client.socket.close_reason) == (4001, "bye")
        assert client.frames[-1]["type"] in ("message.created", "unread")
        assert [f["message"]["body"] for f in client.frames if "message" in f][-1] == "last"
        await client.close()
        await eventually(lambda: conn not in s.connections())


async def test_a_client_that_closes_gets_its_close_answered(
    sqlite_url: str, tmp_path: Path, ws_protocol: str
) -> None:
    async with served(sqlite_url, tmp_path, ws_protocol) as s:
        before = s.connections()
        client = await WsClient.connect(s.url, s.api.token("acme", "mem"))
        conn = await new_connection(s, before)
        assert (await client.request("ping"))["type"] == "pong"
        await asyncio.wait_for(client.socket.close(), 10)
        assert client.socket.close_code == 1000  # the server echoed the close frame
        await eventually(lambda: conn not in s.connections())
        assert conn.close_code == CLOSE_CLIENT_GONE


async def test_the_extension_is_offered_only_by_our_protocol(
    sqlite_url: str, tmp_path: Path, ws_protocol: str
) -> None:
    async with served(sqlite_url, tmp_path, ws_protocol) as s:
        before = s.connections()
        client = await WsClient.connect(s.url, s.api.token("acme", "mem"))
        conn = await new_connection(s, before)  # checks conn.direct against the protocol
        assert (conn.direct is not None) == (ws_protocol == "direct")
        assert DIRECT == "agency-messaging.direct"
        await client.close()
