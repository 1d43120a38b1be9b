"""/openapi.json, generated: the table below lists each operation with its parameters,
request model and response models, and pydantic writes every JSON Schema in it, so the
document shows what the server validates. tests/test_openapi.py checks real answers against
it and that it lists every route the app serves under /api."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from pydantic import BaseModel, TypeAdapter
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from channels.protocol import HostId, Id, Seq
from server.domain.auth import SESSION_COOKIE
from server.domain.errors import (
    AppError,
    Conflict,
    Forbidden,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from server.edge import responses as out
from server.edge.http import MAX_BODY_BYTES, JSONResponse, TooLarge
from server.edge.schemas import (
    AuditPageLimit,
    CandidateIn,
    CandidateOrder,
    CandidatePageLimit,
    ConversationPageLimit,
    MessagePageLimit,
    NamedIn,
    NotificationsIn,
    OpenThreadIn,
    ReadIn,
    SendIn,
    SessionIn,
    UserIn,
)

Schema = dict[str, Any]
Auth = Literal["none", "user", "service"]
PLAIN_TEXT: Final = "text/plain"
# What a status answers: a JSON model, plain text, or no body at all.
Content = type[BaseModel] | Literal["text/plain"] | None

# The type of each path parameter, by name (a path naming another one fails at import).
PATH_PARAMETERS: Final[Mapping[str, Any]] = {
    "org": HostId,
    "agency": HostId,
    "user": HostId,
    "cand": HostId,
    "id": Id,
}

# Any operation may answer these: the connection guard and the database can refuse any
# request, and most take credentials and input.
COMMON_ERRORS: Final[tuple[type[AppError], ...]] = (
    Unauthorized,
    Forbidden,
    NotFound,
    TooLarge,
    InvalidInput,
    RateLimited,
    Unavailable,
)
ERROR_TEXT: Final[Mapping[type[AppError], str]] = {
    Unauthorized: "No valid credentials",
    Forbidden: "The caller sees the thing but may not do this (or a failed Origin check)",
    NotFound: "Absent, or not visible to the caller",
    Conflict: "The request contradicts stored state",
    TooLarge: f"The request body is over {MAX_BODY_BYTES / 2**20:g} MiB",
    InvalidInput: "Malformed input",
    RateLimited: "Too many requests for now (see Retry-After)",
    Unavailable: "A backing service does not answer; retry later",
}
# The error (and so the `code`) that each error status answers.
ERROR_BY_STATUS: Final = {error.status: error for error in ERROR_TEXT}

SECURITY: Final[Mapping[Auth, list[Schema]]] = {
    "none": [],
    "user": [{"userToken": []}, {"sessionCookie": []}],
    "service": [{"serviceToken": []}],
}
SECURITY_SCHEMES: Final = {
    "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
    "sessionCookie": {"type": "apiKey", "in": "cookie", "name": SESSION_COOKIE},
    "serviceToken": {"type": "http", "scheme": "bearer"},
}


@dataclass(frozen=True)
class Operation:
    """One row of the table: a route, and what it takes and answers."""

    method: str
    path: str
    summary: str
    auth: Auth
    answers: Mapping[int, Content]  # the successes, and answers of their own
    body: type[BaseModel] | None = None
    query: Mapping[str, Any] = field(default_factory=dict)  # name -> type
    errors: tuple[type[AppError], ...] = ()  # beyond COMMON_ERRORS

    @property
    def path_parameters(self) -> list[str]:
        return [part[1:-1] for part in self.path.split("/") if part.startswith("{")]

    @property
    def responses(self) -> dict[int, Content]:
        """Every documented status with what it answers."""
        errors = {e.status: out.Error for e in (*COMMON_ERRORS, *self.errors)}
        return dict(sorted({**errors, **self.answers}.items()))


def _upserted(model: type[BaseModel]) -> dict[int, Content]:
    return {200: model, 201: model}  # 201 when the call created the record


OPERATIONS: Final = (
    Operation(
        "POST",
        "/api/v1/session",
        "Trade a user token for a session cookie",
        "none",
        {200: out.Session},
        body=SessionIn,
    ),
    Operation(
        "DELETE", "/api/v1/session", "Sign out (drop the session cookie)", "none", {204: None}
    ),
    Operation("GET", "/api/v1/me", "The signed-in user", "user", {200: out.Me}),
    Operation("PUT", "/api/v1/orgs/{org}", "Upsert an org", "service", _upserted(out.Org), NamedIn),
    Operation(
        "PUT",
        "/api/v1/orgs/{org}/agencies/{agency}",
        "Upsert an agency",
        "service",
        _upserted(out.Agency),
        NamedIn,
    ),
    Operation(
        "PUT",
        "/api/v1/orgs/{org}/users/{user}",
        "Upsert a member or agency user",
        "service",
        _upserted(out.ProvisionedUser),
        UserIn,
        errors=(Conflict,),
    ),
    Operation(
        "DELETE",
        "/api/v1/orgs/{org}/users/{user}",
        "Erase a person: name and email replaced, their messages tombstones, their sockets "
        "closed (again on an erased one: 204)",
        "service",
        {204: None},
    ),
    Operation(
        "GET",
        "/api/v1/orgs/{org}/audit",
        "The org's audit trail (deleted messages, erased people), oldest first",
        "service",
        {200: out.AuditPage},
        query={"after": Seq, "limit": AuditPageLimit},
    ),
    Operation(
        "PUT",
        "/api/v1/orgs/{org}/candidates/{cand}",
        "Upsert a candidate with its coordinator, access and agency users",
        "service",
        _upserted(out.ProvisionedCandidate),
        CandidateIn,
    ),
    Operation(
        "DELETE",
        "/api/v1/orgs/{org}/candidates/{cand}",
        "Erase a candidate with every thread and message",
        "service",
        {204: None},
    ),
    Operation(
        "GET",
        "/api/v1/candidates",
        "The caller's candidates with unread counts and newest messages, by id or newest "
        "activity first (`order=activity`: pages by `before`, a message id, then `after`)",
        "user",
        {200: out.CandidateList},
        query={
            "order": CandidateOrder,
            "after": HostId,
            "before": Id,
            "limit": CandidatePageLimit,
        },
    ),
    Operation(
        "GET",
        "/api/v1/candidates/{cand}",
        "A candidate as the caller sees it",
        "user",
        {200: out.Candidate},
    ),
    Operation(
        "GET",
        "/api/v1/candidates/{cand}/threads",
        "The caller's threads of a candidate",
        "user",
        {200: out.ThreadList},
    ),
    Operation(
        "POST",
        "/api/v1/candidates/{cand}/threads",
        "Get or create a thread",
        "user",
        {200: out.Thread, 201: out.Thread},
        OpenThreadIn,
    ),
    Operation(
        "GET",
        "/api/v1/threads/{id}/messages",
        "A page of history, oldest first",
        "user",
        {200: out.MessagePage},
        query={"before": Id, "after": Seq, "limit": MessagePageLimit},
    ),
    Operation(
        "POST",
        "/api/v1/threads/{id}/messages",
        "Post a message (idempotent by client_id)",
        "user",
        {201: out.Message, 200: out.Message},
        SendIn,
    ),
    Operation(
        "POST",
        "/api/v1/threads/{id}/read",
        "Move the caller's read marker forward",
        "user",
        {200: out.UnreadCount},
        ReadIn,
    ),
    Operation("DELETE", "/api/v1/messages/{id}", "Delete one's own message", "user", {204: None}),
    Operation(
        "GET",
        "/api/v1/conversations",
        "The caller's threads across candidates, newest activity first (the inbox)",
        "user",
        {200: out.ConversationPage},
        query={"before": Id, "limit": ConversationPageLimit},
    ),
    Operation(
        "GET",
        "/api/v1/unread",
        "The blue dots: candidates with unread messages",
        "user",
        {200: out.UnreadSummary},
    ),
    Operation(
        "GET",
        "/api/v1/me/notifications",
        "The caller's email alert preferences",
        "user",
        {200: out.Notifications},
    ),
    Operation(
        "PUT",
        "/api/v1/me/notifications",
        "Change email alert preferences (the fields sent replace the stored ones)",
        "user",
        {200: out.Notifications},
        NotificationsIn,
    ),
    Operation("GET", "/healthz", "The process serves", "none", {200: out.Health}),
    Operation(
        "GET", "/readyz", "Database and broker answer", "none", {200: out.Ready, 503: out.NotReady}
    ),
    Operation("GET", "/metrics", "Prometheus metrics", "none", {200: PLAIN_TEXT}),
)


def _models() -> Iterator[type[BaseModel]]:
    for op in OPERATIONS:
        if op.body is not None:
            yield op.body
        for content in op.responses.values():
            if isinstance(content, type):
                yield content


def _parameter(name: str, where: str, shape: Any) -> Schema:
    schema = TypeAdapter(shape).json_schema()
    return {"name": name, "in": where, "required": where == "path", "schema": schema}


def _response(status: int, content: Content, refs: Mapping[Any, Schema]) -> Schema:
    if status < 300:
        answer: Schema = {"description": "Success"}
    else:
        error = ERROR_BY_STATUS[status]
        answer = {"description": f"`{error.code}`: {ERROR_TEXT[error]}"}
    if content == PLAIN_TEXT:
        answer["content"] = {PLAIN_TEXT: {"schema": TypeAdapter(str).json_schema()}}
    elif content is not None:
        answer["content"] = {"application/json": {"schema": refs[content, "validation"]}}
    return answer


def _operation(op: Operation, refs: Mapping[Any, Schema]) -> Schema:
    parameters = [_parameter(name, "path", PATH_PARAMETERS[name]) for name in op.path_parameters]
    parameters += [_parameter(name, "query", shape) for name, shape in op.query.items()]
    built: Schema = {"summary": op.summary, "parameters": parameters}
    if op.body is not None:
        body_schema = refs[op.body, "validation"]
        built["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body_schema}},
        }
    built["responses"] = {
        str(status): _response(status, content, refs) for status, content in op.responses.items()
    }
    built["security"] = SECURITY[op.auth]
    return built


def build_spec() -> Schema:
    models: list[tuple[type[BaseModel], JsonSchemaMode]] = [
        (model, "validation") for model in dict.fromkeys(_models())
    ]
    refs, definitions = models_json_schema(models, ref_template="#/components/schemas/{model}")
    paths: dict[str, Schema] = {}
    for op in OPERATIONS:
        paths.setdefault(op.path, {})[op.method.lower()] = _operation(op, refs)
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agency Messaging",
            "version": "1",
            "description": "Per-candidate messaging between hiring teams and recruiting agencies. "
            "The WebSocket protocol at /ws is described in docs/protocol.md.",
        },
        "paths": paths,
        "components": {"schemas": definitions["$defs"], "securitySchemes": SECURITY_SCHEMES},
    }


_SPEC = build_spec()


async def openapi(request: Request) -> Response:
    return JSONResponse(_SPEC)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
