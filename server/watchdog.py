"""The event loop's watchdog: how late the loop runs, and what held it when it stalled.

A tick on the loop measures its lag: how much later than asked a timer callback ran. A
thread of its own watches the ticks: when none has come for `blocked_after_seconds`, the
loop is blocked (a callback that never yields, CPU-bound work, a blocking call), and only
another thread can still say so. It logs a warning with the loop thread's current stack,
naming what is running, then again every `repeat_seconds` while the block lasts, and a
line when the loop runs again. A freeze then explains itself in the log.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import threading
import time
import traceback
from collections.abc import Callable

log = logging.getLogger("agency_messaging.watchdog")

STACK_FRAMES = 12  # the innermost frames name what runs; the rest is the event loop's


class LoopWatchdog:
    def __init__(
        self,
        *,
        tick_seconds: float = 0.25,
        blocked_after_seconds: float = 1.0,
        repeat_seconds: float = 10.0,
        on_lag: Callable[[float], None] | None = None,
        on_blocked: Callable[[], None] | None = None,
    ) -> None:
        self.tick_seconds = tick_seconds
        self.blocked_after_seconds = blocked_after_seconds
        self.repeat_seconds = repeat_seconds
        self.lag = 0.0  # the lag of the latest tick
        self._on_lag = on_lag
        self._on_blocked = on_blocked
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._last_tick = 0.0
        self._due = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._blocked_since: float | None = None  # set by the watching thread

    def start(self) -> None:
        """Starts ticking on the running loop, and the watching thread."""
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._last_tick = time.monotonic()
        self._schedule(self._last_tick)
        self._thread = threading.Thread(target=self._watch, name="loop-watchdog", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # --- on the loop ----------------------------------------------------------------------

    def _schedule(self, now: float) -> None:
        assert self._loop is not None
        self._due = now + self.tick_seconds
        self._timer = self._loop.call_later(self.tick_seconds, self._tick)

    def _tick(self) -> None:
        now = time.monotonic()
        self.lag = max(0.0, now - self._due)
        self._last_tick = now
        if self._on_lag is not None:
            self._on_lag(self.lag)
        blocked_since = self._blocked_since
        if blocked_since is not None:
            self._blocked_since = None
            log.warning("The event loop runs again after %.1f s blocked.", now - blocked_since)
        self._schedule(now)

    # --- on the watching thread ---------------------------------------------------------

    def _watch(self) -> None:
        reported_at = 0.0
        while not self._stop.wait(self.tick_seconds):
            last = self._last_tick
            silent = time.monotonic() - last - self.tick_seconds
            if silent < self.blocked_after_seconds:
                continue
            if self._blocked_since is None:
                self._blocked_since = last + self.tick_seconds
                reported_at = 0.0
                if self._on_blocked is not None:
                    self._on_blocked()
            now = time.monotonic()
            if now - reported_at >= self.repeat_seconds:
                reported_at = now
                log.warning(
                    "The event loop has been blocked for %.1f s; it is running:\n%s",
                    now - self._blocked_since,
                    self._loop_stack(),
                )

    def _loop_stack(self) -> str:
        # sys._current_frames is CPython's documented way to read another thread's stack.
        frame = sys._current_frames().get(self._loop_thread)
        if frame is None:
            return "  (the loop's thread has no Python frame)"
        frames = traceback.extract_stack(frame)[-STACK_FRAMES:]
        return "".join(
            f"  {entry.filename}:{entry.lineno} in {entry.name}\n" for entry in reversed(frames)
        ).rstrip()
