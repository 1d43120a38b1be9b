"""One live socket as the hub sees it: who it is and a bounded queue of frames to send.

The queue decouples fan-out from the network: dispatching an event to a thousand sockets is
a thousand non-blocking puts. A client that stops reading fills its own queue and is closed
with CLOSE_TOO_SLOW; nobody else waits for it.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from channels.interfaces import UserKey
from channels.protocol import CLOSE_TOO_SLOW, MAX_FRAME_BYTES

_ids = itertools.count(1)
_process_tag = f"{os.getpid():x}"


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """Per-connection limits, with safe defaults."""

    max_frame_bytes: int = MAX_FRAME_BYTES
    send_queue_frames: int = 1024
    idle_timeout_seconds: float = 120.0
    replay_put_timeout_seconds: float = 30.0


class Connection:
    def __init__(
        self,
        org_pk: int,
        user_pk: int,
        kind: str,
        limits: ConnectionLimits,
        context: Any = None,
    ) -> None:
        self.id = f"{_process_tag}-{next(_ids)}"
        self.org_pk = org_pk
        self.user_pk = user_pk
        self.kind = kind
        self.limits = limits
        self.context = context  # the authenticated principal, for the layer above
        self.subscriptions: dict[int, Subscription] = {}
        self._queue: deque[str] = deque()
        self._ready = asyncio.Event()
        self._space = asyncio.Event()
        self._space.set()
        self.busy = False  # an op is being carried out for this connection
        self.closed = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""

    @property
    def user_key(self) -> UserKey:
        return (self.org_pk, self.user_pk)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def send(self, frame: str) -> None:
        """Queues a frame without waiting; a full queue closes this (slow) connection."""
        if self.close_code is not None:
            return
        if len(self._queue) >= self.limits.send_queue_frames:
            self.close(CLOSE_TOO_SLOW, "The client does not read fast enough; resume to catch up.")
            return
        self._queue.append(frame)
        self._ready.set()
        if len(self._queue) >= self.limits.send_queue_frames:
            self._space.clear()

    async def send_wait(self, frame: str) -> None:
        """Queues a frame, waiting for room (replay paces itself to the client)."""
        while self.close_code is None and len(self._queue) >= self.limits.send_queue_frames:
            self._space.clear()
            try:
                await asyncio.wait_for(self._space.wait(), self.limits.replay_put_timeout_seconds)
            except TimeoutError:
                self.close(
                    CLOSE_TOO_SLOW, "The client does not read fast enough; resume to catch up."
                )
        self.send(frame)

    def close(self, code: int, reason: str = "") -> None:
        """Asks the writer to close the socket once the frames queued before are sent
        (a slow client's backlog is dropped: it resumes from its last seq instead)."""
        if self.close_code is None:
            self.close_code, self.close_reason = code, reason
            if code == CLOSE_TOO_SLOW:
                self._queue.clear()
            self._ready.set()
            self._space.set()
            self.closed.set()

    async def next_frames(self) -> list[str]:
        """Waits for frames to send; returns [] once closing with nothing left to send."""
        while not self._queue and self.close_code is None:
            self._ready.clear()
            await self._ready.wait()
        frames = list(self._queue)
        self._queue.clear()
        self._space.set()
        return frames


@dataclass(eq=False)
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
