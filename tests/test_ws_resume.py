"""Resuming a subscription from the event log: `subscribe` with `after` replays exactly the
missed visible events, then goes live with no gap and no duplicate, or says `reset`."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from sqlalchemy import select, update

from server.domain.eventlog import prune_events
from server.settings import Settings
from storage.database import Database
from storage.models import Candidate, Event, Org, utcnow
from tests.support.realtime import WsClient
from tests.support.world import Api

MESSAGE_EVENTS = ("message.created", "message.deleted")


def message_frames(client: WsClient) -> list[dict[str, Any]]:
    return [f for f in client.frames if f.get("type") in MESSAGE_EVENTS]


async def member_socket(world: Api, live: str, user: str = "mem") -> WsClient:
    return await WsClient.connect(live, world.token("acme", user))


async def test_resume_replays_exactly_the_missed_events(world: Api, live: str) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    private = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    await world.send("acme", "ann", agency["id"], "seen 1")
    await world.send("acme", "ann", agency["id"], "seen 2")

    first = await member_socket(world, live)
    ack = await first.request("subscribe", candidate="c1", after=0)
    assert ack["type"] == "ack" and ack["reset"] is False and ack["seq"] == 2
    seen = await first.events_of("message.created", 2)
    assert [e["seq"] for e in seen] == [1, 2]
    last_seq = seen[-1]["seq"]
    await first.close()

    sent = [await world.send("acme", "ann", agency["id"], f"missed {i}") for i in range(5)]
    response = await world.delete("acme", "ann", f"/api/v1/messages/{sent[2]['id']}")
    assert response.status_code == 204

    second = await member_socket(world, live)
    ack = await second.request("subscribe", candidate="c1", after=last_seq)
    assert ack["type"] == "ack" and ack["reset"] is False and ack["seq"] == last_seq + 6
    replayed = [await second.next_event(type=None) for _ in range(6)]
    replayed = [f for f in replayed if f["type"] in MESSAGE_EVENTS]
    assert [f["seq"] for f in replayed] == list(range(last_seq + 1, last_seq + 7))
    assert [f["type"] for f in replayed] == ["message.created"] * 5 + ["message.deleted"]
    # The replayed messages are those that went live, as they are now: the deleted one's
    # text is gone from storage, so its creation replays as the tombstone.
    tombstone = {**sent[2], "body": None, "deleted": True}
    assert [f["message"] for f in replayed[:5]] == [*sent[:2], tombstone, *sent[3:]]
    assert replayed[5]["message_id"] == sent[2]["id"] and replayed[5]["thread"] == agency["id"]

    # Live from here: the next event follows on, and nothing comes twice.
    live_one = await world.send("acme", "ann", agency["id"], "live")
    event = await second.next_event(type="message.created")
    assert event["seq"] == last_seq + 7 and event["message"] == live_one
    await second.quiet(0.3)
    seqs = [f["seq"] for f in message_frames(second)]
    assert seqs == list(range(last_seq + 1, last_seq + 8))

    # Events of a thread the user doesn't see are skipped in the replay, seqs still growing.
    await world.send("acme", "ann", private["id"], "secret")
    await world.send("acme", "ann", agency["id"], "after secret")
    await second.close()
    third = await member_socket(world, live)
    ack = await third.request("subscribe", candidate="c1", after=last_seq + 6)
    assert ack["reset"] is False and ack["seq"] == last_seq + 9
    await third.quiet(0.4)
    frames = message_frames(third)
    assert [(f["seq"], f["message"]["body"]) for f in frames] == [
        (last_seq + 7, "live"),
        (last_seq + 9, "after secret"),
    ]
    await third.close()


async def test_resume_during_concurrent_sends_has_no_gap_and_no_duplicate(
    world: Api, live: str
) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    for i in range(10):
        await world.send("acme", "ann", agency["id"], f"early {i}")
    last_seq = 4  # the client saw up to here before it went away

    client = await member_socket(world, live)
    count = 30
    sends = asyncio.gather(
        *(world.send("acme", "ann", agency["id"], f"burst {i}") for i in range(count))
    )
    subscribe = client.request("subscribe", candidate="c1", after=last_seq)
    sent, ack = await asyncio.gather(sends, subscribe)
    assert ack["type"] == "ack" and ack["reset"] is False

    total = 10 + count
    deadline = asyncio.get_running_loop().time() + 15
    while len(message_frames(client)) < total - last_seq:
        assert asyncio.get_running_loop().time() < deadline, message_frames(client)
        await asyncio.sleep(0.05)
    await client.quiet(0.3)
    frames = message_frames(client)
    seqs = [f["seq"] for f in frames]
    assert seqs == list(range(last_seq + 1, total + 1)), seqs
    bodies = [f["message"]["body"] for f in frames]
    assert bodies[: 10 - last_seq] == [f"early {i}" for i in range(last_seq, 10)]
    assert sorted(f["message"]["id"] for f in frames[10 - last_seq :]) == sorted(
        m["id"] for m in sent
    )
    await client.close()


async def test_after_beyond_the_current_seq_is_a_reset(world: Api, live: str) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    for i in range(3):
        await world.send("acme", "ann", agency["id"], f"m{i}")
    client = await member_socket(world, live)
    ack = await client.request("subscribe", candidate="c1", after=50)
    assert ack["type"] == "ack" and ack["reset"] is True and ack["seq"] == 3
    await client.quiet(0.3)
    assert message_frames(client) == []
    # Subscribed all the same: live events follow.
    await world.send("acme", "ann", agency["id"], "live")
    assert (await client.next_event(type="message.created"))["seq"] == 4
    # after == the current seq: nothing to replay, no reset.
    ack = await client.request("subscribe", candidate="c1", after=4)
    assert ack["reset"] is False and ack["seq"] == 4
    await client.quiet(0.3)
    assert [f["seq"] for f in message_frames(client)] == [4]
    await client.close()


async def test_after_older_than_retention_is_a_reset(
    world: Api, live: str, settings: Settings
) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    for i in range(6):
        await world.send("acme", "ann", agency["id"], f"m{i}")

    db = Database(settings.database_url)
    try:
        async with db.write() as session:
            candidate_pk = await session.scalar(
                select(Candidate.pk)
                .join(Org, Org.pk == Candidate.org_pk)
                .where(Org.ext_id == "acme", Candidate.ext_id == "c1")
            )
            await session.execute(
                update(Event)
                .where(Event.candidate_pk == candidate_pk, Event.seq <= 3)
                .values(created_at=utcnow() - timedelta(days=settings.event_retention_days + 1))
            )
        removed = await prune_events(db, settings.event_retention_days)
    finally:
        await db.close()
    assert removed == 3

    client = await member_socket(world, live)
    for after in (0, 1, 2):
        ack = await client.request("subscribe", candidate="c1", after=after)
        assert ack["type"] == "ack" and ack["reset"] is True and ack["seq"] == 6, (after, ack)
    await client.quiet(0.3)
    assert message_frames(client) == []
    # From the first retained event on, the replay is complete again.
    ack = await client.request("subscribe", candidate="c1", after=3)
    assert ack["reset"] is False and ack["seq"] == 6
    await client.quiet(0.3)
    assert [(f["seq"], f["message"]["body"]) for f in message_frames(client)] == [
        (4, "m3"),
        (5, "m4"),
        (6, "m5"),
    ]
    await client.close()
