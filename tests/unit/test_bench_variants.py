"""Figure 3's pipeline variants: the aggregate Trigger's order flipped in a copy of eventing/."""

from __future__ import annotations

from pathlib import Path

import pytest

from iot_telemetry.local.eventing import load_eventing
from tests.benchmarks.bench_pipeline import Variant, eventing_for
from tests.benchmarks.common import Context

EVENTING = Path(__file__).resolve().parents[2] / "eventing"


def _orders(path: Path) -> dict[str, bool]:
    return {t.name: t.ordered for t in load_eventing(path).triggers}


@pytest.mark.parametrize("order", ["ordered", "unordered"])
def test_only_the_aggregate_trigger_takes_the_variants_order(tmp_path: Path, order: str) -> None:
    ctx = Context(quick=True, kafka="", mongo="", out_dir=tmp_path)

    copy = eventing_for(ctx, order)

    expected = {**_orders(EVENTING), "aggregate": order == "ordered"}
    assert _orders(copy) == expected
    # The header comment names the annotation too; only the Trigger's own line changes.
    before = (EVENTING / "triggers.yaml").read_text(encoding="utf-8").splitlines()
    after = (copy / "triggers.yaml").read_text(encoding="utf-8").splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert all("delivery.order:" in b and not b.lstrip().startswith("#") for _a, b in changed)


def test_as_is_uses_eventing_itself(tmp_path: Path) -> None:
    ctx = Context(quick=True, kafka="", mongo="", out_dir=tmp_path)

    assert eventing_for(ctx, "as-is") == EVENTING


@pytest.mark.parametrize("text", ["unordered", "sideways:8", "ordered:x", "", "as-is:8:0",
                                  "as-is:8:x"])
def test_a_malformed_variant_is_refused_naming_the_format(text: str) -> None:
    with pytest.raises(ValueError, match="ORDER:THREADS"):
        Variant.parse(text)


def test_a_variant_reads_order_threads_and_partitions() -> None:
    assert Variant.parse("unordered:32") == Variant("unordered", 32)
    assert Variant.parse("as-is:32:12") == Variant("as-is", 32, 12)
    assert Variant.parse("as-is:32:12").label == "as-is:32:12"


def test_a_partitions_variant_changes_only_the_brokers_partitions(tmp_path: Path) -> None:
    ctx = Context(quick=True, kafka="", mongo="", out_dir=tmp_path)

    copy = eventing_for(ctx, "as-is", 12)

    assert load_eventing(copy).broker.partitions == 12
    assert _orders(copy) == _orders(EVENTING)
    before = (EVENTING / "broker.yaml").read_text(encoding="utf-8").splitlines()
    after = (copy / "broker.yaml").read_text(encoding="utf-8").splitlines()
    assert [b for a, b in zip(before, after, strict=True) if a != b] == [
        '  default.topic.partitions: "12"']
