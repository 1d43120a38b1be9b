"""The WebSocket endpoint on one process: live events, resume, bad frames, handshake."""

from __future__ import annotations

import pytest
import websockets
from starlette.applications import Starlette

from tests.support.realtime import WsClient
from tests.support.world import Api


async def test_live_message_reaches_other_side(world: Api, live: str) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    member = await WsClient.connect(live, world.token("acme", "mem"))
    agent = await WsClient.connect(live, world.token("acme", "ann"))
    ack = await member.request("subscribe", candidate="c1")
    assert ack["type"] == "ack" and ack["reset"] is False
    await agent.request("subscribe", candidate="c1")
    sent = await agent.request("send", thread=thread["id"], body="Hello live")
    event = await member.next_event(type="message.created")
    assert event["message"] == sent["message"]
    unread = await member.next_event(type="unread")
    assert unread["unread"] == 1 and unread["candidate"] == "c1"
    await member.close()
    await agent.close()


async def test_bad_origin_is_refused(world: Api, live: str) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await WsClient.connect(
            live, world.token("acme", "mem"), headers={"Origin": "https://evil.com"}
        )
    assert refused.value.response.status_code == 403


async def test_the_served_app_writes_frames_straight_to_the_socket(
    world: Api, live: str, app: Starlette
) -> None:
    """The product's uvicorn settings (server/edge/serving.py) offer the direct writer."""
    member = await WsClient.connect(live, world.token("acme", "mem"))
    assert (await member.request("ping"))["type"] == "pong"
    hub = app.state.services.realtime.hub
    (conn,) = [conn for conns in hub.users.values() for conn in conns]
    assert conn.direct is not None and conn.queued == 0
    await member.close()
