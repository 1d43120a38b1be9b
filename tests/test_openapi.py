"""/openapi.json against the app it describes.

- The document lists every route the app serves under /api, and nothing it does not serve.
- Real answers, for every documented operation and for every status it documents that can
  be reached in-process, match the schema documented for that status: the pydantic response
  model (strict, no extra field) and the JSON Schema of the served document. An error's
  `code` is the one documented with its status. Every success and every status of an
  operation's own (201, 409, the 503 of /readyz...) must be reached, and each common error
  status on at least one operation.
- The documented bounds of path and query parameters are the ones the handlers enforce.

Schemathesis fuzzes the same document in test_hostile.py.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema_rs  # installed with schemathesis
import pytest
from pydantic import BaseModel
from starlette.applications import Starlette
from starlette.routing import Route

from channels.protocol import MAX_ID
from server.app import create_app
from server.domain.ratelimit import SendRateLimiter
from server.edge.http import MAX_BODY_BYTES
from server.edge.openapi import (
    COMMON_ERRORS,
    ERROR_BY_STATUS,
    OPERATIONS,
    PLAIN_TEXT,
    Operation,
    build_spec,
)
from server.edge.schemas import (
    CandidateIn,
    NamedIn,
    NotificationsIn,
    OpenThreadIn,
    ReadIn,
    SendIn,
    SessionIn,
    UserIn,
)
from server.edge.services import Services
from tests.support.world import Api, make_settings

BY_ROUTE = {(op.method, op.path): op for op in OPERATIONS}
Reached = tuple[str, str, int]  # method, path template, status


# --- the routes ------------------------------------------------------------------------------


def _served(app: Starlette) -> set[tuple[str, str]]:
    return {
        (method, route.path)
        for route in app.routes
        if isinstance(route, Route)
        for method in route.methods or ()
        if method != "HEAD"
    }


def test_the_document_lists_every_api_route_and_only_served_ones(tmp_path: Path) -> None:
    # Routes exist without the lifespan: nothing here touches the database.
    app = create_app(make_settings("sqlite+aiosqlite:///unused.db", tmp_path))
    served = _served(app)
    spec = build_spec()
    documented = {(method.upper(), path) for path, ops in spec["paths"].items() for method in ops}
    served_api = {(method, path) for method, path in served if path.startswith("/api/")}
    assert served_api, "the app serves no /api route?"
    assert served_api - documented == set(), "served under /api but not documented"
    assert documented - served == set(), "documented but not served"


def test_every_reference_resolves_and_every_schema_is_used() -> None:
    spec = build_spec()
    text = repr(spec)
    names = set(re.findall(r"#/components/schemas/(\w+)", text))
    assert names == set(spec["components"]["schemas"])
    assert "$defs" not in text  # every model lives under components


async def test_the_served_document_is_the_built_one(api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    assert response.json() == build_spec()


# --- checking one answer against the document -----------------------------------------------


def _schema_validator(spec: dict[str, Any], schema: dict[str, Any]) -> Any:
    """A JSON Schema (2020-12, as OpenAPI 3.1) validator resolving refs into the document."""
    return jsonschema_rs.Draft202012Validator({**schema, "components": spec["components"]})


def check_answer(spec: dict[str, Any], op: Operation, response: httpx.Response) -> None:
    """The answer is what the served document says this status answers."""
    status = response.status_code
    where = f"{op.method} {op.path} -> {status}: {response.text[:300]}"
    documented = spec["paths"][op.path][op.method.lower()]["responses"]
    assert str(status) in documented, f"undocumented status: {where}"
    content = op.responses[status]
    if content is None:
        assert "content" not in documented[str(status)]
        assert response.content == b"", where
        return
    if content == PLAIN_TEXT:
        assert response.headers["content-type"].startswith(PLAIN_TEXT), where
        return
    assert isinstance(content, type) and issubclass(content, BaseModel)
    assert response.headers["content-type"] == "application/json", where
    content.model_validate_json(response.content, strict=True)
    schema = documented[str(status)]["content"]["application/json"]["schema"]
    assert schema == {"$ref": f"#/components/schemas/{content.__name__}"}
    _schema_validator(spec, schema).validate(response.json())
    if status >= 400:
        assert response.json()["error"]["code"] == ERROR_BY_STATUS[status].code, where


@dataclass
class Client:
    """Sends requests as one of the parties, checks each answer against the document and
    remembers which (operation, status) pairs were reached."""

    api: Api
    spec: dict[str, Any]
    services: Services
    thread: int = 0  # ann's agency thread on c1...
    message: int = 0  # ...and her first message in it
    cookie: str = ""  # mem's session
    reached: set[Reached] = field(default_factory=set)

    def credentials(self, who: str | tuple[str, str] | None) -> dict[str, str]:
        if who is None:
            return {}
        if who == "service":
            return self.api.service
        if who == "cookie":
            return {"Cookie": f"am_session={self.cookie}"}
        assert isinstance(who, tuple)
        return self.api.as_user(*who)

    def as_caller(self, op: Operation) -> str | tuple[str, str] | None:
        """Credentials that pass for the operation: ann's token, or the service token."""
        return {"user": ("acme", "ann"), "service": "service", "none": None}[op.auth]

    async def call(
        self,
        method: str,
        path: str,
        status: int | None,
        *,
        who: str | tuple[str, str] | None = None,
        json: Any = None,
        content: bytes | None = None,
        params: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
        **ids: Any,
    ) -> httpx.Response:
        op = BY_ROUTE[method, path]
        response = await self.api.client.request(
            method,
            path.format(**ids),
            json=json,
            content=content,
            params=params,
            headers={**self.credentials(who), **(headers or {})},
        )
        self.api.client.cookies.clear()  # a session cookie never rides along unasked
        if status is not None:
            assert response.status_code == status, (method, path, ids, response.text[:500])
        check_answer(self.spec, op, response)
        self.reached.add((method, path, response.status_code))
        return response

    async def send_valid(self, op: Operation, status: int | None, **ids: Any) -> httpx.Response:
        """The operation with valid credentials and body (and `ids` over good ones)."""
        return await self.call(
            op.method,
            op.path,
            status,
            who=self.as_caller(op),
            json=self.example_body(op.body),
            **{**self.good_ids(op), **ids},
        )

    def example_body(self, model: type[BaseModel] | None) -> Any:
        """A valid body of each request model, for the ids of `good_ids`."""
        examples: dict[Any, Any] = {
            None: None,
            SessionIn: {"token": self.api.token("acme", "ann")},
            NamedIn: {"name": "Example"},
            UserIn: {"name": "Max", "email": "max@acme.example", "kind": "member"},
            CandidateIn: {"name": "Example"},
            OpenThreadIn: {},
            SendIn: {"body": "hello"},
            ReadIn: {"message_id": self.message},
            NotificationsIn: {},
        }
        return examples[model]

    def good_ids(self, op: Operation) -> dict[str, Any]:
        good = {"org": "acme", "agency": "ag", "user": "mem", "cand": "c1", "id": self.thread}
        return {name: good[name] for name in op.path_parameters}


@pytest.fixture
async def client(world: Api, app: Starlette) -> Client:
    spec = (await world.client.get("/openapi.json")).json()
    thread = (await world.open_thread("acme", "ann", "c1", {}))["id"]
    message = (await world.send("acme", "ann", thread, "first"))["id"]
    # The first ids of a fresh database: the bounds test's lowest id names them.
    assert (thread, message) == (1, 1)
    return Client(world, spec, app.state.services, thread, message)


# --- the scenarios ----------------------------------------------------------------------------

ORG = "/api/v1/orgs/{org}"
AGENCY = "/api/v1/orgs/{org}/agencies/{agency}"
USER = "/api/v1/orgs/{org}/users/{user}"
CANDIDATE = "/api/v1/orgs/{org}/candidates/{cand}"
AUDIT = "/api/v1/orgs/{org}/audit"
SESSION = "/api/v1/session"
THREADS = "/api/v1/candidates/{cand}/threads"
MESSAGES = "/api/v1/threads/{id}/messages"
READ = "/api/v1/threads/{id}/read"
MESSAGE = "/api/v1/messages/{id}"
NOTIFICATIONS = "/api/v1/me/notifications"
CONVERSATIONS = "/api/v1/conversations"
ANN, MEM, COORD, OUT = ("acme", "ann"), ("acme", "mem"), ("acme", "coord"), ("acme", "out")


async def provisioning(c: Client) -> None:
    s = "service"
    for status in (201, 200):
        await c.call("PUT", ORG, status, who=s, json={"name": "New"}, org="new")
        await c.call("PUT", AGENCY, status, who=s, json={"name": "Ag"}, org="new", agency="ag2")
        member = {"name": "Max", "email": "max@new.example", "kind": "member"}
        await c.call("PUT", USER, status, who=s, json=member, org="new", user="max")
        agent = {**member, "kind": "agency", "agency": "ag2"}
        await c.call("PUT", USER, status, who=s, json=agent, org="new", user="amy")
        access = {"name": "C", "coordinator": "max", "members": ["max"], "agency_users": ["amy"]}
        await c.call("PUT", CANDIDATE, status, who=s, json=access, org="new", cand="c9")
    await c.call("PUT", USER, 409, who=s, json=agent, org="new", user="max")
    await c.call("PUT", AGENCY, 404, who=s, json={"name": "Ag"}, org="nowhere", agency="ag")
    await c.call("PUT", USER, 404, who=s, json=member, org="nowhere", user="max")
    await c.call("PUT", CANDIDATE, 404, who=s, json={"name": "C"}, org="nowhere", cand="c9")
    amy, max_ = ("new", "amy"), ("new", "max")
    their = (await c.call("POST", THREADS, 201, who=amy, json={}, cand="c9")).json()["id"]
    await c.call("POST", MESSAGES, 201, who=amy, json={"body": "bye"}, id=their)
    for _ in range(2):  # erasing an erased person again is a no-op
        await c.call("DELETE", USER, 204, who=s, org="new", user="amy")
    # The erased person is still the author of its tombstone, under an id of its own.
    history = (await c.call("GET", MESSAGES, 200, who=max_, id=their)).json()
    assert history["messages"][0]["author"]["id"].startswith("~erased-")
    await c.call("GET", CONVERSATIONS, 200, who=max_)
    await c.call("DELETE", USER, 404, who=s, org="new", user="nobody")
    await c.call("DELETE", USER, 404, who=s, org="nowhere", user="amy")
    await c.call("DELETE", CANDIDATE, 204, who=s, org="new", cand="c9")
    await c.call("DELETE", CANDIDATE, 404, who=s, org="nowhere", cand="c9")
    page = (await c.call("GET", AUDIT, 200, who=s, org="new")).json()
    assert [r["action"] for r in page["records"]] == ["user.erased"]
    await c.call("GET", AUDIT, 404, who=s, org="nowhere")
    await c.call("GET", AUDIT, 422, who=s, params={"limit": 0}, org="new")


async def sessions(c: Client) -> None:
    token = {"token": c.api.token("acme", "mem")}
    response = await c.call("POST", SESSION, 200, json=token)
    c.cookie = response.cookies["am_session"]
    await c.call("POST", SESSION, 401, json={"token": "not-a-token"})
    await c.call("POST", SESSION, 403, json=token, headers={"Origin": "https://evil.example"})
    await c.call("POST", SESSION, 422, json=["not", "an", "object"])
    await c.call("DELETE", SESSION, 204)
    await c.call("DELETE", SESSION, 204, who="cookie", headers={"Origin": "http://testserver"})
    await c.call("DELETE", SESSION, 403, who="cookie")


async def threads_and_messages(c: Client) -> int:
    """ann's agency thread gets messages both ways and a tombstone, and a private thread
    with coord (whose id this returns)."""
    await c.call("POST", THREADS, 200, who=ANN, json={}, cand="c1")
    private = await c.call(
        "POST", THREADS, 201, who=ANN, json={"private": True, "member": "coord"}, cand="c1"
    )
    await c.call("POST", THREADS, 403, who=ANN, json={"private": True, "member": "mem"}, cand="c1")
    await c.call("POST", THREADS, 422, who=MEM, json={"private": False}, cand="c1")
    await c.call("POST", THREADS, 404, who=MEM, json={"agency_user": "ann"}, cand="nobody")
    await c.call("POST", THREADS, 200, who=MEM, json={"agency_user": "ann"}, cand="c1")

    thread, private_id = c.thread, private.json()["id"]
    sent = {"body": "hello", "client_id": "k1"}
    hello = (await c.call("POST", MESSAGES, 201, who=ANN, json=sent, id=thread)).json()
    await c.call("POST", MESSAGES, 200, who=ANN, json=sent, id=thread)
    await c.call("POST", MESSAGES, 201, who=MEM, json={"body": "hi ann"}, id=thread)
    await c.call("POST", MESSAGES, 201, who=ANN, json={"body": "psst"}, id=private_id)
    await c.call("POST", MESSAGES, 201, who=ANN, json={"body": "to keep"}, id=thread)
    await c.call("POST", MESSAGES, 422, who=ANN, json={"body": "  "}, id=thread)
    await c.call("POST", MESSAGES, 404, who=ANN, json={"body": "x"}, id=MAX_ID)

    await c.call("DELETE", MESSAGE, 403, who=MEM, id=hello["id"])
    await c.call("DELETE", MESSAGE, 204, who=ANN, id=hello["id"])
    await c.call("DELETE", MESSAGE, 404, who=ANN, id=MAX_ID)

    page = (await c.call("GET", MESSAGES, 200, who=MEM, id=thread)).json()
    assert any(m["deleted"] for m in page["messages"])  # a tombstone was checked too
    await c.call("GET", MESSAGES, 200, who=MEM, params={"after": 0, "limit": 1}, id=thread)
    await c.call("GET", MESSAGES, 422, who=MEM, params={"before": 0}, id=thread)
    await c.call("GET", MESSAGES, 404, who=OUT, id=thread)

    newest = page["messages"][-1]["id"]
    await c.call("POST", READ, 200, who=ANN, json={"message_id": newest}, id=thread)
    await c.call("POST", READ, 422, who=ANN, json={"message_id": newest}, id=private_id)
    await c.call("POST", READ, 404, who=OUT, json={"message_id": newest}, id=thread)
    return private_id


async def reading(c: Client) -> None:
    await c.call("GET", "/api/v1/me", 200, who=ANN)
    await c.call("GET", "/api/v1/candidates", 200, who=COORD)
    await c.call("GET", "/api/v1/candidates", 200, who=MEM, params={"limit": 1})
    await c.call("GET", "/api/v1/candidates", 422, who=MEM, params={"limit": 0})
    by_activity = {"order": "activity"}
    listed = await c.call("GET", "/api/v1/candidates", 200, who=MEM, params=by_activity)
    assert listed.json()["candidates"][0]["last_message"], "a newest message was checked too"
    await c.call("GET", "/api/v1/candidates", 422, who=MEM, params={"before": 1})
    inbox = (await c.call("GET", CONVERSATIONS, 200, who=MEM)).json()
    assert inbox["conversations"], "conversations were checked too"
    await c.call("GET", CONVERSATIONS, 200, who=ANN, params={"limit": 1, "before": MAX_ID})
    await c.call("GET", CONVERSATIONS, 422, who=MEM, params={"before": 0})
    for who in (ANN, COORD):  # private contacts and thread members on one side or the other
        await c.call("GET", "/api/v1/candidates/{cand}", 200, who=who, cand="c1")
        await c.call("GET", THREADS, 200, who=who, cand="c1")
    await c.call("GET", "/api/v1/candidates/{cand}", 404, who=OUT, cand="c1")
    await c.call("GET", THREADS, 404, who=OUT, cand="c1")
    unread = (await c.call("GET", "/api/v1/unread", 200, who=COORD)).json()
    assert unread["candidates"], "coord has unread messages to check"
    audit = (await c.call("GET", AUDIT, 200, who="service", org="acme")).json()
    assert [r["action"] for r in audit["records"]] == ["message.deleted"]  # ann's "hello"
    await c.call("GET", NOTIFICATIONS, 200, who=MEM)
    muted = {"muted": True, "muted_candidates": ["c1"]}
    await c.call("PUT", NOTIFICATIONS, 200, who=MEM, json=muted)
    await c.call("PUT", NOTIFICATIONS, 422, who=MEM, json={"muted_candidates": ["nobody"]})


async def rate_limited_and_revoked(c: Client, private_id: int) -> None:
    limiter = c.services.send_limiter
    c.services.send_limiter = SendRateLimiter(1)  # one message, then wait a minute
    try:
        await c.call("POST", MESSAGES, 201, who=MEM, json={"body": "one"}, id=c.thread)
        response = await c.call("POST", MESSAGES, 429, who=MEM, json={"body": "two"}, id=c.thread)
        assert int(response.headers["retry-after"]) >= 1
    finally:
        c.services.send_limiter = limiter
    # coord leaves c1: its private thread with ann takes no more posts.
    access = {"name": "C1", "coordinator": None, "members": ["mem"], "agency_users": ["ann"]}
    await c.call("PUT", CANDIDATE, 200, who="service", json=access, org="acme", cand="c1")
    await c.call("POST", MESSAGES, 403, who=ANN, json={"body": "still?"}, id=private_id)


async def operations(c: Client) -> None:
    await c.call("GET", "/healthz", 200)
    await c.call("GET", "/readyz", 200)
    await c.call("GET", "/metrics", 200)
    checks = c.services.extras["readiness"]

    async def broken() -> None:
        raise ConnectionRefusedError

    checks["broken"] = broken
    try:
        response = await c.call("GET", "/readyz", 503)
        assert response.json()["failing"] == ["broken"]
    finally:
        del checks["broken"]


async def common_errors(c: Client) -> None:
    """The common error statuses, on every operation where a request can cause them."""
    for op in OPERATIONS:
        if op.auth != "none":
            await c.call(op.method, op.path, 401, **c.good_ids(op))
        if op.auth == "service":
            await c.call(op.method, op.path, 403, who=ANN, **c.good_ids(op))
        if op.auth == "user" and op.method != "GET":
            await c.call(op.method, op.path, 403, who="cookie", **c.good_ids(op))
        if op.body is not None:
            huge = b" " * (MAX_BODY_BYTES + 1)
            ids = c.good_ids(op)
            await c.call(op.method, op.path, 413, who=c.as_caller(op), content=huge, **ids)
            await c.call(op.method, op.path, 422, who=c.as_caller(op), json=[], **ids)
        if op.path_parameters:
            bad = {name: "0" if name == "id" else "not an id" for name in op.path_parameters}
            await c.send_valid(op, 422, **bad)


@contextlib.asynccontextmanager
async def _refused() -> AsyncIterator[Any]:
    raise ConnectionRefusedError("the database does not answer")
    yield  # pragma: no cover - makes this a generator


async def database_down(c: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    """503 from every operation that reaches the database, while it does not answer."""
    with monkeypatch.context() as patch:
        for way_in in ("read", "reading", "write", "transaction", "atomic"):
            patch.setattr(c.services.db, way_in, _refused)
        for op in OPERATIONS:
            if op.auth != "none" or op.body is not None:
                await c.send_valid(op, 503)


async def test_every_documented_answer_matches_its_schema(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = client
    await provisioning(c)
    await sessions(c)
    private_id = await threads_and_messages(c)
    await reading(c)
    await rate_limited_and_revoked(c, private_id)
    await operations(c)
    await common_errors(c)
    await database_down(c, monkeypatch)

    # Every success and every answer of an operation's own was reached...
    required = {
        (op.method, op.path, status)
        for op in OPERATIONS
        for status in (*op.answers, *(error.status for error in op.errors))
    }
    assert required - c.reached == set()
    # ...and each common error, here on nearly every operation that can answer it.
    assert {error.status for error in COMMON_ERRORS} <= {status for _, _, status in c.reached}


# --- parameter bounds ---------------------------------------------------------------------------


# Parameters that only mean something with another one: sent along when probing them.
PROBED_WITH: dict[tuple[str, str, str], dict[str, Any]] = {
    ("GET", "/api/v1/candidates", "before"): {"order": "activity"},  # its cursor
}


def _probes(schema: dict[str, Any]) -> tuple[list[Any], list[Any]]:
    """Values at the documented bounds (to be accepted) and just past them (refused)."""
    if "enum" in schema:
        return list(schema["enum"]), ["x", schema["enum"][0].upper()]
    if schema["type"] == "integer":
        low, high = schema["minimum"], schema["maximum"]
        return [low, high], [low - 1, high + 1]
    pattern = re.compile(schema["pattern"])
    good, bad = ["a" * 64, "A-z_0.9"], ["a" * 65, "not an id"]
    assert all(pattern.fullmatch(v) for v in good)
    assert not any(pattern.fullmatch(v) for v in bad)
    return good, bad


async def test_documented_parameter_bounds_are_the_enforced_ones(client: Client) -> None:
    c = client
    probed = 0
    for op in OPERATIONS:
        documented = c.spec["paths"][op.path][op.method.lower()]["parameters"]
        for parameter in documented:
            name, where = parameter["name"], parameter["in"]
            good, bad = _probes(parameter["schema"])
            for value, accepted in [(v, True) for v in good] + [(v, False) for v in bad]:
                if where == "path":
                    response = await c.send_valid(op, None, **{name: value})
                else:
                    who, ids = c.as_caller(op), c.good_ids(op)
                    query = {**PROBED_WITH.get((op.method, op.path, name), {}), name: value}
                    response = await c.call(op.method, op.path, None, who=who, params=query, **ids)
                what = (op.method, op.path, name, value, response.text[:300])
                assert (response.status_code != 422) is accepted, what
                probed += 1
    assert probed, "no parameter to probe?"
