"""/openapi.json: the REST interface described from the same request models the server validates."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.edge import schemas
from server.edge.http import JSONResponse

Schema = dict[str, Any]

USER: Schema = {
    "type": "object",
    "required": ["id", "name", "kind"],
    "properties": {
        "id": {"type": "string"},
        "name": {"type": "string"},
        "kind": {"type": "string", "enum": ["member", "agency"]},
    },
}
MESSAGE: Schema = {
    "type": "object",
    "required": [
        "id",
        "thread",
        "candidate",
        "author",
        "body",
        "created_at",
        "deleted",
        "client_id",
    ],
    "properties": {
        "id": {"type": "integer"},
        "thread": {"type": "integer"},
        "candidate": {"type": "string"},
        "author": {"$ref": "#/components/schemas/User"},
        "body": {"type": ["string", "null"]},
        "created_at": {"type": "string", "format": "date-time"},
        "deleted": {"type": "boolean"},
        "client_id": {"type": ["string", "null"]},
    },
}
THREAD: Schema = {
    "type": "object",
    "required": ["id", "candidate", "kind", "agency_user", "member", "unread", "last_message"],
    "properties": {
        "id": {"type": "integer"},
        "candidate": {"type": "string"},
        "kind": {"type": "string", "enum": ["agency", "private"]},
        "agency_user": {"$ref": "#/components/schemas/User"},
        "member": {"oneOf": [{"$ref": "#/components/schemas/User"}, {"type": "null"}]},
        "unread": {"type": "integer", "minimum": 0},
        "last_message": {"oneOf": [{"$ref": "#/components/schemas/Message"}, {"type": "null"}]},
    },
}
ERROR: Schema = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}},
        }
    },
}


def _obj(**properties: Schema) -> Schema:
    return {"type": "object", "required": list(properties), "properties": properties}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


CANDIDATE: Schema = _obj(
    id={"type": "string"},
    name={"type": "string"},
    coordinator={"oneOf": [_ref("User"), {"type": "null"}]},
    agency_users={"type": "array", "items": _ref("User")},
    private_contacts={"type": "array", "items": _ref("User")},
    unread={"type": "integer"},
    seq={"type": "integer", "description": "The candidate's newest event seq (for /ws resume)."},
)

ID = {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,64}$"}
INT_ID = {"type": "integer", "minimum": 1, "maximum": 2**63 - 1}


def _param(name: str, where: str = "path", schema: Schema | None = None) -> Schema:
    return {"name": name, "in": where, "required": where == "path", "schema": schema or ID}


def _op(
    summary: str,
    *,
    auth: str,
    params: list[Schema] | None = None,
    body: type[BaseModel] | None = None,
    ok: tuple[int, Schema | None] = (200, None),
    more: Mapping[int, Schema | None] | None = None,
) -> Schema:
    responses: dict[str, Any] = {}
    for status, schema in {ok[0]: ok[1], **(more or {})}.items():
        entry: Schema = {"description": "Success" if status < 300 else "See the error code"}
        if schema is not None:
            entry["content"] = {"application/json": {"schema": schema}}
        responses[str(status)] = entry
    for status in (401, 403, 404, 413, 422, 429, 503):
        responses.setdefault(
            str(status),
            {"description": "Error", "content": {"application/json": {"schema": _ref("Error")}}},
        )
    op: Schema = {"summary": summary, "responses": responses, "parameters": params or []}
    op["security"] = (
        [{"userToken": []}, {"sessionCookie": []}]
        if auth == "user"
        else [{"serviceToken": []}]
        if auth == "service"
        else []
    )
    if body is not None:
        op["requestBody"] = {
            "required": True,
            "content": {"application/json": {"schema": body.model_json_schema()}},
        }
    return op


def build_spec() -> Schema:
    cand, org = _param("cand"), _param("org")
    thread_id = _param("id", schema=INT_ID)
    paging = [
        _param("before", "query", INT_ID),
        _param("after", "query", {"type": "integer", "minimum": 0}),
        _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 100}),
    ]
    upserted = {201: None}
    paths: dict[str, Schema] = {
        "/api/v1/session": {
            "post": _op(
                "Trade a user token for a session cookie", auth="none", body=schemas.SessionIn
            ),
            "delete": _op("Sign out (drop the session cookie)", auth="none", ok=(204, None)),
        },
        "/api/v1/me": {"get": _op("The signed-in user", auth="user")},
        "/api/v1/orgs/{org}": {
            "put": _op(
                "Upsert an org", auth="service", params=[org], body=schemas.NamedIn, more=upserted
            )
        },
        "/api/v1/orgs/{org}/agencies/{agency}": {
            "put": _op(
                "Upsert an agency",
                auth="service",
                params=[org, _param("agency")],
                body=schemas.NamedIn,
                more=upserted,
            )
        },
        "/api/v1/orgs/{org}/users/{user}": {
            "put": _op(
                "Upsert a member or agency user",
                auth="service",
                params=[org, _param("user")],
                body=schemas.UserIn,
                more={**upserted, 409: _ref("Error")},
            )
        },
        "/api/v1/orgs/{org}/candidates/{cand}": {
            "put": _op(
                "Upsert a candidate with its coordinator, access and agency users",
                auth="service",
                params=[org, cand],
                body=schemas.CandidateIn,
                more=upserted,
            ),
            "delete": _op(
                "Erase a candidate with every thread and message",
                auth="service",
                params=[org, cand],
                ok=(204, None),
            ),
        },
        "/api/v1/candidates": {
            "get": _op(
                "The caller's candidates with unread counts",
                auth="user",
                params=[
                    _param("after", "query"),
                    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 500}),
                ],
                ok=(
                    200,
                    _obj(
                        candidates={
                            "type": "array",
                            "items": _obj(
                                id={"type": "string"},
                                name={"type": "string"},
                                unread={"type": "integer"},
                            ),
                        },
                        has_more={"type": "boolean"},
                    ),
                ),
            )
        },
        "/api/v1/candidates/{cand}": {
            "get": _op(
                "A candidate as the caller sees it",
                auth="user",
                params=[cand],
                ok=(200, _ref("Candidate")),
            )
        },
        "/api/v1/candidates/{cand}/threads": {
            "get": _op(
                "The caller's threads of a candidate",
                auth="user",
                params=[cand],
                ok=(200, _obj(threads={"type": "array", "items": _ref("Thread")})),
            ),
            "post": _op(
                "Get or create a thread",
                auth="user",
                params=[cand],
                body=schemas.OpenThreadIn,
                ok=(200, _ref("Thread")),
                more={201: _ref("Thread")},
            ),
        },
        "/api/v1/threads/{id}/messages": {
            "get": _op(
                "A page of history, oldest first",
                auth="user",
                params=[thread_id, *paging],
                ok=(
                    200,
                    _obj(
                        messages={"type": "array", "items": _ref("Message")},
                        has_more={"type": "boolean"},
                    ),
                ),
            ),
            "post": _op(
                "Post a message (idempotent by client_id)",
                auth="user",
                params=[thread_id],
                body=schemas.SendIn,
                ok=(201, _ref("Message")),
                more={200: _ref("Message")},
            ),
        },
        "/api/v1/threads/{id}/read": {
            "post": _op(
                "Move the caller's read marker forward",
                auth="user",
                params=[thread_id],
                body=schemas.ReadIn,
                ok=(200, _obj(unread={"type": "integer"})),
            )
        },
        "/api/v1/messages/{id}": {
            "delete": _op(
                "Delete one's own message", auth="user", params=[thread_id], ok=(204, None)
            )
        },
        "/api/v1/unread": {
            "get": _op(
                "The blue dots: candidates with unread messages",
                auth="user",
                ok=(
                    200,
                    _obj(
                        candidates={
                            "type": "array",
                            "items": _obj(
                                candidate={"type": "string"},
                                unread={"type": "integer"},
                                latest=_ref("Message"),
                            ),
                        }
                    ),
                ),
            )
        },
        "/api/v1/me/notifications": {
            "get": _op(
                "The caller's email alert preferences", auth="user", ok=(200, _ref("Notifications"))
            ),
            "put": _op(
                "Change email alert preferences (the fields sent replace the stored ones)",
                auth="user",
                body=schemas.NotificationsIn,
                ok=(200, _ref("Notifications")),
            ),
        },
        "/healthz": {"get": _op("The process serves", auth="none")},
        "/readyz": {"get": _op("Database and broker answer", auth="none")},
        "/metrics": {"get": _op("Prometheus metrics", auth="none")},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Agency Messaging",
            "version": "1",
            "description": "Per-candidate messaging between hiring teams and recruiting agencies. "
            "The WebSocket protocol at /ws is described in docs/protocol.md.",
        },
        "paths": paths,
        "components": {
            "schemas": {
                "User": USER,
                "Message": MESSAGE,
                "Thread": THREAD,
                "Error": ERROR,
                "Candidate": CANDIDATE,
                "Notifications": _obj(
                    muted={"type": "boolean", "description": "No alert emails at all."},
                    muted_candidates={"type": "array", "items": ID},
                ),
            },
            "securitySchemes": {
                "userToken": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "am_session"},
                "serviceToken": {"type": "http", "scheme": "bearer"},
            },
        },
    }


_SPEC = build_spec()


async def openapi(request: Request) -> Response:
    return JSONResponse(_SPEC)


routes = [Route("/openapi.json", openapi, methods=["GET"])]
