"""Offline sweeps on mongo-java-server: caps page instead of truncating, a redelivered tick
answers what its first delivery raised, and the fix-up of wrongly raised alerts reaches
every open alert, with their progress and journals in the store."""

from __future__ import annotations

import pytest

from iot_telemetry import offline
from iot_telemetry.store import SWEEPS
from tests.integration.test_core_on_real_services import real_runtime
from tests.unit.test_offline_sweeps import (
    FlakySink,
    flaky_sink,  # noqa: F401 (fixture)
    redelivered_ticks_answer_their_raises,
    wrongly_raised_alerts_are_all_resolved,
)

pytestmark = pytest.mark.integration


def test_redelivered_and_capped_ticks_on_the_real_store(
        mongo_url, mongo_db, flaky_sink: FlakySink, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setattr(offline, "PAGE_SIZE", 2)
    monkeypatch.setattr(offline, "MAX_RAISES", 3)
    runtimes = []

    def make(**env: str):
        runtimes.append(real_runtime(mongo_url, mongo_db, **env))
        return runtimes[-1]

    redelivered_ticks_answer_their_raises(make, flaky_sink)
    journals = list(runtimes[-1].store.collection(SWEEPS).find({"kind": "tick"}))
    assert sorted(j["_id"].rsplit("\x1f", 1)[1] for j in journals) == [
        "tick-1", "tick-2", "tick-3"]
    assert all(j["done"] for j in journals)


def test_the_fix_up_pages_through_every_open_alert_on_the_real_store(
        mongo_url, mongo_db, flaky_sink: FlakySink, monkeypatch) -> None:  # noqa: F811
    monkeypatch.setattr(offline, "PAGE_SIZE", 10)
    monkeypatch.setattr(offline, "FIXUP_CHECKS", 20)
    monkeypatch.setattr(offline, "MAX_RAISES", 1000)
    wrongly_raised_alerts_are_all_resolved(
        lambda **env: real_runtime(mongo_url, mongo_db, **env), flaky_sink, 59, ticks=3)
