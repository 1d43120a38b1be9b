"""Facts the edge states in one place and reuses: the origin check of requests and sockets,
the page-size defaults and cookie name that /openapi.json documents, the host-id rule of
path errors, the unsubscribe link's error text."""

from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection, Request

from channels.protocol import HOST_ID_RULE
from mailer import preferences
from server.domain.auth import SESSION_COOKIE
from server.domain.errors import InvalidInput
from server.edge.http import path_host_id
from server.edge.openapi import build_spec
from server.edge.origins import connection_origin_allowed
from server.edge.schemas import DEFAULT_CANDIDATE_PAGE, DEFAULT_MESSAGE_PAGE
from server.settings import Settings

SETTINGS = Settings(
    secret="s" * 32,
    service_token="t" * 32,
    database_url="sqlite+aiosqlite:///unused.db",
    allowed_origins=frozenset({"https://ats.example"}),
    public_url="https://chat.example",
)


def _connection(scheme: str, headers: dict[str, str]) -> HTTPConnection:
    scope = {
        "type": "websocket" if scheme.startswith("ws") else "http",
        "scheme": scheme,
        "path": "/",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
    }
    return HTTPConnection(scope)


@pytest.mark.parametrize(
    ("scheme", "headers", "allowed"),
    [
        pytest.param("http", {"host": "h:8000"}, False, id="no-origin"),
        pytest.param("http", {"host": "h:8000", "origin": "http://h:8000"}, True, id="own"),
        pytest.param("wss", {"host": "h", "origin": "https://h"}, True, id="own-socket"),
        pytest.param("https", {"host": "h", "origin": "https://chat.example"}, True, id="public"),
        pytest.param("https", {"host": "h", "origin": "https://ats.example"}, True, id="allowed"),
        pytest.param("https", {"host": "h", "origin": "https://ats.example.evil"}, False, id="x"),
        pytest.param("https", {"host": "h", "origin": "null"}, False, id="null"),
    ],
)
def test_connection_origin_allowed(scheme: str, headers: dict[str, str], allowed: bool) -> None:
    assert connection_origin_allowed(_connection(scheme, headers), SETTINGS) is allowed


def test_openapi_documents_the_page_defaults_and_the_cookie() -> None:
    spec = build_spec()

    def limit(path: str) -> object:
        parameters = spec["paths"][path]["get"]["parameters"]
        return next(p["schema"]["default"] for p in parameters if p["name"] == "limit")

    assert limit("/api/v1/candidates") == DEFAULT_CANDIDATE_PAGE
    assert limit("/api/v1/threads/{id}/messages") == DEFAULT_MESSAGE_PAGE
    assert spec["components"]["securitySchemes"]["sessionCookie"]["name"] == SESSION_COOKIE


def test_a_bad_path_id_names_the_host_id_rule() -> None:
    request = Request({"type": "http", "path_params": {"cand": "not an id"}})
    with pytest.raises(InvalidInput) as raised:
        path_host_id(request, "cand", "candidate")
    assert raised.value.message == f"The candidate id {HOST_ID_RULE}."
    assert path_host_id(Request({"type": "http", "path_params": {"org": "a.b"}}), "org") == "a.b"


def test_a_bad_unsubscribe_token_says_the_one_text() -> None:
    with pytest.raises(preferences.BadUnsubscribeToken) as raised:
        preferences.read_unsubscribe_token("s" * 32, "garbage")
    assert str(raised.value) == preferences.INVALID_UNSUBSCRIBE_LINK
