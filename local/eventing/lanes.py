"""What the dispatcher's readers hand records to: a lane per consumer group and partition."""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from .kafka_clients import Stopped

log = logging.getLogger("iot_telemetry.local.dispatcher")

#: Handles items of one partition in order; calls done(next_offset) as each is finished.
Process = Callable[[list[Any], Callable[[int], None], threading.Event], None]


class Part(NamedTuple):
    """A partition of a topic."""

    topic: str
    partition: int


class Fetched(NamedTuple):
    """A fetched record (what kafka-python's ConsumerRecord held, as plain fields)."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    headers: tuple[tuple[str, bytes], ...]


class Lane:
    """One consumer group's share of one partition, handled in offset order on its own thread.

    The reader hands it the records its group's filter takes, and with each hand-off the
    offset up to which the partition was read: records the filter rejected are done once
    everything queued before them is, so the group's committed offset moves past them too.
    """

    def __init__(self, name: str, process: Process, first: int) -> None:
        self.name = name
        #: Records below it were done by this group before this session: not handed again.
        self.first = first
        #: Off the shared fetch (its lane was full): its group's catch-up reader feeds it from
        #: `resume_at` until it is back where the shared fetch is. Both change under the
        #: reader's hand-off lock only.
        self.detached = False
        self.resume_at = first
        self._process = process
        self._queue: deque[Any] = deque()  # records, and ints: "done up to here"
        self._pending = 0  # records queued or being handled
        self._busy = False
        self._cond = threading.Condition()
        self.stop = threading.Event()
        self._done: int | None = None
        self._committed: int | None = None
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def put(self, records: list[Any], upto: int) -> None:
        """Queue `records` (in offset order), all of this group's below `upto`."""
        with self._cond:
            if not records and not self._pending:
                # Nothing of this group's in front: the rejected records are done now,
                # without waking the thread.
                if self._done is None or upto > self._done:
                    self._done = upto
                return
            self._queue.extend(records)
            self._queue.append(upto)
            self._pending += len(records)
            if not self._busy:
                self._cond.notify()

    @property
    def queued(self) -> int:
        """Records handed to this lane and not yet done."""
        with self._cond:
            return self._pending

    def take_done(self) -> int | None:
        """The next offset to commit if it moved since the last call."""
        with self._cond:
            if self._done is None or self._done == self._committed:
                return None
            return self._done

    def committed(self, offset: int) -> None:
        with self._cond:
            self._committed = offset

    def _mark(self, offset: int) -> None:
        with self._cond:
            if self._done is None or offset > self._done:
                self._done = offset

    def _run(self) -> None:
        while not self.stop.is_set():
            with self._cond:
                # No timeout: a put() or shutdown() notifies; an idle lane costs no wake-ups.
                while not self._queue and not self.stop.is_set():
                    self._cond.wait()
                if self.stop.is_set():
                    return
                batch = [r for r in self._queue if not isinstance(r, int)]
                upto = max(m for m in self._queue if isinstance(m, int))
                self._queue.clear()
                self._busy = True
            taken = len(batch)
            delay = 1.0
            while not self.stop.is_set():
                try:
                    if batch:
                        self._process(batch, self._mark, self.stop)
                    self._mark(upto)
                    break
                except Stopped:
                    return
                except Exception:
                    # A bug, not a bad event: hold the partition rather than skip a record.
                    log.exception("record handling failed; retrying the same record",
                                  extra={"worker": self.name, "retry_in_seconds": delay})
                    done = self._done
                    batch = [r for r in batch if done is None or r.offset >= done]
                    self.stop.wait(delay)
                    delay = min(delay * 2, 30.0)
            with self._cond:
                self._busy = False
                self._pending -= taken

    def shutdown(self, timeout: float) -> None:
        self.stop.set()
        with self._cond:
            self._cond.notify_all()
        self._thread.join(timeout)


@dataclass
class Group:
    """A consumer group reading through the shared reader: the KafkaSource or one Trigger."""

    name: str
    group_id: str
    topics: tuple[str, ...]
    offset_reset: str
    process: Process
    #: Whether a (prepared) record is this group's to handle; the rest are only committed.
    wants: Callable[[Any], bool]
    lanes: dict[Any, Lane] = field(default_factory=dict)

    @property
    def queued(self) -> int:
        return sum(lane.queued for lane in list(self.lanes.values()))


#: Turns one topic's fetched records into what the groups' `wants` and `process` take.
Prepare = Callable[[list[Any]], list[Any]]
