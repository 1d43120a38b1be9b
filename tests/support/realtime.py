"""Helpers for live tests: an in-process uvicorn server and a WebSocket test client."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from collections.abc import AsyncIterator, Sequence
from typing import Any

import uvicorn
import websockets
from starlette.applications import Starlette

from harness.services import free_port
from server.edge.serving import uvicorn_config


@contextlib.asynccontextmanager
async def serve(
    app: Starlette, port: int | None = None, *, lifespan: str = "on"
) -> AsyncIterator[str]:
    """Serves `app` with uvicorn in this event loop; yields its base URL (http://…).
    Pass lifespan="off" for an app whose lifespan is already running."""
    port = port or free_port()
    # The product's own listener settings (connection guard, WebSocket options).
    config = uvicorn_config(
        app, "127.0.0.1", port, lifespan=lifespan, log_level="warning", log_config=None
    )
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
            raise RuntimeError("The test server stopped during start-up.")
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


def ws_url(base_url: str) -> str:
    """The socket URL of the server at `base_url` (http://…)."""
    return base_url.replace("http://", "ws://") + "/ws"


class WsClient:
    """A WebSocket client that files acks and errors by ref and queues every other frame.
    A subclass may override `_received` to see each frame as it arrives."""

    def __init__(self, socket: websockets.ClientConnection) -> None:
        self.socket = socket
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.frames: list[dict[str, Any]] = []
        self._answers: dict[Any, asyncio.Future[dict[str, Any]]] = {}
        self._refs = itertools.count(1)
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def connect(
        cls,
        base_url: str,
        token: str | None = None,
        *,
        subprotocols: Sequence[str] | None = None,
        **kwargs: Any,
    ) -> WsClient:
        """`subprotocols`: offered in the handshake (protocol.SUBPROTOCOL_V2 asks for
        protocol 2); other keywords go to websockets.connect."""
        headers = dict(kwargs.pop("headers", {}))
        if token is not None:
            headers["Authorization"] = f"Bearer {token}"
        socket = await websockets.connect(
            ws_url(base_url),
            additional_headers=headers,
            max_size=None,
            subprotocols=[websockets.Subprotocol(s) for s in subprotocols or ()] or None,
            **kwargs,
        )
        return cls(socket)

    @property
    def subprotocol(self) -> str | None:
        """The subprotocol the server answered with (None: protocol 1)."""
        return self.socket.subprotocol

    async def _read(self) -> None:
        with contextlib.suppress(websockets.ConnectionClosed):
            async for raw in self.socket:
                frame = json.loads(raw)
                self._received(frame)
                self.frames.append(frame)
                ref = frame.get("ref")
                if frame.get("type") in ("ack", "error", "pong") and ref in self._answers:
                    self._answers.pop(ref).set_result(frame)
                else:
                    await self.events.put(frame)

    def _received(self, frame: dict[str, Any]) -> None:
        """Called with each frame as it arrives, before it is filed; does nothing here."""

    async def request(self, op: str, timeout: float = 10.0, **fields: Any) -> dict[str, Any]:
        ref = next(self._refs)
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._answers[ref] = future
        await self.socket.send(json.dumps({"op": op, "ref": ref, **fields}))
        return await asyncio.wait_for(future, timeout)

    async def next_event(self, timeout: float = 5.0, type: str | None = None) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.events.get(), timeout)
            if type is None or frame.get("type") == type:
                return frame

    async def events_of(self, type: str, count: int, timeout: float = 10.0) -> list[dict[str, Any]]:
        return [await self.next_event(timeout, type) for _ in range(count)]

    def drain(self) -> list[dict[str, Any]]:
        out = []
        while not self.events.empty():
            out.append(self.events.get_nowait())
        return out

    async def quiet(self, seconds: float = 0.3) -> list[dict[str, Any]]:
        """Waits a moment and returns the frames that came meanwhile (expected: none)."""
        await asyncio.sleep(seconds)
        return self.drain()

    async def close(self) -> None:
        await self.socket.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
