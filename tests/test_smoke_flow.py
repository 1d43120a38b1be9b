"""A conversation end to end over REST: open, post, page, read, delete, on both databases."""

from __future__ import annotations

from tests.support.world import Api


async def test_conversation_round_trip(world: Api) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    assert thread["kind"] == "agency" and thread["member"] is None
    first = await world.send("acme", "ann", thread["id"], "  Hello team  ")
    assert first["body"] == "Hello team"
    reply = await world.send("acme", "mem", thread["id"], "Hi Ann")

    unread = (await world.get("acme", "coord", "/api/v1/unread")).json()
    assert unread == {"candidates": [{"candidate": "c1", "unread": 2, "latest": reply}]}

    read = await world.post(
        "acme", "coord", f"/api/v1/threads/{thread['id']}/read", {"message_id": first["id"]}
    )
    assert read.json() == {"unread": 1}

    gone = await world.delete("acme", "mem", f"/api/v1/messages/{reply['id']}")
    assert gone.status_code == 204
    page = (await world.get("acme", "ann", f"/api/v1/threads/{thread['id']}/messages")).json()
    assert [m["deleted"] for m in page["messages"]] == [False, True]
    assert page["messages"][1]["body"] is None
    assert (await world.get("acme", "coord", "/api/v1/unread")).json() == {"candidates": []}
