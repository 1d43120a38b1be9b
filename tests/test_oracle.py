"""Access oracle: generated scenarios checked against a reference model of the contract.

Hypothesis generates two orgs with the same user and candidate ids (so that anything that
crosses orgs shows), an initial access picture per candidate, and a list of steps: access
granted and revoked (members added and removed, agency users linked and unlinked, the
coordinator changed, the candidate erased and provisioned again), threads opened, messages
posted, deleted and read (over REST or over the socket), sockets connected, subscribed and
closed, and resumes from the event log. Every step's answer is checked against the model in
tests/support/oracle_model.py (written from the interface, docs/api.md, never from the
server's rules or views), and so, at checkpoints, is every read path:

- REST: GET /api/v1/candidates, /candidates/{c} (coordinator, agency_users,
  private_contacts, unread, seq), /candidates/{c}/threads (which threads, kind, people,
  unread, last message), /threads/{id}/messages for every thread of both orgs (404 when not
  visible, cross-org and erased ones included; history with tombstones), /unread;
- WebSocket: the candidate events each subscribed socket got (message.created and
  message.deleted of the threads its user sees, `unsubscribed` on losing access, seqs), the
  `unread` frames' counts, and `subscribe` with `after` replaying exactly the visible events;
- email: the pending alerts in the outbox (who, which thread) after every post and connect;
- ids: every new thread and message id is above all those the example saw, erased ones too.

Unread frames are batched (up to a second late), so their check waits for the latest frames
to agree; before an access change that moves a connected user's counts, the frames owed so
far are awaited first, so that what the change owes is checked the same way on every run.

A difference fails with the scenario as it ran, one readable line per step (the kind of
difference is the exception's class, so Hypothesis shrinks each kind apart). Each database
gets a fresh pair of orgs per example; `derandomize` makes the run the same every time.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
from collections.abc import Awaitable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from hypothesis.internal.conjecture import engine as hypothesis_engine
from sqlalchemy import select
from starlette.applications import Starlette

from server.settings import Settings
from storage.models import EmailOutbox, Org, User
from tests.support.oracle_model import (
    AGENCIES,
    AGENCY,
    AGENCY_OF,
    AGENTS,
    CANDS,
    CREATED,
    MEMBER,
    MEMBERS,
    NO_CONTENT,
    NOT_FOUND,
    OK,
    ORGS,
    USERS,
    Cand,
    Event,
    Model,
    Msg,
    Thread,
    kind_of,
)
from tests.support.realtime import WsClient
from tests.support.world import Api, make_settings

# Examples per database (about 20 s on SQLite and 30 s on PostgreSQL on a 2-core machine);
# AM_ORACLE_EXAMPLES=200 for a longer search.
EXAMPLES = int(os.environ.get("AM_ORACLE_EXAMPLES", "20"))
MIN_STEPS, MAX_STEPS = 8, 24
SHRINK_SECONDS = 90
EVENT_WAIT = 3.0  # seconds a socket may take to get an event it is owed
UNREAD_WAIT = 2.0  # unread frames are batched (at most one batch a second)
WS_STATUS = {"not_found": 404, "forbidden": 403, "invalid": 422, "unauthorized": 401}
CANDIDATE_FRAMES = ("message.created", "message.deleted", "unsubscribed")


# --- scenarios ------------------------------------------------------------------------------

Who = tuple[str, str]  # (org label, user id)


@dataclass(frozen=True)
class Actor:
    """Who acts on a thread or message: one of its parties (by index), its author, or anyone
    of either org (to probe 404s and 403s)."""

    party: int | None = None
    anyone: Who | None = None

    def __repr__(self) -> str:
        if self.anyone is not None:
            return f"{self.anyone[0]}/{self.anyone[1]}"
        return "author" if self.party is None else f"party{self.party}"


@dataclass(frozen=True)
class Grant:
    org: str
    cand: str
    op: str  # "add" (to members or linked), "remove", "coord" (a member; an agent: none)
    user: str


@dataclass(frozen=True)
class Erase:
    org: str
    cand: str


@dataclass(frozen=True)
class Open:
    org: str
    user: str
    cand: str
    private: bool
    target: int


@dataclass(frozen=True)
class Talk:
    """A message between an agency user and a member: in their private thread, or (private
    false) in the agency user's agency thread; opened first by the author when missing."""

    org: str
    cand: str
    agent: str
    member: str
    private: bool
    by_agent: bool
    ws: bool


@dataclass(frozen=True)
class Post:
    thread: int
    actor: Actor
    ws: bool


@dataclass(frozen=True)
class Delete:
    message: int
    actor: Actor
    ws: bool


@dataclass(frozen=True)
class Read:
    thread: int
    actor: Actor
    pick: int
    foreign: bool
    ws: bool


@dataclass(frozen=True)
class Connect:
    org: str
    user: str


@dataclass(frozen=True)
class Disconnect:
    org: str
    user: str


@dataclass(frozen=True)
class Subscribe:
    org: str
    user: str
    cand: str


@dataclass(frozen=True)
class Replay:
    org: str
    user: str
    cand: str
    back: int


@dataclass(frozen=True)
class Check:
    """A checkpoint of every read path, as one user sees them (the final one: everybody)."""

    org: str
    user: str


Step = (
    Grant | Erase | Open | Post | Delete | Read | Connect | Disconnect | Subscribe | Replay | Check
)


@dataclass(frozen=True)
class Picture:
    coordinator: str | None
    members: frozenset[str]
    linked: frozenset[str]


@dataclass(frozen=True)
class Scenario:
    initial: tuple[tuple[str, str, Picture], ...]
    watchers: tuple[Who, ...]  # connected from the start, subscribed to both candidates
    steps: tuple[Step, ...]


orgs = st.sampled_from(["A", "A", "A", "B"])  # most of the action in A; B is the bystander
users = st.sampled_from(USERS)
cands = st.sampled_from(CANDS)
small = st.integers(0, 7)
who = st.tuples(orgs, users)
actors = st.one_of(
    st.builds(Actor, party=st.integers(0, 3)),
    st.builds(Actor, party=st.integers(0, 3)),
    st.builds(Actor, anyone=who),
)
pictures = st.builds(
    Picture,
    coordinator=st.one_of(st.none(), st.sampled_from(MEMBERS)),
    members=st.frozensets(st.sampled_from(MEMBERS), min_size=1),
    linked=st.frozensets(st.sampled_from(AGENTS), min_size=1),
)
grants = st.builds(Grant, orgs, cands, st.sampled_from(["add", "remove", "coord"]), users)
talks = st.builds(
    Talk,
    orgs,
    cands,
    st.sampled_from(AGENTS),
    st.sampled_from(MEMBERS),
    st.booleans(),
    st.booleans(),
    st.booleans(),
)
reads = st.builds(Read, small, actors, small, st.booleans(), st.booleans())
deletes = st.builds(Delete, small, st.one_of(st.just(Actor()), actors), st.booleans())
STEPS: dict[str, tuple[int, st.SearchStrategy[Step]]] = {  # kind: (weight, strategy)
    "talk": (8, talks),
    "grant": (4, grants),
    "post": (3, st.builds(Post, small, actors, st.booleans())),
    "delete": (3, deletes),
    "read": (3, reads),
    "subscribe": (3, st.builds(Subscribe, orgs, users, cands)),
    "open": (2, st.builds(Open, orgs, users, cands, st.booleans(), small)),
    "connect": (1, st.builds(Connect, orgs, users)),
    "disconnect": (1, st.builds(Disconnect, orgs, users)),
    "replay": (2, st.builds(Replay, orgs, users, cands, small)),
    "erase": (2, st.builds(Erase, orgs, cands)),
    "check": (1, st.builds(Check, orgs, users)),
}
WEIGHTED = [kind for kind, (weight, _) in STEPS.items() for _ in range(weight)]


@st.composite
def step_strategy(draw: st.DrawFn) -> Step:
    kind = draw(st.sampled_from(WEIGHTED))
    step: Step = draw(STEPS[kind][1])
    return step


scenarios = st.builds(
    Scenario,
    initial=st.tuples(*(st.tuples(st.just(o), st.just(c), pictures) for o in ORGS for c in CANDS)),
    watchers=st.lists(who, max_size=4, unique=True).map(tuple),
    steps=st.lists(step_strategy(), min_size=MIN_STEPS, max_size=MAX_STEPS).map(tuple),
)


# --- the run of one scenario ----------------------------------------------------------------


class Mismatch(AssertionError):
    """The product disagrees with the model. One subclass per kind of difference, so that
    Hypothesis reports (and shrinks) each kind on its own instead of the first one only."""


class IdMismatch(Mismatch):
    pass


class UnreadFrameMismatch(Mismatch):
    pass


class CandidateEventMismatch(Mismatch):
    pass


class EmailMismatch(Mismatch):
    pass


class RestMismatch(Mismatch):
    pass


def kind_of_mismatch(problem: str) -> type[Mismatch]:
    if "does not grow" in problem:
        return IdMismatch
    if problem.startswith("unread frames"):
        return UnreadFrameMismatch
    if problem.startswith(("candidate events", "replayed", "subscribe", "resume")):
        return CandidateEventMismatch
    if problem.startswith("pending email"):
        return EmailMismatch
    return RestMismatch


@dataclass
class Stats:
    examples: int = 0
    steps: int = 0
    requests: int = 0
    checks: int = 0
    frames: int = 0
    statuses: dict[int, int] = field(default_factory=dict)


@dataclass
class Socket:
    client: WsClient
    subs: dict[str, bool] = field(default_factory=dict)  # candidate -> still live
    expected: list[tuple[Any, ...]] = field(default_factory=list)  # candidate frames owed
    baseline: dict[int, int] = field(default_factory=dict)  # thread -> unread at connect
    baseline_cand: dict[str, int] = field(default_factory=dict)
    baseline_total: int = 0

    def candidate_frames(self) -> list[tuple[Any, ...]]:
        return [frame_key(f) for f in self.client.frames if f.get("type") in CANDIDATE_FRAMES]

    def unread_frames(self) -> list[dict[str, Any]]:
        return [f for f in self.client.frames if f.get("type") == "unread"]


def frame_key(frame: dict[str, Any]) -> tuple[Any, ...]:
    """What of a candidate frame the model predicts."""
    if frame["type"] == "unsubscribed":
        return ("unsubscribed", frame.get("candidate"), frame.get("reason"))
    if frame["type"] == "message.deleted":
        return (
            "message.deleted",
            frame.get("candidate"),
            frame.get("seq"),
            frame.get("thread"),
            frame.get("message_id"),
        )
    m = frame.get("message") or {}
    return (
        "message.created",
        frame.get("candidate"),
        frame.get("seq"),
        frame.get("thread"),
        m.get("id"),
        (m.get("author") or {}).get("id"),
        m.get("body"),
        m.get("deleted"),
    )


def event_key(model: Model, cand: str, event: Event, *, as_now: bool) -> tuple[Any, ...]:
    if event.type == "message.deleted":
        return ("message.deleted", cand, event.seq, event.thread, event.message)
    m = model.msgs[event.message]
    deleted = m.deleted and as_now
    return (
        "message.created",
        cand,
        event.seq,
        event.thread,
        m.id,
        m.author,
        None if deleted else m.body,
        deleted,
    )


def ids(users: Iterable[dict[str, Any]]) -> list[str]:
    return sorted(u["id"] for u in users)


COUNTER = itertools.count(1)


@dataclass
class Run:
    api: Api
    live: str
    app: Starlette
    stats: Stats
    scenario: Scenario
    model: Model = field(init=False)
    org_ids: dict[str, str] = field(init=False)
    log: list[str] = field(default_factory=list)
    sockets: dict[Who, Socket] = field(default_factory=dict)
    pks: dict[Who, tuple[int, int]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    number: int | None = None  # of the step whose first line is still to come
    thread_labels: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    message_labels: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def __post_init__(self) -> None:
        n = next(COUNTER)
        self.org_ids = {"A": f"ora{n}", "B": f"orb{n}"}
        self.model = Model(
            {
                (o, c): Cand(p.coordinator, set(p.members), set(p.linked))
                for o, c, p in self.scenario.initial
            }
        )

    # --- reporting -----------------------------------------------------------------------

    def note(self, line: str) -> None:
        """One line of the scenario as it runs; the first of a step carries its number."""
        if self.number is not None:
            line, self.number = f"{self.number:2}. {line}", None
        else:
            line = f"    {line}"
        self.log.append(line)

    def same(self, what: str, want: Any, got: Any) -> None:
        self.stats.checks += 1
        if want != got:
            self.problems.append(f"{what}: expected {want!r}, got {got!r}")

    def verdict(self, where: str) -> None:
        if self.problems:
            problems, self.problems = self.problems, []
            raise kind_of_mismatch(problems[0])(
                f"the product disagrees with the model at {where}:\n  "
                + "\n  ".join(problems)
                + "\n\nScenario (orgs A and B share user and candidate ids):\n  "
                + "\n  ".join(self.log)
            )

    def new_id(self, what: str, new: int) -> bool:
        """Thread and message ids grow with time: a new one is above every id this example
        saw, those of things erased since included (checked within the example, so that
        the verdict does not hang on what earlier examples did)."""
        earlier: dict[int, Any] = dict(self.model.threads if what == "thread" else self.model.msgs)
        if not earlier or new > max(earlier):
            return True
        reused = earlier.get(new)
        was = f", the id of {reused.label} (erased since)" if reused is not None else ""
        self.problems.append(
            f"new {what} id {new} does not grow: this example already saw ids up to "
            f"{max(earlier)}{was}"
        )
        return False

    # --- transport -----------------------------------------------------------------------

    def headers(self, org: str, user: str) -> dict[str, str]:
        return self.api.as_user(self.org_ids[org], user)

    async def http(
        self, method: str, org: str, user: str, path: str, body: Any = None
    ) -> httpx.Response:
        self.stats.requests += 1
        kwargs: dict[str, Any] = {"headers": self.headers(org, user)}
        if body is not None:
            kwargs["json"] = body
        response = await self.api.client.request(method, path, **kwargs)
        self.stats.statuses[response.status_code] = (
            self.stats.statuses.get(response.status_code, 0) + 1
        )
        return response

    async def service(self, method: str, path: str, body: Any = None) -> httpx.Response:
        self.stats.requests += 1
        return await self.api.client.request(
            method, f"/api/v1/orgs/{path}", json=body, headers=self.api.service
        )

    async def ws_op(self, sock: Socket, op: str, **fields: Any) -> tuple[int, dict[str, Any]]:
        """A socket op, its answer turned into the REST status it stands for."""
        self.stats.requests += 1
        frame = await sock.client.request(op, **fields)
        if frame["type"] == "ack":
            status = {"send": CREATED, "delete": NO_CONTENT}.get(op, OK)
        else:
            status = WS_STATUS.get(frame.get("code", ""), 599)
        self.stats.statuses[status] = self.stats.statuses.get(status, 0) + 1
        return status, frame

    # --- set-up ---------------------------------------------------------------------------

    async def setup(self) -> None:
        for org, org_id in self.org_ids.items():
            calls = [("PUT", org_id, {"name": f"Org {org}"})]
            calls += [("PUT", f"{org_id}/agencies/{a}", {"name": a.upper()}) for a in AGENCIES]
            for u in USERS:
                calls.append(
                    (
                        "PUT",
                        f"{org_id}/users/{u}",
                        {
                            "name": f"{u.upper()} {org}",
                            "email": f"{u}@{org_id}.example",
                            "kind": kind_of(u),
                            "agency": AGENCY_OF.get(u),
                        },
                    )
                )
            for method, path, body in calls:
                response = await self.service(method, path, body)
                assert response.status_code in (200, 201), (path, response.text)
            for cand in CANDS:
                c = self.model.cands[(org, cand)]
                await self.put_candidate(org, cand, CREATED)
                self.note(f"{org}/{cand}: {c.picture()}")
        async with self.services.db.read() as session:
            rows = await session.execute(
                select(Org.ext_id, User.ext_id, Org.pk, User.pk)
                .join(User, User.org_pk == Org.pk)
                .where(Org.ext_id.in_(list(self.org_ids.values())))
            )
            label = {v: k for k, v in self.org_ids.items()}
            for org_id, user, org_pk, user_pk in rows.all():
                self.pks[(label[org_id], user)] = (org_pk, user_pk)
        for org, user in self.scenario.watchers:
            for cand in CANDS:
                await self.subscribe(Subscribe(org, user, cand))
        self.verdict("set-up")

    async def put_candidate(self, org: str, cand: str, want: int) -> None:
        c = self.model.cands[(org, cand)]
        response = await self.service(
            "PUT",
            f"{self.org_ids[org]}/candidates/{cand}",
            {
                "name": f"Cand {cand}",
                "coordinator": c.coordinator,
                "members": sorted(c.members),
                "agency_users": sorted(c.linked),
            },
        )
        self.same(f"PUT candidate {org}/{cand} status", want, response.status_code)
        c.exists = True

    @property
    def services(self) -> Any:
        return self.app.state.services

    # --- steps ----------------------------------------------------------------------------

    async def run(self) -> None:
        self.stats.examples += 1
        try:
            await self.setup()
            for number, step in enumerate(self.scenario.steps, 1):
                self.stats.steps += 1
                self.number = number
                await self.step(step)
                if self.number is not None:
                    self.note(f"({step!r}: nothing to act on)")
                await self.check_sockets()
                self.verdict(f"step {number}")
            await self.checkpoint([(o, u) for o in ORGS for u in USERS], final=True)
            self.verdict("the final checkpoint")
            if os.environ.get("AM_ORACLE_SHOW"):
                print("\n  ".join(["[example]", *self.log]))
        finally:
            for sock in self.sockets.values():
                await sock.client.close()
            for key in list(self.sockets):
                await self.wait_offline(key)

    async def step(self, step: Step) -> None:
        if isinstance(step, Grant):
            await self.grant(step)
        elif isinstance(step, Erase):
            await self.erase(step)
        elif isinstance(step, Open):
            await self.open(step)
        elif isinstance(step, Talk):
            await self.talk(step)
        elif isinstance(step, Post):
            await self.post(step)
        elif isinstance(step, Delete):
            await self.delete(step)
        elif isinstance(step, Read):
            await self.read(step)
        elif isinstance(step, Connect):
            await self.connect((step.org, step.user))
        elif isinstance(step, Disconnect):
            await self.disconnect((step.org, step.user))
        elif isinstance(step, Subscribe):
            await self.subscribe(step)
        elif isinstance(step, Replay):
            await self.replay(step)
        else:
            self.note(f"checkpoint of what {step.org}/{step.user} sees")
            await self.checkpoint([(step.org, step.user)])

    def resolve(self, actor: Actor, org: str, parties: tuple[str, ...], author: str) -> Who:
        if actor.anyone is not None:
            return actor.anyone
        if actor.party is None:
            return (org, author)
        return (org, parties[actor.party % len(parties)])

    def lost_access(self, org: str, cand: str) -> None:
        """Subscriptions whose user no longer sees the candidate end with `unsubscribed`."""
        for (o, u), sock in self.sockets.items():
            if o == org and sock.subs.get(cand) and not self.model.sees_candidate(o, u, cand):
                sock.subs[cand] = False
                sock.expected.append(("unsubscribed", cand, "access"))

    def counts_of(self, org: str, cand: str) -> dict[Who, list[int]]:
        """Unread per thread of the candidate, for each connected user of the org."""
        return {
            (o, u): [len(self.model.unread(o, u, t)) for t in self.model.live_threads(org, cand)]
            for (o, u) in self.sockets
            if o == org
        }

    async def before_access_change(self, org: str, cand: str, after: Cand) -> None:
        """When the change will move a connected user's counts, first let the unread frames
        of the changes so far arrive (they are batched, up to a second late): the frames the
        change then owes are the product's answer to the change alone, whatever the timing."""
        key = (org, cand)
        before_counts = self.counts_of(org, cand)
        before, self.model.cands[key] = self.model.cands[key], after
        try:
            after_counts = self.counts_of(org, cand)
        finally:
            self.model.cands[key] = before
        moved = [k for k, v in before_counts.items() if after_counts[k] != v]
        if moved:
            await self.check_unread_frames(moved)

    async def grant(self, step: Grant) -> None:
        old = self.model.cands[(step.org, step.cand)]
        c = Cand(old.coordinator, set(old.members), set(old.linked), True, old.seq)
        await self.before_access_change(step.org, step.cand, c)
        self.model.cands[(step.org, step.cand)] = c
        want = OK if old.exists else CREATED
        group = c.members if kind_of(step.user) == MEMBER else c.linked
        if step.op == "add":
            group.add(step.user)
            what = f"adds {step.user}"
        elif step.op == "remove":
            group.discard(step.user)
            what = f"removes {step.user}"
        else:
            c.coordinator = step.user if kind_of(step.user) == MEMBER else None
            what = f"sets coordinator {c.coordinator or '-'}"
        await self.put_candidate(step.org, step.cand, want)
        self.note(f"ATS {what} on {step.org}/{step.cand}: {c.picture()}")
        self.lost_access(step.org, step.cand)
        await self.check_pending()

    async def erase(self, step: Erase) -> None:
        c = self.model.cands[(step.org, step.cand)]
        gone = Cand(c.coordinator, c.members, c.linked, exists=False)
        await self.before_access_change(step.org, step.cand, gone)
        self.note(f"ATS erases {step.org}/{step.cand}{'' if c.exists else ' (already erased)'}")
        response = await self.service("DELETE", f"{self.org_ids[step.org]}/candidates/{step.cand}")
        self.same("DELETE candidate status", NO_CONTENT, response.status_code)
        self.model.erase(step.org, step.cand)
        self.lost_access(step.org, step.cand)
        await self.check_pending()

    async def open(self, step: Open) -> None:
        targets = AGENTS if kind_of(step.user) == MEMBER else MEMBERS
        target = targets[step.target % len(targets)]
        await self.open_thread(step.org, step.user, step.cand, step.private, target)

    async def open_thread(
        self, org: str, user: str, cand: str, private: bool, target: str
    ) -> Thread | None:
        """Get-or-create; returns the thread the model knows (None when refused)."""
        model = self.model
        if kind_of(user) == MEMBER:
            body: dict[str, Any] = {"agency_user": target, "private": private}
        elif private:
            body = {"private": True, "member": target}
        else:
            body = {"private": False}
        want = model.expect_open(org, user, cand, private, target)
        key = model.open_key(user, private, target)
        existing = model.find(org, cand, *key)
        response = await self.http("POST", org, user, f"/api/v1/candidates/{cand}/threads", body)
        got = response.status_code
        if kind_of(user) == AGENCY and not private:
            line = f"{org}/{user} opens its agency thread on {cand}"
        else:
            line = f"{org}/{user} opens {key[0]} thread on {cand} with {target}"
        if got == CREATED:
            data = response.json()
            if not self.new_id("thread", data["id"]):
                self.note(f"{line}: {got} with id {data['id']}")
                self.verdict("the step above")
            t = Thread(
                data["id"], org, cand, key[0], key[1], key[2], f"T{next(self.thread_labels)}"
            )
            model.add_thread(t)
            line += f" -> {t.describe()}"
        self.note(f"{line}: {got}")
        self.same("status", want, got)
        if got in (OK, CREATED) and want in (OK, CREATED):
            data = response.json()
            shape = (
                data["candidate"],
                data["kind"],
                data["agency_user"]["id"],
                (data["member"] or {}).get("id"),
            )
            self.same("thread", (cand, *key), shape)
            if existing is not None:
                self.same("existing thread id", existing.id, data["id"])
        return model.find(org, cand, *key) if got in (OK, CREATED) else None

    def pick_thread(self, index: int) -> Thread | None:
        threads = list(self.model.threads.values())
        return threads[index % len(threads)] if threads else None

    async def talk(self, step: Talk) -> None:
        """The author gets-or-creates the thread, then posts in it."""
        author = step.agent if step.by_agent else step.member
        target = step.member if step.by_agent else step.agent
        t = self.model.find(
            step.org,
            step.cand,
            *self.model.open_key(step.agent, step.private, step.member),
        )
        if t is None:
            t = await self.open_thread(step.org, author, step.cand, step.private, target)
        if t is not None:
            await self.post_in(t, step.org, author, step.ws)

    async def post(self, step: Post) -> None:
        t = self.pick_thread(step.thread)
        if t is None:
            return
        org, user = self.resolve(step.actor, t.org, t.parties(), "")
        await self.post_in(t, org, user, step.ws)

    async def post_in(self, t: Thread, org: str, user: str, ws: bool) -> None:
        want = self.model.expect_post(org, user, t)
        label = f"M{next(self.message_labels)}"
        body = f"{label} from {user}"
        sock = self.sockets.get((org, user)) if ws else None
        if sock is not None:
            got, frame = await self.ws_op(sock, "send", thread=t.id, body=body)
            data = frame.get("message") or {}
            via = " (ws)"
        else:
            response = await self.http(
                "POST", org, user, f"/api/v1/threads/{t.id}/messages", {"body": body}
            )
            got, data, via = response.status_code, response.json(), ""
        line = f"{org}/{user} posts in {t.describe()}{via}: {got}"
        if got == CREATED:
            if not self.new_id("message", data["id"]):
                self.note(f"{line} with id {data['id']}")
                self.verdict("the step above")
            m = Msg(data["id"], t.id, user, body, label)
            event, recipients = self.model.posted(t, m)
            line += f" -> {label}, seq {event.seq}, alerts {sorted(recipients) or '-'}"
            self.owe(t, event)
            shape = (data["thread"], data["candidate"], data["author"]["id"], data["body"])
            self.same("message", (t.id, t.cand, user, body), shape)
            self.same("deleted", False, data["deleted"])
        self.note(line)
        self.same("status", want, got)
        if got == CREATED:
            await self.check_pending()

    def owe(self, t: Thread, event: Event) -> None:
        """Subscribed sockets whose user sees the thread now are owed the event."""
        for (o, u), sock in self.sockets.items():
            if sock.subs.get(t.cand) and o == t.org and self.model.sees(o, u, t):
                sock.expected.append(event_key(self.model, t.cand, event, as_now=False))

    async def delete(self, step: Delete) -> None:
        messages = list(self.model.msgs.values())
        if not messages:
            return
        m = messages[step.message % len(messages)]
        t = self.model.threads[m.thread]
        org, user = self.resolve(step.actor, t.org, t.parties(), m.author)
        want = self.model.expect_delete(org, user, m)
        sock = self.sockets.get((org, user)) if step.ws else None
        if sock is not None:
            got, _ = await self.ws_op(sock, "delete", message=m.id)
            via = " (ws)"
        else:
            response = await self.http("DELETE", org, user, f"/api/v1/messages/{m.id}")
            got, via = response.status_code, ""
        again = " again" if m.deleted else ""
        line = f"{org}/{user} deletes{again} {m.label} (by {m.author}) in {t.describe()}{via}"
        line += f": {got}"
        if got == NO_CONTENT:
            event = self.model.deleted(m)
            if event is not None:
                line += f" -> seq {event.seq}"
                self.owe(t, event)
        self.note(line)
        self.same("status", want, got)

    async def read(self, step: Read) -> None:
        t = self.pick_thread(step.thread)
        if t is None:
            return
        own = self.model.in_thread(t.id)
        pool = list(self.model.msgs.values()) if step.foreign or not own else own
        if not pool:
            return
        m = pool[step.pick % len(pool)]
        org, user = self.resolve(step.actor, t.org, t.parties(), "")
        want = self.model.expect_read(org, user, t, m)
        sock = self.sockets.get((org, user)) if step.ws else None
        if sock is not None:
            got, data = await self.ws_op(sock, "read", thread=t.id, message_id=m.id)
            via = " (ws)"
        else:
            response = await self.http(
                "POST", org, user, f"/api/v1/threads/{t.id}/read", {"message_id": m.id}
            )
            got, data, via = response.status_code, response.json(), ""
        self.note(f"{org}/{user} reads {t.describe()} up to {m.label}{via}: {got}")
        self.same("status", want, got)
        if got == OK:
            self.model.read(org, user, t, m)
            if want == OK:
                self.same("unread", len(self.model.unread(org, user, t)), data.get("unread"))

    # --- sockets ------------------------------------------------------------------------

    async def open_socket(self, key: Who) -> WsClient:
        client = await WsClient.connect(self.live, self.api.token(self.org_ids[key[0]], key[1]))
        pong = await client.request("ping")  # registered online by now
        assert pong["type"] == "pong", pong
        return client

    async def wait_offline(self, key: Who) -> None:
        presence = self.services.realtime.presence
        deadline = time.monotonic() + 5
        while await presence.online([self.pks[key]]):
            if time.monotonic() > deadline:
                self.problems.append(f"{key[0]}/{key[1]} still online 5 s after closing")
                return
            await asyncio.sleep(0.01)

    async def connect(self, key: Who) -> Socket | None:
        if key in self.sockets:
            return None
        self.note(f"{key[0]}/{key[1]} connects a socket")
        client = await self.open_socket(key)
        org, user = key
        sock = Socket(client)
        for t in self.model.live_threads(org):
            sock.baseline[t.id] = len(self.model.unread(org, user, t))
        for cand in CANDS:
            sock.baseline_cand[cand] = len(self.model.cand_unread(org, user, cand))
        sock.baseline_total = self.model.total_unread(org, user)
        self.sockets[key] = sock
        await self.check_pending()
        return sock

    async def disconnect(self, key: Who) -> None:
        sock = self.sockets.pop(key, None)
        if sock is None:
            return
        self.note(f"{key[0]}/{key[1]} closes its socket")
        await self.check_socket(key, sock)
        await sock.client.close()
        await self.wait_offline(key)

    async def subscribe(self, step: Subscribe) -> None:
        key = (step.org, step.user)
        sock = self.sockets.get(key) or await self.connect(key)
        assert sock is not None
        if sock.subs.get(step.cand):
            return
        want = self.model.sees_candidate(step.org, step.user, step.cand)
        got, frame = await self.ws_op(sock, "subscribe", candidate=step.cand)
        self.note(f"{step.org}/{step.user} subscribes to {step.cand}: {frame['type']}")
        self.same("subscribe", OK if want else NOT_FOUND, got)
        if got == OK:
            sock.subs[step.cand] = True
            c = self.model.cands[(step.org, step.cand)]
            self.same("subscribe ack seq", c.seq, frame.get("seq"))

    async def replay(self, step: Replay) -> None:
        """A new socket resumes the candidate from an earlier seq: it must get exactly the
        events it may see now, as the messages are now."""
        org, user, cand = step.org, step.user, step.cand
        c = self.model.cands[(org, cand)]
        after = max(0, c.seq - step.back)
        visible = self.model.sees_candidate(org, user, cand)
        want = [
            event_key(self.model, cand, e, as_now=True)
            for e in self.model.visible_events(org, user, cand, after)
        ]
        client = await self.open_socket((org, user))
        try:
            got, frame = await self.ws_op(Socket(client), "subscribe", candidate=cand, after=after)
            self.note(
                f"{org}/{user} resumes {cand} after seq {after} on a new socket: "
                f"{frame['type']}, {len(want)} events owed"
            )
            self.same("resume", OK if visible else NOT_FOUND, got)
            if got == OK:
                self.same(
                    "resume ack (seq, reset)",
                    (c.seq, False),
                    (frame.get("seq"), frame.get("reset")),
                )
            frames = await self.wait_frames(client, len(want) if got == OK else 0)
            await asyncio.sleep(0.05)
            frames = [frame_key(f) for f in client.frames if f.get("type") in CANDIDATE_FRAMES]
            self.same(f"replayed events of {cand} after {after}", want, frames)
        finally:
            await client.close()
            if (org, user) not in self.sockets:
                await self.wait_offline((org, user))
        await self.check_pending()

    async def wait_frames(self, client: WsClient, count: int) -> None:
        deadline = time.monotonic() + EVENT_WAIT
        while time.monotonic() < deadline:
            got = sum(1 for f in client.frames if f.get("type") in CANDIDATE_FRAMES)
            if got >= count:
                return
            await asyncio.sleep(0.01)

    async def check_sockets(self) -> None:
        for key, sock in self.sockets.items():
            await self.check_socket(key, sock)

    async def check_socket(self, key: Who, sock: Socket) -> None:
        await self.wait_frames(sock.client, len(sock.expected))
        got = sock.candidate_frames()
        self.stats.frames += len(got)
        self.same(f"candidate events on {key[0]}/{key[1]}'s socket", sock.expected, got)

    def unread_problems(self, key: Who, sock: Socket) -> list[str]:
        """Where the socket's latest unread frames disagree with the model's counts now."""
        org, user = key
        model = self.model
        frames = sock.unread_frames()
        problems = []
        last_thread: dict[int, dict[str, Any]] = {}
        last_cand: dict[str, dict[str, Any]] = {}
        for f in frames:
            last_thread[f.get("thread")] = f  # type: ignore[index]
            last_cand[f.get("candidate")] = f  # type: ignore[index]
        for thread_id, f in last_thread.items():
            t = model.threads.get(thread_id)
            want = 0 if t is None else len(model.unread(org, user, t))
            if t is not None and t.org != org and f.get("unread"):
                problems.append(f"a frame about {t.describe()} of the other org: {f}")
            if f.get("unread") != want:
                label = t.describe() if t else f"thread {thread_id}"
                problems.append(f"last unread frame of {label}: {f.get('unread')}, model {want}")
        for cand, f in last_cand.items():
            want = len(model.cand_unread(org, user, cand)) if cand in CANDS else 0
            if f.get("candidate_unread") != want:
                problems.append(
                    f"last candidate_unread of {cand}: {f.get('candidate_unread')}, model {want}"
                )
        for t in model.threads.values():
            if t.org != org:
                continue
            now = len(model.unread(org, user, t))
            if now != sock.baseline.get(t.id, 0) and t.id not in last_thread:
                problems.append(
                    f"no unread frame for {t.describe()}: {sock.baseline.get(t.id, 0)} at "
                    f"connect, {now} now"
                )
        for cand in CANDS:
            now = len(model.cand_unread(org, user, cand))
            if now != sock.baseline_cand.get(cand, 0) and cand not in last_cand:
                problems.append(f"no unread frame for {cand}: candidate unread now {now}")
        total = model.total_unread(org, user)
        if frames and frames[-1].get("total_unread") != total:
            problems.append(f"last total_unread {frames[-1].get('total_unread')}, model {total}")
        if not frames and total != sock.baseline_total:
            problems.append(f"no unread frame: total {sock.baseline_total} at connect, {total} now")
        return problems

    async def check_unread_frames(self, keys: Iterable[Who] | None = None) -> None:
        """Unread frames are batched: wait until the sockets' latest frames agree."""
        keys = list(self.sockets if keys is None else keys)
        deadline = time.monotonic() + UNREAD_WAIT
        while True:
            problems = {key: self.unread_problems(key, self.sockets[key]) for key in keys}
            if not any(problems.values()) or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        for (org, user), found in problems.items():
            self.stats.checks += 1
            for problem in found:
                self.problems.append(f"unread frames on {org}/{user}'s socket: {problem}")

    # --- email ----------------------------------------------------------------------------

    async def check_pending(self) -> None:
        # The alerts of the messages sent so far are decided now, before any other step.
        await self.services.alerts.run_all()
        label = {v: k for k, v in self.org_ids.items()}
        async with self.services.db.read() as session:
            rows = await session.execute(
                select(Org.ext_id, User.ext_id, EmailOutbox.thread_id)
                .join(User, User.pk == EmailOutbox.user_pk)
                .join(Org, Org.pk == EmailOutbox.org_pk)
                .where(
                    EmailOutbox.status == "pending",
                    Org.ext_id.in_(list(self.org_ids.values())),
                )
            )
            got = {(label[o], u, t) for o, u, t in rows.all()}

        def show(alerts: set[tuple[str, str, int]]) -> list[str]:
            return sorted(f"{o}/{u} about {self.model.threads[t].label}" for o, u, t in alerts)

        self.same("pending email alerts", show(self.model.pending), show(got))

    # --- checkpoints ----------------------------------------------------------------------

    async def checkpoint(self, who: list[Who], *, final: bool = False) -> None:
        requests: list[tuple[str, Who, str, Awaitable[httpx.Response]]] = []
        for org, user in who:
            requests.append(
                ("list", (org, user), "", self.http("GET", org, user, "/api/v1/candidates"))
            )
            requests.append(
                ("unread", (org, user), "", self.http("GET", org, user, "/api/v1/unread"))
            )
            for cand in CANDS:
                path = f"/api/v1/candidates/{cand}"
                requests.append(("cand", (org, user), cand, self.http("GET", org, user, path)))
                requests.append(
                    ("threads", (org, user), cand, self.http("GET", org, user, path + "/threads"))
                )
            for t in self.model.threads.values():
                if t.org != org and not self.model.sees(t.org, user, t):
                    continue  # of the other org: probed by its namesake, who sees it there
                path = f"/api/v1/threads/{t.id}/messages"
                requests.append(
                    ("history", (org, user), str(t.id), self.http("GET", org, user, path))
                )
        responses = await asyncio.gather(*(r[3] for r in requests))
        for (what, (org, user), arg, _), response in zip(requests, responses, strict=True):
            checker = getattr(self, f"check_{what}")
            checker(org, user, arg, response)
        await self.check_pending()
        await self.check_sockets()
        if final:
            await self.check_unread_frames()

    def check_list(self, org: str, user: str, _: str, response: httpx.Response) -> None:
        where = f"{org}/{user} GET /candidates"
        self.same(f"{where} status", OK, response.status_code)
        if response.status_code == OK:
            want = [
                (c, len(self.model.cand_unread(org, user, c)))
                for c in CANDS
                if self.model.sees_candidate(org, user, c)
            ]
            got = [(c["id"], c["unread"]) for c in response.json()["candidates"]]
            self.same(f"{where} (candidate, unread)", want, got)

    def check_unread(self, org: str, user: str, _: str, response: httpx.Response) -> None:
        where = f"{org}/{user} GET /unread"
        self.same(f"{where} status", OK, response.status_code)
        if response.status_code == OK:
            want = {}
            for c in CANDS:
                mine = self.model.cand_unread(org, user, c)
                if mine:
                    latest = max(mine, key=lambda m: m.id)
                    want[c] = (len(mine), latest.label, latest.body)
            labels = {m.id: m.label for m in self.model.msgs.values()}
            got = {
                e["candidate"]: (
                    e["unread"],
                    labels.get(e["latest"]["id"], e["latest"]["id"]),
                    e["latest"]["body"],
                )
                for e in response.json()["candidates"]
            }
            self.same(f"{where} (unread, latest)", want, got)

    def check_cand(self, org: str, user: str, cand: str, response: httpx.Response) -> None:
        model = self.model
        where = f"{org}/{user} GET /candidates/{cand}"
        visible = model.sees_candidate(org, user, cand)
        self.same(f"{where} status", OK if visible else NOT_FOUND, response.status_code)
        if not (visible and response.status_code == OK):
            return
        data = response.json()
        c = model.cands[(org, cand)]
        self.same(f"{where} coordinator", c.coordinator, (data["coordinator"] or {}).get("id"))
        agency_users = sorted(c.linked) if kind_of(user) == MEMBER else [user]
        self.same(f"{where} agency_users", agency_users, ids(data["agency_users"]))
        self.same(
            f"{where} private_contacts",
            model.contacts(org, user, cand),
            ids(data["private_contacts"]),
        )
        self.same(f"{where} unread", len(model.cand_unread(org, user, cand)), data["unread"])
        self.same(f"{where} seq", c.seq, data.get("seq"))

    def check_threads(self, org: str, user: str, cand: str, response: httpx.Response) -> None:
        model = self.model
        where = f"{org}/{user} GET /candidates/{cand}/threads"
        visible = model.sees_candidate(org, user, cand)
        self.same(f"{where} status", OK if visible else NOT_FOUND, response.status_code)
        if not (visible and response.status_code == OK):
            return
        want = []
        for t in model.visible_threads(org, user, cand):
            msgs = model.in_thread(t.id)
            last = msgs[-1].label if msgs else None
            want.append(
                (t.label, t.kind, t.agency_user, t.member, len(model.unread(org, user, t)), last)
            )
        labels = {m.id: m.label for m in model.msgs.values()}
        got = []
        for item in response.json()["threads"]:
            t = model.threads.get(item["id"])
            last = item["last_message"]
            got.append(
                (
                    t.label if t else f"#{item['id']}",
                    item["kind"],
                    item["agency_user"]["id"],
                    (item["member"] or {}).get("id"),
                    item["unread"],
                    None if last is None else labels.get(last["id"], last["id"]),
                )
            )
        self.same(f"{where} (thread, kind, agency user, member, unread, last message)", want, got)

    def check_history(self, org: str, user: str, arg: str, response: httpx.Response) -> None:
        model = self.model
        t = model.threads[int(arg)]
        where = f"{org}/{user} GET messages of {t.describe()}"
        visible = model.sees(org, user, t)
        self.same(f"{where} status", OK if visible else NOT_FOUND, response.status_code)
        if not (visible and response.status_code == OK):
            return
        want = [
            (m.label, m.author, None if m.deleted else m.body, m.deleted)
            for m in model.in_thread(t.id)
        ]
        labels = {m.id: m.label for m in model.msgs.values()}
        data = response.json()
        got = [
            (labels.get(m["id"], m["id"]), m["author"]["id"], m["body"], m["deleted"])
            for m in data["messages"]
        ]
        self.same(f"{where} (message, author, body, deleted)", want, got)
        self.same(f"{where} has_more", False, data["has_more"])


# --- the test ---------------------------------------------------------------------------------


@pytest.fixture
def settings(db_url: str, tmp_path: Path) -> Settings:
    """Overrides conftest's: alerts wait an hour, so none leaves the outbox during a run."""
    return make_settings(db_url, tmp_path, email_delay_seconds=3600.0)


@pytest.mark.timeout(900)
async def test_access_oracle(
    api: Api, live: str, app: Starlette, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Generated scenarios on both orgs, every read path checked against the model."""
    loop = asyncio.get_running_loop()
    stats = Stats()
    # A failing example costs seconds (it waits for frames that never come): bound the time
    # spent shrinking it (Hypothesis's default is 5 minutes).
    monkeypatch.setattr(hypothesis_engine, "MAX_SHRINKING_SECONDS", SHRINK_SECONDS, raising=False)

    @hsettings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=True,  # the same scenarios on every run
        database=None,
        phases=[Phase.explicit, Phase.generate, Phase.shrink],
        suppress_health_check=list(HealthCheck),
    )
    @given(scenario=scenarios)
    def oracle(scenario: Scenario) -> None:
        run = Run(api, live, app, stats, scenario)
        asyncio.run_coroutine_threadsafe(run.run(), loop).result(timeout=300)

    started = time.monotonic()
    try:
        # Hypothesis drives the examples from a worker thread; each one runs in this loop,
        # where the app, its uvicorn server and the sockets live.
        await asyncio.to_thread(oracle)
    finally:
        print(
            f"[access oracle] {stats.examples} runs (generated and shrinking), "
            f"{stats.steps} steps, {stats.requests} requests/ops, {stats.checks} checks, "
            f"{stats.frames} candidate frames, statuses {dict(sorted(stats.statuses.items()))}, "
            f"{time.monotonic() - started:.1f}s"
        )
