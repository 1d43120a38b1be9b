"""A reference model of who sees what, written from /work/shared/CONTRACT.md alone.

Used by tests/test_oracle.py. It imports nothing from the product: every rule below is the
contract's (section "Words", "Messaging API", "WebSocket /ws", "Email alerts"), read
together with docs/api.md section 2 where the contract leaves a detail to the docs:

- Nothing crosses orgs. Users, candidates, threads and messages are keyed by org.
- A member sees a candidate while it is listed in `members` or is the current coordinator;
  an agency user while it is linked. An erased candidate is seen by nobody.
- Agency thread (candidate, A): every member who sees the candidate, and A while linked.
  Private thread (candidate, A, M): A while linked, M while it sees the candidate.
- Posting: whoever sees an agency thread; a private thread only while both of its people
  see the candidate. Not visible: 404; visible but not allowed: 403.
- Opening (get-or-create): a member with an agency user linked to the candidate (either
  kind); an agency user its agency thread, or a private one with the current coordinator or
  a member with access with whom it already has a private thread holding a message (on any
  candidate of the org); an existing thread comes back (200) to anyone who sees it.
- Only the author deletes (while it sees the thread); a deleted message is a tombstone.
- unread: visible thread, someone else's message, not deleted, newer than the read marker;
  a marker never moves back.
- Every message created or deleted bumps the candidate's `seq` by one (a second delete of a
  tombstone deletes nothing); erasing the candidate starts it again from 0.
- Email: a new message queues an alert for each involved user of its thread other than the
  author (agency thread: its agency user, the current coordinator, every member who posted
  in it; private: both), who sees the thread (an alert about a thread one cannot read would
  leak it, and it could have no unread message to quote), online or not (an open socket
  is not reading). The outbox keeps one pending alert per (user, thread) until it is due
  (reading cancels it then, not before); erasing the candidate erases them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

MEMBER, AGENCY = "member", "agency"
AGENCY_THREAD, PRIVATE_THREAD = "agency", "private"

ORGS = ("A", "B")  # labels; each example gets fresh real org ids for them
MEMBERS = ("m0", "m1", "m2")
AGENTS = ("a0", "a1", "a2")
USERS = MEMBERS + AGENTS
AGENCY_OF = {"a0": "ag0", "a1": "ag0", "a2": "ag1"}
AGENCIES = ("ag0", "ag1")
CANDS = ("c0", "c1")

OK, CREATED, NO_CONTENT = 200, 201, 204
FORBIDDEN, NOT_FOUND, INVALID = 403, 404, 422


def kind_of(user: str) -> str:
    return MEMBER if user in MEMBERS else AGENCY


@dataclass
class Cand:
    coordinator: str | None
    members: set[str]
    linked: set[str]
    exists: bool = True
    seq: int = 0

    def picture(self) -> str:
        members = ",".join(sorted(self.members)) or "-"
        linked = ",".join(sorted(self.linked)) or "-"
        state = "" if self.exists else " (erased)"
        return f"coord={self.coordinator or '-'} members={members} linked={linked}{state}"


@dataclass
class Thread:
    id: int
    org: str
    cand: str
    kind: str
    agency_user: str
    member: str | None
    label: str
    gone: bool = False  # its candidate was erased

    def describe(self) -> str:
        who = self.agency_user if self.member is None else f"{self.agency_user}+{self.member}"
        gone = ", erased" if self.gone else ""
        return f"{self.label}[{self.org}/{self.cand} {self.kind} {who}{gone}]"

    def parties(self) -> tuple[str, ...]:
        """The users who may see it (while they see the candidate)."""
        if self.member is not None:
            return (self.agency_user, self.member)
        return (self.agency_user, *MEMBERS)


@dataclass
class Msg:
    id: int
    thread: int
    author: str
    body: str
    label: str
    deleted: bool = False


@dataclass(frozen=True)
class Event:
    seq: int
    type: str  # "message.created" | "message.deleted"
    thread: int
    message: int


@dataclass
class Model:
    cands: dict[tuple[str, str], Cand]
    threads: dict[int, Thread] = field(default_factory=dict)  # by id, in creation order
    msgs: dict[int, Msg] = field(default_factory=dict)  # by id, in creation order
    events: dict[tuple[str, str], list[Event]] = field(default_factory=dict)
    markers: dict[tuple[str, str, int], int] = field(default_factory=dict)
    posters: dict[int, set[str]] = field(default_factory=dict)
    pending: set[tuple[str, str, int]] = field(default_factory=set)  # (org, user, thread)

    # --- who sees what ---------------------------------------------------------------

    def has_access(self, org: str, user: str, cand: str) -> bool:
        c = self.cands[(org, cand)]
        return c.exists and kind_of(user) == MEMBER and (user in c.members or user == c.coordinator)

    def is_linked(self, org: str, user: str, cand: str) -> bool:
        c = self.cands[(org, cand)]
        return c.exists and kind_of(user) == AGENCY and user in c.linked

    def sees_candidate(self, org: str, user: str, cand: str) -> bool:
        return self.has_access(org, user, cand) or self.is_linked(org, user, cand)

    def sees(self, org: str, user: str, t: Thread) -> bool:
        if t.gone or org != t.org or not self.sees_candidate(org, user, t.cand):
            return False
        if kind_of(user) == AGENCY:
            return t.agency_user == user
        return t.kind == AGENCY_THREAD or t.member == user

    def may_post(self, org: str, user: str, t: Thread) -> bool:
        if not self.sees(org, user, t):
            return False
        # Nobody posts in a thread whose agency user was unlinked; a private thread also
        # needs its member.
        if not self.sees_candidate(t.org, t.agency_user, t.cand):
            return False
        return t.kind == AGENCY_THREAD or self.sees_candidate(t.org, t.member or "", t.cand)

    def live_threads(self, org: str, cand: str | None = None) -> list[Thread]:
        return [
            t
            for t in self.threads.values()
            if not t.gone and t.org == org and (cand is None or t.cand == cand)
        ]

    def visible_threads(self, org: str, user: str, cand: str) -> list[Thread]:
        return [t for t in self.live_threads(org, cand) if self.sees(org, user, t)]

    # --- messages and unread -----------------------------------------------------------

    def in_thread(self, thread: int) -> list[Msg]:
        return [m for m in self.msgs.values() if m.thread == thread]

    def unread(self, org: str, user: str, t: Thread) -> list[Msg]:
        if not self.sees(org, user, t):
            return []
        marker = self.markers.get((org, user, t.id), 0)
        return [
            m for m in self.in_thread(t.id) if m.id > marker and m.author != user and not m.deleted
        ]

    def cand_unread(self, org: str, user: str, cand: str) -> list[Msg]:
        return [m for t in self.live_threads(org, cand) for m in self.unread(org, user, t)]

    def total_unread(self, org: str, user: str) -> int:
        return sum(len(self.cand_unread(org, user, c)) for c in CANDS)

    # --- opening threads ----------------------------------------------------------------

    def find(
        self, org: str, cand: str, kind: str, agency_user: str, member: str | None
    ) -> Thread | None:
        for t in self.live_threads(org, cand):
            if (t.kind, t.agency_user, t.member) == (kind, agency_user, member):
                return t
        return None

    def partners(self, org: str, agent: str) -> set[str]:
        """Members the agency user exchanged private messages with: a private thread holding
        at least one message (a tombstone is still a message), on any candidate of the org."""
        return {
            t.member
            for t in self.live_threads(org)
            if t.kind == PRIVATE_THREAD
            and t.agency_user == agent
            and t.member is not None
            and self.in_thread(t.id)
        }

    def contacts(self, org: str, user: str, cand: str) -> list[str]:
        if kind_of(user) == MEMBER or not self.sees_candidate(org, user, cand):
            return []
        found = {m for m in self.partners(org, user) if self.has_access(org, m, cand)}
        coordinator = self.cands[(org, cand)].coordinator
        if coordinator is not None:
            found.add(coordinator)
        return sorted(found)

    def open_key(self, user: str, private: bool, target: str) -> tuple[str, str, str | None]:
        """(kind, agency user, member) of the thread the request names."""
        if kind_of(user) == MEMBER:
            return (PRIVATE_THREAD, target, user) if private else (AGENCY_THREAD, target, None)
        return (PRIVATE_THREAD, user, target) if private else (AGENCY_THREAD, user, None)

    def expect_open(self, org: str, user: str, cand: str, private: bool, target: str) -> int:
        if not self.sees_candidate(org, user, cand):
            return NOT_FOUND
        key = self.open_key(user, private, target)
        existing = self.find(org, cand, *key)
        if kind_of(user) == MEMBER:
            if not self.is_linked(org, target, cand):
                return NOT_FOUND  # no such agency user on this candidate
            return OK if existing else CREATED
        if not private or existing:
            return OK if existing else CREATED
        c = self.cands[(org, cand)]
        if target == c.coordinator or (
            target in self.partners(org, user) and self.has_access(org, target, cand)
        ):
            return CREATED
        return FORBIDDEN

    # --- statuses of writes --------------------------------------------------------------

    def expect_post(self, org: str, user: str, t: Thread) -> int:
        if not self.sees(org, user, t):
            return NOT_FOUND
        return CREATED if self.may_post(org, user, t) else FORBIDDEN

    def expect_delete(self, org: str, user: str, m: Msg) -> int:
        t = self.threads[m.thread]
        if not self.sees(org, user, t):
            return NOT_FOUND
        return NO_CONTENT if m.author == user else FORBIDDEN

    def expect_read(self, org: str, user: str, t: Thread, m: Msg) -> int:
        if not self.sees(org, user, t):
            return NOT_FOUND
        return OK if m.thread == t.id else INVALID

    # --- state changes (called once the product said yes) ----------------------------------

    def add_thread(self, t: Thread) -> None:
        self.threads[t.id] = t
        self.posters[t.id] = set()

    def involved(self, t: Thread) -> set[str]:
        if t.kind == PRIVATE_THREAD:
            assert t.member is not None
            return {t.agency_user, t.member}
        found = {t.agency_user} | self.posters[t.id]
        coordinator = self.cands[(t.org, t.cand)].coordinator
        if coordinator is not None:
            found.add(coordinator)
        return found

    def alert_recipients(self, t: Thread, author: str) -> set[str]:
        return {u for u in self.involved(t) if u != author and self.sees(t.org, u, t)}

    def posted(self, t: Thread, m: Msg) -> tuple[Event, set[str]]:
        """Records a new message; returns its event and who gets an alert queued."""
        self.msgs[m.id] = m
        if kind_of(m.author) == MEMBER:
            self.posters[t.id].add(m.author)
        recipients = self.alert_recipients(t, m.author)
        self.pending |= {(t.org, u, t.id) for u in recipients}
        return self.bump(t, "message.created", m.id), recipients

    def deleted(self, m: Msg) -> Event | None:
        if m.deleted:
            return None
        m.deleted = True
        return self.bump(self.threads[m.thread], "message.deleted", m.id)

    def bump(self, t: Thread, type: str, message: int) -> Event:
        c = self.cands[(t.org, t.cand)]
        c.seq += 1
        event = Event(c.seq, type, t.id, message)
        self.events.setdefault((t.org, t.cand), []).append(event)
        return event

    def read(self, org: str, user: str, t: Thread, m: Msg) -> None:
        key = (org, user, t.id)
        self.markers[key] = max(self.markers.get(key, 0), m.id)

    def erase(self, org: str, cand: str) -> None:
        c = self.cands[(org, cand)]
        c.exists = False
        c.seq = 0
        self.events[(org, cand)] = []
        gone = {t.id for t in self.live_threads(org, cand)}
        for thread_id in gone:
            self.threads[thread_id].gone = True
        self.pending = {p for p in self.pending if p[2] not in gone}
        self.markers = {k: v for k, v in self.markers.items() if k[2] not in gone}

    def visible_events(self, org: str, user: str, cand: str, after: int) -> list[Event]:
        return [
            e
            for e in self.events.get((org, cand), [])
            if e.seq > after and self.sees(org, user, self.threads[e.thread])
        ]
