"""Figure 2's raw pymongo reference: the served function's store calls, replayed as made."""

from __future__ import annotations

import threading
from typing import Any

from tests.benchmarks.bench_consumers import replay_streams
from tests.benchmarks.store_recording import Op, Recorder, RecordingDatabase


class _Collection:
    def __init__(self, name: str) -> None:
        self.name = name

    def update_one(self, *args: Any, **kwargs: Any) -> str:
        return f"updated {self.name}"

    def find_one(self, *args: Any, **kwargs: Any) -> None:
        return None


class _Database:
    def __getitem__(self, name: str) -> _Collection:
        return _Collection(name)

    def command(self, *args: Any, **kwargs: Any) -> dict[str, int]:
        return {"ok": 1}


def _op(number: int) -> Op:
    return (number, "rollup_hours", "update_one", ({"_id": number},), {})


def test_aggregate_replays_its_batches_as_the_one_sequence_its_group_commit_ran() -> None:
    events = [[({"id": "a1"}, {}), ({"id": "a2"}, {})], [({"id": "b1"}, {})]]
    # b1 led the first batch (a1 went in it), a2 the second.
    calls = {"a1": [], "b1": [_op(0), _op(1)], "a2": [_op(2)]}

    assert replay_streams("aggregate", events, calls) == [[[_op(0), _op(1)], [_op(2)]]]


def test_alert_replays_each_threads_events_in_order() -> None:
    events = [[({"id": "a1"}, {}), ({"id": "a2"}, {})], [({"id": "b1"}, {})]]
    calls = {"a2": [_op(3)], "a1": [_op(0)], "b1": [_op(1), _op(2)]}

    assert replay_streams("alert", events, calls) == [
        [[_op(0)], [_op(3)]], [[_op(1), _op(2)]]]


def test_a_deliverys_calls_are_recorded_on_its_thread_numbered_across_threads() -> None:
    recorder = Recorder()
    db = RecordingDatabase(_Database(), recorder)
    db["before"].update_one({"_id": 0}, {})  # outside any delivery: not recorded
    mine = recorder.begin()
    assert db["rollup_hours"].update_one({"_id": 1}, {"$inc": {"v": 1}}) == "updated rollup_hours"
    theirs: list[Op] = []

    def other() -> None:
        theirs.extend(recorder.begin())
        db.command("ping")
        theirs.extend(recorder.local.ops)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    db["devices"].find_one({"_id": "d"})

    assert [(c, m, a) for _, c, m, a, _ in mine] == [
        ("rollup_hours", "update_one", ({"_id": 1}, {"$inc": {"v": 1}})),
        ("devices", "find_one", ({"_id": "d"},))]
    assert [(c, m, a) for _, c, m, a, _ in theirs] == [("", "command", ("ping",))]
    assert [n for n, *_ in mine] == [0, 2] and theirs[0][0] == 1
