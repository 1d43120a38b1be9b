"""One ASGI middleware for every HTTP request: JSON errors, access log and metrics.

No request ever sees a traceback: application errors become their JSON error, a database
or network failure becomes 503, anything else a plain 500 JSON body (and a log line).
The access log names the route template, never the query string, a token or a body.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from server.domain.errors import AppError, Unavailable
from server.edge.http import error_response
from server.edge.metrics import Metrics

access_log = logging.getLogger("agency_messaging.access")
error_log = logging.getLogger("agency_messaging.errors")

CLIENT_CLOSED = 499  # the status access logs give a request its client abandoned
UNAVAILABLE_ERRORS = (OperationalError, DBAPIError, PoolTimeout, OSError, TimeoutError)


class RequestMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        response_started = False

        async def send_wrapper(message: Message) -> None:
            nonlocal status, response_started
            if message["type"] == "http.response.start":
                status = message["status"]
                response_started = True
            await send(message)

        try:
            try:
                await self.app(scope, receive, send_wrapper)
            except DBAPIError as error:
                if response_started or not _retryable(scope, error):
                    raise
                # A read whose pooled connection the database dropped (a restart, a
                # failover): nothing was changed, so it is carried out again, once, on a
                # new connection, instead of answering 503.
                error_log.info("A read lost its database connection; retrying it once.")
                await self.app(scope, receive, send_wrapper)
        except ClientDisconnect:
            # The client left (or was cut off for sending its body too slowly) before the
            # request was read: nobody to answer, nothing wrong with the server.
            status = CLIENT_CLOSED
        except Exception as error:
            if response_started:
                error_log.exception("Error after the response started on %s", _route(scope))
            else:
                response = _error_for(error, scope)
                status = response.status_code
                await response(scope, receive, send)
        finally:
            route, method = _route(scope), scope["method"]
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(elapsed)
            access_log.info("%s %s %d %.1fms", method, route, status, elapsed * 1000)


SAFE_METHODS = frozenset({"GET", "HEAD"})


def _retryable(scope: Scope, error: DBAPIError) -> bool:
    return scope["method"] in SAFE_METHODS and error.connection_invalidated


def _error_for(error: Exception, scope: Scope) -> Any:
    if isinstance(error, AppError):
        return error_response(error)
    if isinstance(error, UNAVAILABLE_ERRORS):
        error_log.warning("A backing service failed on %s: %s", _route(scope), type(error).__name__)
        return error_response(Unavailable("A backing service is unavailable; try again shortly."))
    error_log.exception("Unexpected error on %s", _route(scope))
    internal = AppError("The server failed to answer this request.")
    return error_response(internal)


def _route(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else "unmatched"
