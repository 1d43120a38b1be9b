"""A thread whose agency user was unlinked from the candidate: the members who see the
candidate still read it, but nobody may post in it (403 `forbidden` over REST, an error
frame `forbidden` on the socket), and its `Thread` says `agency_user_linked: false`."""

from __future__ import annotations

from typing import Any

from tests.support.realtime import WsClient
from tests.support.world import Api

THREADS = "/api/v1/candidates/c1/threads"


async def unlink_ann(world: Api) -> None:
    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord", "mem"], agency_users=[]
    )


async def relink_ann(world: Api) -> None:
    await world.candidate(
        "acme", "c1", coordinator="coord", members=["coord", "mem"], agency_users=["ann"]
    )


async def agency_thread_of(world: Api, user: str) -> dict[str, Any]:
    response = await world.get("acme", user, THREADS)
    assert response.status_code == 200, response.text
    (thread,) = [t for t in response.json()["threads"] if t["kind"] == "agency"]
    return thread


def assert_refused_as_unlinked(response: Any) -> None:
    assert response.status_code == 403, response.text
    error = response.json()["error"]
    assert error["code"] == "forbidden"
    assert "no longer has access" in error["message"]


async def test_members_read_an_unlinked_agency_users_thread_but_nobody_posts(world: Api) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    assert thread["agency_user_linked"] is True
    first = await world.send("acme", "ann", thread["id"], "Here is the CV")
    await world.send("acme", "mem", thread["id"], "Thanks")

    await unlink_ann(world)

    for member in ("coord", "mem"):
        listed = await agency_thread_of(world, member)
        assert listed["id"] == thread["id"] and listed["agency_user_linked"] is False
        history = await world.get("acme", member, f"/api/v1/threads/{thread['id']}/messages")
        assert history.status_code == 200
        assert [m["body"] for m in history.json()["messages"]] == ["Here is the CV", "Thanks"]
        posted = await world.post(
            "acme", member, f"/api/v1/threads/{thread['id']}/messages", {"body": "Still there?"}
        )
        assert_refused_as_unlinked(posted)
    # The unlinked agency user no longer sees the thread at all.
    gone = await world.post(
        "acme", "ann", f"/api/v1/threads/{thread['id']}/messages", {"body": "Hello?"}
    )
    assert gone.status_code == 404
    # Nothing was stored; its author may still delete an old message (a tombstone is no post).
    history = await world.get("acme", "mem", f"/api/v1/threads/{thread['id']}/messages")
    assert len(history.json()["messages"]) == 2
    mem_message = history.json()["messages"][1]["id"]
    assert (await world.delete("acme", "mem", f"/api/v1/messages/{mem_message}")).status_code == 204
    assert first["id"] != mem_message

    # Linked again: the thread takes posts again.
    await relink_ann(world)
    assert (await agency_thread_of(world, "mem"))["agency_user_linked"] is True
    again = await world.send("acme", "mem", thread["id"], "Welcome back")
    assert again["body"] == "Welcome back"


async def test_a_send_right_after_the_unlink_is_refused(world: Api) -> None:
    """The send path keeps the thread's access in memory: the unlink must still count on
    the very next send."""
    thread = await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": False})
    path = f"/api/v1/threads/{thread['id']}/messages"
    for body in ("one", "two"):  # the second decides on the access kept in memory
        assert (await world.post("acme", "mem", path, {"body": body})).status_code == 201
    await unlink_ann(world)
    assert_refused_as_unlinked(await world.post("acme", "mem", path, {"body": "three"}))
    history = await world.get("acme", "mem", path)
    assert [m["body"] for m in history.json()["messages"]] == ["one", "two"]


async def test_the_socket_refuses_a_post_with_a_forbidden_error_frame(
    world: Api, live: str
) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    member = await WsClient.connect(live, world.token("acme", "mem"))
    try:
        sent = await member.request("send", thread=thread["id"], body="before")
        assert sent["type"] == "ack" and sent["message"]["body"] == "before"
        await unlink_ann(world)
        refused = await member.request("send", thread=thread["id"], body="after")
        assert refused["type"] == "error" and refused["code"] == "forbidden"
        assert "no longer has access" in refused["message"]
        # The socket lives on, and reading still works.
        assert (await member.request("ping"))["type"] == "pong"
        read = await member.request("read", thread=thread["id"], message_id=sent["message"]["id"])
        assert read["type"] == "ack"
    finally:
        await member.close()


async def test_the_others_following_the_candidate_are_told_when_its_people_change(
    world: Api, live: str
) -> None:
    await world.open_thread("acme", "ann", "c1", {"private": False})
    member = await WsClient.connect(live, world.token("acme", "mem"))
    agent = await WsClient.connect(live, world.token("acme", "ann"))
    try:
        for client in (member, agent):
            await client.request("subscribe", candidate="c1")
        await unlink_ann(world)
        # ann, who lost access, is unsubscribed; mem, who keeps it, is told to reload.
        assert (await agent.next_event(type="unsubscribed"))["candidate"] == "c1"
        updated = await member.next_event(type="candidate.updated")
        assert updated == {"type": "candidate.updated", "candidate": "c1"}
        assert (await agency_thread_of(world, "mem"))["agency_user_linked"] is False
        # A change that takes access from nobody (ann linked again) is told as well.
        await relink_ann(world)
        assert (await member.next_event(type="candidate.updated"))["candidate"] == "c1"
        # A candidate PUT that changes nobody's access says nothing.
        await relink_ann(world)
        assert [f for f in await member.quiet(0.3) if f["type"] == "candidate.updated"] == []
    finally:
        await member.close()
        await agent.close()
