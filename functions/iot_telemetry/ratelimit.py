"""Token buckets per device (events) or per client (failed authentications)."""

from __future__ import annotations

import math
import threading
import time
from typing import Final

_MAX_DEVICES: Final = 200_000


class RateLimiter:
    """`rate` events per second with bursts up to `burst`, per device, in this process."""

    def __init__(self, rate: float, burst: int) -> None:
        self.rate, self.burst = rate, float(burst)
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def wait(self, key: str, now: float | None = None) -> int:
        """Seconds until one event would be allowed for `key` (0: now), spending nothing."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + max(0.0, now - at) * self.rate)
            return 0 if tokens >= 1 else max(1, math.ceil((1 - tokens) / self.rate))

    def take(self, device_id: str, events: int, now: float | None = None) -> int:
        """Spend `events`; return 0 if allowed, else seconds until they would be."""
        now = time.monotonic() if now is None else now
        with self._lock:
            tokens, at = self._buckets.get(device_id, (self.burst, now))
            # A thread that read the clock before another one took the lock sees `now`
            # earlier than the bucket's time: no refill then, rather than a negative one.
            now = max(now, at)
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if events > tokens:
                self._buckets[device_id] = (tokens, now)
                missing = min(events, self.burst) - tokens
                return max(1, math.ceil(missing / self.rate))
            if len(self._buckets) >= _MAX_DEVICES:
                self._buckets.clear()
            self._buckets[device_id] = (tokens - events, now)
            return 0
