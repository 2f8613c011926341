"""PingSources of eventing/ played on their schedules: one event into the Broker per tick.

Shared by the in-memory broker and the real-mode dispatcher. Like Knative's PingSource
adapter, a tick the Broker cannot take is logged and dropped, not queued: the next tick
does the same work (a sweep sweeps up to its own time).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from .manifests import Ping

log = logging.getLogger(__name__)

#: Put one event into the Broker (raises when the Broker cannot take it).
Publish = Callable[[dict[str, Any], Any], None]
#: Longest sleep between two looks at the clock (seconds): a clock that jumps (tests, a
#: suspended laptop) is noticed within this.
_MAX_SLEEP = 1.0


class PingPlayer:
    """Publishes each PingSource's event at each time of its schedule, on its own thread."""

    def __init__(self, pings: Sequence[Ping], publish: Publish, stop: threading.Event, *,
                 clock: Callable[[], float] = time.time) -> None:
        self._pings = tuple(pings)
        self._publish = publish
        self._stop = stop
        self._clock = clock
        self._thread = threading.Thread(target=self._run, name="pingsources", daemon=True)

    def start(self) -> None:
        if self._pings:
            self._thread.start()

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _run(self) -> None:
        now = self._now()
        due = [p.schedule.next_after(now) for p in self._pings]
        while not self._stop.is_set():
            now = self._now()
            for i, ping in enumerate(self._pings):
                if due[i] <= now:
                    self.fire(ping, due[i])
                    due[i] = ping.schedule.next_after(now)
            wait = min(due) - self._now()
            self._stop.wait(min(_MAX_SLEEP, max(0.0, wait.total_seconds())))

    def fire(self, ping: Ping, at: datetime) -> None:
        """Publish the event of `ping`'s tick at `at` (a fresh id, as Knative gives each)."""
        attributes, data = ping.event(at, str(uuid.uuid4()))
        try:
            self._publish(attributes, data)
        except Exception as exc:
            log.warning("PingSource tick dropped: the Broker did not take it", extra={
                "pingsource": ping.name, "time": attributes["time"],
                "error": f"{type(exc).__name__}: {exc}"})
            return
        log.debug("PingSource tick", extra={"pingsource": ping.name,
                                            "event_id": attributes["id"],
                                            "time": attributes["time"]})
