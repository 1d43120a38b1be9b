"""The Starlette application and its lifespan."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import Response

from server import api, api_provisioning, health, openapi, pages
from server.actions import Messaging
from server.errors import AppError
from server.events import DiscardingSink
from server.http import error_response
from server.metrics import Metrics
from server.middleware import RequestMiddleware
from server.provisioning import Provisioning
from server.ratelimit import SendRateLimiter
from server.services import Services
from server.settings import Settings
from storage import migrate
from storage.database import Database

log = logging.getLogger("agency_messaging")

_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid"}


class _HttpError(AppError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = _HTTP_CODES.get(status, "invalid")


async def _http_exception(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = "No such endpoint." if exc.status_code == 404 else str(exc.detail)
    return error_response(_HttpError(exc.status_code, message))


async def prepare_schema(db: Database, settings: Settings, auto_migrate: bool | None) -> None:
    """The embedded SQLite default migrates itself; any other database must be migrated."""
    if auto_migrate is None:
        auto_migrate = settings.database_is_default
    if auto_migrate:
        await migrate.upgrade(db)
    else:
        await migrate.check_up_to_date(db)


def create_app(settings: Settings, *, auto_migrate: bool | None = None) -> Starlette:
    metrics = Metrics()

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        db = Database(settings.database_url)
        try:
            await prepare_schema(db, settings, auto_migrate)
            sink = DiscardingSink()
            app.state.services = Services(
                settings=settings,
                db=db,
                sink=sink,
                messaging=Messaging(db, sink),
                provisioning=Provisioning(db, sink),
                metrics=metrics,
                send_limiter=SendRateLimiter(settings.send_rate_per_minute),
                extras={},
            )
            yield
        finally:
            await db.close()

    routes = [
        *health.routes,
        *openapi.routes,
        *api.routes,
        *api_provisioning.routes,
        *pages.routes(settings.web_dir),
    ]
    return Starlette(
        routes=routes,
        middleware=[Middleware(RequestMiddleware, metrics=metrics)],
        exception_handlers={HTTPException: _http_exception},
        lifespan=lifespan,
    )
