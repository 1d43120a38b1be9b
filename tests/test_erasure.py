"""Erasing a person (`DELETE /api/v1/orgs/{org}/users/{user}`, a data-subject request):
their name and email are replaced, their messages become tombstones for everyone (live and
on resume), their links, markers, alerts and mutes go, their session ends and their sockets
close, and the audit trail keeps that it happened. Provisioning them again makes a user
anew."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from sqlalchemy import func, select, text
from starlette.applications import Starlette

from channels import envelope, protocol
from server.settings import Settings
from storage.database import Database
from storage.models import (
    CandidateAgencyUser,
    CandidateMember,
    EmailMute,
    EmailOutbox,
    ReadMarker,
    ThreadPoster,
    User,
)
from tests.support.realtime import WsClient
from tests.support.world import Api
from tests.support.ws import refused

ANN = "/api/v1/orgs/acme/users/ann"
COORD = "/api/v1/orgs/acme/users/coord"
ANN_AGAIN = {"name": "Ann Again", "email": "ann@ag.example", "kind": "agency", "agency": "ag"}


@pytest.fixture
async def database(settings: Settings) -> AsyncIterator[Database]:
    """A second handle on the app's database, for looking at what is stored."""
    db = Database(settings.database_url)
    try:
        yield db
    finally:
        await db.close()


async def erase(world: Api, path: str = ANN) -> None:
    response = await world.client.delete(path, headers=world.service)
    assert response.status_code == 204, response.text


async def rows_of(db: Database, user_pk: int) -> dict[str, int]:
    """How many rows of each per-user table still name the user."""
    counts = {}
    async with db.read() as session:
        for table in (
            ReadMarker,
            EmailOutbox,
            ThreadPoster,
            EmailMute,
            CandidateMember,
            CandidateAgencyUser,
        ):
            query = select(func.count()).select_from(table).where(table.user_pk == user_pk)
            counts[table.__tablename__] = int(await session.scalar(query) or 0)
    return counts


async def user_row(db: Database, user_id: str) -> Any:
    async with db.read() as session:
        return (await session.execute(select(User).where(User.ext_id == user_id))).scalar_one()


async def user_by_pk(db: Database, user_pk: int) -> Any:
    async with db.read() as session:
        return await session.get(User, user_pk)


async def messages(world: Api, user: str, thread: int) -> list[dict[str, Any]]:
    response = await world.get("acme", user, f"/api/v1/threads/{thread}/messages")
    assert response.status_code == 200, response.text
    result: list[dict[str, Any]] = response.json()["messages"]
    return result


async def test_erasing_an_agency_user_leaves_tombstones_and_no_personal_data(
    world: Api, app: Starlette, database: Database
) -> None:
    agency = await world.open_thread("acme", "ann", "c1", {"private": False})
    private = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    await world.send("acme", "ann", agency["id"], "My phone is 555-0100")
    kept = await world.send("acme", "mem", agency["id"], "Noted")
    await world.send("acme", "ann", private["id"], "Between us")
    # ann has read markers, a mute, posts and pending alerts.
    await world.post(
        "acme", "ann", f"/api/v1/threads/{agency['id']}/read", {"message_id": kept["id"]}
    )
    await world.send("acme", "coord", private["id"], "Reply for ann")
    await app.state.services.alerts.run_all()
    response = await world.client.put(
        "/api/v1/me/notifications",
        json={"muted_candidates": ["c1"]},
        headers=world.as_user("acme", "ann"),
    )
    assert response.status_code == 200
    ann_pk = (await user_row(database, "ann")).pk
    before = await rows_of(database, ann_pk)
    assert all(before[table] for table in before if table != "candidate_members"), before
    seq_before = (await world.get("acme", "mem", "/api/v1/candidates/c1")).json()["seq"]

    await erase(world)

    # Her session ends: the token that still verifies is refused.
    assert (await world.get("acme", "ann", "/api/v1/me")).status_code == 401
    # Everyone sees her messages as tombstones, under the name of an erased user.
    shown = await messages(world, "mem", agency["id"])
    assert [(m["deleted"], m["body"]) for m in shown] == [(True, None), (False, "Noted")]
    assert shown[0]["author"] == {
        "id": f"~erased-{ann_pk}",  # her host id is gone too
        "name": "Erased user",
        "kind": "agency",
        "agency": {"id": "ag", "name": "Ag"},
    }
    shown = await messages(world, "coord", private["id"])
    assert [(m["deleted"], m["body"]) for m in shown] == [(True, None), (False, "Reply for ann")]
    # The text is gone from storage, and so are her name and email.
    async with database.read() as session:
        bodies = [b for (b,) in await session.execute(text("SELECT body FROM messages"))]
    assert sorted(b for b in bodies if b) == ["Noted", "Reply for ann"]
    assert (await user_by_pk(database, ann_pk)).ext_id == f"~erased-{ann_pk}"
    row = await user_by_pk(database, ann_pk)
    assert row.name == "Erased user" and row.erased_at is not None
    assert row.email == f"erased-{ann_pk}@erased.invalid"
    assert not any((await rows_of(database, ann_pk)).values())
    # Her agency thread stays readable to the members, and takes no more posts.
    (thread,) = [
        t
        for t in (await world.get("acme", "mem", "/api/v1/candidates/c1/threads")).json()["threads"]
        if t["id"] == agency["id"]
    ]
    assert thread["agency_user_linked"] is False
    posted = await world.post(
        "acme", "mem", f"/api/v1/threads/{agency['id']}/messages", {"body": "Ann?"}
    )
    assert posted.status_code == 403
    # Each tombstone is an event of the candidate's log: the seq moved by two.
    after = (await world.get("acme", "mem", "/api/v1/candidates/c1")).json()["seq"]
    assert after == seq_before + 2
    # The audit trail keeps that it happened, and by whom: the host ATS.
    audit = await world.client.get("/api/v1/orgs/acme/audit", headers=world.service)
    (record,) = [r for r in audit.json()["records"] if r["action"] == "user.erased"]
    assert (record["actor"], record["user"]) == (None, "ann")
    assert (record["candidate"], record["thread"], record["message"]) == (None, None, None)


async def test_erasing_again_is_a_no_op_and_unknowns_are_404(world: Api) -> None:
    await erase(world)
    await erase(world)
    audit = await world.client.get("/api/v1/orgs/acme/audit", headers=world.service)
    assert [r["action"] for r in audit.json()["records"]] == ["user.erased"]
    for path in ("/api/v1/orgs/acme/users/nobody", "/api/v1/orgs/nowhere/users/ann"):
        response = await world.client.delete(path, headers=world.service)
        assert response.status_code == 404 and response.json()["error"]["code"] == "not_found"
    bad = await world.client.delete("/api/v1/orgs/acme/users/no%20body", headers=world.service)
    assert bad.status_code == 422
    as_user = await world.client.delete(ANN, headers=world.as_user("acme", "coord"))
    assert as_user.status_code == 403
    assert (await world.client.delete(COORD)).status_code == 401


async def test_erasing_the_coordinator_takes_it_off_every_candidate(world: Api) -> None:
    private = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    await world.send("acme", "coord", private["id"], "Call me")
    await erase(world, COORD)
    candidate = (await world.get("acme", "mem", "/api/v1/candidates/c1")).json()
    assert candidate["coordinator"] is None
    assert candidate["private_contacts"] == []
    # The private thread with the erased member is read-only for ann, its text gone.
    shown = await messages(world, "ann", private["id"])
    assert [(m["deleted"], m["author"]["name"]) for m in shown] == [(True, "Erased user")]
    posted = await world.post(
        "acme", "ann", f"/api/v1/threads/{private['id']}/messages", {"body": "Hello?"}
    )
    assert posted.status_code == 403


async def test_the_same_host_id_provisioned_again_is_a_new_person_with_no_past(
    world: Api, database: Database
) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"})
    await world.send("acme", "ann", thread["id"], "Before the erasure")
    erased_pk = (await user_row(database, "ann")).pk
    await erase(world)
    # Until provisioned anew, the id names nobody: linking it is refused, as for any unknown.
    spec = {"name": "C1", "coordinator": "coord", "members": ["mem"], "agency_users": ["ann"]}
    refused = await world.client.put(
        "/api/v1/orgs/acme/candidates/c1", json=spec, headers=world.service
    )
    assert refused.status_code == 422
    assert "'ann' is not provisioned" in refused.json()["error"]["message"]

    response = await world.client.put(ANN, json=ANN_AGAIN, headers=world.service)
    assert response.status_code == 201, response.text  # a new person
    row = await user_row(database, "ann")
    assert row.pk != erased_pk and row.erased_at is None and row.email_muted is False
    me = await world.get("acme", "ann", "/api/v1/me")
    assert me.status_code == 200 and me.json()["name"] == "Ann Again"
    linked = await world.client.put(
        "/api/v1/orgs/acme/candidates/c1", json=spec, headers=world.service
    )
    assert linked.status_code == 200, linked.text
    # Nothing of the erased person's past comes with the id: no thread, no contact, and the
    # tombstone stays the erased person's.
    assert (await world.get("acme", "ann", "/api/v1/candidates/c1/threads")).json()["threads"] == []
    candidate = (await world.get("acme", "ann", "/api/v1/candidates/c1")).json()
    assert [u["id"] for u in candidate["private_contacts"]] == ["coord"]  # the coordinator only
    shown = await messages(world, "coord", thread["id"])
    assert [(m["deleted"], m["author"]["name"]) for m in shown] == [(True, "Erased user")]
    # Erasing the new person erases the new person.
    await erase(world)
    assert (await world.get("acme", "ann", "/api/v1/me")).status_code == 401


async def test_live_viewers_see_tombstones_and_the_erased_users_sockets_close(
    world: Api, live: str
) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    said = await world.send("acme", "ann", thread["id"], "Soon to be erased")
    member = await WsClient.connect(live, world.token("acme", "mem"))
    agent = await WsClient.connect(live, world.token("acme", "ann"))
    resumer_seq = (await member.request("subscribe", candidate="c1"))["seq"]
    await agent.request("subscribe", candidate="c1")
    try:
        await erase(world)
        deleted = await member.next_event(type="message.deleted")
        assert (deleted["thread"], deleted["message_id"]) == (thread["id"], said["id"])
        await _wait_closed(agent)
        assert agent.socket.close_code == protocol.CLOSE_SESSION_EXPIRED
        # The member's socket lives on.
        assert (await member.request("ping"))["type"] == "pong"
    finally:
        await member.close()
        await agent.close()
    # A client resuming from before the erasure is replayed the tombstone.
    resumer = await WsClient.connect(live, world.token("acme", "coord"))
    try:
        await resumer.request("subscribe", candidate="c1", after=resumer_seq - 1)
        created = await resumer.next_event(type="message.created")
        assert created["message"]["deleted"] is True and created["message"]["body"] is None
        assert created["message"]["author"]["name"] == "Erased user"
        replayed = await resumer.next_event(type="message.deleted")
        assert replayed["message_id"] == said["id"]
    finally:
        await resumer.close()
    # Connecting again is refused.
    assert await refused(live, Authorization=f"Bearer {world.token('acme', 'ann')}") == 403


async def test_a_sign_out_from_the_broker_closes_only_that_users_sockets(
    world: Api, live: str, app: Starlette, database: Database
) -> None:
    """What every process does with the sign-out that an erasure publishes."""
    agent = await WsClient.connect(live, world.token("acme", "ann"))
    member = await WsClient.connect(live, world.token("acme", "mem"))
    try:
        row = await user_row(database, "ann")
        signed_out = envelope.SignedOutEnvelope(row.org_pk, row.pk)
        assert envelope.decode(envelope.encode(signed_out)) == signed_out
        hub = app.state.services.realtime.hub
        await hub.on_broker_message(envelope.UNREAD_CHANNEL, envelope.encode(signed_out))
        await _wait_closed(agent)
        assert agent.socket.close_code == protocol.CLOSE_SESSION_EXPIRED
        assert (await member.request("ping"))["type"] == "pong"
    finally:
        await agent.close()
        await member.close()


async def _wait_closed(client: WsClient) -> None:
    await asyncio.wait_for(client.socket.wait_closed(), 5)
