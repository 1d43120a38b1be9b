"""Bad input over REST: every rejection is a JSON error with a code, never a 500, and a
rejected write stores nothing. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import time
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio

from tests.support.world import SECRET, SERVICE_TOKEN, Api

# --- helpers --------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> None:
    """The response is `{"error": {"code", "message"}}` with the given status (and code)."""
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) >= {"error"}, body
    error = body["error"]
    assert isinstance(error, dict), body
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    if code is not None:
        assert error["code"] == code, body


async def history(api: Api, thread_id: int, org: str = "acme", user: str = "ann") -> list[Any]:
    response = await api.get(org, user, f"/api/v1/threads/{thread_id}/messages?limit=100")
    assert response.status_code == 200, response.text
    messages: list[Any] = response.json()["messages"]
    return messages


async def post_raw(
    api: Api, path: str, content: bytes, headers: dict[str, str] | None = None
) -> httpx.Response:
    return await api.client.post(
        path,
        content=content,
        headers={"content-type": "application/json", **(headers or {})},
    )


async def put_raw(api: Api, path: str, body: Any) -> httpx.Response:
    return await api.client.put(f"/api/v1/orgs/{path}", json=body, headers=api.service)


pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.xdist_group("api_input")]


@pytest.fixture
def world(shared_world: Api) -> Api:
    """One provisioned org for the whole module: its tests add only things of their own."""
    return shared_world


@pytest_asyncio.fixture(loop_scope="module")
async def convo(world: Api) -> tuple[Api, int]:
    """`world` plus ann's agency thread on c1 holding one message."""
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    await world.send("acme", "ann", thread["id"], "first")
    return world, thread["id"]


# --- message bodies ---------------------------------------------------------------------

BAD_BODIES: list[tuple[str, dict[str, Any]]] = [
    ("empty", {"body": ""}),
    ("blank", {"body": "   "}),
    ("whitespace", {"body": " \t\r\n \u00a0\u2003 "}),
    ("too-long", {"body": "x" * 5001}),
    ("too-long-after-trim", {"body": "  " + "y" * 5001 + "  "}),
    ("number", {"body": 42}),
    ("float", {"body": 4.2}),
    ("bool", {"body": True}),
    ("null", {"body": None}),
    ("list", {"body": ["hello"]}),
    ("object", {"body": {"text": "hello"}}),
    ("missing", {}),
    ("missing-with-client-id", {"client_id": "c-1"}),
    ("nul", {"body": "hello\x00world"}),
    ("client-id-not-string", {"body": "hello", "client_id": 7}),
    ("client-id-empty", {"body": "hello", "client_id": ""}),
]


@pytest.mark.parametrize(("case", "payload"), BAD_BODIES, ids=[c for c, _ in BAD_BODIES])
async def test_bad_message_body_is_rejected_and_nothing_stored(
    convo: tuple[Api, int], case: str, payload: dict[str, Any]
) -> None:
    api, thread_id = convo
    before = await history(api, thread_id)
    response = await api.post("acme", "ann", f"/api/v1/threads/{thread_id}/messages", payload)
    assert_error(response, 422, "invalid")
    assert await history(api, thread_id) == before


RAW_BODIES: list[tuple[str, bytes]] = [
    ("malformed-json", b'{"body": "hello"'),
    ("not-json", b"hello there"),
    ("trailing-garbage", b'{"body": "hello"} x'),
    ("array", b'["hello"]'),
    ("array-of-object", b'[{"body": "hello"}]'),
    ("string", b'"hello"'),
    ("number", b"12"),
    ("null", b"null"),
    ("empty", b""),
    ("escaped-nul", b'{"body": "a\\u0000b"}'),
    ("lone-high-surrogate", b'{"body": "\\ud800"}'),
    ("lone-low-surrogate", b'{"body": "x\\udc00y"}'),
    ("surrogate-in-client-id", b'{"body": "ok", "client_id": "\\ud800"}'),
    ("invalid-utf8", b'{"body": "\xff\xfe"}'),
]


@pytest.mark.parametrize(("case", "content"), RAW_BODIES, ids=[c for c, _ in RAW_BODIES])
async def test_malformed_request_body_is_rejected_and_nothing_stored(
    convo: tuple[Api, int], case: str, content: bytes
) -> None:
    api, thread_id = convo
    before = await history(api, thread_id)
    response = await post_raw(
        api, f"/api/v1/threads/{thread_id}/messages", content, api.as_user("acme", "ann")
    )
    assert_error(response, 422, "invalid")
    assert await history(api, thread_id) == before


async def test_oversized_request_body_is_a_json_error(convo: tuple[Api, int]) -> None:
    api, thread_id = convo
    before = await history(api, thread_id)
    content = b'{"body": "' + b"z" * (2 * 1024 * 1024) + b'"}'
    response = await post_raw(
        api, f"/api/v1/threads/{thread_id}/messages", content, api.as_user("acme", "ann")
    )
    assert response.status_code in (413, 422), response.text
    assert_error(response, response.status_code)
    assert await history(api, thread_id) == before


async def test_body_of_exactly_5000_characters_is_accepted(convo: tuple[Api, int]) -> None:
    api, thread_id = convo
    text = "a" * 4999 + "b"
    message = await api.send("acme", "ann", thread_id, f"  \n{text}\t ")
    assert message["body"] == text and len(message["body"]) == 5000
    assert (await history(api, thread_id))[-1]["body"] == text


async def test_length_counts_characters_not_bytes(convo: tuple[Api, int]) -> None:
    api, thread_id = convo
    text = "\U0001f600" * 2500 + "é" * 2500  # 5000 characters, 15000 UTF-8 bytes
    message = await api.send("acme", "ann", thread_id, text)
    assert message["body"] == text
    assert (await history(api, thread_id))[-1]["body"] == text


async def test_surrounding_whitespace_is_trimmed_inner_whitespace_kept(
    convo: tuple[Api, int],
) -> None:
    api, thread_id = convo
    message = await api.send("acme", "ann", thread_id, " \n\t line one\n\n  line two \r\n ")
    assert message["body"] == "line one\n\n  line two"
    stored = (await history(api, thread_id))[-1]
    assert stored["id"] == message["id"] and stored["body"] == "line one\n\n  line two"


HOSTILE = [
    "'; DROP TABLE messages; --",
    "1' OR '1'='1",
    "Robert'); DELETE FROM threads WHERE ('1'='1",
    "<img src=x onerror=alert(1)>",
    "<script>alert('x')</script>",
    '"quoted" \\backslash\\ {"json": true}',
    "%s %d {0} ${jndi:ldap://x}",
    "\u202eright-to-left \u2028 line separator",
]


async def test_sql_and_html_payloads_are_stored_and_returned_verbatim(
    convo: tuple[Api, int],
) -> None:
    api, thread_id = convo
    sent = [await api.send("acme", "ann", thread_id, text) for text in HOSTILE]
    assert [m["body"] for m in sent] == HOSTILE
    stored = await history(api, thread_id)
    assert [m["body"] for m in stored[-len(HOSTILE) :]] == HOSTILE
    # The tables are still there and still work.
    assert (await history(api, thread_id, user="coord"))[-1]["body"] == HOSTILE[-1]
    threads = (await api.get("acme", "coord", "/api/v1/candidates/c1/threads")).json()
    assert threads["threads"][0]["last_message"]["body"] == HOSTILE[-1]


async def test_hostile_client_id_round_trips(convo: tuple[Api, int]) -> None:
    api, thread_id = convo
    client_id = "'; DROP TABLE messages; -- <script>"
    first = await api.send("acme", "ann", thread_id, "one", client_id=client_id)
    assert first["client_id"] == client_id
    again = await api.post(
        "acme",
        "ann",
        f"/api/v1/threads/{thread_id}/messages",
        {"body": "two", "client_id": client_id},
    )
    assert again.status_code == 200 and again.json() == first


# --- unknown and malformed ids ----------------------------------------------------------


async def test_unknown_ids_are_404(convo: tuple[Api, int]) -> None:
    api, thread_id = convo
    before = await history(api, thread_id)
    missing = 9_000_000
    cases = [
        ("GET", f"/api/v1/threads/{missing}/messages", None),
        ("POST", f"/api/v1/threads/{missing}/messages", {"body": "hello"}),
        ("POST", f"/api/v1/threads/{missing}/read", {"message_id": before[0]["id"]}),
        ("DELETE", f"/api/v1/messages/{missing}", None),
        ("GET", "/api/v1/candidates/nobody", None),
        ("GET", "/api/v1/candidates/nobody/threads", None),
        ("POST", "/api/v1/candidates/nobody/threads", {"private": False}),
    ]
    for method, path, body in cases:
        response = await api.client.request(
            method, path, json=body, headers=api.as_user("acme", "ann")
        )
        assert_error(response, 404, "not_found")
    assert await history(api, thread_id) == before


async def test_ids_the_caller_cannot_see_are_404_like_unknown_ones(
    convo: tuple[Api, int],
) -> None:
    api, thread_id = convo
    before = await history(api, thread_id)
    message_id = before[0]["id"]
    for org, user in (("acme", "out"), ("acme", "abe"), ("other", "omem"), ("other", "oann")):
        for method, path, body in (
            ("GET", f"/api/v1/threads/{thread_id}/messages", None),
            ("POST", f"/api/v1/threads/{thread_id}/messages", {"body": "sneaky"}),
            ("POST", f"/api/v1/threads/{thread_id}/read", {"message_id": message_id}),
            ("DELETE", f"/api/v1/messages/{message_id}", None),
        ):
            response = await api.client.request(
                method, path, json=body, headers=api.as_user(org, user)
            )
            assert_error(response, 404, "not_found")
    for user in ("out", "abe"):
        assert_error(await api.get("acme", user, "/api/v1/candidates/c1"), 404, "not_found")
    assert await history(api, thread_id) == before


async def test_open_thread_with_unknown_agency_user_is_404(convo: tuple[Api, int]) -> None:
    api, _ = convo
    before = (await api.get("acme", "mem", "/api/v1/candidates/c1/threads")).json()
    for agency_user in ("ghost", "abe", "mem"):  # unknown, not linked, not an agency user
        response = await api.post(
            "acme",
            "mem",
            "/api/v1/candidates/c1/threads",
            {"agency_user": agency_user, "private": True},
        )
        assert_error(response, 404, "not_found")
    assert (await api.get("acme", "mem", "/api/v1/candidates/c1/threads")).json() == before


@pytest.mark.parametrize(
    ("user", "payload"),
    [
        ("mem", {"private": False}),  # a member must name the agency user
        ("mem", {"agency_user": "ann", "private": "yes"}),
        ("mem", {"agency_user": "ann", "private": 1}),
        ("mem", {"agency_user": 5, "private": False}),
        ("mem", {"agency_user": "bad id!", "private": False}),
        ("mem", {"agency_user": "x" * 65, "private": False}),
        ("ann", {"private": True}),  # an agency user must name the member
        ("ann", {"private": True, "member": "<script>"}),
        ("ann", {"private": None}),
    ],
)
async def test_open_thread_malformed_body_is_422(
    convo: tuple[Api, int], user: str, payload: dict[str, Any]
) -> None:
    api, _ = convo
    before = (await api.get("acme", "coord", "/api/v1/candidates/c1/threads")).json()
    response = await api.post("acme", user, "/api/v1/candidates/c1/threads", payload)
    assert_error(response, 422, "invalid")
    assert (await api.get("acme", "coord", "/api/v1/candidates/c1/threads")).json() == before


BAD_THREAD_IDS = ["abc", "1.5", "-1", "0", "1e3", "0x10", "99999999999999999999", "١٢"]


@pytest.mark.parametrize("bad", BAD_THREAD_IDS)
async def test_malformed_integer_ids_are_422(convo: tuple[Api, int], bad: str) -> None:
    api, thread_id = convo
    before = await history(api, thread_id)
    headers = api.as_user("acme", "ann")
    for method, path, body in (
        ("GET", f"/api/v1/threads/{bad}/messages", None),
        ("POST", f"/api/v1/threads/{bad}/messages", {"body": "hello"}),
        ("POST", f"/api/v1/threads/{bad}/read", {"message_id": before[0]["id"]}),
        ("DELETE", f"/api/v1/messages/{bad}", None),
    ):
        response = await api.client.request(method, path, json=body, headers=headers)
        assert_error(response, 422, "invalid")
    assert await history(api, thread_id) == before


@pytest.mark.parametrize("bad", ["bad$id", "bad id", "x" * 65, "caf\u00e9", "a,b", "<b>"])
async def test_malformed_candidate_ids_are_422(convo: tuple[Api, int], bad: str) -> None:
    api, _ = convo
    headers = api.as_user("acme", "coord")
    for method, path, body in (
        ("GET", f"/api/v1/candidates/{bad}", None),
        ("GET", f"/api/v1/candidates/{bad}/threads", None),
        ("POST", f"/api/v1/candidates/{bad}/threads", {"agency_user": "ann", "private": True}),
    ):
        response = await api.client.request(method, path, json=body, headers=headers)
        assert_error(response, 422, "invalid")


@pytest.mark.parametrize(
    "query",
    [
        "limit=0",
        "limit=101",
        "limit=-1",
        "limit=abc",
        "limit=1.5",
        "limit=99999999999999999999",
        "before=abc",
        "before=-1",
        "before=1.5",
        "before=99999999999999999999",
        "after=abc",
        "after=-1",
        "after=99999999999999999999",
        "before=5&after=1",
    ],
)
async def test_bad_paging_parameters_are_422(convo: tuple[Api, int], query: str) -> None:
    api, thread_id = convo
    response = await api.get("acme", "ann", f"/api/v1/threads/{thread_id}/messages?{query}")
    assert_error(response, 422, "invalid")


@pytest.mark.parametrize("limit", [1, 100])
async def test_limit_bounds_are_accepted(convo: tuple[Api, int], limit: int) -> None:
    api, thread_id = convo
    response = await api.get("acme", "ann", f"/api/v1/threads/{thread_id}/messages?limit={limit}")
    assert response.status_code == 200, response.text
    returned = response.json()["messages"]
    # The module's thread holds at least one message, and fewer than 100.
    assert 1 <= len(returned) <= limit and (limit > 1 or len(returned) == 1)


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"message_id": None},
        {"message_id": "1"},
        {"message_id": 1.5},
        {"message_id": True},
        {"message_id": 0},
        {"message_id": -3},
        {"message_id": 2**64},
        {"message_id": [1]},
    ],
)
async def test_bad_read_marker_body_is_422(convo: tuple[Api, int], payload: dict[str, Any]) -> None:
    api, thread_id = convo
    before = (await api.get("acme", "coord", "/api/v1/candidates/c1/threads")).json()
    response = await api.post("acme", "coord", f"/api/v1/threads/{thread_id}/read", payload)
    assert_error(response, 422, "invalid")
    assert (await api.get("acme", "coord", "/api/v1/candidates/c1/threads")).json() == before


async def test_read_marker_with_unknown_message_is_422(convo: tuple[Api, int]) -> None:
    api, thread_id = convo
    before = (await api.get("acme", "coord", "/api/v1/candidates/c1/threads")).json()
    response = await api.post(
        "acme", "coord", f"/api/v1/threads/{thread_id}/read", {"message_id": 9_000_000}
    )
    assert_error(response, 422, "invalid")
    assert (await api.get("acme", "coord", "/api/v1/candidates/c1/threads")).json() == before
    assert before["threads"][0]["unread"] >= 1  # nothing was marked read


async def test_unknown_route_and_wrong_method_are_json_errors(convo: tuple[Api, int]) -> None:
    api, thread_id = convo
    response = await api.get("acme", "ann", "/api/v1/no-such-thing")
    assert_error(response, 404)
    response = await api.client.patch(
        f"/api/v1/threads/{thread_id}/messages", json={}, headers=api.as_user("acme", "ann")
    )
    assert_error(response, 405)


# --- tokens ---------------------------------------------------------------------------


def _token(claims: dict[str, Any], key: str = SECRET, algorithm: str = "HS256") -> str:
    return jwt.encode(claims, key, algorithm=algorithm)


def _bad_authorizations() -> list[tuple[str, dict[str, str]]]:
    later = int(time.time()) + 3600
    good = {"org": "acme", "sub": "ann", "exp": later}
    return [
        ("missing", {}),
        ("empty", {"Authorization": ""}),
        ("scheme-only", {"Authorization": "Bearer"}),
        ("scheme-and-space", {"Authorization": "Bearer   "}),
        ("basic", {"Authorization": "Basic YW5uOnB3"}),
        ("no-scheme", {"Authorization": _token(good)}),
        ("garbage", {"Authorization": "Bearer not.a.jwt"}),
        ("two-parts", {"Authorization": "Bearer abc.def"}),
        ("bad-signature", {"Authorization": f"Bearer {_token(good, 'another-secret-key-9876')}"}),
        (
            "tampered",
            {"Authorization": "Bearer " + _token(good)[:-3] + ("AAA")},
        ),
        ("alg-none", {"Authorization": f"Bearer {jwt.encode(good, None, algorithm='none')}"}),
        ("hs512", {"Authorization": f"Bearer {_token(good, SECRET, 'HS512')}"}),
        (
            "expired",
            {
                "Authorization": "Bearer "
                + _token({"org": "acme", "sub": "ann", "exp": int(time.time()) - 3600})
            },
        ),
        ("no-exp", {"Authorization": f"Bearer {_token({'org': 'acme', 'sub': 'ann'})}"}),
        ("no-sub", {"Authorization": f"Bearer {_token({'org': 'acme', 'exp': later})}"}),
        ("no-org", {"Authorization": f"Bearer {_token({'sub': 'ann', 'exp': later})}"}),
        (
            "sub-not-string",
            {"Authorization": f"Bearer {_token({'org': 'acme', 'sub': 5, 'exp': later})}"},
        ),
        (
            "org-bad-chars",
            {"Authorization": f"Bearer {_token({'org': 'ac me', 'sub': 'ann', 'exp': later})}"},
        ),
        (
            "exp-not-a-time",
            {"Authorization": f"Bearer {_token({'org': 'acme', 'sub': 'ann', 'exp': 'soon'})}"},
        ),
        (
            "unprovisioned-user",
            {"Authorization": f"Bearer {_token({'org': 'acme', 'sub': 'ghost', 'exp': later})}"},
        ),
        (
            "unprovisioned-org",
            {"Authorization": f"Bearer {_token({'org': 'nowhere', 'sub': 'ann', 'exp': later})}"},
        ),
        ("service-token", {"Authorization": f"Bearer {SERVICE_TOKEN}"}),
    ]


BAD_AUTH = _bad_authorizations()


@pytest.mark.parametrize(("case", "headers"), BAD_AUTH, ids=[c for c, _ in BAD_AUTH])
async def test_bad_credentials_are_401_and_nothing_stored(
    convo: tuple[Api, int], case: str, headers: dict[str, str]
) -> None:
    api, thread_id = convo
    before = await history(api, thread_id)
    message_id = before[0]["id"]
    for method, path, body in (
        ("GET", "/api/v1/unread", None),
        ("GET", "/api/v1/candidates/c1", None),
        ("GET", "/api/v1/candidates/c1/threads", None),
        ("POST", "/api/v1/candidates/c1/threads", {"private": False}),
        ("GET", f"/api/v1/threads/{thread_id}/messages", None),
        ("POST", f"/api/v1/threads/{thread_id}/messages", {"body": "intruder"}),
        ("POST", f"/api/v1/threads/{thread_id}/read", {"message_id": message_id}),
        ("DELETE", f"/api/v1/messages/{message_id}", None),
    ):
        response = await api.client.request(method, path, json=body, headers=headers)
        assert_error(response, 401, "unauthorized")
    assert await history(api, thread_id) == before


async def test_token_of_user_of_another_org_is_401(world: Api) -> None:
    # omem is provisioned in org `other` only; a token claiming org acme is refused.
    response = await world.get("acme", "omem", "/api/v1/unread")
    assert_error(response, 401, "unauthorized")


async def test_user_token_on_provisioning_api_is_403(world: Api) -> None:
    headers = world.as_user("acme", "coord")
    cases = [
        ("PUT", "/api/v1/orgs/acme", {"name": "Taken over"}),
        ("PUT", "/api/v1/orgs/acme/agencies/ag", {"name": "X"}),
        (
            "PUT",
            "/api/v1/orgs/acme/users/evil",
            {"name": "Evil", "email": "e@x.example", "kind": "member", "agency": None},
        ),
        (
            "PUT",
            "/api/v1/orgs/acme/candidates/c1",
            {"name": "C1", "coordinator": "coord", "members": ["coord"], "agency_users": []},
        ),
        ("DELETE", "/api/v1/orgs/acme/candidates/c1", None),
    ]
    for method, path, body in cases:
        response = await world.client.request(method, path, json=body, headers=headers)
        assert_error(response, 403, "forbidden")
    # Nothing changed: mem still sees c1, evil was not provisioned.
    assert (await world.get("acme", "mem", "/api/v1/candidates/c1")).status_code == 200
    assert_error(await world.get("acme", "evil", "/api/v1/unread"), 401, "unauthorized")


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer"}],
    ids=["none", "basic", "empty-bearer"],
)
async def test_provisioning_without_service_token_is_401(
    world: Api, headers: dict[str, str]
) -> None:
    response = await world.client.put("/api/v1/orgs/neworg", json={"name": "N"}, headers=headers)
    assert_error(response, 401, "unauthorized")
    response = await world.client.delete("/api/v1/orgs/acme/candidates/c1", headers=headers)
    assert_error(response, 401, "unauthorized")
    assert (await world.get("acme", "mem", "/api/v1/candidates/c1")).status_code == 200
    # neworg does not exist: an agency under it is refused.
    response = await world.client.put(
        "/api/v1/orgs/neworg/agencies/a", json={"name": "A"}, headers=world.service
    )
    assert_error(response, 404, "not_found")


# --- provisioning input -------------------------------------------------------------


async def test_provisioning_under_unknown_org_is_404(world: Api) -> None:
    for path, body in (
        ("ghost/agencies/ag", {"name": "Ag"}),
        ("ghost/users/u1", {"name": "U", "email": "u@x.example", "kind": "member"}),
        (
            "ghost/candidates/c1",
            {"name": "C", "coordinator": None, "members": [], "agency_users": []},
        ),
    ):
        assert_error(await put_raw(world, path, body), 404, "not_found")
    response = await world.client.delete("/api/v1/orgs/ghost/candidates/c1", headers=world.service)
    assert_error(response, 404, "not_found")


@pytest.mark.parametrize(
    "path",
    [
        "bad$org",
        "bad%20org",
        "x" * 65,
        "acme/agencies/bad$ag",
        "acme/users/bad%20user",
        "acme/users/" + "u" * 65,
        "acme/candidates/caf%C3%A9",
        "acme/candidates/a%2Cb",
    ],
)
async def test_provisioning_invalid_path_ids_are_422(world: Api, path: str) -> None:
    if "/users/" in path:
        body: dict[str, Any] = {"name": "U", "email": "u@x.example", "kind": "member"}
    elif "/candidates/" in path:
        body = {"name": "C", "coordinator": None, "members": [], "agency_users": []}
    else:
        body = {"name": "N"}
    assert_error(await put_raw(world, path, body), 422, "invalid")
    if "/candidates/" in path:
        response = await world.client.delete(f"/api/v1/orgs/{path}", headers=world.service)
        assert_error(response, 422, "invalid")


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"name": ""},
        {"name": "   "},
        {"name": None},
        {"name": 5},
        {"name": ["A"]},
        {"name": "x" * 201},
        {"name": "a\x00b"},
    ],
)
async def test_org_and_agency_bad_names_are_422(world: Api, body: dict[str, Any]) -> None:
    assert_error(await put_raw(world, "neworg", body), 422, "invalid")
    assert_error(await put_raw(world, "acme/agencies/newag", body), 422, "invalid")
    # Neither was stored.
    assert_error(await put_raw(world, "neworg/agencies/a", {"name": "A"}), 404, "not_found")
    response = await put_raw(
        world,
        "acme/users/zed",
        {"name": "Zed", "email": "zed@x.example", "kind": "agency", "agency": "newag"},
    )
    assert_error(response, 422, "invalid")


async def test_provisioning_malformed_json_is_422(world: Api) -> None:
    for content in (b"{", b"[]", b'["name"]', b"null", b"", b'{"name": "\\ud800"}'):
        response = await post_raw(world, "/api/v1/orgs/neworg", content, world.service)
        # POST is not a provisioning method; PUT is.
        assert response.status_code == 405
        response = await world.client.put(
            "/api/v1/orgs/neworg",
            content=content,
            headers={**world.service, "content-type": "application/json"},
        )
        assert_error(response, 422, "invalid")
    assert_error(await put_raw(world, "neworg/agencies/a", {"name": "A"}), 404, "not_found")


# ann as the contract's `User`: an agency user names its agency.
ANN = {"id": "ann", "name": "Ann", "kind": "agency", "agency": {"id": "ag", "name": "Ag"}}

USER_BAD: list[tuple[str, dict[str, Any]]] = [
    ("kind-invalid", {"name": "Zed", "email": "zed@x.example", "kind": "admin"}),
    ("kind-missing", {"name": "Zed", "email": "zed@x.example"}),
    ("kind-null", {"name": "Zed", "email": "zed@x.example", "kind": None}),
    ("kind-case", {"name": "Zed", "email": "zed@x.example", "kind": "Member"}),
    ("agency-user-no-agency", {"name": "Zed", "email": "zed@x.example", "kind": "agency"}),
    (
        "agency-user-null-agency",
        {"name": "Zed", "email": "zed@x.example", "kind": "agency", "agency": None},
    ),
    (
        "member-with-agency",
        {"name": "Zed", "email": "zed@x.example", "kind": "member", "agency": "ag"},
    ),
    (
        "unknown-agency",
        {"name": "Zed", "email": "zed@x.example", "kind": "agency", "agency": "nope"},
    ),
    (
        "agency-bad-chars",
        {"name": "Zed", "email": "zed@x.example", "kind": "agency", "agency": "a g"},
    ),
    ("email-no-at", {"name": "Zed", "email": "zed.example.com", "kind": "member"}),
    ("email-empty", {"name": "Zed", "email": "", "kind": "member"}),
    ("email-missing", {"name": "Zed", "kind": "member"}),
    ("email-not-string", {"name": "Zed", "email": 7, "kind": "member"}),
    (
        "email-header-injection",
        {"name": "Zed", "email": "z@x.example\r\nBcc: all@x.example", "kind": "member"},
    ),
    ("name-blank", {"name": " ", "email": "zed@x.example", "kind": "member"}),
    ("name-missing", {"email": "zed@x.example", "kind": "member"}),
]


@pytest.mark.parametrize(("case", "body"), USER_BAD, ids=[c for c, _ in USER_BAD])
async def test_bad_user_is_422_and_not_stored(world: Api, case: str, body: dict[str, Any]) -> None:
    assert_error(await put_raw(world, "acme/users/zed", body), 422, "invalid")
    # zed was not provisioned: its token is refused.
    assert_error(await world.get("acme", "zed", "/api/v1/unread"), 401, "unauthorized")
    # The same bad update of an existing user changes nothing.
    existing = "ann" if body.get("kind") == "agency" else "coord"
    assert_error(await put_raw(world, f"acme/users/{existing}", body), 422, "invalid")
    candidate = (await world.get("acme", "mem", "/api/v1/candidates/c1")).json()
    assert candidate["coordinator"] == {
        "id": "coord",
        "name": "Coord",
        "kind": "member",
        "agency": None,
    }
    assert candidate["agency_users"] == [ANN]


async def test_changing_a_users_kind_is_409_and_changes_nothing(world: Api) -> None:
    response = await put_raw(
        world,
        "acme/users/ann",
        {"name": "Ann Member", "email": "ann@acme.example", "kind": "member", "agency": None},
    )
    assert_error(response, 409, "conflict")
    response = await put_raw(
        world,
        "acme/users/mem",
        {"name": "Mem Agency", "email": "mem@ag.example", "kind": "agency", "agency": "ag"},
    )
    assert_error(response, 409, "conflict")
    candidate = (await world.get("acme", "mem", "/api/v1/candidates/c1")).json()
    assert candidate["agency_users"] == [ANN]
    me = (await world.get("acme", "ann", "/api/v1/candidates/c1")).json()
    assert me["agency_users"] == [ANN]
    # mem is still a member with access.
    thread = await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": False})
    assert thread["kind"] == "agency"


CANDIDATE_BAD: list[tuple[str, dict[str, Any]]] = [
    ("unknown-coordinator", {"coordinator": "ghost", "members": ["mem"], "agency_users": []}),
    ("unknown-member", {"coordinator": "coord", "members": ["ghost"], "agency_users": []}),
    ("unknown-agency-user", {"coordinator": "coord", "members": [], "agency_users": ["ghost"]}),
    ("coordinator-is-agency", {"coordinator": "ann", "members": [], "agency_users": []}),
    ("member-is-agency", {"coordinator": "coord", "members": ["abe"], "agency_users": []}),
    ("agency-user-is-member", {"coordinator": "coord", "members": [], "agency_users": ["out"]}),
    ("other-org-user", {"coordinator": "coord", "members": ["omem"], "agency_users": []}),
    ("member-bad-chars", {"coordinator": "coord", "members": ["m m"], "agency_users": []}),
    ("members-not-list", {"coordinator": "coord", "members": "mem", "agency_users": []}),
    ("agency-users-null", {"coordinator": "coord", "members": [], "agency_users": None}),
    ("member-number", {"coordinator": "coord", "members": [5], "agency_users": []}),
    ("coordinator-number", {"coordinator": 1, "members": [], "agency_users": []}),
]


@pytest.mark.parametrize(("case", "fields"), CANDIDATE_BAD, ids=[c for c, _ in CANDIDATE_BAD])
async def test_bad_candidate_is_422_and_not_stored(
    world: Api, case: str, fields: dict[str, Any]
) -> None:
    body = {"name": "Changed", **fields}
    # A new candidate is not created.
    assert_error(await put_raw(world, "acme/candidates/c9", body), 422, "invalid")
    assert_error(await world.get("acme", "coord", "/api/v1/candidates/c9"), 404, "not_found")
    # An existing one is not changed.
    assert_error(await put_raw(world, "acme/candidates/c1", body), 422, "invalid")
    for user in ("coord", "mem", "ann"):
        response = await world.get("acme", user, "/api/v1/candidates/c1")
        assert response.status_code == 200, response.text
        assert response.json()["name"] == "C1"
    assert_error(await world.get("acme", "abe", "/api/v1/candidates/c1"), 404, "not_found")
    assert_error(await world.get("acme", "out", "/api/v1/candidates/c1"), 404, "not_found")


@pytest.mark.parametrize(
    "name",
    ["Ann\r\nSmith", "Ann\nBcc: x@evil.example", 'Ann "The" <b>Agent</b> \\ \u2028 \t end'],
    ids=["crlf", "lf-header", "json-specials"],
)
async def test_names_with_control_characters_never_break_json(world: Api, name: str) -> None:
    """Names with CR/LF are accepted (they are data, not headers) and round-trip as JSON."""
    response = await put_raw(
        world,
        "acme/users/ann",
        {"name": name, "email": "ann@ag.example", "kind": "agency", "agency": "ag"},
    )
    assert response.status_code == 200, response.text
    assert response.json()["name"] == name
    candidate = await world.get("acme", "mem", "/api/v1/candidates/c1")
    assert candidate.status_code == 200
    assert candidate.json()["agency_users"] == [
        {"id": "ann", "name": name, "kind": "agency", "agency": {"id": "ag", "name": "Ag"}}
    ]
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    assert thread["agency_user"]["name"] == name
    sent = await world.send("acme", "ann", thread["id"], "hello")
    assert sent["author"]["name"] == name
    # Surrounding whitespace (CR/LF included) is trimmed like any other.
    response = await put_raw(
        world,
        "acme/candidates/c1",
        {
            "name": "\r\n  C One \r\n",
            "coordinator": "coord",
            "members": ["mem"],
            "agency_users": ["ann"],
        },
    )
    assert response.status_code == 200, response.text
    assert (await world.get("acme", "mem", "/api/v1/candidates/c1")).json()["name"] == "C One"
