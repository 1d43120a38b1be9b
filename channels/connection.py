"""One live socket as the hub sees it: who it is, and how frames reach it.

Fan-out never waits for the network. A frame is written at once when the edge offers a
direct writer (`direct`) and nothing is queued before it; otherwise it joins a bounded
queue, and the edge's writer (woken through `wake`) sends the queue in order. Once a
frame is queued, every later one queues behind it until the queue is empty, so frames are
never reordered. A client that stops reading fills its own queue and is closed with
CLOSE_TOO_SLOW; nobody else waits for it.

Without an edge attached (the hub's tests), frames simply stay queued for `next_frames`.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from channels.interfaces import UserKey
from channels.protocol import CLOSE_TOO_SLOW, MAX_FRAME_BYTES

_ids = itertools.count(1)
_process_tag = f"{os.getpid():x}"

TOO_SLOW = "The client does not read fast enough; resume to catch up."

DirectWrite = Callable[[str], bool]  # writes a frame now, or returns False: queue it


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-connection limits, with safe defaults."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    send_queue_frames: int = 1024
    idle_timeout_seconds: float = 120.0
    replay_put_timeout_seconds: float = 30.0


class Connection:
    # Thousands of these stay open and idle: no per-instance dict, and the events below are
    # made only once somebody waits on them.
    __slots__ = (
        "__weakref__",
        "_closed",
        "_queue",
        "_ready",
        "_space",
        "busy",
        "close_code",
        "close_reason",
        "context",
        "direct",
        "id",
        "kind",
        "limits",
        "org_pk",
        "subscriptions",
        "unread_batches",
        "user_pk",
        "wake",
    )

    def __init__(
        self,
        org_pk: int,
        user_pk: int,
        kind: str,
        limits: ConnectionLimits,
        context: Any = None,
        *,
        unread_batches: bool = False,
    ) -> None:
        self.id = f"{_process_tag}-{next(_ids)}"
        self.org_pk = org_pk
        self.user_pk = user_pk
        self.kind = kind
        self.limits = limits
        self.context = context  # the authenticated principal, for the layer above
        self.unread_batches = unread_batches  # protocol 2: unread changes in one frame
        self.subscriptions: dict[int, Subscription] = {}
        self.busy = False  # an op is being carried out for this connection
        self.close_code: int | None = None
        self.close_reason = ""
        self.direct: DirectWrite | None = None  # set by the edge once the socket is open
        self.wake: Callable[[], None] | None = None  # the edge's: a frame queued, or closed
        # A list, not a deque: it is empty nearly always, and an empty list costs nothing.
        self._queue: list[str] = []
        self._ready: asyncio.Event | None = None  # for next_frames
        self._space: asyncio.Event | None = None  # for send_wait
        self._closed: asyncio.Event | None = None  # for `closed`

    @property
    def user_key(self) -> UserKey:
        return (self.org_pk, self.user_pk)

    @property
    def queued(self) -> int:
        return len(self._queue)

    @property
    def closed(self) -> asyncio.Event:
        """Set once the connection is closed."""
        if self._closed is None:
            self._closed = asyncio.Event()
            if self.close_code is not None:
                self._closed.set()
        return self._closed

    def send(self, frame: str) -> None:
        """Writes or queues a frame without waiting; a full queue closes this (slow)
        connection."""
        if self.close_code is not None:
            return
        queue = self._queue
        if not queue and self.direct is not None and self.direct(frame):
            return
        if len(queue) >= self.limits.send_queue_frames:
            self.close(CLOSE_TOO_SLOW, TOO_SLOW)
            return
        queue.append(frame)
        if len(queue) == 1:  # a writer drains until the queue is empty: wake one
            if self.wake is not None:
                self.wake()
            if self._ready is not None:
                self._ready.set()

    async def send_wait(self, frame: str) -> None:
        """Sends a frame, waiting for room in the queue (replay paces itself to the
        client)."""
        while self.close_code is None and len(self._queue) >= self.limits.send_queue_frames:
            if self._space is None:
                self._space = asyncio.Event()
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), self.limits.replay_put_timeout_seconds)
            except TimeoutError:
                self.close(CLOSE_TOO_SLOW, TOO_SLOW)
        self.send(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Asks the writer to close the socket once the frames queued before are sent
        (a slow client's backlog is dropped: it resumes from its last seq instead)."""
        if self.close_code is not None:
            return
        self.close_code, self.close_reason = code, reason
        if code == CLOSE_TOO_SLOW:
            self._queue.clear()
        for event in (self._ready, self._space, self._closed):
            if event is not None:
                event.set()
        if self.wake is not None:
            self.wake()

    # --- the writer's side ------------------------------------------------------------

    def first_queued(self) -> str | None:
        """The frame to send next; it stays queued (so that later frames queue behind it)
        until `sent_first` says it is on its way."""
        return self._queue[0] if self._queue else None

    def sent_first(self) -> None:
        if self._queue:  # (emptied meanwhile if the connection was closed as too slow)
            del self._queue[0]
        if self._space is not None:
            self._space.set()

    async def next_frames(self) -> list[str]:
        """Waits for frames, then takes every queued one; returns [] once closing with
        nothing left to send."""
        while not self._queue and self.close_code is None:
            if self._ready is None:
                self._ready = asyncio.Event()
            self._ready.clear()
            await self._ready.wait()
        frames, self._queue = self._queue, []
        if self._space is not None:
            self._space.set()
        return frames


@dataclass(eq=False, slots=True)
class Subscription:
    connection: Connection
    candidate_pk: int
    candidate_id: str
    last_seq: int
    replaying: bool = True
    buffer: list[tuple[int, str | None]] = field(default_factory=list)

    def deliver(self, seq: int, frame: str | None) -> None:
        """`frame` is None for an event this user may not see: it only advances the seq."""
        if self.replaying:
            self.buffer.append((seq, frame))
            return
        if seq <= self.last_seq:
            return
        self.last_seq = seq
        if frame is not None:
            self.connection.send(frame)

    def go_live(self) -> None:
        buffered, self.buffer = sorted(self.buffer, key=lambda item: item[0]), []
        self.replaying = False
        for seq, frame in buffered:
            self.deliver(seq, frame)
