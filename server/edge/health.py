"""Liveness, readiness and metrics for operators."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.domain.errors import Unavailable
from server.edge.http import JSONResponse
from server.edge.metrics import CONTENT_TYPE_LATEST
from server.edge.services import services

READY_TIMEOUT_SECONDS = 2.0

# Named readiness checks; the real-time layer adds the broker's.
ReadinessCheck = Callable[[], Awaitable[None]]


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    s = services(request)
    checks: dict[str, ReadinessCheck] = {"database": s.db.ping, **s.extras.get("readiness", {})}
    failing = []
    for name, check in checks.items():
        try:
            await asyncio.wait_for(check(), READY_TIMEOUT_SECONDS)
        except Exception:  # any failure means "not ready"; the name says which part
            failing.append(name)
    if failing:
        error = Unavailable(f"Not ready: {', '.join(failing)}.")
        body = {"status": "unavailable", "failing": failing, **error.to_json()}
        return JSONResponse(body, status_code=error.status)
    return JSONResponse({"status": "ok", "checks": sorted(checks)})


async def metrics(request: Request) -> Response:
    return Response(services(request).metrics.render(), media_type=CONTENT_TYPE_LATEST)


routes = [
    Route("/healthz", healthz, methods=["GET"]),
    Route("/readyz", readyz, methods=["GET"]),
    Route("/metrics", metrics, methods=["GET"]),
]
