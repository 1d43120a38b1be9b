"""The REST behaviour the contract promises: paging, idempotency, deletion, read markers,
candidate shapes, provisioning, the session cookie, health, metrics, logs and rate limits.
Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from asgi_lifespan import LifespanManager
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from starlette.applications import Starlette
from starlette.routing import Route

from server.app import create_app
from server.settings import Settings
from storage.database import Database
from tests.support.realtime import WsClient
from tests.support.world import SECRET, Api, make_settings, populate_world

# --- helpers --------------------------------------------------------------------------


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]


async def page(api: Api, user: str, thread_id: int, query: str = "") -> dict[str, Any]:
    response = await api.get("acme", user, f"/api/v1/threads/{thread_id}/messages?{query}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def ids(result: dict[str, Any]) -> list[int]:
    return [m["id"] for m in result["messages"]]


async def threads(api: Api, user: str, cand: str = "c1") -> dict[int, dict[str, Any]]:
    response = await api.get("acme", user, f"/api/v1/candidates/{cand}/threads")
    assert response.status_code == 200, response.text
    return {t["id"]: t for t in response.json()["threads"]}


async def read(api: Api, user: str, thread_id: int, message_id: int) -> httpx.Response:
    return await api.post(
        "acme", user, f"/api/v1/threads/{thread_id}/read", {"message_id": message_id}
    )


async def query(settings: Settings, sql: str, **params: Any) -> list[Any]:
    """Runs SQL straight on the app's database."""
    db = Database(settings.database_url)
    try:
        async with db.read() as session:
            return list((await session.execute(text(sql), params)).all())
    finally:
        await db.close()


@asynccontextmanager
async def custom_api(db_url: str, tmp_path: Path, **overrides: Any) -> AsyncIterator[Api]:
    """An app with its own settings on the test's database, populated like `world`."""
    application = create_app(make_settings(db_url, tmp_path, **overrides), auto_migrate=False)
    async with LifespanManager(application):
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            yield await populate_world(Api(client))


@asynccontextmanager
async def browser(app: Starlette) -> AsyncIterator[httpx.AsyncClient]:
    """A second client of the same app, with its own cookie jar and no bearer header."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        yield client


async def agency_thread(api: Api) -> int:
    thread = await api.open_thread("acme", "ann", "c1", {"private": False})
    thread_id: int = thread["id"]
    return thread_id


# --- paging ---------------------------------------------------------------------------


async def test_paging_back_and_forward(world: Api) -> None:
    thread_id = await agency_thread(world)
    sent = []
    for i in range(12):
        author = "ann" if i % 2 == 0 else "mem"
        sent.append((await world.send("acme", author, thread_id, f"message {i}"))["id"])
    assert sent == sorted(sent) and len(set(sent)) == 12

    # No cursor: the newest `limit`, oldest first; has_more tells of older ones.
    newest = await page(world, "ann", thread_id, "limit=5")
    assert ids(newest) == sent[7:12] and newest["has_more"] is True
    assert [m["body"] for m in newest["messages"]] == [f"message {i}" for i in range(7, 12)]
    everything = await page(world, "ann", thread_id)
    assert ids(everything) == sent and everything["has_more"] is False
    exact = await page(world, "ann", thread_id, "limit=12")
    assert ids(exact) == sent and exact["has_more"] is False
    one_short = await page(world, "ann", thread_id, "limit=11")
    assert ids(one_short) == sent[1:] and one_short["has_more"] is True

    # before= pages back.
    back = await page(world, "ann", thread_id, f"before={sent[7]}&limit=5")
    assert ids(back) == sent[2:7] and back["has_more"] is True
    back = await page(world, "ann", thread_id, f"before={sent[2]}&limit=5")
    assert ids(back) == sent[0:2] and back["has_more"] is False
    back = await page(world, "ann", thread_id, f"before={sent[5]}&limit=5")
    assert ids(back) == sent[0:5] and back["has_more"] is False
    back = await page(world, "ann", thread_id, f"before={sent[0]}&limit=5")
    assert ids(back) == [] and back["has_more"] is False

    # after= pages forward.
    forward = await page(world, "ann", thread_id, "after=0&limit=5")
    assert ids(forward) == sent[0:5] and forward["has_more"] is True
    forward = await page(world, "ann", thread_id, f"after={sent[0]}&limit=5")
    assert ids(forward) == sent[1:6] and forward["has_more"] is True
    forward = await page(world, "ann", thread_id, f"after={sent[6]}&limit=5")
    assert ids(forward) == sent[7:12] and forward["has_more"] is False
    forward = await page(world, "ann", thread_id, f"after={sent[5]}&limit=5")
    assert ids(forward) == sent[6:11] and forward["has_more"] is True
    forward = await page(world, "ann", thread_id, f"after={sent[11]}&limit=5")
    assert ids(forward) == [] and forward["has_more"] is False

    # Walking back from the newest page reaches every message exactly once.
    walked: list[int] = []
    result = await page(world, "coord", thread_id, "limit=5")
    while True:
        walked = ids(result) + walked
        if not result["has_more"]:
            break
        result = await page(world, "coord", thread_id, f"before={ids(result)[0]}&limit=5")
    assert walked == sent
    # And forward from the start.
    walked = []
    result = await page(world, "coord", thread_id, "after=0&limit=5")
    while True:
        walked += ids(result)
        if not result["has_more"]:
            break
        result = await page(world, "coord", thread_id, f"after={ids(result)[-1]}&limit=5")
    assert walked == sent


async def test_tombstones_keep_their_place_and_count_in_pages(world: Api) -> None:
    thread_id = await agency_thread(world)
    sent = [(await world.send("acme", "ann", thread_id, f"m{i}"))["id"] for i in range(12)]
    for gone in (sent[9], sent[3]):
        assert (await world.delete("acme", "ann", f"/api/v1/messages/{gone}")).status_code == 204

    newest = await page(world, "mem", thread_id, "limit=5")
    assert ids(newest) == sent[7:12] and newest["has_more"] is True
    tomb = newest["messages"][2]
    assert tomb["id"] == sent[9] and tomb["deleted"] is True and tomb["body"] is None
    assert [m["deleted"] for m in newest["messages"]] == [False, False, True, False, False]

    back = await page(world, "mem", thread_id, f"before={sent[5]}&limit=3")
    assert ids(back) == sent[2:5] and back["has_more"] is True
    assert [m["deleted"] for m in back["messages"]] == [False, True, False]
    forward = await page(world, "mem", thread_id, f"after={sent[8]}&limit=3")
    assert ids(forward) == sent[9:12] and forward["has_more"] is False
    assert forward["messages"][0]["deleted"] is True and forward["messages"][0]["body"] is None


# --- client_id idempotency ------------------------------------------------------------


async def test_a_client_id_repeated_on_another_candidate_answers_the_original(
    world: Api,
) -> None:
    await world.candidate(
        "acme", "c2", coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
    )
    first_thread = await agency_thread(world)
    second = await world.open_thread("acme", "ann", "c2", {"private": False})
    body = {"body": "Hello", "client_id": "same"}
    first = await world.post("acme", "ann", f"/api/v1/threads/{first_thread}/messages", body)
    assert first.status_code == 201, first.text
    again = await world.post("acme", "ann", f"/api/v1/threads/{second['id']}/messages", body)
    assert again.status_code == 200, again.text
    assert again.json() == first.json() and again.json()["candidate"] == "c1"
    assert ids(await page(world, "ann", second["id"])) == []


async def test_client_id_makes_a_send_idempotent_per_author(world: Api, settings: Settings) -> None:
    thread_id = await agency_thread(world)
    path = f"/api/v1/threads/{thread_id}/messages"
    first = await world.post("acme", "ann", path, {"body": "Hello", "client_id": "abc-1"})
    assert first.status_code == 201, first.text
    message = first.json()
    assert message["client_id"] == "abc-1" and message["body"] == "Hello"

    again = await world.post("acme", "ann", path, {"body": "Hello", "client_id": "abc-1"})
    assert again.status_code == 200 and again.json() == message
    changed = await world.post("acme", "ann", path, {"body": "Different", "client_id": "abc-1"})
    assert changed.status_code == 200 and changed.json() == message
    assert ids(await page(world, "ann", thread_id)) == [message["id"]]

    # Another author with the same client_id gets its own message.
    theirs = await world.post("acme", "mem", path, {"body": "Hi", "client_id": "abc-1"})
    assert theirs.status_code == 201, theirs.text
    assert theirs.json()["id"] != message["id"]
    assert theirs.json()["author"]["id"] == "mem" and theirs.json()["client_id"] == "abc-1"
    again = await world.post("acme", "mem", path, {"body": "Hi", "client_id": "abc-1"})
    assert again.status_code == 200 and again.json() == theirs.json()

    # Without client_id every send is new; a new client_id is a new message.
    plain = await world.post("acme", "ann", path, {"body": "Hello"})
    plain2 = await world.post("acme", "ann", path, {"body": "Hello"})
    assert plain.status_code == plain2.status_code == 201
    assert plain.json()["client_id"] is None and plain.json()["id"] != plain2.json()["id"]
    other = await world.post("acme", "ann", path, {"body": "Hello", "client_id": "abc-2"})
    assert other.status_code == 201

    stored = await page(world, "coord", thread_id)
    assert len(stored["messages"]) == 5
    rows = await query(settings, "SELECT count(*) FROM messages WHERE thread_id = :t", t=thread_id)
    assert rows[0][0] == 5


# --- delete ---------------------------------------------------------------------------


async def test_delete_leaves_a_tombstone_and_erases_the_text(
    world: Api, settings: Settings
) -> None:
    thread_id = await agency_thread(world)
    secret_text = "the offer is 123456 per year"
    message = await world.send("acme", "ann", thread_id, secret_text)
    later = await world.send("acme", "mem", thread_id, "noted")
    path = f"/api/v1/messages/{message['id']}"

    # Who sees it but is not the author: 403. Who cannot see it: 404.
    assert_error(await world.delete("acme", "mem", path), 403, "forbidden")
    assert_error(await world.delete("acme", "coord", path), 403, "forbidden")
    for org, user in (("acme", "out"), ("acme", "abe"), ("other", "omem"), ("other", "oann")):
        assert_error(await world.delete(org, user, path), 404, "not_found")
    assert (await page(world, "ann", thread_id))["messages"][0]["body"] == secret_text

    first = await world.delete("acme", "ann", path)
    assert first.status_code == 204 and first.content == b""
    again = await world.delete("acme", "ann", path)
    assert again.status_code == 204 and again.content == b""

    for user in ("ann", "mem", "coord"):
        messages = (await page(world, user, thread_id))["messages"]
        assert [m["id"] for m in messages] == [message["id"], later["id"]]
        tomb = messages[0]
        assert tomb["deleted"] is True and tomb["body"] is None
        assert tomb["author"]["id"] == "ann" and tomb["created_at"] == message["created_at"]
        assert messages[1]["deleted"] is False and messages[1]["body"] == "noted"

    rows = await query(
        settings,
        "SELECT body, deleted FROM messages WHERE id = :id",
        id=message["id"],
    )
    assert len(rows) == 1
    assert rows[0][0] is None and bool(rows[0][1]) is True
    # The text is nowhere else in the messages table either.
    leftovers = await query(
        settings,
        "SELECT count(*) FROM messages WHERE body LIKE :t",
        t="%123456%",
    )
    assert leftovers[0][0] == 0

    # Still only the author may "delete" the tombstone.
    assert_error(await world.delete("acme", "mem", path), 403, "forbidden")


async def test_deleting_the_last_message_updates_the_thread(world: Api) -> None:
    thread_id = await agency_thread(world)
    message = await world.send("acme", "ann", thread_id, "oops")
    assert (
        await world.delete("acme", "ann", f"/api/v1/messages/{message['id']}")
    ).status_code == 204
    thread = (await threads(world, "mem"))[thread_id]
    assert thread["unread"] == 0
    last = thread["last_message"]
    assert last is None or (last["deleted"] is True and last["body"] is None)


# --- read markers ---------------------------------------------------------------------


async def test_read_marker_moves_forward_only(world: Api) -> None:
    thread_id = await agency_thread(world)
    m = [(await world.send("acme", "ann", thread_id, f"m{i}"))["id"] for i in range(4)]
    assert (await threads(world, "coord"))[thread_id]["unread"] == 4

    response = await read(world, "coord", thread_id, m[1])
    assert response.status_code == 200 and response.json() == {"unread": 2}
    assert (await threads(world, "coord"))[thread_id]["unread"] == 2

    # An older id keeps the marker where it was.
    response = await read(world, "coord", thread_id, m[0])
    assert response.status_code == 200 and response.json() == {"unread": 2}
    response = await read(world, "coord", thread_id, m[1])
    assert response.json() == {"unread": 2}
    assert (await threads(world, "coord"))[thread_id]["unread"] == 2

    response = await read(world, "coord", thread_id, m[3])
    assert response.json() == {"unread": 0}
    response = await read(world, "coord", thread_id, m[2])
    assert response.json() == {"unread": 0}
    assert (await threads(world, "coord"))[thread_id]["unread"] == 0

    # Markers are per user: mem has read nothing.
    assert (await threads(world, "mem"))[thread_id]["unread"] == 4
    # A new message after the marker is unread again.
    await world.send("acme", "ann", thread_id, "m4")
    assert (await threads(world, "coord"))[thread_id]["unread"] == 1


async def test_read_marker_with_message_of_another_thread_is_422(world: Api) -> None:
    agency = await agency_thread(world)
    private = await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": True})
    in_agency = await world.send("acme", "ann", agency, "public")
    in_private = await world.send("acme", "ann", private["id"], "private")
    response = await read(world, "mem", agency, in_private["id"])
    assert_error(response, 422, "invalid")
    response = await read(world, "mem", private["id"], in_agency["id"])
    assert_error(response, 422, "invalid")
    counts = await threads(world, "mem")
    assert counts[agency]["unread"] == 1 and counts[private["id"]]["unread"] == 1


async def test_unread_excludes_own_and_deleted_messages(world: Api) -> None:
    thread_id = await agency_thread(world)
    await world.send("acme", "coord", thread_id, "from coord")
    assert (await threads(world, "coord"))[thread_id]["unread"] == 0
    assert (await world.get("acme", "coord", "/api/v1/unread")).json() == {"candidates": []}
    assert (await threads(world, "ann"))[thread_id]["unread"] == 1

    a1 = await world.send("acme", "ann", thread_id, "a1")
    a2 = await world.send("acme", "ann", thread_id, "a2")
    await world.send("acme", "coord", thread_id, "coord again")
    assert (await threads(world, "coord"))[thread_id]["unread"] == 2
    assert (await world.delete("acme", "ann", f"/api/v1/messages/{a2['id']}")).status_code == 204
    assert (await threads(world, "coord"))[thread_id]["unread"] == 1
    summary = (await world.get("acme", "coord", "/api/v1/unread")).json()
    assert summary == {"candidates": [{"candidate": "c1", "unread": 1, "latest": a1}]}
    assert (await world.delete("acme", "ann", f"/api/v1/messages/{a1['id']}")).status_code == 204
    assert (await threads(world, "coord"))[thread_id]["unread"] == 0
    assert (await world.get("acme", "coord", "/api/v1/unread")).json() == {"candidates": []}
    candidate = (await world.get("acme", "coord", "/api/v1/candidates/c1")).json()
    assert candidate["unread"] == 0


async def test_unread_summary_lists_only_blue_dots_with_newest_unread(world: Api) -> None:
    await world.candidate(
        "acme", "c2", coordinator="coord", members=["coord"], agency_users=["ann"]
    )
    await world.candidate(
        "acme", "c3", coordinator="coord", members=["coord"], agency_users=["ann"]
    )
    t1 = await agency_thread(world)
    t2 = (await world.open_thread("acme", "ann", "c2", {"private": False}))["id"]
    t3 = (await world.open_thread("acme", "ann", "c3", {"private": False}))["id"]

    await world.send("acme", "ann", t1, "c1 first")
    c1_newest = await world.send("acme", "ann", t1, "c1 second")
    await world.send("acme", "coord", t1, "coord's own is not unread")
    c2_last = await world.send("acme", "ann", t2, "c2 only")
    c3_last = await world.send("acme", "ann", t3, "c3 read")
    assert (await read(world, "coord", t3, c3_last["id"])).json() == {"unread": 0}

    summary = (await world.get("acme", "coord", "/api/v1/unread")).json()
    entries = {e["candidate"]: e for e in summary["candidates"]}
    assert set(entries) == {"c1", "c2"}
    assert entries["c1"] == {"candidate": "c1", "unread": 2, "latest": c1_newest}
    assert entries["c2"] == {"candidate": "c2", "unread": 1, "latest": c2_last}

    # The newest unread across several threads of one candidate.
    private = await world.open_thread(
        "acme", "coord", "c1", {"agency_user": "ann", "private": True}
    )
    newest = await world.send("acme", "ann", private["id"], "private and newest")
    summary = (await world.get("acme", "coord", "/api/v1/unread")).json()
    entries = {e["candidate"]: e for e in summary["candidates"]}
    assert entries["c1"] == {"candidate": "c1", "unread": 3, "latest": newest}

    # mem does not see the private thread of coord: its count and latest ignore it.
    summary = (await world.get("acme", "mem", "/api/v1/unread")).json()
    assert summary == {
        "candidates": [
            {
                "candidate": "c1",
                "unread": 3,  # c1 first, c1 second, coord's message (not mem's own)
                "latest": (await page(world, "mem", t1))["messages"][-1],
            }
        ]
    }

    # Reading moves the dots.
    await read(world, "coord", t1, c1_newest["id"])
    await read(world, "coord", private["id"], newest["id"])
    summary = (await world.get("acme", "coord", "/api/v1/unread")).json()
    assert [e["candidate"] for e in summary["candidates"]] == ["c2"]


async def test_thread_and_candidate_unread_agree(world: Api) -> None:
    agency = await agency_thread(world)
    private = (
        await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": True})
    )["id"]
    for i in range(3):
        await world.send("acme", "ann", agency, f"a{i}")
    for i in range(2):
        await world.send("acme", "ann", private, f"p{i}")
    await world.send("acme", "coord", agency, "from coord")

    for user, expected in (("mem", {agency: 4, private: 2}), ("coord", {agency: 3})):
        per_thread = {tid: t["unread"] for tid, t in (await threads(world, user)).items()}
        assert per_thread == expected, user
        candidate = (await world.get("acme", user, "/api/v1/candidates/c1")).json()
        assert candidate["unread"] == sum(expected.values())
        summary = (await world.get("acme", user, "/api/v1/unread")).json()
        assert summary["candidates"][0]["unread"] == sum(expected.values())

    ann_threads = await threads(world, "ann")
    assert {tid: t["unread"] for tid, t in ann_threads.items()} == {agency: 1, private: 0}
    candidate = (await world.get("acme", "ann", "/api/v1/candidates/c1")).json()
    assert candidate["unread"] == 1


# --- candidate shape ------------------------------------------------------------------


def _user(uid: str, kind: str) -> dict[str, Any]:
    """The contract's `User` of the world's people (agency users all of agency `ag`)."""
    agency = {"id": "ag", "name": "Ag"} if kind == "agency" else None
    return {"id": uid, "name": uid.title(), "kind": kind, "agency": agency}


def _by_id(users: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(users, key=lambda u: u["id"])


async def test_candidate_as_member_and_as_agency_user(world: Api) -> None:
    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord", "mem"], agency_users=["ann", "abe"]
    )
    for member in ("coord", "mem"):
        response = await world.get("acme", member, "/api/v1/candidates/c1")
        assert response.status_code == 200, response.text
        body = response.json()
        assert {"id", "name", "coordinator", "agency_users", "private_contacts", "unread"} <= set(
            body
        )
        assert body["id"] == "c1" and body["name"] == "C1" and body["unread"] == 0
        assert body["coordinator"] == _user("coord", "member")
        assert _by_id(body["agency_users"]) == [_user("abe", "agency"), _user("ann", "agency")]
        assert body["private_contacts"] == []

    for agency_user in ("ann", "abe"):
        body = (await world.get("acme", agency_user, "/api/v1/candidates/c1")).json()
        assert body["id"] == "c1" and body["coordinator"] == _user("coord", "member")
        assert body["agency_users"] == [_user(agency_user, "agency")]
        assert body["private_contacts"] == [_user("coord", "member")]

    # After mem and ann exchange private messages, mem is a private contact of ann.
    private = await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": True})
    await world.send("acme", "mem", private["id"], "just between us")
    body = (await world.get("acme", "ann", "/api/v1/candidates/c1")).json()
    assert _by_id(body["private_contacts"]) == [_user("coord", "member"), _user("mem", "member")]
    body = (await world.get("acme", "abe", "/api/v1/candidates/c1")).json()
    assert body["private_contacts"] == [_user("coord", "member")]
    body = (await world.get("acme", "mem", "/api/v1/candidates/c1")).json()
    assert body["private_contacts"] == []

    # No coordinator: null, and the agency user has no private contact by default.
    await world.candidate("acme", "c2", coordinator=None, members=["out"], agency_users=["abe"])
    body = (await world.get("acme", "out", "/api/v1/candidates/c2")).json()
    assert body["coordinator"] is None and body["agency_users"] == [_user("abe", "agency")]
    body = (await world.get("acme", "abe", "/api/v1/candidates/c2")).json()
    assert body["coordinator"] is None and body["private_contacts"] == []


async def test_agency_users_name_their_agency_everywhere(world: Api, live: str) -> None:
    """Every `User` carries its agency (null for a member): /me, the session, candidates,
    threads, messages in REST, live events and replays."""
    ag = {"id": "ag", "name": "Ag"}
    me = (await world.get("acme", "ann", "/api/v1/me")).json()
    assert me == {"id": "ann", "name": "Ann", "kind": "agency", "agency": ag, "org": "acme"}
    assert (await world.get("acme", "mem", "/api/v1/me")).json()["agency"] is None
    session = await world.client.post("/api/v1/session", json={"token": world.token("acme", "ann")})
    world.client.cookies.clear()
    assert session.json()["user"]["agency"] == ag

    member = await WsClient.connect(live, world.token("acme", "mem"))
    agent = await WsClient.connect(live, world.token("acme", "ann"))
    try:
        await member.request("subscribe", candidate="c1")
        thread = await world.open_thread("acme", "ann", "c1", {"private": False})
        assert thread["agency_user"]["agency"] == ag
        sent = await agent.request("send", thread=thread["id"], body="From TalentCo")
        assert sent["message"]["author"]["agency"] == ag
        live_event = await member.next_event(type="message.created")
        assert live_event["message"]["author"] == _user("ann", "agency")
        rest = await world.send("acme", "mem", thread["id"], "Thanks")
        assert rest["author"] == _user("mem", "member")
    finally:
        await member.close()
        await agent.close()

    # The agency renamed: every read shows its name as it is now.
    renamed = {"id": "ag", "name": "TalentCo"}
    await world.provision("acme/agencies/ag", {"name": "TalentCo"})
    page = (await world.get("acme", "mem", f"/api/v1/threads/{thread['id']}/messages")).json()
    assert [m["author"]["agency"] for m in page["messages"]] == [renamed, None]
    listed = (await world.get("acme", "mem", "/api/v1/candidates/c1/threads")).json()["threads"]
    assert listed[0]["agency_user"]["agency"] == renamed
    assert listed[0]["last_message"]["author"]["agency"] is None
    candidate = (await world.get("acme", "mem", "/api/v1/candidates/c1")).json()
    assert candidate["agency_users"][0]["agency"] == renamed
    unread = (await world.get("acme", "coord", "/api/v1/unread")).json()["candidates"]
    assert unread[0]["latest"]["author"]["agency"] is None
    replayer = await WsClient.connect(live, world.token("acme", "coord"))
    try:
        await replayer.request("subscribe", candidate="c1", after=0)
        replayed = await replayer.next_event(type="message.created")
        assert replayed["message"]["author"]["agency"] == renamed
    finally:
        await replayer.close()


# --- open thread ----------------------------------------------------------------------


async def test_open_thread_is_get_or_create(world: Api, settings: Settings) -> None:
    path = "/api/v1/candidates/c1/threads"
    first = await world.post("acme", "ann", path, {"private": False})
    assert first.status_code == 201, first.text
    thread = first.json()
    assert thread["kind"] == "agency" and thread["candidate"] == "c1"
    assert thread["agency_user"] == _user("ann", "agency") and thread["member"] is None
    assert thread["unread"] == 0 and thread["last_message"] is None
    again = await world.post("acme", "ann", path, {"private": False})
    assert again.status_code == 200 and again.json()["id"] == thread["id"]
    # A member asking for the same agency thread gets it too.
    same = await world.post("acme", "coord", path, {"agency_user": "ann", "private": False})
    assert same.status_code == 200 and same.json()["id"] == thread["id"]

    private = await world.post("acme", "mem", path, {"agency_user": "ann", "private": True})
    assert private.status_code == 201, private.text
    body = private.json()
    assert body["kind"] == "private" and body["member"] == _user("mem", "member")
    assert body["id"] != thread["id"]
    again = await world.post("acme", "mem", path, {"agency_user": "ann", "private": True})
    assert again.status_code == 200 and again.json()["id"] == body["id"]
    # The agency user opening the same private thread from its side gets the same one.
    from_ann = await world.post("acme", "ann", path, {"private": True, "member": "mem"})
    assert from_ann.status_code == 200 and from_ann.json()["id"] == body["id"]

    listed = await threads(world, "mem")
    assert set(listed) == {thread["id"], body["id"]}
    rows = await query(settings, "SELECT count(*) FROM threads")
    assert rows[0][0] == 2


# --- provisioning ---------------------------------------------------------------------


async def test_provisioning_upserts_are_idempotent(api: Api, settings: Settings) -> None:
    steps: list[tuple[str, dict[str, Any]]] = [
        ("neworg", {"name": "New Org"}),
        ("neworg/agencies/ag1", {"name": "Agency One"}),
        ("neworg/users/m1", {"name": "M One", "email": "m1@new.example", "kind": "member"}),
        (
            "neworg/users/a1",
            {"name": "A One", "email": "a1@ag1.example", "kind": "agency", "agency": "ag1"},
        ),
        (
            "neworg/candidates/k1",
            {"name": "K One", "coordinator": "m1", "members": ["m1"], "agency_users": ["a1"]},
        ),
    ]
    for path, body in steps:
        url = f"/api/v1/orgs/{path}"
        first = await api.client.put(url, json=body, headers=api.service)
        assert first.status_code == 201, (path, first.text)
        second = await api.client.put(url, json=body, headers=api.service)
        assert second.status_code == 200, (path, second.text)
        assert second.json() == first.json()

    # Updates are applied and still answer 200.
    renamed = await api.client.put(
        "/api/v1/orgs/neworg/users/a1",
        json={"name": "A Renamed", "email": "a1@ag1.example", "kind": "agency", "agency": "ag1"},
        headers=api.service,
    )
    assert renamed.status_code == 200
    body = (await api.get("neworg", "m1", "/api/v1/candidates/k1")).json()
    renamed_user = {"id": "a1", "name": "A Renamed", "kind": "agency"}
    assert body["agency_users"] == [renamed_user | {"agency": {"id": "ag1", "name": "Agency One"}}]
    rows = await query(settings, "SELECT count(*) FROM users WHERE ext_id IN ('m1', 'a1')")
    assert rows[0][0] == 2


async def test_replacing_members_revokes_access(world: Api) -> None:
    thread_id = await agency_thread(world)
    message = await world.send("acme", "ann", thread_id, "hello")
    assert (await world.get("acme", "mem", "/api/v1/candidates/c1")).status_code == 200

    await world.candidate("acme", "c1", coordinator="coord", members=["out"], agency_users=["ann"])
    assert_error(await world.get("acme", "mem", "/api/v1/candidates/c1"), 404, "not_found")
    assert_error(
        await world.get("acme", "mem", f"/api/v1/threads/{thread_id}/messages"), 404, "not_found"
    )
    response = await world.post(
        "acme", "mem", f"/api/v1/threads/{thread_id}/messages", {"body": "still here?"}
    )
    assert_error(response, 404, "not_found")
    assert_error(await read(world, "mem", thread_id, message["id"]), 404, "not_found")
    assert (await world.get("acme", "mem", "/api/v1/unread")).json() == {"candidates": []}
    # The new member and the coordinator see it.
    assert ids(await page(world, "out", thread_id)) == [message["id"]]
    assert ids(await page(world, "coord", thread_id)) == [message["id"]]

    # Unlinking the agency user revokes its access the same way.
    await world.candidate("acme", "c1", coordinator="coord", members=["out"], agency_users=[])
    assert_error(await world.get("acme", "ann", "/api/v1/candidates/c1"), 404, "not_found")
    assert_error(
        await world.get("acme", "ann", f"/api/v1/threads/{thread_id}/messages"), 404, "not_found"
    )


async def test_delete_candidate_erases_everything(world: Api, settings: Settings) -> None:
    agency = await agency_thread(world)
    private = (
        await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": True})
    )["id"]
    m1 = await world.send("acme", "ann", agency, "to erase 1")
    await world.send("acme", "mem", private, "to erase 2")
    await read(world, "coord", agency, m1["id"])
    # The other org's c1 keeps its thread.
    other = (await world.open_thread("other", "oann", "c1", {"private": False}))["id"]
    await world.send("other", "oann", other, "keep me")

    cand_pk = (
        await query(
            settings,
            "SELECT c.pk FROM candidates c JOIN orgs o ON o.pk = c.org_pk "
            "WHERE o.ext_id = 'acme' AND c.ext_id = 'c1'",
        )
    )[0][0]
    thread_ids = {agency, private}
    assert len(await query(settings, "SELECT id FROM messages WHERE candidate_pk = :c", c=cand_pk))

    response = await world.client.delete("/api/v1/orgs/acme/candidates/c1", headers=world.service)
    assert response.status_code == 204
    again = await world.client.delete("/api/v1/orgs/acme/candidates/c1", headers=world.service)
    assert again.status_code == 204

    for sql in (
        "SELECT count(*) FROM candidates WHERE pk = :c",
        "SELECT count(*) FROM threads WHERE candidate_pk = :c",
        "SELECT count(*) FROM messages WHERE candidate_pk = :c",
        "SELECT count(*) FROM events WHERE candidate_pk = :c",
        "SELECT count(*) FROM email_outbox WHERE candidate_pk = :c",
        "SELECT count(*) FROM candidate_members WHERE candidate_pk = :c",
        "SELECT count(*) FROM candidate_agency_users WHERE candidate_pk = :c",
    ):
        assert (await query(settings, sql, c=cand_pk))[0][0] == 0, sql
    for thread_id in thread_ids:
        for sql in (
            "SELECT count(*) FROM messages WHERE thread_id = :t",
            "SELECT count(*) FROM read_markers WHERE thread_id = :t",
            "SELECT count(*) FROM events WHERE thread_id = :t",
        ):
            assert (await query(settings, sql, t=thread_id))[0][0] == 0, sql
    texts = await query(settings, "SELECT body FROM messages")
    assert [row[0] for row in texts] == ["keep me"]

    for user in ("coord", "mem", "ann"):
        assert_error(await world.get("acme", user, "/api/v1/candidates/c1"), 404, "not_found")
        assert (await world.get("acme", user, "/api/v1/unread")).json() == {"candidates": []}
    assert_error(
        await world.get("acme", "ann", f"/api/v1/threads/{agency}/messages"), 404, "not_found"
    )
    assert (await world.get("other", "omem", "/api/v1/candidates/c1")).status_code == 200
    assert ids(await page_other(world, other)) != []

    # The candidate can be provisioned again, empty.
    await world.candidate("acme", "c1", coordinator="coord", members=["mem"], agency_users=["ann"])
    assert (await world.get("acme", "mem", "/api/v1/candidates/c1/threads")).json() == {
        "threads": []
    }


async def page_other(api: Api, thread_id: int) -> dict[str, Any]:
    response = await api.get("other", "omem", f"/api/v1/threads/{thread_id}/messages")
    assert response.status_code == 200
    result: dict[str, Any] = response.json()
    return result


async def test_delete_unknown_candidate_is_204(world: Api) -> None:
    response = await world.client.delete(
        "/api/v1/orgs/acme/candidates/never-was", headers=world.service
    )
    assert response.status_code == 204


# --- session cookie -------------------------------------------------------------------


def _set_cookie_attributes(response: httpx.Response) -> tuple[str, dict[str, str]]:
    headers = response.headers.get_list("set-cookie")
    assert len(headers) == 1, headers
    first, *rest = [part.strip() for part in headers[0].split(";")]
    name, _, value = first.partition("=")
    attributes = {}
    for part in rest:
        key, _, val = part.partition("=")
        attributes[key.lower()] = val
    assert value, headers
    return name, attributes


async def test_session_cookie_is_httponly_and_samesite(world: Api, app: Starlette) -> None:
    async with browser(app) as client:
        response = await client.post("/api/v1/session", json={"token": world.token("acme", "mem")})
        assert response.status_code == 200, response.text
        _, attributes = _set_cookie_attributes(response)
        assert "httponly" in attributes
        assert attributes.get("samesite", "").lower() in ("lax", "strict")
        assert attributes.get("path", "/") == "/"

        # Cookie-authenticated reads work.
        got = await client.get("/api/v1/candidates/c1")
        assert got.status_code == 200, got.text
        assert got.json()["id"] == "c1"
        assert (await client.get("/api/v1/unread")).status_code == 200


async def test_cookie_writes_need_an_allowed_origin(world: Api, app: Starlette) -> None:
    thread_id = await agency_thread(world)
    seed = await world.send("acme", "ann", thread_id, "seed")
    path = f"/api/v1/threads/{thread_id}/messages"
    async with browser(app) as client:
        login = await client.post("/api/v1/session", json={"token": world.token("acme", "mem")})
        assert login.status_code == 200

        for origin in (
            None,
            "https://evil.com",
            "http://testserver.evil.com",
            "null",
            "https://testserver",
            "http://evil.com/http://testserver",
        ):
            headers = {} if origin is None else {"Origin": origin}
            response = await client.post(path, json={"body": "csrf"}, headers=headers)
            assert_error(response, 403, "forbidden")
            response = await client.post(
                f"/api/v1/threads/{thread_id}/read",
                json={"message_id": seed["id"]},
                headers=headers,
            )
            assert_error(response, 403, "forbidden")
            response = await client.post(
                "/api/v1/candidates/c1/threads",
                json={"agency_user": "ann", "private": True},
                headers=headers,
            )
            assert_error(response, 403, "forbidden")
        assert ids(await page(world, "ann", thread_id)) == [seed["id"]]
        assert (await threads(world, "mem"))[thread_id]["unread"] == 1
        assert len(await threads(world, "mem")) == 1

        ok = await client.post(
            path, json={"body": "same origin"}, headers={"Origin": "http://testserver"}
        )
        assert ok.status_code == 201, ok.text
        assert ok.json()["author"]["id"] == "mem"
        mine = ok.json()["id"]
        response = await client.delete(
            f"/api/v1/messages/{mine}", headers={"Origin": "https://evil.com"}
        )
        assert_error(response, 403, "forbidden")
        response = await client.delete(f"/api/v1/messages/{mine}")
        assert_error(response, 403, "forbidden")
        assert (await page(world, "ann", thread_id))["messages"][-1]["deleted"] is False
        response = await client.delete(
            f"/api/v1/messages/{mine}", headers={"Origin": "http://testserver"}
        )
        assert response.status_code == 204

    # Bearer requests need no Origin.
    response = await world.post("acme", "ann", path, {"body": "bearer, no origin"})
    assert response.status_code == 201, response.text


async def test_cookie_write_from_configured_origin(db_url: str, tmp_path: Path) -> None:
    async with custom_api(
        db_url, tmp_path, allowed_origins=frozenset({"https://ats.example.com"})
    ) as api:
        thread_id = await agency_thread(api)
        path = f"/api/v1/threads/{thread_id}/messages"
        client = api.client
        login = await client.post(
            "/api/v1/session",
            json={"token": api.token("acme", "mem")},
            headers={"Origin": "https://ats.example.com"},
        )
        assert login.status_code == 200, login.text
        response = await client.post(
            path, json={"body": "from the ATS"}, headers={"Origin": "https://ats.example.com"}
        )
        assert response.status_code == 201, response.text
        for origin in (
            "https://evil.com",
            "https://ats.example.com.evil.com",
            "http://ats.example.com",
            "https://ats.example.co",
        ):
            response = await client.post(path, json={"body": "x"}, headers={"Origin": origin})
            assert_error(response, 403, "forbidden")
        response = await client.post(path, json={"body": "x"})
        assert_error(response, 403, "forbidden")
        messages = (await page(api, "ann", thread_id))["messages"]
        assert [m["body"] for m in messages] == ["from the ATS"]


async def test_session_with_bad_token_is_401(world: Api, app: Starlette) -> None:
    expired = jwt.encode(
        {"org": "acme", "sub": "mem", "exp": int(time.time()) - 3600}, SECRET, algorithm="HS256"
    )
    forged = jwt.encode(
        {"org": "acme", "sub": "mem", "exp": int(time.time()) + 3600},
        "not-the-secret-0123456789",
        algorithm="HS256",
    )
    unknown = world.token("acme", "ghost")
    async with browser(app) as client:
        for token in ("garbage", expired, forged, unknown, ""):
            response = await client.post("/api/v1/session", json={"token": token})
            assert_error(response, 401, "unauthorized")
            assert "set-cookie" not in response.headers
        for body in ({}, {"token": None}, {"token": 5}):
            response = await client.post("/api/v1/session", json=body)
            assert_error(response, 422, "invalid")
            assert "set-cookie" not in response.headers
        assert_error(await client.get("/api/v1/unread"), 401, "unauthorized")
        # A forged cookie is refused too.
        response = await client.get("/api/v1/unread", headers={"Cookie": f"am_session={forged}"})
        assert_error(response, 401, "unauthorized")


# --- health, metrics, openapi ---------------------------------------------------------


async def test_health_and_readiness(world: Api) -> None:
    response = await world.client.get("/healthz")
    assert response.status_code == 200
    response = await world.client.get("/readyz")
    assert response.status_code == 200, response.text
    assert "database" in response.text


async def test_metrics_are_prometheus_text(world: Api) -> None:
    thread_id = await agency_thread(world)
    await world.send("acme", "ann", thread_id, "counted")
    response = await world.client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    body = response.text
    assert "am_http_requests_total" in body
    assert "am_messages_sent_total" in body
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
    }
    sent = sum(v for (name, _), v in samples.items() if name == "am_messages_sent_total")
    assert sent == 1
    requests = sum(v for (name, _), v in samples.items() if name == "am_http_requests_total")
    assert requests >= 3
    # Route templates, not raw paths with ids, label the requests.
    assert f"/api/v1/threads/{thread_id}/" not in body


async def test_openapi_lists_every_api_route(app: Starlette, api: Api) -> None:
    response = await api.client.get("/openapi.json")
    assert response.status_code == 200
    spec = response.json()
    paths = spec["paths"]
    served: set[tuple[str, str]] = set()
    for route in app.routes:
        if isinstance(route, Route) and route.path.startswith("/api/v1"):
            for method in route.methods or ():
                if method != "HEAD":
                    served.add((route.path, method.lower()))
    assert served, "the app serves no /api/v1 route?"
    documented = {
        (path, method)
        for path, ops in paths.items()
        if path.startswith("/api/v1")
        for method in ops
        if method in {"get", "put", "post", "delete", "patch"}
    }
    assert served - documented == set()
    assert documented - served == set()


# --- logs -----------------------------------------------------------------------------


async def test_logs_never_contain_tokens_or_bodies(
    world: Api, app: Starlette, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    for name in ("agency_messaging", "agency_messaging.access", "agency_messaging.errors"):
        caplog.set_level(logging.DEBUG, logger=name)
    body = "Zanzibar-confidential-7f3a9c salary details"
    token = world.token("acme", "ann")
    mem_token = world.token("acme", "mem")

    thread_id = await agency_thread(world)
    sent = await world.send("acme", "ann", thread_id, body, client_id="log-check-1")
    await world.get("acme", "mem", f"/api/v1/threads/{thread_id}/messages")
    await read(world, "mem", thread_id, sent["id"])
    await world.get("acme", "mem", "/api/v1/unread")
    await world.post(
        "acme", "ann", f"/api/v1/threads/{thread_id}/messages", {"body": "", "client_id": "x"}
    )
    async with browser(app) as client:
        await client.post("/api/v1/session", json={"token": mem_token})
        await client.post(f"/api/v1/threads/{thread_id}/messages", json={"body": body})
    assert (await world.delete("acme", "ann", f"/api/v1/messages/{sent['id']}")).status_code == 204
    await world.client.get("/api/v1/unread", headers={"Authorization": f"Bearer {token}x"})

    assert any(r.name == "agency_messaging.access" for r in caplog.records)
    # Every record the server side emits (its own loggers and its libraries'); the test's
    # own HTTP client (httpx) is not the server.
    for record in caplog.records:
        if record.name.startswith(("httpx", "httpcore")):
            continue
        rendered = record.getMessage() + repr(record.args) + str(record.__dict__)
        for secret in (body, "Zanzibar-confidential", token, mem_token, token.split(".")[2]):
            assert secret not in rendered, (record.name, record.getMessage()[:300])


# --- rate limiting --------------------------------------------------------------------


async def test_send_rate_limit(db_url: str, tmp_path: Path) -> None:
    async with custom_api(db_url, tmp_path, send_rate_per_minute=4) as api:
        thread_id = await agency_thread(api)
        path = f"/api/v1/threads/{thread_id}/messages"
        for i in range(2):
            response = await api.post("acme", "ann", path, {"body": f"burst {i}"})
            assert response.status_code == 201, response.text
        response = await api.post("acme", "ann", path, {"body": "one too many"})
        assert_error(response, 429, "rate_limited")
        retry_after = response.headers.get("retry-after")
        assert retry_after is not None and retry_after.isdigit() and int(retry_after) >= 1
        messages = (await page(api, "ann", thread_id))["messages"]
        assert [m["body"] for m in messages] == ["burst 0", "burst 1"]
        # The limit is per user: another user may still send.
        response = await api.post("acme", "mem", path, {"body": "mem is fine"})
        assert response.status_code == 201, response.text
        assert len((await page(api, "ann", thread_id))["messages"]) == 3
