"""WebSocket helpers shared by tests/test_ws_protocol.py and tests/test_security.py: a
server with settings of its own, the socket URL, hand-made user tokens, and what a refused
handshake or a server-closed socket came back with."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from asgi_lifespan import LifespanManager
from starlette.applications import Starlette

from channels.connection import ConnectionLimits
from server.app import create_app
from tests.support.metrics import metric_value
from tests.support.realtime import WsClient, serve, ws_url
from tests.support.world import SECRET, Api, make_settings, populate_world


@dataclass
class Server:
    """What `custom_server` yields: the app, an `Api` that calls it in process (with the
    world populated), and the URL uvicorn serves it on."""

    app: Starlette
    api: Api
    url: str

    async def metric(self, name: str, **labels: str) -> float:
        response = await self.api.client.get("/metrics")
        assert response.status_code == 200
        return metric_value(response.text, name, **labels)


@contextlib.asynccontextmanager
async def custom_server(
    db_url: str, tmp_path: Path, *, limits: ConnectionLimits | None = None, **overrides: Any
) -> AsyncIterator[Server]:
    """An app with other settings or limits, populated like the `world` fixture, served by
    uvicorn."""
    settings = make_settings(db_url, tmp_path, **overrides)
    app = create_app(settings, auto_migrate=False, limits=limits)
    async with LifespanManager(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            api = await populate_world(Api(client))
            async with serve(app, lifespan="off") as url:
                yield Server(app, api, url)


def user_token(org: str, user: str, exp: float) -> str:
    return jwt.encode({"org": org, "sub": user, "exp": int(exp)}, SECRET, algorithm="HS256")


async def refused(base: str, **headers: str) -> int:
    """Tries a handshake that must be refused; returns the HTTP status it got."""
    with pytest.raises(websockets.InvalidStatus) as caught:
        socket_ = await websockets.connect(ws_url(base), additional_headers=headers)
        await socket_.close()
    return caught.value.response.status_code


async def closed_with(client: WsClient, timeout: float = 5.0) -> int | None:
    """Waits until the server closed the socket; returns the close code it sent."""
    await asyncio.wait_for(client.socket.wait_closed(), timeout)
    return client.socket.close_code
