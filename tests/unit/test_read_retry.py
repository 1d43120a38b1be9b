"""A read whose database connection was dropped under it is carried out again, once; a
write never is (it may have been carried out), and a second drop answers 503."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.exc import DBAPIError
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from server.edge.metrics import Metrics
from server.edge.middleware import RequestMiddleware


def dropped() -> DBAPIError:
    return DBAPIError("SELECT ...", {}, ConnectionError("gone"), connection_invalidated=True)


def app_failing(times: int, *, invalidated: bool = True) -> tuple[Starlette, list[str]]:
    calls: list[str] = []

    async def endpoint(request: Request) -> JSONResponse:
        calls.append(request.method)
        if len(calls) <= times:
            error = dropped() if invalidated else DBAPIError("SELECT ...", {}, ValueError("x"))
            raise error
        return JSONResponse({"ok": True})

    routes = [Route("/thing", endpoint, methods=["GET", "POST"])]
    app = Starlette(routes=routes, middleware=[Middleware(RequestMiddleware, metrics=Metrics())])
    return app, calls


async def request(app: Starlette, method: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        return await client.request(method, "/thing")


async def test_a_read_that_lost_its_connection_is_retried_once() -> None:
    app, calls = app_failing(1)
    response = await request(app, "GET")
    assert response.status_code == 200 and calls == ["GET", "GET"]


@pytest.mark.parametrize(
    ("method", "times", "invalidated", "expected_calls"),
    [
        ("POST", 1, True, 1),  # a write may have happened: never again
        ("GET", 2, True, 2),  # dropped twice: once is enough
        ("GET", 1, False, 1),  # another database error: not a dropped link
    ],
)
async def test_other_failures_answer_503_without_more_tries(
    method: str, times: int, invalidated: bool, expected_calls: int
) -> None:
    app, calls = app_failing(times, invalidated=invalidated)
    response = await request(app, method)
    body: Any = response.json()
    assert response.status_code == 503 and body["error"]["code"] == "unavailable"
    assert len(calls) == expected_calls
