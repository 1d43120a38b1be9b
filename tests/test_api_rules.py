"""The rules matrix end to end over HTTP: role x thread x operation x state.

tests/unit/test_rules.py checks server/domain/rules.py function by function, the whole
matrix on the pure functions; this file checks what a
client actually gets from the REST API. Every expectation comes from the small model below,
written from the interface (docs/api.md) and never by asking server.domain.rules:

- Nothing crosses orgs: both orgs have a candidate "c1"; a user's "c1" is its own org's, and
  the thread and message ids of the other org are 404.
- A member sees the candidate while it has access (listed in `members`, or the current
  coordinator: the design decision that the coordinator counts even when not listed); an
  agency user sees it while linked to it.
- Agency thread: seen by every member who sees the candidate and by its agency user (while
  linked); anyone who sees it may post while its agency user is linked (after an unlink the
  members still read it, but posting is 403). Private thread: seen by its two people, each
  while they see the candidate; posting needs both of them to still see the candidate.
- Not visible: 404; visible but not allowed: 403; allowed: 200/201/204.
- Only the author deletes a message.
- Opening is a get-or-create: a thread the caller already sees is returned (200). Creating:
  a member who sees the candidate may open either kind with an agency user linked to it; an
  agency user its agency thread, or a private one only with the current coordinator or a
  member with access with whom it already exchanged private messages (a private thread
  holding at least one message, on any candidate of the org). A named user that is not a
  linked agency user of the candidate (for a member), or not a member of the org (for an
  agency user), is 404.
- `private_contacts`: exactly those members for an agency user, empty for a member.
- unread: messages in threads the user sees, by someone else, not deleted, newer than the
  user's read marker; GET /api/v1/unread lists the candidates with unread > 0 and the newest.

Each state is built once per test; inside it every (role, operation[, thread]) pair is
checked and every mismatch collected, so that one run shows the whole disagreement.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest

from tests.support.world import Api

ACME, OTHER = "acme", "other"
CAND = "c1"
MEMBER, AGENCY = "member", "agency"
AGENCY_THREAD, PRIVATE_THREAD = "agency", "private"

# --- the cast ---------------------------------------------------------------------------

PEOPLE: dict[str, tuple[str, str]] = {
    "coord": (ACME, MEMBER),  # the coordinator; not in `members` (except in coord-changed)
    "mem": (ACME, MEMBER),  # a member with access
    "out": (ACME, MEMBER),  # a member of the org without access
    "neo": (ACME, MEMBER),  # no access, until it becomes the coordinator (coord-* states)
    "ann": (ACME, AGENCY),  # the linked agency user whose threads these are
    "abe": (ACME, AGENCY),  # same agency as ann, not linked
    "amy": (ACME, AGENCY),  # same agency, linked too: must not see ann's threads
    "omem": (OTHER, MEMBER),  # a member of another org
    "oann": (OTHER, AGENCY),  # an agency user of another org
}
ROLES = list(PEOPLE)
MEMBERS = [u for u, (_, kind) in PEOPLE.items() if kind == MEMBER]
AGENCY_USERS = [u for u, (_, kind) in PEOPLE.items() if kind == AGENCY]


@dataclass(frozen=True)
class Cand:
    coordinator: str | None
    members: frozenset[str]
    linked: frozenset[str]


def cand(coordinator: str | None, members: list[str], linked: list[str]) -> Cand:
    return Cand(coordinator, frozenset(members), frozenset(linked))


STATES: dict[str, Cand] = {
    "normal": cand("coord", ["mem"], ["ann", "amy"]),
    "revoked": cand("coord", [], ["ann", "amy"]),  # mem's access revoked
    "unlinked": cand("coord", ["mem"], ["amy"]),  # ann unlinked
    # coordinator handed to neo; the old one stays listed, so it keeps its access
    "coord-changed": cand("neo", ["mem", "coord"], ["ann", "amy"]),
    # coordinator handed to neo and the old one not listed: it loses access
    "coord-dropped": cand("neo", ["mem"], ["ann", "amy"]),
}
OTHER_C1 = cand("omem", ["omem"], ["oann"])  # what the `world` fixture provisions


# --- the model of the contract ----------------------------------------------------------


@dataclass
class Thread:
    name: str
    org: str
    kind: str
    agency_user: str
    member: str | None
    id: int


@dataclass
class Msg:
    id: int
    thread: str
    author: str
    deleted: bool = False


@dataclass
class Model:
    cands: dict[str, Cand]  # org -> its candidate "c1"
    threads: dict[str, Thread] = field(default_factory=dict)
    messages: list[Msg] = field(default_factory=list)
    markers: dict[tuple[str, str], int] = field(default_factory=dict)

    # who sees what

    def has_access(self, user: str, org: str) -> bool:
        c = self.cands[org]
        return PEOPLE[user] == (org, MEMBER) and (user in c.members or user == c.coordinator)

    def is_linked(self, user: str, org: str) -> bool:
        return PEOPLE[user] == (org, AGENCY) and user in self.cands[org].linked

    def sees_candidate(self, user: str, org: str) -> bool:
        return self.has_access(user, org) or self.is_linked(user, org)

    def sees(self, user: str, t: Thread) -> bool:
        if not self.sees_candidate(user, t.org):
            return False
        if PEOPLE[user][1] == AGENCY:
            return t.agency_user == user
        return t.kind == AGENCY_THREAD or t.member == user

    def may_post(self, user: str, t: Thread) -> bool:
        if not self.sees(user, t):
            return False
        if t.kind == AGENCY_THREAD:
            return self.sees_candidate(t.agency_user, t.org)
        assert t.member is not None
        return self.sees_candidate(t.agency_user, t.org) and self.sees_candidate(t.member, t.org)

    def expect_post(self, user: str, t: Thread) -> int:
        if not self.sees(user, t):
            return 404
        return 201 if self.may_post(user, t) else 403

    # messages and unread

    def in_thread(self, name: str) -> list[Msg]:
        return sorted((m for m in self.messages if m.thread == name), key=lambda m: m.id)

    def unread(self, user: str, t: Thread) -> list[Msg]:
        if not self.sees(user, t):
            return []
        marker = self.markers.get((user, t.name), 0)
        return [
            m
            for m in self.in_thread(t.name)
            if m.id > marker and m.author != user and not m.deleted
        ]

    def candidate_unread(self, user: str, org: str) -> list[Msg]:
        return [m for t in self.threads.values() if t.org == org for m in self.unread(user, t)]

    def unread_summary(self, user: str) -> dict[str, tuple[int, int]]:
        mine = self.candidate_unread(user, PEOPLE[user][0])
        return {CAND: (len(mine), max(m.id for m in mine))} if mine else {}

    # opening threads

    def find(self, org: str, kind: str, agency_user: str, member: str | None) -> Thread | None:
        for t in self.threads.values():
            if (t.org, t.kind, t.agency_user, t.member) == (org, kind, agency_user, member):
                return t
        return None

    def partners(self, agency_user: str) -> set[str]:
        """Members it exchanged private messages with: a private thread holding a message."""
        return {
            t.member
            for t in self.threads.values()
            if t.kind == PRIVATE_THREAD
            and t.agency_user == agency_user
            and t.member is not None
            and self.in_thread(t.name)
        }

    def contacts(self, user: str) -> list[str]:
        org, kind = PEOPLE[user]
        if kind == MEMBER or not self.sees_candidate(user, org):
            return []
        c = self.cands[org]
        found = {m for m in self.partners(user) if self.has_access(m, org)}
        if c.coordinator is not None:
            found.add(c.coordinator)
        return sorted(found)

    def open_key(self, user: str, body: dict[str, Any]) -> tuple[str, str, str | None]:
        if PEOPLE[user][1] == MEMBER:
            if body["private"]:
                return (PRIVATE_THREAD, body["agency_user"], user)
            return (AGENCY_THREAD, body["agency_user"], None)
        if body["private"]:
            return (PRIVATE_THREAD, user, body["member"])
        return (AGENCY_THREAD, user, None)

    def expect_open(self, user: str, body: dict[str, Any]) -> int:
        org, kind = PEOPLE[user]
        if not self.sees_candidate(user, org):
            return 404
        key = self.open_key(user, body)
        if kind == MEMBER:
            if not self.is_linked(key[1], org):
                return 404  # no such agency user on this candidate
            return 200 if self.find(org, *key) else 201
        if not body["private"]:
            return 200 if self.find(org, *key) else 201
        member = body["member"]
        if PEOPLE.get(member) != (org, MEMBER):
            return 404  # no such member in the caller's org
        if self.find(org, *key):
            return 200  # it exists and the agency user sees its own private thread
        c = self.cands[org]
        if member == c.coordinator or (
            member in self.partners(user) and self.has_access(member, org)
        ):
            return 201
        return 403


# --- collecting mismatches --------------------------------------------------------------


@dataclass
class Checker:
    state: str
    checked: int = 0
    mismatches: list[str] = field(default_factory=list)

    def _label(self, who: str, op: str, where: str) -> str:
        return " ".join(part for part in (who, op, where, self.state) if part)

    def status(self, who: str, op: str, where: str, want: int, response: httpx.Response) -> bool:
        """Counts one (role, operation, state) combination; True when the status matched."""
        self.checked += 1
        got = response.status_code
        if got == want:
            return True
        detail = response.text[:160] if got >= 400 or want >= 400 else ""
        self.mismatches.append(
            f"{self._label(who, op, where)}: expected {want} got {got} {detail}".rstrip()
        )
        return False

    def same(self, who: str, op: str, where: str, what: str, want: Any, got: Any) -> None:
        if want != got:
            self.mismatches.append(
                f"{self._label(who, op, where)}: {what} expected {want!r} got {got!r}"
            )

    def verdict(self) -> None:
        if self.mismatches:
            pytest.fail(
                f"{len(self.mismatches)} of {self.checked} checks disagree with the contract:\n  "
                + "\n  ".join(self.mismatches),
                pytrace=False,
            )


def ids(users: list[dict[str, Any]]) -> list[str]:
    return sorted(u["id"] for u in users)


# --- building a state -------------------------------------------------------------------


async def put_candidate(api: Api, org: str, c: Cand) -> None:
    await api.candidate(
        org,
        CAND,
        coordinator=c.coordinator,
        members=sorted(c.members),
        agency_users=sorted(c.linked),
    )


# name, org, opener, request body, kind, agency user, member
SETUP_THREADS: list[tuple[str, str, str, dict[str, Any], str, str, str | None]] = [
    ("agency", ACME, "ann", {"private": False}, AGENCY_THREAD, "ann", None),
    (
        "private-mem",
        ACME,
        "mem",
        {"private": True, "agency_user": "ann"},
        PRIVATE_THREAD,
        "ann",
        "mem",
    ),
    (
        "private-coord",
        ACME,
        "ann",
        {"private": True, "member": "coord"},
        PRIVATE_THREAD,
        "ann",
        "coord",
    ),
    ("agency-amy", ACME, "amy", {"private": False}, AGENCY_THREAD, "amy", None),
    ("other-agency", OTHER, "oann", {"private": False}, AGENCY_THREAD, "oann", None),
]
SETUP_MESSAGES: list[tuple[str, str]] = [
    ("agency", "ann"),
    ("agency", "coord"),
    ("agency", "mem"),
    ("private-mem", "mem"),
    ("private-mem", "ann"),
    ("private-coord", "ann"),
    ("private-coord", "coord"),
    ("agency-amy", "amy"),
    ("agency-amy", "coord"),
    ("other-agency", "oann"),
    ("other-agency", "omem"),
]


async def build(api: Api, state: str) -> Model:
    """Threads and messages written in the normal state, then the state's change applied."""
    await api.member(ACME, "neo")
    await api.agency_user(ACME, "amy", "ag")
    await put_candidate(api, ACME, STATES["normal"])
    model = Model({ACME: STATES["normal"], OTHER: OTHER_C1})
    for name, org, opener, body, kind, agency_user, member in SETUP_THREADS:
        thread = await api.open_thread(org, opener, CAND, body)
        model.threads[name] = Thread(name, org, kind, agency_user, member, thread["id"])
    for name, author in SETUP_MESSAGES:
        t = model.threads[name]
        message = await api.send(t.org, author, t.id, f"{author} writes in {name}")
        model.messages.append(Msg(message["id"], name, author))
    if state != "normal":
        await put_candidate(api, ACME, STATES[state])
        model.cands[ACME] = STATES[state]
    return model


# --- the checks -------------------------------------------------------------------------


async def gather(requests: Iterable[Awaitable[httpx.Response]]) -> list[httpx.Response]:
    """Read-only requests run concurrently (they change nothing, so order does not matter)."""
    return list(await asyncio.gather(*requests))


async def check_candidate_views(api: Api, model: Model, check: Checker) -> None:
    """GET candidate (with its fields) and list threads (which threads appear), per role."""
    by_id = {t.id: t.name for t in model.threads.values()}
    responses = await gather(
        api.get(PEOPLE[user][0], user, f"/api/v1/candidates/{CAND}{suffix}")
        for user in ROLES
        for suffix in ("", "/threads")
    )
    for index, user in enumerate(ROLES):
        org, kind = PEOPLE[user]
        visible = model.sees_candidate(user, org)
        want = 200 if visible else 404
        c = model.cands[org]

        response = responses[2 * index]
        if check.status(user, "GET candidate", "", want, response) and visible:
            body = response.json()
            op = "GET candidate"
            check.same(user, op, "", "id", CAND, body["id"])
            check.same(
                user, op, "", "coordinator", c.coordinator, (body["coordinator"] or {}).get("id")
            )
            agency_users = sorted(c.linked) if kind == MEMBER else [user]
            check.same(user, op, "", "agency_users", agency_users, ids(body["agency_users"]))
            check.same(
                user,
                op,
                "",
                "private_contacts",
                model.contacts(user),
                ids(body["private_contacts"]),
            )
            check.same(
                user, op, "", "unread", len(model.candidate_unread(user, org)), body["unread"]
            )

        response = responses[2 * index + 1]
        if check.status(user, "list threads", "", want, response) and visible:
            threads = response.json()["threads"]
            expected = sorted(t.name for t in model.threads.values() if model.sees(user, t))
            got = sorted(by_id.get(t["id"], f"#{t['id']}") for t in threads)
            check.same(user, "list threads", "", "threads", expected, got)
            for item in threads:
                t = model.threads.get(by_id.get(item["id"], ""))
                if t is None or not model.sees(user, t):
                    continue
                shape = (
                    item["kind"],
                    item["agency_user"]["id"],
                    (item["member"] or {}).get("id"),
                    item["unread"],
                )
                want_shape = (t.kind, t.agency_user, t.member, len(model.unread(user, t)))
                check.same(
                    user, "list threads", t.name, "kind/agency/member/unread", want_shape, shape
                )


async def check_unread(api: Api, model: Model, check: Checker, when: str) -> None:
    responses = await gather(api.get(PEOPLE[user][0], user, "/api/v1/unread") for user in ROLES)
    for user, response in zip(ROLES, responses, strict=True):
        if check.status(user, "GET unread", when, 200, response):
            got = {
                item["candidate"]: (item["unread"], item["latest"]["id"])
                for item in response.json()["candidates"]
            }
            check.same(user, "GET unread", when, "candidates", model.unread_summary(user), got)


async def check_messages(api: Api, model: Model, check: Checker) -> None:
    pairs = [(t, user) for t in model.threads.values() for user in ROLES]
    responses = await gather(
        api.get(PEOPLE[user][0], user, f"/api/v1/threads/{t.id}/messages") for t, user in pairs
    )
    for (t, user), response in zip(pairs, responses, strict=True):
        want = 200 if model.sees(user, t) else 404
        if check.status(user, "GET messages", t.name, want, response) and want == 200:
            got = [(m["id"], m["deleted"]) for m in response.json()["messages"]]
            expected = [(m.id, m.deleted) for m in model.in_thread(t.name)]
            check.same(user, "GET messages", t.name, "messages", expected, got)


async def check_mark_read(api: Api, model: Model, check: Checker) -> None:
    for t in model.threads.values():
        newest = model.in_thread(t.name)[-1].id
        for user in ROLES:
            org = PEOPLE[user][0]
            want = 200 if model.sees(user, t) else 404
            response = await api.post(
                org, user, f"/api/v1/threads/{t.id}/read", {"message_id": newest}
            )
            if response.status_code == 200:
                key = (user, t.name)
                model.markers[key] = max(model.markers.get(key, 0), newest)
            if check.status(user, "POST read", t.name, want, response) and want == 200:
                check.same(
                    user,
                    "POST read",
                    t.name,
                    "unread",
                    len(model.unread(user, t)),
                    response.json()["unread"],
                )


async def check_post_message(api: Api, model: Model, check: Checker) -> None:
    for t in list(model.threads.values()):
        for user in ROLES:
            org = PEOPLE[user][0]
            want = model.expect_post(user, t)
            response = await api.post(
                org, user, f"/api/v1/threads/{t.id}/messages", {"body": f"{user} again"}
            )
            if response.status_code == 201:  # the model follows what was stored
                model.messages.append(Msg(response.json()["id"], t.name, user))
            check.status(user, "POST message", t.name, want, response)


OPEN_MEMBER_TARGETS = ["ann", "amy", "abe", "oann"]  # agency users named by members
OPEN_AGENCY_TARGETS = ["coord", "mem", "out", "neo", "omem"]  # members named by agency users


async def check_open(api: Api, model: Model, check: Checker) -> None:
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for user in ROLES:
        if PEOPLE[user][1] == MEMBER:
            for target in OPEN_MEMBER_TARGETS:
                requests.append((user, "agency", {"private": False, "agency_user": target}))
                requests.append((user, "private", {"private": True, "agency_user": target}))
        else:
            requests.append((user, "agency", {"private": False}))
            for target in OPEN_AGENCY_TARGETS:
                requests.append((user, "private", {"private": True, "member": target}))
    for user, kind, body in requests:
        org = PEOPLE[user][0]
        op = f"open {kind} thread"
        target = body.get("agency_user") or body.get("member") or ""
        where = f"with={target}" if target else ""
        want = model.expect_open(user, body)
        key = model.open_key(user, body)
        existing = model.find(org, *key)
        response = await api.post(org, user, f"/api/v1/candidates/{CAND}/threads", body)
        if response.status_code == 201:  # the model follows what was stored
            name = "-".join(part for part in key if part)
            model.threads[name] = Thread(name, org, key[0], key[1], key[2], response.json()["id"])
        if check.status(user, op, where, want, response) and want in (200, 201):
            item = response.json()
            got = (item["kind"], item["agency_user"]["id"], (item["member"] or {}).get("id"))
            check.same(user, op, where, "thread", key, got)
            if existing is not None:
                check.same(user, op, where, "thread id", existing.id, item["id"])


async def check_delete(api: Api, model: Model, check: Checker) -> None:
    # another's message first: nobody may delete it, so the state stays as it was
    for t in model.threads.values():
        for user in ROLES:
            org = PEOPLE[user][0]
            target = next(
                (m for m in model.in_thread(t.name) if m.author != user and not m.deleted), None
            )
            if target is None:
                continue
            want = 403 if model.sees(user, t) else 404
            response = await api.delete(org, user, f"/api/v1/messages/{target.id}")
            if response.status_code == 204:
                target.deleted = True
            check.status(user, "DELETE another's message", t.name, want, response)
    for t in model.threads.values():
        for user in ROLES:
            org = PEOPLE[user][0]
            own = next(
                (m for m in model.in_thread(t.name) if m.author == user and not m.deleted), None
            )
            if own is None:
                continue
            want = 204 if model.sees(user, t) else 404
            response = await api.delete(org, user, f"/api/v1/messages/{own.id}")
            if response.status_code == 204:
                own.deleted = True
            check.status(user, "DELETE own message", t.name, want, response)


# Every state on SQLite; on PostgreSQL the state whose checks reach every query (the access
# loading, thread visibility and unread SQL are the same statements in every state; the
# oracle runs generated scenarios on both databases).
MATRIX_RUNS = [("sqlite", state) for state in STATES] + [("postgres", "coord-changed")]


@pytest.mark.parametrize(("db_url", "state"), MATRIX_RUNS, indirect=["db_url"])
async def test_rules_matrix_over_http(world: Api, state: str) -> None:
    model = await build(world, state)
    check = Checker(state)

    await check_candidate_views(world, model, check)
    await check_unread(world, model, check, "")
    await check_messages(world, model, check)
    await check_mark_read(world, model, check)
    await check_post_message(world, model, check)
    await check_unread(world, model, check, "after posts")
    await check_candidate_views(world, model, check)
    await check_open(world, model, check)
    await check_delete(world, model, check)
    await check_unread(world, model, check, "after deletes")
    await check_messages(world, model, check)

    print(f"[rules matrix {state}] {check.checked} checks")
    check.verdict()


# --- private contacts across candidates -------------------------------------------------


async def test_private_contacts_across_candidates(world: Api) -> None:
    """An agency user's earlier private exchanges count on any candidate of the org, only
    with a thread holding a message, only with members who have access, and only for
    that agency user (not its agency colleagues); members have no private contacts."""
    api = world
    check = Checker("cross-candidate")
    await api.member(ACME, "pat")
    await api.agency_user(ACME, "amy", "ag")
    c1 = cand("coord", ["mem", "pat"], ["ann", "amy"])
    await put_candidate(api, ACME, c1)
    await api.candidate(
        ACME, "c2", coordinator="pat", members=["mem", "out"], agency_users=["ann", "amy"]
    )

    async def contacts(user: str, candidate: str, want: list[str], step: str) -> None:
        org = PEOPLE.get(user, (ACME, ""))[0]
        response = await api.get(org, user, f"/api/v1/candidates/{candidate}")
        where = f"{candidate} {step}"
        if check.status(user, "GET candidate", where, 200, response):
            got = ids(response.json()["private_contacts"])
            check.same(user, "GET candidate", where, "private_contacts", want, got)

    async def open_private(
        user: str, candidate: str, member: str, want: int, step: str
    ) -> dict[str, Any]:
        response = await api.post(
            ACME,
            user,
            f"/api/v1/candidates/{candidate}/threads",
            {"private": True, "member": member},
        )
        check.status(
            user, "open private thread", f"{candidate} with={member} {step}", want, response
        )
        return response.json() if response.status_code in (200, 201) else {}

    step = "before any exchange"
    for user, want in [("ann", ["coord"]), ("amy", ["coord"]), ("mem", []), ("coord", [])]:
        await contacts(user, CAND, want, step)
    await contacts("ann", "c2", ["pat"], step)
    for member in ("mem", "pat", "out"):
        await open_private("ann", CAND, member, 403, step)

    step = "after an empty private thread on c2"
    empty = await api.open_thread(ACME, "mem", "c2", {"private": True, "agency_user": "ann"})
    await contacts("ann", CAND, ["coord"], step)
    await open_private("ann", CAND, "mem", 403, step)

    step = "after ann alone wrote to pat on c2"
    with_pat = await open_private("ann", "c2", "pat", 201, step)  # pat coordinates c2
    if with_pat:
        await api.send(ACME, "ann", with_pat["id"], "Hello Pat")
    await contacts("ann", CAND, ["coord", "pat"], step)
    await contacts("ann", "c2", ["pat"], step)
    await open_private("ann", CAND, "pat", 201, step)

    step = "after an exchange with out (no access to c1) on c2"
    with_out = await api.open_thread(ACME, "out", "c2", {"private": True, "agency_user": "ann"})
    await api.send(ACME, "out", with_out["id"], "Hello Ann")
    await contacts("ann", CAND, ["coord", "pat"], step)
    await contacts("ann", "c2", ["out", "pat"], step)
    await open_private("ann", CAND, "out", 403, step)

    step = "after mem wrote in the c2 thread"
    await api.send(ACME, "mem", empty["id"], "Hi Ann")
    await contacts("ann", CAND, ["coord", "mem", "pat"], step)
    await contacts("ann", "c2", ["mem", "out", "pat"], step)
    await open_private("ann", CAND, "mem", 201, step)
    await open_private("ann", CAND, "mem", 200, step)
    # the history is ann's, not her agency's
    await contacts("amy", CAND, ["coord"], step)
    await contacts("amy", "c2", ["pat"], step)
    for member in ("mem", "pat", "out"):
        await open_private("amy", CAND, member, 403, step)
    for user in ("mem", "pat", "coord"):
        await contacts(user, CAND, [], step)
    # the other org knows none of it
    response = await api.get(OTHER, "oann", f"/api/v1/candidates/{CAND}")
    if check.status("oann", "GET candidate", f"{CAND} {step}", 200, response):
        check.same(
            "oann",
            "GET candidate",
            f"{CAND} {step}",
            "private_contacts",
            ["omem"],
            ids(response.json()["private_contacts"]),
        )

    step = "after out gained access to c1"
    await put_candidate(api, ACME, cand("coord", ["mem", "pat", "out"], ["ann", "amy"]))
    await contacts("ann", CAND, ["coord", "mem", "out", "pat"], step)
    await open_private("ann", CAND, "out", 201, step)

    step = "after pat lost access to c1"
    await put_candidate(api, ACME, cand("coord", ["mem", "out"], ["ann", "amy"]))
    await contacts("ann", CAND, ["coord", "mem", "out"], step)

    step = "after the coordinator of c1 changed to out"
    await put_candidate(api, ACME, cand("out", ["mem"], ["ann", "amy"]))
    await contacts("ann", CAND, ["mem", "out"], step)  # coord: no access, no exchange
    await contacts("amy", CAND, ["out"], step)

    print(f"[private contacts across candidates] {check.checked} checks")
    check.verdict()
