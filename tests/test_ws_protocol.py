"""The WebSocket protocol end to end, over a real uvicorn: handshake, every op and its
errors, limits and close codes, visibility on the live path, blue dots and slow clients.
Resume from the event log is in tests/test_ws_resume.py."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import jwt
import websockets

from channels.connection import ConnectionLimits
from tests.support.realtime import WsClient
from tests.support.world import Api
from tests.support.ws import closed_with, custom_server, refused, user_token, ws_url

MESSAGE_EVENTS = ("message.created", "message.deleted")


# --- helpers ------------------------------------------------------------------------


def message_frames(client: WsClient) -> list[dict[str, Any]]:
    return [f for f in client.frames if f.get("type") in MESSAGE_EVENTS]


async def connect(api: Api, base: str, org: str, user: str, **kwargs: Any) -> WsClient:
    return await WsClient.connect(base, api.token(org, user), **kwargs)


async def subscribed(api: Api, base: str, user: str, cand: str = "c1") -> WsClient:
    client = await connect(api, base, "acme", user)
    ack = await client.request("subscribe", candidate=cand)
    assert ack["type"] == "ack", ack
    return client


async def close_all(*clients: WsClient) -> None:
    for client in clients:
        await client.close()


async def raw_error(client: WsClient, payload: str | bytes) -> dict[str, Any]:
    """Sends a raw frame and returns the error frame that answers it."""
    await client.socket.send(payload)
    frame = await client.next_event(type="error")
    return frame


async def still_open(client: WsClient) -> None:
    pong = await client.request("ping")
    assert pong["type"] == "pong"


# --- 1. handshake -------------------------------------------------------------------


async def test_handshake_refuses_missing_and_bad_credentials(world: Api, live: str) -> None:
    assert await refused(live) == 403
    assert await refused(live, Authorization="Bearer not-a-jwt") == 403
    assert await refused(live, Authorization="Basic abc") == 403
    wrong_key = jwt.encode(
        {"org": "acme", "sub": "mem", "exp": int(time.time()) + 600}, "x" * 40, algorithm="HS256"
    )
    assert await refused(live, Authorization=f"Bearer {wrong_key}") == 403
    expired = user_token("acme", "mem", time.time() - 3600)
    assert await refused(live, Authorization=f"Bearer {expired}") == 403
    unknown_user = world.token("acme", "nobody")
    assert await refused(live, Authorization=f"Bearer {unknown_user}") == 403
    unknown_org = world.token("nowhere", "mem")
    assert await refused(live, Authorization=f"Bearer {unknown_org}") == 403
    assert await refused(live, Cookie="am_session=garbage") == 403


async def test_handshake_origins(db_url: str, tmp_path: Path) -> None:
    async with custom_server(
        db_url, tmp_path, allowed_origins=frozenset({"https://app.example.com"})
    ) as server:
        bearer = f"Bearer {server.api.token('acme', 'mem')}"
        for origin in (
            "https://evil.com",
            "https://app.example.com.evil.com",
            "http://app.example.com",
            "https://app.example.com:8443",
            "https://sub.app.example.com",
            "null",
        ):
            assert await refused(server.url, Authorization=bearer, Origin=origin) == 403, origin
        allowed: list[str | None] = ["https://app.example.com", server.url, None]
        for accepted in allowed:
            headers = {} if accepted is None else {"Origin": accepted}
            client = await WsClient.connect(
                server.url, server.api.token("acme", "mem"), headers=headers
            )
            await still_open(client)
            await client.close()


async def test_handshake_with_session_cookie(world: Api, live: str) -> None:
    async with httpx.AsyncClient(base_url=live) as http:
        response = await http.post("/api/v1/session", json={"token": world.token("acme", "mem")})
        assert response.status_code == 200, response.text
        cookie = response.cookies.get("am_session")
    assert cookie
    client = await WsClient.connect(live, headers={"Cookie": f"am_session={cookie}"})
    ack = await client.request("subscribe", candidate="c1")
    assert ack["type"] == "ack"
    await client.close()
    # A session cookie from a browser on a foreign origin is still refused.
    assert await refused(live, Cookie=f"am_session={cookie}", Origin="https://evil.com") == 403


# --- 2. ops and their answers -------------------------------------------------------


async def test_subscribe_and_unsubscribe(world: Api, live: str) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    await world.send("acme", "ann", thread["id"], "before")
    client = await connect(world, live, "acme", "mem")
    ack = await client.request("subscribe", candidate="c1")
    assert ack["type"] == "ack" and ack["ref"] == 1
    assert ack["candidate"] == "c1" and ack["seq"] == 1 and ack["reset"] is False

    sent = await world.send("acme", "ann", thread["id"], "live one")
    event = await client.next_event(type="message.created")
    assert event["candidate"] == "c1" and event["seq"] == 2 and event["thread"] == thread["id"]
    assert event["message"] == sent

    ack = await client.request("unsubscribe", candidate="c1")
    assert ack["type"] == "ack" and ack["candidate"] == "c1"
    await world.send("acme", "ann", thread["id"], "after unsubscribe")
    await world.send("acme", "coord", thread["id"], "after unsubscribe 2")
    await client.quiet(0.4)
    assert [f["seq"] for f in message_frames(client)] == [2]
    # Unsubscribing from a candidate one is not subscribed to (or that doesn't exist) is fine.
    assert (await client.request("unsubscribe", candidate="zzz"))["type"] == "ack"
    await client.close()


async def test_send_ack_is_the_rest_message_and_client_id_is_idempotent(
    world: Api, live: str
) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    client = await connect(world, live, "acme", "ann")
    ack = await client.request("send", thread=thread["id"], body="  Hello there  ")
    assert ack["type"] == "ack" and ack["ref"] == 1
    message = ack["message"]
    listed = await world.get("acme", "ann", f"/api/v1/threads/{thread['id']}/messages")
    assert listed.json()["messages"] == [message]
    assert message["body"] == "Hello there" and message["deleted"] is False
    assert message["author"] == {
        "id": "ann",
        "name": "Ann",
        "kind": "agency",
        "agency": {"id": "ag", "name": "Ag"},
    }
    assert message["thread"] == thread["id"] and message["candidate"] == "c1"

    first = await client.request("send", thread=thread["id"], body="once", client_id="k-1")
    again = await client.request("send", thread=thread["id"], body="once", client_id="k-1")
    assert first["type"] == again["type"] == "ack"
    assert again["message"] == first["message"] and first["message"]["client_id"] == "k-1"
    listed = await world.get("acme", "ann", f"/api/v1/threads/{thread['id']}/messages")
    assert [m["id"] for m in listed.json()["messages"]] == [message["id"], first["message"]["id"]]
    # A body of exactly 5000 characters is accepted.
    long = await client.request("send", thread=thread["id"], body="x" * 5000)
    assert long["type"] == "ack" and len(long["message"]["body"]) == 5000
    await client.close()


async def test_read_and_delete_ops(world: Api, live: str) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    first = await world.send("acme", "ann", thread["id"], "one")
    second = await world.send("acme", "ann", thread["id"], "two")
    member = await subscribed(world, live, "mem")
    ack = await member.request("read", thread=thread["id"], message_id=first["id"])
    assert ack["type"] == "ack" and ack["unread"] == 1
    ack = await member.request("read", thread=thread["id"], message_id=second["id"])
    assert ack["unread"] == 0
    # The marker never moves back.
    ack = await member.request("read", thread=thread["id"], message_id=first["id"])
    assert ack["unread"] == 0

    agent = await subscribed(world, live, "ann")
    ack = await agent.request("delete", message=second["id"])
    assert ack["type"] == "ack" and ack["ref"] == 2
    event = await member.next_event(type="message.deleted")
    assert event == {
        "type": "message.deleted",
        "candidate": "c1",
        "seq": 3,
        "thread": thread["id"],
        "message_id": second["id"],
    }
    listed = await world.get("acme", "mem", f"/api/v1/threads/{thread['id']}/messages")
    tomb = listed.json()["messages"][-1]
    assert tomb["id"] == second["id"] and tomb["deleted"] is True and tomb["body"] is None
    # Deleting a tombstone again is fine and publishes nothing.
    assert (await agent.request("delete", message=second["id"]))["type"] == "ack"
    await member.quiet(0.3)
    assert [f["seq"] for f in message_frames(member)] == [3]
    await close_all(member, agent)


async def test_ping_pong(world: Api, live: str) -> None:
    client = await connect(world, live, "acme", "mem")
    pong = await client.request("ping")
    assert pong == {"type": "pong", "ref": 1}
    await client.socket.send(json.dumps({"op": "ping", "ref": "abc"}))
    assert await client.next_event(type="pong") == {"type": "pong", "ref": "abc"}
    await client.socket.send(json.dumps({"op": "ping"}))
    assert await client.next_event(type="pong") == {"type": "pong", "ref": None}
    await client.close()


async def test_malformed_frames_get_invalid_and_keep_the_socket(world: Api, live: str) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    client = await connect(world, live, "acme", "ann")

    for payload in ("{not json", "[1, 2, 3]", '"just a string"', "42", "null", ""):
        error = await raw_error(client, payload)
        assert error["code"] == "invalid", (payload, error)
        assert error["ref"] is None and error["message"]
        await still_open(client)

    bad_frames: list[dict[str, Any]] = [
        {"op": "shout"},
        {"no_op": True},
        {"op": "subscribe"},
        {"op": "send", "thread": thread["id"]},
        {"op": "send", "body": "hi"},
        {"op": "read", "thread": thread["id"]},
        {"op": "delete"},
        {"op": "subscribe", "candidate": 5},
        {"op": "subscribe", "candidate": "bad id!"},
        {"op": "subscribe", "candidate": "c1", "after": "3"},
        {"op": "subscribe", "candidate": "c1", "after": -1},
        {"op": "send", "thread": str(thread["id"]), "body": "hi"},
        {"op": "send", "thread": thread["id"], "body": 5},
        {"op": "send", "thread": thread["id"], "body": ""},
        {"op": "send", "thread": thread["id"], "body": "   \n\t "},
        {"op": "send", "thread": thread["id"], "body": "x" * 5001},
        {"op": "read", "thread": thread["id"], "message_id": "1"},
        {"op": "delete", "message": None},
        {"op": "delete", "message": True},
    ]
    for fields in bad_frames:
        op = fields.pop("op", None)
        if op is None:
            ref = "r-no-op"
            await client.socket.send(json.dumps({"ref": ref, **fields}))
            error = await client.next_event(type="error")
        else:
            error = await client.request(op, **fields)
        assert error["type"] == "error", (op, fields, error)
        assert error["code"] == "invalid", (op, fields, error)
        await still_open(client)

    error = await raw_error(client, b'{"op": "ping"}')  # a binary frame
    assert error["code"] == "invalid" and error["ref"] is None
    await still_open(client)
    # Nothing was stored by any of it.
    listed = await world.get("acme", "ann", f"/api/v1/threads/{thread['id']}/messages")
    assert listed.json()["messages"] == []
    await client.close()


async def test_not_found_and_forbidden_errors(world: Api, live: str) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    private = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    message = await world.send("acme", "ann", agency["id"], "from ann")
    private_message = await world.send("acme", "ann", private["id"], "secret")

    outsider = await connect(world, live, "acme", "out")
    for cand in ("c1", "nope"):
        error = await outsider.request("subscribe", candidate=cand)
        assert error["type"] == "error" and error["code"] == "not_found", error
    error = await outsider.request("send", thread=agency["id"], body="hi")
    assert error["code"] == "not_found"

    member = await connect(world, live, "acme", "mem")
    error = await member.request("send", thread=private["id"], body="let me in")
    assert error["type"] == "error" and error["code"] == "not_found" and error["ref"] == 1
    error = await member.request("send", thread=999_999, body="hi")
    assert error["code"] == "not_found"
    error = await member.request("read", thread=private["id"], message_id=private_message["id"])
    assert error["code"] == "not_found"
    error = await member.request("delete", message=private_message["id"])
    assert error["code"] == "not_found"
    error = await member.request("delete", message=message["id"])
    assert error["type"] == "error" and error["code"] == "forbidden"
    error = await member.request("delete", message=999_999)
    assert error["code"] == "not_found"
    await still_open(member)

    listed = await world.get("acme", "ann", f"/api/v1/threads/{agency['id']}/messages")
    assert listed.json()["messages"][0]["deleted"] is False
    listed = await world.get("acme", "ann", f"/api/v1/threads/{private['id']}/messages")
    assert [m["body"] for m in listed.json()["messages"]] == ["secret"]
    await close_all(outsider, member)


async def test_frame_over_64_kib_closes_with_1009(world: Api, live: str) -> None:
    client = await connect(world, live, "acme", "mem")
    await still_open(client)
    with contextlib.suppress(websockets.ConnectionClosed):
        await client.socket.send(json.dumps({"op": "ping", "pad": "x" * (64 * 1024 + 10)}))
    assert await closed_with(client) == 1009
    await client.close()


async def test_frame_just_under_64_kib_is_answered(world: Api, live: str) -> None:
    client = await connect(world, live, "acme", "mem")
    frame = json.dumps({"op": "ping", "ref": 7, "pad": ""})
    pad = 64 * 1024 - len(frame) - 16
    await client.socket.send(json.dumps({"op": "ping", "ref": "big", "pad": "x" * pad}))
    await asyncio.sleep(0.3)
    assert {"type": "pong", "ref": "big"} in client.frames
    await still_open(client)
    await client.close()


async def test_invalid_utf8_text_frame_closes_with_1007(world: Api, live: str) -> None:
    client = await connect(world, live, "acme", "mem")
    await still_open(client)
    with contextlib.suppress(websockets.ConnectionClosed):
        await client.socket.send(b"\xff\xfe", text=True)
    assert await closed_with(client) == 1007
    await client.close()


# --- 3. rate and connection limits --------------------------------------------------


async def test_send_rate_limit(db_url: str, tmp_path: Path) -> None:
    async with custom_server(db_url, tmp_path, send_rate_per_minute=4) as server:
        thread = await server.api.open_thread("acme", "ann", "c1", {"private": False})
        client = await connect(server.api, server.url, "acme", "ann")
        answers = [
            await client.request("send", thread=thread["id"], body=f"m{i}") for i in range(3)
        ]
        assert [a["type"] for a in answers[:2]] == ["ack", "ack"]
        assert answers[2]["type"] == "error" and answers[2]["code"] == "rate_limited"
        assert answers[2]["ref"] == 3
        await still_open(client)
        # Another user has a bucket of its own.
        other = await connect(server.api, server.url, "acme", "mem")
        assert (await other.request("send", thread=thread["id"], body="mine"))["type"] == "ack"
        listed = await server.api.get("acme", "ann", f"/api/v1/threads/{thread['id']}/messages")
        assert [m["body"] for m in listed.json()["messages"]] == ["m0", "m1", "mine"]
        await close_all(client, other)


async def test_connection_limit_per_user(db_url: str, tmp_path: Path) -> None:
    async with custom_server(db_url, tmp_path, max_connections_per_user=2) as server:
        first = await connect(server.api, server.url, "acme", "mem")
        second = await connect(server.api, server.url, "acme", "mem")
        await still_open(first)
        await still_open(second)
        third = await connect(server.api, server.url, "acme", "mem")
        error = await third.next_event(type="error")
        assert error["code"] == "rate_limited"
        assert await closed_with(third) == 4029
        # The two others live on, and another user is not affected.
        await still_open(first)
        await still_open(second)
        other = await connect(server.api, server.url, "acme", "coord")
        await still_open(other)
        # Once one closes, a new socket is accepted again.
        await first.close()
        await asyncio.sleep(0.3)
        fourth = await connect(server.api, server.url, "acme", "mem")
        await still_open(fourth)
        await close_all(second, third, other, fourth)


# --- 4. idle and session expiry -----------------------------------------------------


async def test_idle_socket_is_closed_with_4000(db_url: str, tmp_path: Path) -> None:
    limits = ConnectionLimits(idle_timeout_seconds=0.5)
    async with custom_server(db_url, tmp_path, limits=limits) as server:
        client = await connect(server.api, server.url, "acme", "mem")
        busy = await connect(server.api, server.url, "acme", "coord")
        started = time.monotonic()
        for _ in range(6):  # a client that keeps talking stays connected
            await still_open(busy)
            await asyncio.sleep(0.2)
        assert await closed_with(client) == 4000
        assert time.monotonic() - started < 5
        await still_open(busy)
        await close_all(client, busy)


async def test_expired_session_is_closed_with_4001(world: Api, live: str) -> None:
    token = user_token("acme", "mem", time.time() + 2)
    client = await WsClient.connect(live, token)
    started = time.monotonic()
    ack = await client.request("subscribe", candidate="c1")
    assert ack["type"] == "ack"
    assert await closed_with(client, timeout=8) == 4001
    assert time.monotonic() - started >= 0.5
    await client.close()


# --- 5. visibility on the live path -------------------------------------------------


async def test_private_thread_events_reach_only_its_two_people(world: Api, live: str) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    private = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    coord = await subscribed(world, live, "coord")
    mem = await subscribed(world, live, "mem")
    ann = await subscribed(world, live, "ann")

    secret = (await ann.request("send", thread=private["id"], body="just us"))["message"]
    reply = (await coord.request("send", thread=private["id"], body="sure"))["message"]
    public = (await ann.request("send", thread=agency["id"], body="everyone"))["message"]
    assert (await ann.request("delete", message=secret["id"]))["type"] == "ack"

    coord_events = [await coord.next_event(type="message.created") for _ in range(3)]
    assert [e["message"]["id"] for e in coord_events] == [secret["id"], reply["id"], public["id"]]
    assert (await coord.next_event(type="message.deleted"))["message_id"] == secret["id"]
    ann_created = [e["message"]["id"] for e in await ann.events_of("message.created", 3)]
    assert ann_created == [secret["id"], reply["id"], public["id"]]

    event = await mem.next_event(type="message.created")
    assert event["message"]["id"] == public["id"]
    await mem.quiet(0.4)
    private_ids = {secret["id"], reply["id"]}
    for frame in mem.frames:
        assert frame.get("thread") != private["id"], frame
        assert frame.get("message_id") not in private_ids, frame
        assert (frame.get("message") or {}).get("id") not in private_ids, frame
    assert "just us" not in json.dumps(mem.frames) and "sure" not in json.dumps(mem.frames)
    # The member's seqs skip the invisible events but still only grow.
    assert [f["seq"] for f in message_frames(mem)] == [3]
    await close_all(coord, mem, ann)


async def test_unlinked_agency_user_and_outsiders_cannot_subscribe(world: Api, live: str) -> None:
    abe = await connect(world, live, "acme", "abe")
    error = await abe.request("subscribe", candidate="c1")
    assert error["type"] == "error" and error["code"] == "not_found"
    out = await connect(world, live, "acme", "out")
    assert (await out.request("subscribe", candidate="c1"))["code"] == "not_found"
    await close_all(abe, out)


async def test_other_org_gets_only_its_own_candidate(world: Api, live: str) -> None:
    acme_thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    other_thread = await world.open_thread("other", "oann", "c1", {"private": False})
    for i in range(3):
        await world.send("acme", "ann", acme_thread["id"], f"acme {i}")
    await world.send("other", "oann", other_thread["id"], "other 0")

    omem = await connect(world, live, "other", "omem")
    ack = await omem.request("subscribe", candidate="c1", after=0)
    assert ack["type"] == "ack" and ack["seq"] == 1 and ack["reset"] is False
    replayed = await omem.next_event(type="message.created")
    assert replayed["message"]["body"] == "other 0"

    acme_member = await subscribed(world, live, "mem")
    await world.send("acme", "ann", acme_thread["id"], "acme live")
    assert (await acme_member.next_event(type="message.created"))["message"]["body"] == "acme live"
    await world.send("other", "oann", other_thread["id"], "other live")
    event = await omem.next_event(type="message.created")
    assert event["message"]["body"] == "other live" and event["seq"] == 2
    await omem.quiet(0.3)
    assert [f["message"]["body"] for f in message_frames(omem)] == ["other 0", "other live"]
    assert all(f.get("candidate") in (None, "c1") for f in omem.frames)
    # The acme thread is not even addressable from the other org.
    error = await omem.request("send", thread=acme_thread["id"], body="cross")
    assert error["code"] == "not_found"
    await close_all(omem, acme_member)


async def test_member_losing_access_is_unsubscribed(world: Api, live: str) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    mem = await subscribed(world, live, "mem")
    coord = await subscribed(world, live, "coord")
    await world.send("acme", "ann", agency["id"], "before")
    assert (await mem.next_event(type="message.created"))["message"]["body"] == "before"
    assert (await coord.next_event(type="message.created"))["message"]["body"] == "before"

    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord"], agency_users=["ann"]
    )
    frame = await mem.next_event(type="unsubscribed")
    assert frame == {"type": "unsubscribed", "candidate": "c1", "reason": "access"}

    await world.send("acme", "ann", agency["id"], "after")
    assert (await coord.next_event(type="message.created"))["message"]["body"] == "after"
    await mem.quiet(0.4)
    assert [f["message"]["body"] for f in message_frames(mem)] == ["before"]
    assert not [f for f in coord.frames if f.get("type") == "unsubscribed"]
    assert (await mem.request("subscribe", candidate="c1"))["code"] == "not_found"
    await close_all(mem, coord)


async def test_unlinked_agency_user_is_unsubscribed(world: Api, live: str) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    ann = await subscribed(world, live, "ann")
    mem = await subscribed(world, live, "mem")
    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord", "mem"], agency_users=[]
    )
    frame = await ann.next_event(type="unsubscribed")
    assert frame == {"type": "unsubscribed", "candidate": "c1", "reason": "access"}
    # Whatever becomes of ann's thread, ann hears nothing more of c1.
    await world.client.post(
        f"/api/v1/threads/{agency['id']}/messages",
        json={"body": "after"},
        headers=world.as_user("acme", "coord"),
    )
    await ann.quiet(0.4)
    assert message_frames(ann) == []
    assert (await ann.request("subscribe", candidate="c1"))["code"] == "not_found"
    assert not [f for f in mem.frames if f.get("type") == "unsubscribed"]
    await close_all(ann, mem)


async def test_erasing_the_candidate_unsubscribes_everyone(world: Api, live: str) -> None:
    await world.open_thread("acme", "ann", "c1", {"private": False})
    clients = [await subscribed(world, live, user) for user in ("coord", "mem", "ann")]
    omem = await connect(world, live, "other", "omem")
    assert (await omem.request("subscribe", candidate="c1"))["type"] == "ack"
    response = await world.client.delete("/api/v1/orgs/acme/candidates/c1", headers=world.service)
    assert response.status_code in (200, 204)
    for client in clients:
        frame = await client.next_event(type="unsubscribed")
        assert frame == {"type": "unsubscribed", "candidate": "c1", "reason": "access"}
        assert (await client.request("subscribe", candidate="c1"))["code"] == "not_found"
    # The other org's c1 is a different candidate: untouched.
    await omem.quiet(0.3)
    assert not [f for f in omem.frames if f.get("type") == "unsubscribed"]
    await close_all(*clients, omem)


# --- 7. blue dots -------------------------------------------------------------------


async def next_unread(client: WsClient, timeout: float = 5.0, **expected: Any) -> dict[str, Any]:
    """The next `unread` frame that shows `expected` (counts may coalesce under a burst)."""
    deadline = time.monotonic() + timeout
    seen: list[dict[str, Any]] = []
    while True:
        remaining = deadline - time.monotonic()
        try:
            frame = await client.next_event(timeout=max(remaining, 0.01), type="unread")
        except TimeoutError:
            raise AssertionError(f"no unread frame with {expected}; saw {seen}") from None
        seen.append(frame)
        if all(frame.get(k) == v for k, v in expected.items()):
            return frame


async def test_unread_reaches_every_tab_and_follows_reads_and_deletes(
    world: Api, live: str
) -> None:
    await world.candidate(
        "acme", "c2", coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
    )
    t1 = await world.open_thread("acme", "ann", "c1", {"private": False})
    t2 = await world.open_thread("acme", "ann", "c2", {"private": False})
    tab1 = await subscribed(world, live, "mem", "c1")
    tab2 = await connect(world, live, "acme", "mem")  # subscribed to nothing
    await still_open(tab2)

    await world.send("acme", "ann", t1["id"], "one")
    for tab in (tab1, tab2):
        frame = await next_unread(tab, unread=1)
        assert frame == {
            "type": "unread",
            "candidate": "c1",
            "thread": t1["id"],
            "unread": 1,
            "candidate_unread": 1,
            "total_unread": 1,
        }
    m2 = await world.send("acme", "ann", t1["id"], "two")
    m3 = await world.send("acme", "ann", t1["id"], "three")
    for tab in (tab1, tab2):
        await next_unread(tab, candidate="c1", unread=3, candidate_unread=3, total_unread=3)

    # A second candidate adds to the total, not to c1's count.
    await world.send("acme", "ann", t2["id"], "elsewhere")
    for tab in (tab1, tab2):
        frame = await next_unread(tab, candidate="c2")
        assert frame["thread"] == t2["id"]
        assert (frame["unread"], frame["candidate_unread"], frame["total_unread"]) == (1, 1, 4)

    # Deleting an unread message lowers the count.
    await world.delete("acme", "ann", f"/api/v1/messages/{m3['id']}")
    for tab in (tab1, tab2):
        frame = await next_unread(tab, candidate="c1", unread=2)
        assert (frame["candidate_unread"], frame["total_unread"]) == (2, 3)

    # Reading in one tab clears the dot in the other.
    ack = await tab1.request("read", thread=t1["id"], message_id=m2["id"])
    assert ack["unread"] == 0
    frame = await next_unread(tab2, candidate="c1", unread=0)
    assert (frame["candidate_unread"], frame["total_unread"]) == (0, 1)
    unread = await world.get("acme", "mem", "/api/v1/unread")
    assert [c["candidate"] for c in unread.json()["candidates"]] == ["c2"]
    await close_all(tab1, tab2)


async def test_author_gets_no_unread_for_own_messages(world: Api, live: str) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    ann = await connect(world, live, "acme", "ann")
    mem = await connect(world, live, "acme", "mem")
    await ann.request("send", thread=thread["id"], body="mine")
    await next_unread(mem, unread=1)
    await ann.quiet(0.3)
    assert not [f for f in ann.frames if f.get("type") == "unread" and f["unread"]]
    await close_all(ann, mem)


async def test_blue_dots_follow_access_changes(world: Api, live: str) -> None:
    """Losing access clears the dot (each thread reported as 0); regaining it brings the
    counts back; erasing the candidate clears everyone's. Nothing reaches the other org."""
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    private = await world.open_thread("acme", "mem", "c1", {"private": True, "agency_user": "ann"})
    mem = await connect(world, live, "acme", "mem")  # subscribed to nothing: dots only
    coord = await connect(world, live, "acme", "coord")
    omem = await connect(world, live, "other", "omem")
    await still_open(mem)
    await world.send("acme", "ann", agency["id"], "public")
    await world.send("acme", "ann", private["id"], "private")
    await next_unread(mem, thread=private["id"], candidate_unread=2, total_unread=2)
    await next_unread(coord, thread=agency["id"], unread=1)

    members = ["coord", "mem"]
    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord"], agency_users=["ann"]
    )
    gone = {
        (f["thread"], f["unread"], f["candidate_unread"], f["total_unread"])
        for f in [await next_unread(mem), await next_unread(mem)]
    }
    assert gone == {(agency["id"], 0, 0, 0), (private["id"], 0, 0, 0)}

    await world.candidate("acme", "c1", coordinator="coord", members=members, agency_users=["ann"])
    back = {
        (f["thread"], f["unread"], f["candidate_unread"], f["total_unread"])
        for f in [await next_unread(mem), await next_unread(mem)]
    }
    assert back == {(agency["id"], 1, 2, 2), (private["id"], 1, 2, 2)}

    response = await world.client.delete("/api/v1/orgs/acme/candidates/c1", headers=world.service)
    assert response.status_code == 204
    frame = await next_unread(coord, thread=agency["id"], unread=0)
    assert frame["candidate"] == "c1" and frame["total_unread"] == 0
    frame = await next_unread(mem, thread=private["id"], unread=0)
    assert frame["candidate_unread"] == 0 and frame["total_unread"] == 0
    await omem.quiet(1.2)  # longer than a batch interval
    assert not [f for f in omem.frames if f.get("type") == "unread"]
    await close_all(mem, coord, omem)


# --- 8. slow clients ----------------------------------------------------------------


async def test_slow_client_is_closed_and_does_not_hold_up_others(
    db_url: str, tmp_path: Path
) -> None:
    limits = ConnectionLimits(send_queue_frames=8)
    async with custom_server(db_url, tmp_path, limits=limits) as server:
        api = server.api
        thread = await api.open_thread("acme", "ann", "c1", {"private": False})
        fast = await subscribed(api, server.url, "mem")

        port = int(server.url.rsplit(":", 1)[1])
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.connect(("127.0.0.1", port))
        slow = await websockets.connect(
            ws_url(server.url),
            sock=raw,
            additional_headers={"Authorization": f"Bearer {api.token('acme', 'coord')}"},
            max_queue=1,
            max_size=None,
            compression=None,  # else 300 alike bodies deflate to almost nothing
            ping_interval=None,
        )
        try:
            await slow.send(json.dumps({"op": "subscribe", "candidate": "c1", "ref": 1}))
            ack = json.loads(await asyncio.wait_for(slow.recv(), 5))
            assert ack["type"] == "ack" and ack["ref"] == 1
            # From here on the slow client never reads.

            # 4-byte characters: 20 KB frames, 6 MB in all, beyond any loopback buffering.
            count, body = 300, "\N{GRINNING FACE}" * 4996

            async def burst() -> list[int]:
                ids = []
                for i in range(count):
                    sent = await api.send("acme", "ann", thread["id"], f"{i:04d}{body}")
                    ids.append(sent["id"])
                return ids

            sender = asyncio.create_task(burst())
            # A liveness bound, not a speed check: the fast client is never held up for good.
            received = await fast.events_of("message.created", count, timeout=90)
            ids = await sender
            assert [e["message"]["id"] for e in received] == ids
            seqs = [e["seq"] for e in received]
            assert seqs == list(range(seqs[0], seqs[0] + count))
            await still_open(fast)

            deadline = time.monotonic() + 10
            while await server.metric("am_ws_closed_total", code="4008") < 1:
                assert time.monotonic() < deadline, "the slow client was never closed (4008)"
                await asyncio.sleep(0.2)
            assert await server.metric("am_ws_closed_total", code="4008") == 1
        finally:
            slow.transport.abort()
            await fast.close()
