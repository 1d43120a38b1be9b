"""The event loop's watchdog: lag measured, and a blocked loop named in the log while it
is still blocked (so that a freeze explains itself)."""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import pytest
from starlette.applications import Starlette

from server.watchdog import LoopWatchdog


def hold_the_loop_without_yielding(seconds: float) -> None:
    time.sleep(seconds)  # what a callback that never yields does to every other task


class Ticks:
    """The lags the watchdog measured, with a way to wait for the next ones."""

    def __init__(self) -> None:
        self.lags: list[float] = []
        self._more = asyncio.Event()

    def __call__(self, lag: float) -> None:
        self.lags.append(lag)
        self._more.set()

    async def until(self, count: int) -> None:
        while len(self.lags) < count:
            self._more.clear()
            await asyncio.wait_for(self._more.wait(), 10)


async def test_a_blocked_loop_is_logged_with_what_it_runs_and_counted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ticks = Ticks()
    blocked: list[int] = []
    watchdog = LoopWatchdog(
        tick_seconds=0.05,
        blocked_after_seconds=0.5,
        on_lag=ticks,
        on_blocked=lambda: blocked.append(1),
    )
    caplog.set_level(logging.WARNING, logger="agency_messaging.watchdog")
    watchdog.start()
    try:
        await ticks.until(1)
        hold_the_loop_without_yielding(1.5)
        # The warning was written by the watching thread while the loop was still held.
        during = [r.getMessage() for r in caplog.records]
        await ticks.until(len(ticks.lags) + 1)
    finally:
        watchdog.stop()
    assert blocked == [1]
    assert any(
        "The event loop has been blocked" in m
        and "in hold_the_loop_without_yielding" in m
        and "test_watchdog.py" in m
        for m in during
    ), during
    assert max(ticks.lags) >= 1.0  # the tick after the block ran that late
    assert any("runs again after" in r.getMessage() for r in caplog.records)


async def test_a_loop_that_yields_is_never_reported(caplog: pytest.LogCaptureFixture) -> None:
    ticks = Ticks()
    watchdog = LoopWatchdog(tick_seconds=0.02, blocked_after_seconds=0.5, on_lag=ticks)
    caplog.set_level(logging.WARNING, logger="agency_messaging.watchdog")
    watchdog.start()
    try:
        await ticks.until(20)
    finally:
        watchdog.stop()
    assert not caplog.records


async def test_metrics_expose_the_loop_lag(app: Starlette) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for _ in range(200):
            text = (await client.get("/metrics")).text
            if "am_event_loop_lag_seconds_count 0.0" not in text:
                break
            await asyncio.sleep(0.05)
        assert (await client.get("/healthz")).status_code == 200
    assert "am_event_loop_lag_seconds_bucket" in text
    assert "am_event_loop_lag_seconds_count 0.0" not in text  # ticks were measured
    assert "am_event_loop_blocked_total 0.0" in text
