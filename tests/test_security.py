"""Security checks in one place: each property the server must hold, and the tests that
check it (here or elsewhere). The tests below add what the other files do not cover;
`test_the_index_names_real_tests` keeps this list honest.

- Bad, forged, expired tokens: 401; alg none/HS512 refused:
    test_api_input.py::test_bad_credentials_are_401_and_nothing_stored
- A token of one org is no credential in another:
    test_api_input.py::test_token_of_user_of_another_org_is_401
- Provisioning takes the service token only:
    test_api_input.py::test_user_token_on_provisioning_api_is_403
    test_api_input.py::test_provisioning_without_service_token_is_401
- The socket handshake checks credentials (403, never accept-then-close):
    test_ws_protocol.py::test_handshake_refuses_missing_and_bad_credentials
- The session cookie is HttpOnly and SameSite; bad tokens set none:
    test_api_behaviour.py::test_session_cookie_is_httponly_and_samesite
    test_api_behaviour.py::test_session_with_bad_token_is_401
- Origin allowlist on /ws, exact match:
    test_ws_protocol.py::test_handshake_origins
    test_ws_protocol.py::test_handshake_with_session_cookie
    test_ws_basic.py::test_bad_origin_is_refused
    test_security.py::test_origin_allowlist_from_the_environment_on_ws_and_cookie_requests
- CSRF: cookie writes need an allowed Origin:
    test_api_behaviour.py::test_cookie_writes_need_an_allowed_origin
    test_api_behaviour.py::test_cookie_write_from_configured_origin
    test_security.py::test_csrf_on_every_cookie_write_and_no_cors
- Tokens and bodies never in logs:
    test_api_behaviour.py::test_logs_never_contain_tokens_or_bodies (in-process)
    test_security.py::test_a_live_server_at_debug_level_logs_no_secret (the real `serve`)
- Per-user send rate limit (429 / rate_limited):
    test_api_behaviour.py::test_send_rate_limit
    test_ws_protocol.py::test_send_rate_limit
    test_security.py::test_one_send_budget_per_user_across_rest_and_sockets
- Per-user connection limit (4029):
    test_ws_protocol.py::test_connection_limit_per_user
    test_security.py::test_connection_limit_counts_every_socket_and_refusals_take_no_slot
- An expired session closes its sockets (4001):
    test_ws_protocol.py::test_expired_session_is_closed_with_4001
    test_security.py::test_expired_sessions_close_bearer_and_cookie_sockets
- Idle sockets are closed (4000), slow ones (4008):
    test_ws_protocol.py::test_idle_socket_is_closed_with_4000
    test_ws_protocol.py::test_slow_client_is_closed_and_does_not_hold_up_others
- Ids of another org are 404, like unknown ones:
    test_api_input.py::test_ids_the_caller_cannot_see_are_404_like_unknown_ones
    test_ws_protocol.py::test_other_org_gets_only_its_own_candidate
    test_security.py::test_cross_org_ids_are_404_everywhere_and_indistinguishable
- Losing access ends live delivery:
    test_ws_protocol.py::test_member_losing_access_is_unsubscribed
    test_ws_protocol.py::test_unlinked_agency_user_is_unsubscribed
- Who sees which thread:
    test_api_rules.py::test_rules_matrix_over_http
    test_ws_protocol.py::test_private_thread_events_reach_only_its_two_people
- Email header injection; HTML part escaped:
    test_email.py::test_no_header_injection_and_the_html_part_escapes
    test_hostile.py::test_crlf_in_names_never_reaches_email_headers
    test_hostile.py::test_an_email_address_is_one_recipient_or_refused
- Unsubscribe links are signed; tampered ones do nothing:
    test_email.py::test_one_click_unsubscribe_and_tampered_tokens
    test_email.py::test_the_unsubscribe_link_works_without_signing_in
- SQL and HTML are data; pages render text, never markup:
    test_api_input.py::test_sql_and_html_payloads_are_stored_and_returned_verbatim
    test_hostile.py::test_html_and_sql_over_the_socket_are_kept_verbatim
    test_hostile.py::test_pages_never_turn_data_into_markup
    test_browser.py::test_message_bodies_render_as_plain_text
- Frames the server cannot read close the socket (1007 bad UTF-8, 1009 over 64 KiB):
    test_ws_protocol.py::test_invalid_utf8_text_frame_closes_with_1007
    test_ws_protocol.py::test_frame_over_64_kib_closes_with_1009
    test_hostile.py::test_invalid_utf8_text_frames_close_with_1007
    test_hostile.py::test_oversized_messages_close_with_1009
- Deep nesting, huge ids and oversized bodies are input errors, never server errors:
    test_api_input.py::test_oversized_request_body_is_a_json_error
    test_hostile.py::test_deeply_nested_frames_are_invalid_and_the_socket_lives_on
    test_hostile.py::test_deeply_nested_rest_bodies_are_422
    test_hostile.py::test_huge_and_negative_ids_in_paths
    test_hostile.py::test_huge_ids_in_queries_and_bodies
    test_hostile.py::test_huge_ints_in_frames
    test_hostile.py::test_a_nul_in_the_candidate_list_cursor_is_not_a_server_error
- Hostile input never fails the server:
    test_hostile.py::test_generated_frames_get_one_coded_answer_and_the_socket_lives_on
    test_hostile.py::test_generated_requests_never_fail_the_server
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import secrets
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import websockets
from asgi_lifespan import LifespanManager

from harness.services import free_port
from mailer.preferences import unsubscribe_token
from server.app import create_app
from server.settings import ConfigError, Settings
from tests.support.realtime import WsClient, serve, ws_url
from tests.support.world import SECRET, SERVICE_TOKEN, Api, populate_world
from tests.support.ws import closed_with, custom_server, refused, user_token

TESTS = Path(__file__).resolve().parent
COMMAND = str(TESTS.parent / ".venv" / "bin" / "agency-messaging")


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.json()["error"]["code"] == code, response.text


async def login(client: httpx.AsyncClient, token: str, **headers: str) -> str:
    """Trades a user token for the session cookie; returns the cookie's value."""
    response = await client.post("/api/v1/session", json={"token": token}, headers=headers)
    assert response.status_code == 200, response.text
    cookie = response.cookies.get("am_session")
    assert cookie
    return cookie


def test_the_index_names_real_tests() -> None:
    listed = re.findall(r"(test_\w+\.py)::(test_\w+)", __doc__ or "")
    assert len(listed) > 20
    for filename, name in listed:
        source = (TESTS / filename).read_text()
        assert re.search(rf"^(async )?def {name}\(", source, re.M), f"{filename}::{name}"


# --- origins and CSRF -----------------------------------------------------------------------

ALLOWED = "https://app.example.com"
FOREIGN_ORIGINS = [
    "http://evil.com",
    "https://evil.com",
    "http://app.example.com.evil.com",
    "https://app.example.com.evil.com",
    "https://evil.com/https://app.example.com",
    "https://app.example.com@evil.com",
    "https://sub.app.example.com",
    "https://app.example.co",
    "http://app.example.com",  # the scheme differs
    "https://app.example.com:8443",  # the port differs
    "wss://app.example.com",
    "null",
    "*",
    "",
]


def test_allowed_origins_must_be_origins() -> None:
    """A bare host name in AM_ALLOWED_ORIGINS is a configuration error, not a silent
    allow-all or allow-nothing."""
    base = {"AM_SECRET": SECRET, "AM_SERVICE_TOKEN": SERVICE_TOKEN}
    for bad in ("app.example.com", "*.example.com", "https://app.example.com/path", "ftp://x.y"):
        with pytest.raises(ConfigError, match="AM_ALLOWED_ORIGINS"):
            Settings.from_env({**base, "AM_ALLOWED_ORIGINS": bad})
    settings = Settings.from_env({**base, "AM_ALLOWED_ORIGINS": f" {ALLOWED}/ , https://b.example"})
    assert settings.allowed_origins == frozenset({ALLOWED, "https://b.example"})


async def test_origin_allowlist_from_the_environment_on_ws_and_cookie_requests(
    db_url: str, tmp_path: Path
) -> None:
    env = {
        "AM_SECRET": SECRET,
        "AM_SERVICE_TOKEN": SERVICE_TOKEN,
        "AM_DATABASE_URL": db_url,
        "AM_ALLOWED_ORIGINS": ALLOWED,
        "AM_VAR_DIR": str(tmp_path / "var"),
        "AM_PUBLIC_URL": "https://messaging.example.net",
        "AM_SEND_RATE_PER_MINUTE": "0",
        "AM_EMAIL_WORKER": "0",
    }
    app = create_app(Settings.from_env(env), auto_migrate=False)
    transport = httpx.ASGITransport(app=app)
    async with (
        LifespanManager(app),
        httpx.AsyncClient(transport=transport, base_url="http://testserver") as in_process,
        serve(app, lifespan="off") as url,
        httpx.AsyncClient(base_url=url) as http,
    ):
        api = await populate_world(Api(in_process))
        thread = await api.open_thread("acme", "ann", "c1", {"private": False})
        port = int(url.rsplit(":", 1)[1])
        cookie = await login(http, api.token("acme", "mem"))
        http.cookies.clear()
        bearer = f"Bearer {api.token('acme', 'mem')}"
        own_variants = [
            f"https://127.0.0.1:{port}",
            f"http://127.0.0.1:{port + 1}",
            f"http://localhost:{port}",
        ]
        path = f"/api/v1/threads/{thread['id']}/messages"
        for origin in FOREIGN_ORIGINS + own_variants:
            assert await refused(url, Authorization=bearer, Origin=origin) == 403, origin
            cookie_header = f"am_session={cookie}"
            assert await refused(url, Cookie=cookie_header, Origin=origin) == 403, origin
            response = await http.post(
                path,
                json={"body": "csrf"},
                headers={"Cookie": cookie_header, "Origin": origin},
            )
            assert_error(response, 403, "forbidden")
        for origin in (ALLOWED, url, None):
            headers = {} if origin is None else {"Origin": origin}
            for credentials in ({"Authorization": bearer}, {"Cookie": f"am_session={cookie}"}):
                client = await WsClient.connect(url, headers={**headers, **credentials})
                assert (await client.request("ping"))["type"] == "pong", origin
                await client.close()
        for origin in (ALLOWED, url):
            response = await http.post(
                path,
                json={"body": f"from {origin}"},
                headers={"Cookie": f"am_session={cookie}", "Origin": origin},
            )
            assert response.status_code == 201, (origin, response.text)
        listed = await api.get("acme", "mem", path)
        # Only the two allowed writes went through.
        assert [m["body"] for m in listed.json()["messages"]] == [f"from {ALLOWED}", f"from {url}"]


async def test_csrf_on_every_cookie_write_and_no_cors(world: Api, live: str) -> None:
    """Every unsafe method on the cookie needs an allowed Origin (test_api_behaviour.py
    covers sending, reading, opening threads and deleting); cookies never reach the
    provisioning API; and no response opens CORS to a foreign origin."""
    async with httpx.AsyncClient(base_url=live) as http:
        cookie = await login(http, world.token("acme", "mem"))
        http.cookies.clear()
        jar = {"Cookie": f"am_session={cookie}"}
        for origin_headers in (
            {},
            {"Origin": "https://evil.com"},
            {"Origin": "null"},
            {"Referer": f"{live}/candidates/c1"},  # a Referer is no Origin
        ):
            headers = {**jar, **origin_headers}
            response = await http.put(
                "/api/v1/me/notifications", json={"muted": True}, headers=headers
            )
            assert_error(response, 403, "forbidden")
            response = await http.delete("/api/v1/session", headers=headers)
            assert_error(response, 403, "forbidden")
            assert "am_session" not in response.headers.get("set-cookie", "")
        settings = await http.get("/api/v1/me/notifications", headers=jar)
        assert settings.status_code == 200 and settings.json()["muted"] is False

        # Login CSRF: a foreign page cannot sign the browser in as someone else.
        response = await http.post(
            "/api/v1/session",
            json={"token": world.token("acme", "ann")},
            headers={"Origin": "https://evil.com"},
        )
        assert_error(response, 403, "forbidden")
        assert "set-cookie" not in response.headers

        # The cookie is no credential for provisioning, whatever the origin.
        for origin in (live, "https://evil.com"):
            response = await http.put(
                "/api/v1/orgs/acme", json={"name": "Taken"}, headers={**jar, "Origin": origin}
            )
            assert_error(response, 401, "unauthorized")

        # Reads from a foreign origin get no CORS header, so a browser keeps them from the page.
        for method, path in (("GET", "/api/v1/unread"), ("OPTIONS", "/api/v1/unread")):
            response = await http.request(
                method,
                path,
                headers={
                    **jar,
                    "Origin": "https://evil.com",
                    "Access-Control-Request-Method": "POST",
                },
            )
            assert "access-control-allow-origin" not in response.headers, (method, response)
            assert "access-control-allow-credentials" not in response.headers

        # With an allowed Origin, the same writes work.
        headers = {**jar, "Origin": live}
        response = await http.put("/api/v1/me/notifications", json={"muted": True}, headers=headers)
        assert response.status_code == 200 and response.json()["muted"] is True
        response = await http.delete("/api/v1/session", headers=headers)
        assert response.status_code == 204


# --- logs ------------------------------------------------------------------------------------


def _wait_healthy(process: subprocess.Popen[bytes], base: str, log: Path) -> None:
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, log.read_text()
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        assert time.monotonic() < deadline, "no /healthz 200 within 30 s"
        time.sleep(0.1)


async def _exercise(base: str, secret: str, service: str, marker: str) -> list[str]:
    """Does what users do, with credentials and marked bodies; returns the secrets used."""
    svc = {"Authorization": f"Bearer {service}"}
    async with httpx.AsyncClient(base_url=base, timeout=10) as http:
        for path, body in (
            ("acme", {"name": "Acme"}),
            ("acme/agencies/ag", {"name": "Ag"}),
            ("acme/users/mem", {"name": "Mem", "email": "mem@acme.example", "kind": "member"}),
            (
                "acme/users/ann",
                {"name": "Ann", "email": "ann@ag.example", "kind": "agency", "agency": "ag"},
            ),
            (
                "acme/candidates/c1",
                {"name": "C1", "coordinator": "mem", "members": ["mem"], "agency_users": ["ann"]},
            ),
        ):
            response = await http.put(f"/api/v1/orgs/{path}", json=body, headers=svc)
            assert response.status_code in (200, 201), response.text
        ann = jwt.encode(
            {"org": "acme", "sub": "ann", "exp": int(time.time()) + 600}, secret, algorithm="HS256"
        )
        mem = jwt.encode(
            {"org": "acme", "sub": "mem", "exp": int(time.time()) + 600}, secret, algorithm="HS256"
        )
        bearer = {"Authorization": f"Bearer {ann}"}
        thread = (
            await http.post(
                "/api/v1/candidates/c1/threads", json={"private": False}, headers=bearer
            )
        ).json()
        messages = f"/api/v1/threads/{thread['id']}/messages"
        sent = await http.post(
            messages, json={"body": f"{marker} rest", "client_id": f"{marker}-cid"}, headers=bearer
        )
        assert sent.status_code == 201, sent.text
        # Refused ones too: an invalid body, a bad token, a token in the query string.
        await http.post(messages, json={"body": f"{marker} {'x' * 5001}"}, headers=bearer)
        await http.get("/api/v1/unread", headers={"Authorization": f"Bearer {ann}x"})
        await http.get(f"/api/v1/unread?token={ann}&access_token={mem}")
        unsubscribe = unsubscribe_token(secret, 1, None)
        await http.get("/unsubscribe", params={"token": unsubscribe})
        cookie = await login(http, mem)
        http.cookies.clear()
        jar = {"Cookie": f"am_session={cookie}", "Origin": base}
        response = await http.post(messages, json={"body": f"{marker} cookie"}, headers=jar)
        assert response.status_code == 201, response.text

        ws = ws_url(base)
        async with (
            websockets.connect(ws, additional_headers=bearer) as agent,
            websockets.connect(ws, additional_headers=jar) as member,
        ):
            await member.send(json.dumps({"op": "subscribe", "candidate": "c1", "ref": 1}))
            assert json.loads(await member.recv())["type"] == "ack"
            await agent.send(
                json.dumps({"op": "send", "thread": thread["id"], "body": f"{marker} ws"})
            )
            seen: list[str] = []
            try:
                async with asyncio.timeout(10):
                    while f"{marker} ws" not in "".join(seen):
                        seen.append(str(await member.recv()))
            except TimeoutError:
                raise AssertionError(seen) from None
            await agent.send(json.dumps({"op": "send", "thread": "bad", "body": marker}))
            await agent.recv()
        deleted = await http.delete(f"/api/v1/messages/{sent.json()['id']}", headers=bearer)
        assert deleted.status_code == 204
    return [ann, mem, ann.split(".")[2], mem.split(".")[2], cookie, unsubscribe.split(".")[2]]


def test_a_live_server_at_debug_level_logs_no_secret(tmp_path: Path) -> None:
    """`agency-messaging serve` at AM_LOG_LEVEL=DEBUG, its whole output captured, while
    users sign in, send over REST and the socket, and make mistakes: no token, cookie,
    service token, unsubscribe token or message body in any line."""
    secret, service = secrets.token_urlsafe(32), secrets.token_urlsafe(24)
    marker = f"Marker-{secrets.token_hex(6)}"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AM_")}
    env.update(
        AM_SECRET=secret,
        AM_SERVICE_TOKEN=service,
        AM_LOG_LEVEL="DEBUG",
        AM_VAR_DIR=str(tmp_path / "var"),
        AM_PUBLIC_URL=f"http://127.0.0.1:{port}",
        AM_EMAIL_DELAY_SECONDS="0.2",  # alerts are composed and written while it runs
    )
    log_path = tmp_path / "serve.log"
    base = f"http://127.0.0.1:{port}"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [COMMAND, "serve", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            _wait_healthy(process, base, log_path)
            used = asyncio.run(_exercise(base, secret, service, marker))
            time.sleep(1.0)  # the alert worker's turn
        finally:
            process.terminate()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
    text = log_path.read_text(errors="replace")
    assert " DEBUG " in text, "the server did not log at DEBUG level"
    assert "agency_messaging.access" in text, text[-3000:]
    needles = [marker, service, *used]
    leaks = [line[:300] for line in text.splitlines() if any(n in line for n in needles)]
    assert not leaks, "\n".join(leaks)


# --- limits -------------------------------------------------------------------------------


async def test_one_send_budget_per_user_across_rest_and_sockets(
    db_url: str, tmp_path: Path
) -> None:
    """6 a minute, so bursts of 3: spent by REST and two sockets together."""
    async with custom_server(db_url, tmp_path, send_rate_per_minute=6) as server:
        api = server.api
        thread = await api.open_thread("acme", "ann", "c1", {"private": False})
        path = f"/api/v1/threads/{thread['id']}/messages"
        first = await WsClient.connect(server.url, api.token("acme", "ann"))
        second = await WsClient.connect(server.url, api.token("acme", "ann"))
        assert (await api.post("acme", "ann", path, {"body": "rest"})).status_code == 201
        assert (await first.request("send", thread=thread["id"], body="ws 1"))["type"] == "ack"
        assert (await second.request("send", thread=thread["id"], body="ws 2"))["type"] == "ack"

        response = await api.post("acme", "ann", path, {"body": "over"})
        assert_error(response, 429, "rate_limited")
        assert int(response.headers["retry-after"]) >= 1
        for client in (first, second):
            error = await client.request("send", thread=thread["id"], body="over")
            assert error["type"] == "error" and error["code"] == "rate_limited", error
            # Only sends are limited: the socket lives, pings and reads are answered.
            assert (await client.request("ping"))["type"] == "pong"
        # Another user has a budget of its own.
        assert (await api.post("acme", "mem", path, {"body": "mem"})).status_code == 201
        listed = (await api.get("acme", "mem", path)).json()["messages"]
        assert [m["body"] for m in listed] == ["rest", "ws 1", "ws 2", "mem"]
        await first.close()
        await second.close()


async def _connect_until_accepted(url: str, token: str, timeout: float = 5.0) -> WsClient:
    """A new socket of a user whose earlier one just closed (presence catches up)."""
    deadline = time.monotonic() + timeout
    while True:
        client = await WsClient.connect(url, token)
        answer = await client.request("ping")
        if answer["type"] == "pong":
            return client
        await client.close()
        assert time.monotonic() < deadline, answer
        await asyncio.sleep(0.1)


async def test_connection_limit_counts_every_socket_and_refusals_take_no_slot(
    db_url: str, tmp_path: Path
) -> None:
    async with custom_server(db_url, tmp_path, max_connections_per_user=2) as server:
        api, url = server.api, server.url
        async with httpx.AsyncClient(base_url=url) as http:
            cookie = await login(http, api.token("acme", "mem"))
        # A bearer socket and a cookie socket: two of the same user.
        by_bearer = await WsClient.connect(url, api.token("acme", "mem"))
        by_cookie = await WsClient.connect(url, headers={"Cookie": f"am_session={cookie}"})
        for client in (by_bearer, by_cookie):
            assert (await client.request("ping"))["type"] == "pong"
        for _ in range(3):  # refused ones do not add up
            extra = await WsClient.connect(url, api.token("acme", "mem"))
            assert (await extra.next_event(type="error"))["code"] == "rate_limited"
            assert await closed_with(extra) == 4029
            await extra.close()
        await by_cookie.close()
        replacement = await _connect_until_accepted(url, api.token("acme", "mem"))
        # Exactly one slot came free.
        extra = await WsClient.connect(url, api.token("acme", "mem"))
        assert await closed_with(extra) == 4029
        await extra.close()
        other = await WsClient.connect(url, api.token("acme", "coord"))
        assert (await other.request("ping"))["type"] == "pong"
        for client in (by_bearer, replacement, other):
            assert (await client.request("ping"))["type"] == "pong"
            await client.close()


async def test_expired_sessions_close_bearer_and_cookie_sockets(world: Api, live: str) -> None:
    token = user_token("acme", "mem", time.time() + 3)
    async with httpx.AsyncClient(base_url=live) as http:
        cookie = await login(http, token)
    by_bearer = await WsClient.connect(live, token)
    by_cookie = await WsClient.connect(live, headers={"Cookie": f"am_session={cookie}"})
    for client in (by_bearer, by_cookie):
        assert (await client.request("subscribe", candidate="c1"))["type"] == "ack"
    for client in (by_bearer, by_cookie):
        assert await closed_with(client, timeout=10) == 4001
        await client.close()
    # The same credentials cannot hold a socket again: refused, or closed at once.
    for headers in ({"Authorization": f"Bearer {token}"}, {"Cookie": f"am_session={cookie}"}):
        try:
            client = await WsClient.connect(live, headers=headers)
        except websockets.InvalidStatus as refusal:
            assert refusal.response.status_code == 403
            continue
        assert await closed_with(client, timeout=5) == 4001
        assert not [f for f in client.frames if f.get("type") in ("ack", "pong")]
        await client.close()


# --- cross-org ids ---------------------------------------------------------------------------


async def test_cross_org_ids_are_404_everywhere_and_indistinguishable(
    world: Api, live: str
) -> None:
    """Org `other` probes every id of org `acme`: each answer equals the one for an id that
    does not exist at all, over REST and the socket."""
    await world.candidate("acme", "c2", coordinator="coord", members=["mem"], agency_users=["ann"])
    agency = await world.open_thread("acme", "ann", "c2", {"private": False})
    private = await world.open_thread("acme", "ann", "c2", {"private": True, "member": "coord"})
    message = await world.send("acme", "ann", agency["id"], "acme only")
    secret = await world.send("acme", "ann", private["id"], "acme private")
    missing = 9_000_000
    acme_threads = (agency["id"], private["id"])
    acme_messages = (message["id"], secret["id"])

    def rest_probes(thread_id: int, message_id: int, cand: str) -> list[tuple[str, str, Any]]:
        return [
            ("GET", f"/api/v1/candidates/{cand}", None),
            ("GET", f"/api/v1/candidates/{cand}/threads", None),
            ("POST", f"/api/v1/candidates/{cand}/threads", {"private": False}),
            ("GET", f"/api/v1/threads/{thread_id}/messages", None),
            ("POST", f"/api/v1/threads/{thread_id}/messages", {"body": "cross"}),
            ("POST", f"/api/v1/threads/{thread_id}/read", {"message_id": message_id}),
            ("DELETE", f"/api/v1/messages/{message_id}", None),
        ]

    async def rest(user: str, probes: list[tuple[str, str, Any]]) -> list[tuple[int, Any]]:
        out = []
        for method, path, body in probes:
            response = await world.client.request(
                method, path, json=body, headers=world.as_user("other", user)
            )
            out.append((response.status_code, response.json()))
        return out

    for user in ("omem", "oann"):
        unknown = await rest(user, rest_probes(missing, missing, "nobody"))
        assert all(status == 404 for status, _ in unknown), unknown
        for thread_id, message_id in zip(acme_threads, acme_messages, strict=True):
            assert await rest(user, rest_probes(thread_id, message_id, "c2")) == unknown, user
        # A thread with an acme user, on the other org's own c1, is no way in either.
        body = {"agency_user": "ann", "private": True} if user == "omem" else {}
        if user == "oann":
            body = {"private": True, "member": "coord"}
        response = await world.post("other", user, "/api/v1/candidates/c1/threads", body)
        assert_error(response, 404, "not_found")
        response = await world.client.put(
            "/api/v1/me/notifications",
            json={"muted_candidates": ["c2"]},
            headers=world.as_user("other", user),
        )
        assert_error(response, 422, "invalid")  # as for a candidate that does not exist
        listed = (await world.get("other", user, "/api/v1/candidates")).json()["candidates"]
        assert [c["id"] for c in listed] == ["c1"]
        assert (await world.get("other", user, "/api/v1/unread")).json()["candidates"] == []
        other_threads = (await world.get("other", user, "/api/v1/candidates/c1/threads")).json()
        assert not {t["id"] for t in other_threads["threads"]} & set(acme_threads)

        client = await WsClient.connect(live, world.token("other", user))

        async def ws(ops: list[dict[str, Any]], client: WsClient = client) -> list[Any]:
            answers = []
            for fields in ops:
                answer = await client.request(**fields)
                answers.append((answer["type"], answer.get("code"), answer.get("message")))
            return answers

        def ws_probes(thread_id: int, message_id: int, cand: str) -> list[dict[str, Any]]:
            return [
                {"op": "subscribe", "candidate": cand},
                {"op": "subscribe", "candidate": cand, "after": 0},
                {"op": "send", "thread": thread_id, "body": "cross"},
                {"op": "read", "thread": thread_id, "message_id": message_id},
                {"op": "delete", "message": message_id},
            ]

        unknown_ws = await ws(ws_probes(missing, missing, "nobody"))
        assert all(kind == "error" and code == "not_found" for kind, code, _ in unknown_ws)
        for thread_id, message_id in zip(acme_threads, acme_messages, strict=True):
            assert await ws(ws_probes(thread_id, message_id, "c2")) == unknown_ws, user
        await client.close()

    # Nothing of acme changed.
    listed = await world.get("acme", "ann", f"/api/v1/threads/{agency['id']}/messages")
    assert [(m["body"], m["deleted"]) for m in listed.json()["messages"]] == [("acme only", False)]
    threads = (await world.get("acme", "coord", "/api/v1/candidates/c2/threads")).json()
    assert {t["id"]: t["unread"] for t in threads["threads"]} == {
        agency["id"]: 1,
        private["id"]: 1,
    }
