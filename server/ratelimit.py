"""Per-user token buckets: one user cannot flood the feedback log.

`rate` events per second sustained, `burst` at once. Buckets of users idle
long enough to be full again are dropped, so memory follows active users.
"""

from __future__ import annotations

import time


class RateLimiter:
    def __init__(self, rate: float, burst: float, max_users: int = 100_000) -> None:
        self.rate = rate
        self.burst = burst
        self.max_users = max_users
        self._buckets: dict[str, tuple[float, float]] = {}  # user -> (tokens, last time)

    def allow(self, user: str, now: float | None = None) -> bool:
        if self.rate <= 0:
            return True
        now = time.monotonic() if now is None else now
        tokens, last = self._buckets.get(user, (self.burst, now))
        tokens = min(self.burst, tokens + (now - last) * self.rate)
        if tokens < 1.0:
            self._buckets[user] = (tokens, now)
            return False
        self._buckets[user] = (tokens - 1.0, now)
        if len(self._buckets) > self.max_users:
            self._evict(now)
        return True

    def _evict(self, now: float) -> None:
        full_after = self.burst / self.rate
        self._buckets = {u: (t, last) for u, (t, last) in self._buckets.items() if now - last < full_after}
