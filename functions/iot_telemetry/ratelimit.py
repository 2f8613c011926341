"""Token buckets per device (events) or per client (failed authentications)."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Mapping
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
        return self.take_all({device_id: events}, now)[1]

    def take_all(self, events: Mapping[str, int], now: float | None = None) -> tuple[str, int]:
        """Spend each device's events only if every device has them: ("", 0); otherwise
        spend nothing and return the first device refused and seconds until it would pass.

        A request is accepted or refused whole, so a refused one must not have used up
        tokens of the devices that came before the one that failed.
        """
        now = time.monotonic() if now is None else now
        with self._lock:
            refilled = {device_id: self._refilled(device_id, now) for device_id in events}
            for device_id, count in events.items():
                tokens, at = refilled[device_id]
                if count > tokens:
                    self._buckets.update(refilled)
                    missing = min(count, self.burst) - tokens
                    return device_id, max(1, math.ceil(missing / self.rate))
            if len(self._buckets) + len(events) > _MAX_DEVICES:
                self._buckets.clear()
            for device_id, count in events.items():
                tokens, at = refilled[device_id]
                self._buckets[device_id] = (tokens - count, at)
            return "", 0

    def refund(self, events: Mapping[str, int], now: float | None = None) -> None:
        """Give back what take_all spent for a request that was not written after all."""
        now = time.monotonic() if now is None else now
        with self._lock:
            for device_id, count in events.items():
                tokens, at = self._refilled(device_id, now)
                self._buckets[device_id] = (min(self.burst, tokens + count), at)

    def _refilled(self, device_id: str, now: float) -> tuple[float, float]:
        tokens, at = self._buckets.get(device_id, (self.burst, now))
        # A thread that read the clock before another one took the lock sees `now`
        # earlier than the bucket's time: no refill then, rather than a negative one.
        now = max(now, at)
        return min(self.burst, tokens + (now - at) * self.rate), now
