"""The error hierarchy shared by REST and WebSocket.

    AppError                 every error a client may see; carries `code` and HTTP `status`
    ├── InvalidInput         422 invalid       malformed input
    ├── Unauthorized         401 unauthorized  no valid credentials
    ├── Forbidden            403 forbidden     the caller sees the thing but may not do this
    ├── NotFound             404 not_found     absent, or not visible to the caller
    ├── Conflict             409 conflict      the request contradicts stored state
    ├── RateLimited          429 rate_limited  too many sends for now
    └── Unavailable          503 unavailable   a backing service does not answer

The edge adds the answers of HTTP itself: 413 too_large (server/edge/http.py: a body over
its limit) and 404/405 for an unknown route or method (`http_exception` there).

Messages are sentences meant for the person reading the client's logs.
"""

from __future__ import annotations


class AppError(Exception):
    status = 500
    code = "internal"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def to_json(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class InvalidInput(AppError):
    status = 422
    code = "invalid"


class Unauthorized(AppError):
    status = 401
    code = "unauthorized"


class Forbidden(AppError):
    status = 403
    code = "forbidden"


class NotFound(AppError):
    status = 404
    code = "not_found"


class Conflict(AppError):
    status = 409
    code = "conflict"


class RateLimited(AppError):
    status = 429
    code = "rate_limited"

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Unavailable(AppError):
    status = 503
    code = "unavailable"
