"""JSON in and out for the REST endpoints."""

from __future__ import annotations

from typing import Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response

from channels.protocol import HOST_ID, HOST_ID_RULE, MAX_ID
from server.domain.errors import AppError, InvalidInput

MAX_BODY_BYTES = 1024 * 1024
ModelT = TypeVar("ModelT", bound=BaseModel)


class JSONResponse(Response):
    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class TooLarge(AppError):
    status = 413
    code = "too_large"


def error_response(error: AppError) -> JSONResponse:
    headers = {}
    retry_after = getattr(error, "retry_after", None)
    if retry_after is not None:
        headers["Retry-After"] = str(max(1, round(retry_after)))
    return JSONResponse(error.to_json(), status_code=error.status, headers=headers)


def describe_validation(error: ValidationError, whole: str = "body") -> str:
    first = error.errors(include_url=False)[0]
    where = ".".join(str(p) for p in first["loc"]) or whole
    return f"{where}: {first['msg']}."


async def read_body(request: Request) -> bytes:
    """The request body, refused (413) over MAX_BODY_BYTES."""
    raw = await request.body()
    if len(raw) > MAX_BODY_BYTES:
        raise TooLarge(f"The request body is over {MAX_BODY_BYTES} bytes.")
    return raw


async def read_json(request: Request, model: type[ModelT]) -> ModelT:
    raw = await read_body(request)
    try:
        data = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        raise InvalidInput("The request body is not valid JSON.") from None
    if not isinstance(data, dict):
        raise InvalidInput("The request body must be a JSON object.")
    try:
        return model.model_validate(data)
    except ValidationError as error:
        raise InvalidInput(describe_validation(error)) from None


def path_host_id(request: Request, name: str, what: str | None = None) -> str:
    """A path parameter holding one of the host ATS's ids (`what` names it in the error)."""
    value: str = request.path_params[name]
    if not HOST_ID.fullmatch(value):
        raise InvalidInput(f"The {what or name} id {HOST_ID_RULE}.")
    return value


def path_int(request: Request, name: str) -> int:
    raw = request.path_params[name]
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or int(raw) > MAX_ID:
        raise InvalidInput(f"{name} must be a positive integer id.")
    value = int(raw)
    if value < 1:
        raise InvalidInput(f"{name} must be a positive integer id.")
    return value


def query_int(request: Request, name: str, *, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return None
    if not raw.isascii() or not raw.isdigit() or len(raw) > 19 or not low <= int(raw) <= high:
        raise InvalidInput(f"{name} must be an integer from {low} to {high}.")
    return int(raw)


_HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 400: "invalid"}


class _HttpError(AppError):
    """What Starlette's own refusals (no route, wrong method) become: the usual error JSON."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = _HTTP_CODES.get(status, "invalid")


async def http_exception(request: Request, exc: Exception) -> Response:
    """The app's handler of Starlette's HTTPException."""
    assert isinstance(exc, HTTPException)
    message = "No such endpoint." if exc.status_code == 404 else str(exc.detail)
    return error_response(_HttpError(exc.status_code, message))
