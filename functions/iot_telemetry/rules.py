"""Alert rules: what violates a threshold, what clears it, and how long before raising."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

CONDITIONS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
SEVERITIES: Final = ("warning", "critical")
RULE_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
METRIC_NAME: Final = re.compile(r"^[a-z][a-z0-9_]{0,63}$")


@dataclass(frozen=True)
class AlertRule:
    """A threshold rule with hysteresis, evaluated per device and metric."""

    name: str
    metric: str
    condition: str
    threshold: float
    severity: str
    clear_threshold: float
    for_count: int = 1
    for_seconds: float = 0.0

    @property
    def rising(self) -> bool:
        """True when the rule fires on high values (>, >=)."""
        return self.condition in (">", ">=")

    def violates(self, value: float) -> bool:
        return CONDITIONS[self.condition](value, self.threshold)

    def clears(self, value: float) -> bool:
        """Whether a reading ends an open alert; between the two thresholds it stays open.

        A reading clears only when it would not violate the rule's condition at the clear
        threshold, so with the default clear threshold (the threshold itself) a reading
        exactly at 40 keeps a `>= 40` alert open instead of both violating and clearing.
        """
        return not CONDITIONS[self.condition](value, self.clear_threshold)

    def worse(self, a: float, b: float) -> float:
        """The more extreme of two readings in the direction of the rule (the peak)."""
        return max(a, b) if self.rising else min(a, b)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name, "metric": self.metric, "condition": self.condition,
            "threshold": self.threshold, "clear_threshold": self.clear_threshold,
            "severity": self.severity, "for_count": self.for_count,
            "for_seconds": self.for_seconds,
        }


def _number(item: Mapping[str, Any], key: str, where: str, problems: list[str]) -> float | None:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"{where}.{key}: must be a finite number")
        return None
    return float(value)


def parse_rule(item: Any, where: str = "rule") -> AlertRule:
    """Check one rule mapping; raise ValueError listing every problem."""
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: must be an object")
    problems: list[str] = []
    known = {"name", "metric", "condition", "threshold", "severity", "clear_threshold",
             "for_count", "for_seconds"}
    problems += [f"{where}.{k}: unknown field" for k in item if k not in known]
    name, metric = item.get("name"), item.get("metric")
    if not isinstance(name, str) or not RULE_NAME.fullmatch(name):
        problems.append(f"{where}.name: must match {RULE_NAME.pattern}")
    if not isinstance(metric, str) or not METRIC_NAME.fullmatch(metric):
        problems.append(f"{where}.metric: must match {METRIC_NAME.pattern}")
    condition = item.get("condition")
    if condition not in CONDITIONS:
        problems.append(f"{where}.condition: must be one of {', '.join(CONDITIONS)}")
    severity = item.get("severity", "warning")
    if severity not in SEVERITIES:
        problems.append(f"{where}.severity: must be one of {', '.join(SEVERITIES)}")
    threshold = _number(item, "threshold", where, problems)
    clear = threshold if "clear_threshold" not in item else _number(
        item, "clear_threshold", where, problems)
    for_count = item.get("for_count", 1)
    if isinstance(for_count, bool) or not isinstance(for_count, int) or for_count < 1:
        problems.append(f"{where}.for_count: must be an integer >= 1")
    for_seconds = item.get("for_seconds", 0)
    if isinstance(for_seconds, bool) or not isinstance(for_seconds, int | float) or not (
        0 <= for_seconds < math.inf
    ):
        problems.append(f"{where}.for_seconds: must be a number >= 0")
    if threshold is not None and clear is not None and condition in CONDITIONS:
        rising = condition in (">", ">=")
        if (rising and clear > threshold) or (not rising and clear < threshold):
            side = "above" if rising else "below"
            problems.append(
                f"{where}.clear_threshold: must not be {side} the threshold (hysteresis)")
    if problems:
        raise ValueError("; ".join(problems))
    assert threshold is not None and clear is not None
    return AlertRule(str(name), str(metric), str(condition), threshold, str(severity), clear,
                     int(for_count), float(for_seconds))


def parse_rules(items: Any) -> tuple[AlertRule, ...]:
    """Check a JSON list of rules; names must be unique."""
    if not isinstance(items, list):
        raise ValueError("alert rules must be a JSON list of objects")
    problems: list[str] = []
    rules: list[AlertRule] = []
    for i, item in enumerate(items):
        try:
            rules.append(parse_rule(item, f"rules[{i}]"))
        except ValueError as exc:
            problems.append(str(exc))
    names = [r.name for r in rules]
    problems += [f"rule name {n!r} is used twice" for n in sorted(set(names))
                 if names.count(n) > 1]
    if problems:
        raise ValueError("; ".join(problems))
    return tuple(rules)


def default_rules() -> tuple[AlertRule, ...]:
    """Temperature and humidity rules for indoor sensors, as the seed's workers had."""
    return parse_rules([
        {"name": "temperature-high", "metric": "temperature", "condition": ">",
         "threshold": 30.0, "clear_threshold": 28.0, "severity": "warning", "for_count": 3},
        {"name": "temperature-critical", "metric": "temperature", "condition": ">=",
         "threshold": 40.0, "clear_threshold": 37.0, "severity": "critical"},
        {"name": "humidity-high", "metric": "humidity", "condition": ">",
         "threshold": 80.0, "clear_threshold": 75.0, "severity": "warning", "for_count": 3},
        {"name": "humidity-low", "metric": "humidity", "condition": "<",
         "threshold": 20.0, "clear_threshold": 25.0, "severity": "warning", "for_count": 3},
    ])
