"""Group commit: the requests one process has in flight share their store round trips."""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

#: Most items one batch carries (bounds one bulk command and its reply).
MAX_BATCH: Final = 256


@dataclass(eq=False)
class _Slot(Generic[T]):
    item: T
    result: object = None
    finished: bool = False
    lead: bool = False


class GroupCommit(Generic[T, R]):
    """Runs `run` over the items submitted while a previous batch was running.

    The first caller runs its item at once (no added latency when idle); callers arriving
    meanwhile queue up, and when the batch in progress ends the oldest of them runs the
    whole queue as the next batch. `run` returns one result per item, or an exception for
    the items whose own work failed, so a failed write fails only its own requests; an
    exception raised by `run` itself fails every item of that batch.
    """

    def __init__(self, run: Callable[[Sequence[T]], Sequence[R | Exception]],
                 max_batch: int = MAX_BATCH) -> None:
        self._run = run
        self._max = max_batch
        self._cond = threading.Condition()
        self._queue: list[_Slot[T]] = []
        self._busy = False

    def submit(self, item: T) -> R:
        """Run `item` (with whatever else is pending) and return its result, or raise."""
        with self._cond:
            lone = not self._busy
            if lone:
                self._busy = True
        if lone:
            return self._alone(item)
        slot = _Slot(item)
        with self._cond:
            self._queue.append(slot)
            if not self._busy:
                self._busy = slot.lead = True
            while not (slot.lead or slot.finished):
                self._cond.wait()
        if not slot.finished:
            self._lead()
        if isinstance(slot.result, BaseException):
            raise slot.result
        return slot.result  # type: ignore[return-value]

    def _alone(self, item: T) -> R:
        """Nothing in flight: run `item` as a batch of one, with no slot or queue (what most
        deliveries find at a modest rate), then hand the queue that formed meanwhile on."""
        try:
            results: Sequence[object] = self._run([item])
            if len(results) != 1:
                raise RuntimeError(f"group commit: {len(results)} results for 1")
        finally:
            with self._cond:
                if self._queue:
                    self._queue[0].lead = True
                    self._cond.notify_all()
                else:
                    self._busy = False
        result = results[0]
        if isinstance(result, BaseException):
            raise result
        return result  # type: ignore[return-value]

    def _lead(self) -> None:
        with self._cond:
            batch, self._queue = self._queue[:self._max], self._queue[self._max:]
        try:
            results: Sequence[object] = self._run([s.item for s in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"group commit: {len(results)} results for {len(batch)}")
        except BaseException as exc:  # never leave the waiting callers stuck
            results = [exc] * len(batch)
        with self._cond:
            for slot, result in zip(batch, results, strict=True):
                slot.result, slot.finished = result, True
            if self._queue:
                self._queue[0].lead = True
            else:
                self._busy = False
            self._cond.notify_all()
