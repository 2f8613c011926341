"""`iot-telemetry rules check DEVICE`: which rules apply to a device, why, with which values."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from iot_telemetry.rules import AlertRule, OfflineRule, Rule, verdict

PRECEDENCE = ("precedence: a rule applies if its scope selects the device (none: every "
              "device); then the first of its overrides that matches gives its values, the "
              "rule's own fill in the rest")


def _number(value: float | None) -> str:
    return "DEVICE_STALE_SECONDS" if value is None else f"{value:g}"


def _summary(rule: Rule, default_window: float) -> str:
    if isinstance(rule, OfflineRule):
        window = rule.window(default_window)
        source = "" if rule.for_seconds is not None else " (DEVICE_STALE_SECONDS)"
        return f"offline after {window:g} s of silence{source}, {rule.severity}"
    assert isinstance(rule, AlertRule)
    held = [f"{rule.for_count} readings"] if rule.for_count > 1 else []
    held += [f"for {rule.for_seconds:g} s"] if rule.for_seconds else []
    return (f"{rule.metric} {rule.condition} {rule.threshold:g} (clears at "
            f"{rule.clear_threshold:g}), {rule.severity}" + "".join(f", {h}" for h in held))


def report(device_id: str, metadata: Mapping[str, Any], rules: Sequence[Rule],
           default_window: float, source: str) -> str:
    """The text `rules check` prints."""
    lines = [f"{device_id}: metadata {json.dumps(dict(metadata), sort_keys=True)} ({source})",
             PRECEDENCE, "", "applies:"]
    skipped = []
    for rule in rules:
        v = verdict(rule, device_id, metadata)
        if not v.applies:
            skipped.append(f"  {rule.name:<22} {v.reason}")
            continue
        lines.append(f"  {rule.name:<22} {_summary(v.rule, default_window)}")
        lines.append(f"  {'':<22} matched by {v.reason}")
        if v.override is not None:
            match = rule.overrides[v.override].match.explain()
            changes = ", ".join(f"{k} {_number(before)} -> {after:g}"
                                for k, before, after in v.changed) or "no value changed"
            lines.append(f"  {'':<22} override #{v.override} ({match}): {changes}")
    if len(lines) == 4:
        lines.append("  (none)")
    lines += ["", "does not apply:", *(skipped or ["  (none)"])]
    return "\n".join(lines)
