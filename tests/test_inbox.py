"""The inbox (`GET /api/v1/conversations`) and the candidate list's newest message and
activity order (`GET /api/v1/candidates`): order, paging, access as it is now, unread
counts, tombstones, input. Each test runs on SQLite and on PostgreSQL."""

from __future__ import annotations

from typing import Any

import httpx

from server.edge import responses
from tests.support.world import Api

INBOX = "/api/v1/conversations"
CANDIDATES = "/api/v1/candidates"


def assert_error(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"]["code"] == code, body
    assert body["error"]["message"]


async def inbox(api: Api, user: str, query: str = "", org: str = "acme") -> dict[str, Any]:
    response = await api.get(org, user, f"{INBOX}?{query}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def inbox_ids(api: Api, user: str, org: str = "acme") -> list[int]:
    return [c["id"] for c in (await inbox(api, user, "limit=100", org))["conversations"]]


async def listed(api: Api, user: str, query: str = "") -> dict[str, Any]:
    response = await api.get("acme", user, f"{CANDIDATES}?{query}")
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def thread_of(api: Api, user: str, cand: str, thread_id: int) -> dict[str, Any]:
    """The thread as the candidate's thread list shows it to the user."""
    response = await api.get("acme", user, f"/api/v1/candidates/{cand}/threads")
    assert response.status_code == 200, response.text
    found: dict[str, Any] = next(t for t in response.json()["threads"] if t["id"] == thread_id)
    return found


async def spread(api: Api) -> dict[str, int]:
    """c2 and c3 next to c1 (coord coordinates all three, mem is on c1 and c2, ann is linked
    to all, abe to c2), a thread in each of them and messages in an order of their own."""
    await api.candidate(
        "acme", "c2", coordinator="coord", members=["mem"], agency_users=["ann", "abe"]
    )
    await api.candidate("acme", "c3", coordinator="coord", members=[], agency_users=["ann"])
    t = {
        "c1": (await api.open_thread("acme", "ann", "c1", {}))["id"],
        "c2": (await api.open_thread("acme", "ann", "c2", {}))["id"],
        "c2abe": (await api.open_thread("acme", "abe", "c2", {}))["id"],
        "c3": (await api.open_thread("acme", "ann", "c3", {}))["id"],
    }
    # Opened and never written in: no activity, left out of the inbox.
    private = {"agency_user": "ann", "private": True}
    t["empty"] = (await api.open_thread("acme", "mem", "c2", private))["id"]
    for key, author in [("c1", "ann"), ("c2", "ann"), ("c3", "ann"), ("c2abe", "abe")]:
        await api.send("acme", author, t[key], f"first in {key}")
    await api.send("acme", "coord", t["c1"], "newest in c1")
    return t


# --- the inbox -------------------------------------------------------------------------------


async def test_threads_of_every_candidate_newest_activity_first(world: Api) -> None:
    t = await spread(world)
    answer = await inbox(world, "coord")
    assert answer["has_more"] is False
    assert [c["id"] for c in answer["conversations"]] == [t["c1"], t["c2abe"], t["c3"], t["c2"]]
    for conversation in answer["conversations"]:
        shown = await thread_of(world, "coord", conversation["candidate"], conversation["id"])
        # Every field of the documented Thread, as the candidate's thread list has it, and
        # the candidate's name.
        documented = {key: shown[key] for key in responses.Thread.model_fields}
        assert conversation == {**documented, "candidate_name": conversation["candidate"].title()}
    first = answer["conversations"][0]
    assert first["last_message"]["body"] == "newest in c1"
    assert first["agency_user"]["agency"] == {"id": "ag", "name": "Ag"}
    # The empty private thread is mem's, and still left out of mem's inbox.
    assert t["empty"] not in await inbox_ids(world, "mem")


async def test_paging_back_with_before_has_no_gap_and_no_duplicate(world: Api) -> None:
    t = await spread(world)
    extra = []
    for n in range(5):
        cand = f"p{n}"
        await world.candidate("acme", cand, coordinator="coord", members=[], agency_users=["ann"])
        thread = (await world.open_thread("acme", "ann", cand, {}))["id"]
        await world.send("acme", "ann", thread, f"hello {n}")
        extra.append(thread)
    await world.send("acme", "ann", t["c3"], "c3 again")  # c3 moves to the top
    everything = await inbox_ids(world, "coord")
    assert everything == [t["c3"], *reversed(extra), t["c1"], t["c2abe"], t["c2"]]
    pages, query = [], "limit=3"
    while True:
        answer = await inbox(world, "coord", query)
        pages.append([c["id"] for c in answer["conversations"]])
        if not answer["has_more"]:
            break
        query = f"limit=3&before={answer['conversations'][-1]['last_message']['id']}"
    assert pages == [everything[0:3], everything[3:6], everything[6:9]]
    # The last message of the last thread: nothing older.
    oldest = (await inbox(world, "coord", "limit=100"))["conversations"][-1]["last_message"]
    assert await inbox(world, "coord", f"before={oldest['id']}") == {
        "conversations": [],
        "has_more": False,
    }


async def test_the_default_page_is_fifty(world: Api) -> None:
    await world.team("big", members=("boss",), agent="amy", candidates=("k0",))
    for n in range(51):
        cand = f"k{n}"
        await world.candidate("big", cand, coordinator="boss", members=[], agency_users=["amy"])
        thread = (await world.open_thread("big", "amy", cand, {}))["id"]
        await world.send("big", "amy", thread, "hi")
    answer = await inbox(world, "boss", org="big")
    assert (len(answer["conversations"]), answer["has_more"]) == (50, True)
    rest = await inbox(
        world, "boss", f"before={answer['conversations'][-1]['last_message']['id']}", "big"
    )
    assert (len(rest["conversations"]), rest["has_more"]) == (1, False)


async def test_a_member_who_loses_access_stops_seeing_the_candidates_threads(world: Api) -> None:
    t = await spread(world)
    assert await inbox_ids(world, "mem") == [t["c1"], t["c2abe"], t["c2"]]
    await world.candidate("acme", "c2", coordinator="coord", members=[], agency_users=["ann"])
    assert await inbox_ids(world, "mem") == [t["c1"]]
    # The coordinator has access without being listed; it goes with the role.
    await world.candidate("acme", "c1", coordinator="mem", members=[], agency_users=["ann"])
    assert await inbox_ids(world, "mem") == [t["c1"]]
    assert t["c1"] not in await inbox_ids(world, "coord")
    assert await inbox_ids(world, "out") == []


async def test_an_agency_user_sees_its_own_threads_while_linked(world: Api) -> None:
    t = await spread(world)
    assert await inbox_ids(world, "ann") == [t["c1"], t["c3"], t["c2"]]
    assert await inbox_ids(world, "abe") == [t["c2abe"]]
    # Unlinked from c2: ann no longer sees its thread there; the members still read it,
    # marked as taking no more posts.
    await world.candidate("acme", "c2", coordinator="coord", members=["mem"], agency_users=["abe"])
    assert await inbox_ids(world, "ann") == [t["c1"], t["c3"]]
    shown = {c["id"]: c for c in (await inbox(world, "mem"))["conversations"]}
    assert shown[t["c2"]]["agency_user_linked"] is False
    assert shown[t["c2abe"]]["agency_user_linked"] is True


async def test_a_private_thread_is_seen_by_its_two_people_alone(world: Api) -> None:
    t = await spread(world)
    private = (await world.open_thread("acme", "ann", "c1", {"private": True, "member": "coord"}))[
        "id"
    ]
    await world.send("acme", "ann", private, "just between us")
    for user in ("ann", "coord"):
        conversations = (await inbox(world, user))["conversations"]
        assert conversations[0]["id"] == private
        assert conversations[0]["kind"] == "private"
        assert conversations[0]["member"]["id"] == "coord"
    assert private not in await inbox_ids(world, "mem")
    assert private not in await inbox_ids(world, "abe")
    assert t["c1"] in await inbox_ids(world, "mem")


async def test_nothing_crosses_orgs(world: Api) -> None:
    await spread(world)
    theirs = (await world.open_thread("other", "oann", "c1", {}))["id"]
    await world.send("other", "oann", theirs, "in the other org")
    acme = set()
    for user in ("coord", "mem", "out", "ann", "abe"):
        acme |= set(await inbox_ids(world, user))
    assert theirs not in acme
    for user in ("omem", "oann"):
        assert await inbox_ids(world, user, org="other") == [theirs]


async def test_unread_counts_per_conversation(world: Api) -> None:
    t = await spread(world)
    second = await world.send("acme", "ann", t["c2"], "second in c2")
    await world.send("acme", "mem", t["c2"], "mem's own")  # never unread for its author
    unread = {c["id"]: c["unread"] for c in (await inbox(world, "mem"))["conversations"]}
    assert unread == {t["c1"]: 2, t["c2"]: 2, t["c2abe"]: 1}
    read = await world.post(
        "acme", "mem", f"/api/v1/threads/{t['c2']}/read", {"message_id": second["id"]}
    )
    assert read.json() == {"unread": 0}
    unread = {c["id"]: c["unread"] for c in (await inbox(world, "mem"))["conversations"]}
    assert unread == {t["c1"]: 2, t["c2"]: 0, t["c2abe"]: 1}
    ann = {c["id"]: c["unread"] for c in (await inbox(world, "ann"))["conversations"]}
    assert ann == {t["c1"]: 1, t["c2"]: 1, t["c3"]: 0}


async def test_a_deleted_newest_message_is_the_last_message_as_a_tombstone(world: Api) -> None:
    t = await spread(world)
    newest = await world.send("acme", "ann", t["c2"], "oops")
    response = await world.delete("acme", "ann", f"/api/v1/messages/{newest['id']}")
    assert response.status_code == 204
    first = (await inbox(world, "coord"))["conversations"][0]
    assert first["id"] == t["c2"]  # the deletion does not take its activity away
    assert first["last_message"]["id"] == newest["id"]
    assert (first["last_message"]["deleted"], first["last_message"]["body"]) == (True, None)


async def test_bad_input_is_invalid_and_credentials_come_first(world: Api) -> None:
    for query in ("limit=0", "limit=101", "limit=x", "before=0", "before=-1", "before=abc"):
        assert_error(await world.get("acme", "mem", f"{INBOX}?{query}"), 422, "invalid")
    assert_error(
        await world.get("acme", "mem", f"{INBOX}?before=9223372036854775808"), 422, "invalid"
    )
    for query in ("limit=1", "limit=100", "before=9223372036854775807"):
        assert (await world.get("acme", "mem", f"{INBOX}?{query}")).status_code == 200
    assert_error(await world.client.get(f"{INBOX}?limit=0"), 401, "unauthorized")
    assert_error(await world.get("acme", "nobody", INBOX), 401, "unauthorized")


async def test_the_session_cookie_reads_the_inbox(world: Api) -> None:
    t = await spread(world)
    session = await world.client.post("/api/v1/session", json={"token": world.token("acme", "mem")})
    assert session.status_code == 200
    response = await world.client.get(INBOX)
    world.client.cookies.clear()
    assert response.status_code == 200
    assert [c["id"] for c in response.json()["conversations"]] == [t["c1"], t["c2abe"], t["c2"]]


# --- the candidate list -----------------------------------------------------------------------


async def test_each_candidate_shows_the_newest_message_its_reader_may_see(world: Api) -> None:
    t = await spread(world)
    private = (
        await world.open_thread("acme", "mem", "c1", {"agency_user": "ann", "private": True})
    )["id"]
    secret = await world.send("acme", "ann", private, "only mem and ann")
    c1 = await thread_of(world, "coord", "c1", t["c1"])
    c2abe = await thread_of(world, "coord", "c2", t["c2abe"])
    c3 = await thread_of(world, "coord", "c3", t["c3"])
    answer = await listed(world, "coord")
    # The default order and fields stay as they were, with the newest message beside them.
    assert answer == {
        "candidates": [
            {"id": "c1", "name": "C1", "unread": 1, "last_message": c1["last_message"]},
            {"id": "c2", "name": "C2", "unread": 2, "last_message": c2abe["last_message"]},
            {"id": "c3", "name": "C3", "unread": 1, "last_message": c3["last_message"]},
        ],
        "has_more": False,
    }
    mine = {c["id"]: c["last_message"] for c in (await listed(world, "mem"))["candidates"]}
    assert mine["c1"]["id"] == secret["id"]
    theirs = {c["id"]: c["last_message"] for c in (await listed(world, "ann"))["candidates"]}
    assert theirs["c2"]["body"] == "first in c2"  # not abe's newer message there
    await world.candidate("acme", "c4", coordinator="coord", members=[], agency_users=[])
    after = await listed(world, "coord", "after=c3")
    assert after["candidates"] == [{"id": "c4", "name": "C4", "unread": 0, "last_message": None}]
    assert await listed(world, "out") == {"candidates": [], "has_more": False}


async def test_candidates_by_activity_page_through_the_quiet_ones_last(world: Api) -> None:
    t = await spread(world)
    for cand in ("c0", "c5", "c9"):  # no message: last, by id
        await world.candidate("acme", cand, coordinator="coord", members=[], agency_users=["ann"])
    await world.send("acme", "ann", t["c3"], "c3 again")
    whole = await listed(world, "coord", "order=activity")
    assert [c["id"] for c in whole["candidates"]] == ["c3", "c1", "c2", "c0", "c5", "c9"]
    assert [c["unread"] for c in whole["candidates"]] == [2, 1, 2, 0, 0, 0]
    pages, query = [], "order=activity&limit=2"
    while True:
        answer = await listed(world, "coord", query)
        pages.append(answer["candidates"])
        if not answer["has_more"]:
            break
        last = answer["candidates"][-1]
        cursor = f"before={last['last_message']['id']}" if last["last_message"] else None
        query = f"order=activity&limit=2&{cursor or 'after=' + last['id']}"
    assert pages == [whole["candidates"][i : i + 2] for i in (0, 2, 4)]
    # Paging by id is as it was.
    by_id = await listed(world, "coord", "limit=4")
    assert [c["id"] for c in by_id["candidates"]] == ["c0", "c1", "c2", "c3"]


async def test_candidate_list_input(world: Api) -> None:
    for query in (
        "order=newest",
        "before=5",  # a cursor of the activity order
        "order=id&before=5",
        "order=activity&before=5&after=c1",
        "order=activity&before=0",
    ):
        assert_error(await world.get("acme", "coord", f"{CANDIDATES}?{query}"), 422, "invalid")
    for query in ("order=id", "order=activity", "order=activity&after=c1", "order=&after=c1"):
        assert (await world.get("acme", "coord", f"{CANDIDATES}?{query}")).status_code == 200
