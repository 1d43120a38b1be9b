"""Clients that keep going through faults, and the checks that nothing was lost or doubled.

Shared by tests/test_faults.py and tests/test_connect_storm.py (tests/test_cluster.py and
tests/test_deploy_proxy.py read `history` and `readyz` too). Everything here acts in one
org, `ORG`, which each test module provisions in its own databases; "mem" must be a member
of every candidate there (`history` reads as "mem" unless told another org and user). A
`Follower` follows candidates across however many sockets it takes, resuming each after the
last seq it saw, as docs/protocol.md tells clients to; a `Poster` posts with a client_id
each, by REST or over its own socket, and notes every attempt (`Try`). `assert_exact_stream`
and `assert_each_once` hold what they saw to the stored history.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from server.domain.auth import make_user_token
from tests.support.cluster import Client, Lost, request_or_lost
from tests.support.world import SECRET

ORG = "flt"


# --- users and sockets --------------------------------------------------------------------


def token(user: str) -> str:
    return make_user_token(SECRET, ORG, user)


def auth(user: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token(user)}"}


async def connect(base_url: str, user: str) -> Client:
    client = await Client.connect(base_url, token(user))
    assert isinstance(client, Client)
    return client


# --- followers ----------------------------------------------------------------------------


class Follower:
    """One client of one user, following candidates across however many sockets it takes:
    when a socket dies it reconnects (to `target()`) and resumes each candidate after the
    highest seq it saw, retrying while the handshake or a subscribe fails."""

    def __init__(self, name: str, user: str, candidates: tuple[str, ...]) -> None:
        self.name, self.user, self.candidates = name, user, candidates
        self.sockets: list[Client] = []
        self.floor: dict[str, int] = {}  # the seq of each first subscribe ack
        self.reconnects = 0
        self.failed_attempts: list[str] = []
        self._stopping = False
        self._keeper: asyncio.Task[None] | None = None

    async def open(self, base_url: str) -> None:
        client = await connect(base_url, self.user)
        self.sockets.append(client)  # whatever it delivers counts, even if a subscribe fails
        try:
            for cand in self.candidates:
                fields: dict[str, Any] = {"candidate": cand}
                if cand in self.floor:
                    fields["after"] = self.last_seq(cand)
                ack = await request_or_lost(client, "subscribe", **fields)
                assert ack["type"] == "ack", ack
                assert ack["reset"] is False, ack
                self.floor.setdefault(cand, ack["seq"])
        except BaseException:
            with contextlib.suppress(Exception):
                await client.close()
            raise

    def keep_following(self, target: Callable[[], str], patience: float = 45.0) -> None:
        self._keeper = asyncio.create_task(self._keep(target, patience))

    async def _keep(self, target: Callable[[], str], patience: float) -> None:
        while True:
            await asyncio.wait({self.sockets[-1]._reader})
            if self._stopping:
                return
            self.reconnects += 1
            deadline = time.monotonic() + patience
            while True:
                try:
                    await self.open(target())
                    break
                except (
                    Lost,
                    OSError,
                    AssertionError,
                    TimeoutError,
                    websockets.WebSocketException,
                ) as e:
                    self.failed_attempts.append(f"{type(e).__name__}: {e}")
                    if time.monotonic() > deadline or self._stopping:
                        raise
                    await asyncio.sleep(0.2)

    @property
    def connected(self) -> bool:
        return bool(self.sockets) and self.sockets[-1].socket.close_code is None

    def created(self, cand: str) -> list[dict[str, Any]]:
        return [event for client in self.sockets for event in client.created(cand)]

    def last_seq(self, cand: str) -> int:
        seqs = [
            frame["seq"]
            for client in self.sockets
            for frame in client.frames
            if frame.get("type", "").startswith("message.") and frame.get("candidate") == cand
        ]
        return max([self.floor[cand], *seqs])

    def holds(self, cand: str, stored: int) -> bool:
        return len(self.created(cand)) >= stored - self.floor[cand]

    async def close(self) -> None:
        self._stopping = True
        for client in self.sockets:
            with contextlib.suppress(Exception):
                await client.close()
        if self._keeper is not None:
            self._keeper.cancel()
            with contextlib.suppress(BaseException):
                await self._keeper


def assert_exact_stream(follower: Follower, cand: str, stored: list[dict[str, Any]]) -> None:
    """The follower got every message of `cand` after its first subscribe, once each, in seq
    order, matching the stored history (one thread per candidate, only creations: the n-th
    stored message has seq n)."""
    floor = follower.floor[cand]
    events = follower.created(cand)
    seqs = [e["seq"] for e in events]
    where = f"{follower.name} ({follower.user}) on {cand}"
    duplicates = sorted(s for s, n in Counter(seqs).items() if n > 1)
    assert duplicates == [], f"{where}: seqs delivered twice: {duplicates}"
    missing = sorted(set(range(floor + 1, len(stored) + 1)) - set(seqs))
    assert missing == [], f"{where}: seqs never delivered: {missing}"
    assert seqs == list(range(floor + 1, len(stored) + 1)), f"{where}: out of order: {seqs}"
    assert [e["message"]["id"] for e in events] == [m["id"] for m in stored[floor:]], where
    assert [e["message"]["body"] for e in events] == [m["body"] for m in stored[floor:]], where


# --- publishers ---------------------------------------------------------------------------


@dataclass
class Try:
    """One attempt to post one message."""

    client_id: str
    outcome: str  # "201", "200", "503", "ack", "error:<code>", "lost:<what>"
    via: str  # "rest" or "ws", and the node's URL
    at: float = field(default_factory=time.monotonic)
    response: httpx.Response | None = None
    message: dict[str, Any] | None = None

    @property
    def stored(self) -> bool:
        return self.outcome in ("200", "201", "ack")


@dataclass
class Poster:
    """Posts as one user, by REST or over its own socket, each message with a client_id."""

    user: str
    http: httpx.AsyncClient
    base_url: str
    ws: bool = False
    socket: Client | None = None
    connects: int = 0
    tries: list[Try] = field(default_factory=list)

    async def rest(self, cid: str, thread: int, body: str) -> Try:
        url = self.base_url
        try:
            response = await self.http.post(
                f"{url}/api/v1/threads/{thread}/messages",
                json={"body": body, "client_id": cid},
                headers=auth(self.user),
            )
        except httpx.TransportError as error:
            attempt = Try(cid, f"lost:{type(error).__name__}", f"rest {url}")
        else:
            message = response.json() if response.status_code in (200, 201) else None
            attempt = Try(cid, str(response.status_code), f"rest {url}", response=response)
            attempt.message = message
        self.tries.append(attempt)
        return attempt

    async def over_socket(self, cid: str, thread: int, body: str) -> Try:
        url = self.base_url
        if self.socket is None or self.socket.socket.close_code is not None:
            try:
                self.socket = await connect(url, self.user)
                self.connects += 1
            except (OSError, websockets.WebSocketException) as error:
                attempt = Try(cid, f"lost:connect {type(error).__name__}", f"ws {url}")
                self.tries.append(attempt)
                return attempt
        try:
            frame = await request_or_lost(
                self.socket, "send", thread=thread, body=body, client_id=cid
            )
        except Lost:
            attempt = Try(cid, "lost:socket", f"ws {url}")
        else:
            if frame["type"] == "ack":
                attempt = Try(cid, "ack", f"ws {url}", message=frame["message"])
            else:
                attempt = Try(cid, f"error:{frame.get('code')}", f"ws {url}")
        self.tries.append(attempt)
        return attempt

    async def post(self, cid: str, thread: int, body: str) -> Try:
        if self.ws:
            return await self.over_socket(cid, thread, body)
        return await self.rest(cid, thread, body)

    def client_ids(self) -> set[str]:
        return {t.client_id for t in self.tries}

    def last_try(self) -> dict[str, Try]:
        last: dict[str, Try] = {}
        for attempt in self.tries:
            last[attempt.client_id] = attempt
        return last

    async def close(self) -> None:
        if self.socket is not None:
            with contextlib.suppress(Exception):
                await self.socket.close()


def assert_each_once(
    stored: dict[int, list[dict[str, Any]]], posters: list[Poster], *more: str
) -> None:
    """Every client_id that was posted (and retried until it succeeded) is stored once,
    nothing else is stored, and every answer that carried a message names the stored one."""
    messages = [m for thread in stored.values() for m in thread]
    counts = Counter(m["client_id"] for m in messages)
    wanted = {cid for poster in posters for cid in poster.client_ids()} | set(more)
    twice = {cid: n for cid, n in counts.items() if n > 1}
    assert twice == {}, f"stored more than once: {twice}"
    missing = sorted(wanted - set(counts))
    assert missing == [], f"posted (and retried) but never stored: {missing}"
    assert set(counts) == wanted, sorted(set(counts) - wanted)
    by_cid = {m["client_id"]: m["id"] for m in messages}
    for poster in posters:
        for attempt in poster.tries:
            if attempt.message is not None:
                assert attempt.message["id"] == by_cid[attempt.client_id], attempt


# --- REST and /readyz ---------------------------------------------------------------------


async def history(
    http: httpx.AsyncClient, base_url: str, thread: int, *, org: str = ORG, user: str = "mem"
) -> list[dict[str, Any]]:
    """Every stored message of `thread`, oldest first, read as `user` of `org`."""
    headers = {"Authorization": f"Bearer {make_user_token(SECRET, org, user)}"}
    out: list[dict[str, Any]] = []
    after = 0
    while True:
        response = await http.get(
            f"{base_url}/api/v1/threads/{thread}/messages",
            params={"after": after, "limit": 100},
            headers=headers,
        )
        assert response.status_code == 200, response.text
        page = response.json()
        out.extend(page["messages"])
        if not page["has_more"]:
            return out
        after = page["messages"][-1]["id"]


async def histories(
    http: httpx.AsyncClient, base_url: str, threads: list[int]
) -> dict[int, list[dict[str, Any]]]:
    return {thread: await history(http, base_url, thread) for thread in threads}


async def readyz(http: httpx.AsyncClient, base_url: str, timeout: float = 10) -> httpx.Response:
    return await http.get(f"{base_url}/readyz", timeout=timeout)


async def wait_readyz(
    http: httpx.AsyncClient, base_url: str, status: int, timeout: float
) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while True:
        response = await readyz(http, base_url)
        if response.status_code == status or time.monotonic() > deadline:
            assert response.status_code == status, (base_url, response.text)
            return response
        await asyncio.sleep(0.2)


# --- waiting ------------------------------------------------------------------------------


async def poll_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
