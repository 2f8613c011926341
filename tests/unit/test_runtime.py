"""The runtime's clients: built once, on first use, whichever threads ask at once."""

from __future__ import annotations

import threading
import time

from iot_telemetry.store import Store
from tests.conftest import make_runtime


def test_two_threads_building_clients_that_need_each_other_do_not_wait_for_good(
        monkeypatch) -> None:
    """aggregate's first delivery builds `rollups` (which needs the store and `event_times`)
    while alert's builds `event_times`: with a lock per attribute plus the runtime's lock
    (functools.cached_property), each held what the other waited for, and both hung."""
    rt = make_runtime()
    build_store = Store.__init__

    def slow_store(self: Store, settings: object) -> None:
        time.sleep(0.3)  # the second thread asks while the first is building
        build_store(self, settings)  # type: ignore[arg-type]

    monkeypatch.setattr(Store, "__init__", slow_store)
    got: dict[str, object] = {}
    first = threading.Thread(target=lambda: got.update(rollups=rt.rollups), daemon=True)
    second = threading.Thread(target=lambda: got.update(event_times=rt.event_times),
                              daemon=True)
    first.start()
    time.sleep(0.1)
    second.start()
    first.join(10)
    second.join(10)
    assert not first.is_alive() and not second.is_alive(), "the runtime's clients deadlocked"
    assert got["rollups"] is rt.rollups and got["event_times"] is rt.event_times
    assert rt.store is rt.store  # built once
