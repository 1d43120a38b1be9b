"""Per-user token buckets for sends: a steady rate a minute, bursts up to half of it."""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass

from server.domain.errors import RateLimited


@dataclass(slots=True)
class _Bucket:
    tokens: float
    stamp: float


class SendRateLimiter:
    """In-process limiter. Each process limits its own share; with N processes a user could
    reach N times the rate, which bounds abuse without a round trip per send."""

    def __init__(
        self, per_minute: int, clock: Callable[[], float] = time.monotonic, max_keys: int = 100_000
    ) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, per_minute / 2)
        self.clock = clock
        self.max_keys = max_keys
        self._buckets: dict[Hashable, _Bucket] = {}

    @property
    def enabled(self) -> bool:
        return self.rate > 0

    def take(self, key: Hashable) -> None:
        if not self.enabled:
            return
        now = self.clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self.max_keys:
                self._prune(now)
            bucket = self._buckets[key] = _Bucket(self.capacity, now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.stamp) * self.rate)
        bucket.stamp = now
        if bucket.tokens < 1.0:
            wait = (1.0 - bucket.tokens) / self.rate
            raise RateLimited(f"Too many messages; try again in {wait:.1f} seconds.", wait)
        bucket.tokens -= 1.0

    def _prune(self, now: float) -> None:
        full_after = self.capacity / self.rate
        for key in [k for k, b in self._buckets.items() if now - b.stamp >= full_after]:
            del self._buckets[key]
