"""The audit trail: every deleted message (over REST or the socket) leaves a record of who
deleted which message when, kept after its text is gone, which the host ATS reads with
the service token, page by page, oldest first."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from channels.protocol import MAX_ID
from tests.support.realtime import WsClient
from tests.support.world import Api

AUDIT = "/api/v1/orgs/{org}/audit"


async def audit(world: Api, org: str = "acme", **params: Any) -> dict[str, Any]:
    response = await world.client.get(AUDIT.format(org=org), params=params, headers=world.service)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_a_deleted_message_is_recorded_once_with_who_what_and_when(world: Api) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    message = await world.send("acme", "ann", thread["id"], "A secret to take back")
    before = datetime.now(UTC)
    for _ in range(2):  # deleting a tombstone again is 204 and records nothing new
        response = await world.delete("acme", "ann", f"/api/v1/messages/{message['id']}")
        assert response.status_code == 204

    page = await audit(world)
    (record,) = page["records"]
    assert page["has_more"] is False
    at = datetime.fromisoformat(record.pop("at").replace("Z", "+00:00"))
    assert before - timedelta(seconds=5) <= at <= datetime.now(UTC)
    assert record == {
        "id": record["id"],
        "action": "message.deleted",
        "actor": "ann",
        "user": None,
        "candidate": "c1",
        "thread": thread["id"],
        "message": message["id"],
    }
    # The record says what happened, never what the message said.
    assert "secret" not in str(page)
    # Another org sees none of it.
    assert (await audit(world, "other"))["records"] == []


async def test_a_refused_delete_records_nothing(world: Api) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    message = await world.send("acme", "ann", thread["id"], "mine")
    response = await world.delete("acme", "mem", f"/api/v1/messages/{message['id']}")
    assert response.status_code == 403
    assert (await audit(world))["records"] == []


async def test_a_delete_over_the_socket_is_recorded(world: Api, live: str) -> None:
    thread = await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": False})
    member = await WsClient.connect(live, world.token("acme", "mem"))
    try:
        sent = await member.request("send", thread=thread["id"], body="oops")
        deleted = await member.request("delete", message=sent["message"]["id"])
        assert deleted["type"] == "ack"
    finally:
        await member.close()
    (record,) = (await audit(world))["records"]
    assert (record["action"], record["actor"], record["message"]) == (
        "message.deleted",
        "mem",
        sent["message"]["id"],
    )


async def test_pages_go_forward_from_the_cursor_oldest_first(world: Api) -> None:
    thread = await world.open_thread("acme", "ann", "c1", {"private": False})
    ids = []
    for n in range(5):
        message = await world.send("acme", "ann", thread["id"], f"message {n}")
        await world.delete("acme", "ann", f"/api/v1/messages/{message['id']}")
        ids.append(message["id"])

    seen: list[int] = []
    after = 0
    while True:
        page = await audit(world, after=after, limit=2)
        seen += [r["message"] for r in page["records"]]
        if not page["has_more"]:
            break
        after = page["records"][-1]["id"]
    assert seen == ids
    everything = await audit(world)  # default limit 100
    assert [r["message"] for r in everything["records"]] == ids
    assert everything["has_more"] is False
    last = everything["records"][-1]["id"]
    assert await audit(world, after=last) == {"records": [], "has_more": False}


@pytest.mark.parametrize(
    "params",
    [{"limit": 0}, {"limit": 501}, {"limit": "x"}, {"after": -1}, {"after": MAX_ID + 1}],
    ids=["limit-0", "limit-501", "limit-text", "after-negative", "after-too-big"],
)
async def test_bad_paging_is_422(world: Api, params: dict[str, Any]) -> None:
    response = await world.client.get(
        AUDIT.format(org="acme"), params=params, headers=world.service
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "invalid"


async def test_only_the_host_reads_the_audit_trail(world: Api) -> None:
    path = AUDIT.format(org="acme")
    assert (await world.client.get(path)).status_code == 401
    as_member = await world.client.get(path, headers=world.as_user("acme", "coord"))
    assert as_member.status_code == 403
    assert as_member.json()["error"]["code"] == "forbidden"
    unknown = await world.client.get(AUDIT.format(org="nowhere"), headers=world.service)
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "not_found"
