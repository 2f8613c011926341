"""Alert rules: what violates a threshold, what clears it, and how long before raising; and
offline rules: how long a device may stay silent. Each may be scoped to some devices and
take other values for some (scopes.py); `verdict` says what a rule is for one device."""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Final

from .scopes import EVERY_DEVICE, Override, Selector, parse_overrides, parse_selector

CONDITIONS: Final[dict[str, Callable[[float, float], bool]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}
SEVERITIES: Final = ("warning", "critical")
#: The condition of a rule on silence rather than on readings.
OFFLINE: Final = "offline"
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
    scope: Selector = EVERY_DEVICE
    overrides: tuple[Override, ...] = ()

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
            "for_seconds": self.for_seconds, **_scoping(self),
        }


@dataclass(frozen=True)
class OfflineRule:
    """A device silent for longer than `for_seconds` is offline (None: DEVICE_STALE_SECONDS)."""

    name: str
    severity: str
    for_seconds: float | None = None
    scope: Selector = EVERY_DEVICE
    overrides: tuple[Override, ...] = ()

    #: Offline alerts have no metric: what they watch is the device's last report.
    condition: ClassVar[str] = OFFLINE
    metric: ClassVar[None] = None

    def window(self, default: float) -> float:
        """Seconds of silence before the device is offline."""
        return self.for_seconds if self.for_seconds is not None else float(default)

    def describe(self) -> dict[str, Any]:
        """The rule as ALERT_RULES writes it."""
        window = {} if self.for_seconds is None else {"for_seconds": self.for_seconds}
        return {"name": self.name, "condition": OFFLINE, "severity": self.severity, **window,
                **_scoping(self)}


def _scoping(rule: AlertRule | OfflineRule) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if not rule.scope.everything:
        out["scope"] = rule.scope.describe()
    if rule.overrides:
        out["overrides"] = [o.describe() for o in rule.overrides]
    return out


def _number(item: Mapping[str, Any], key: str, where: str, problems: list[str]) -> float | None:
    value = item.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        problems.append(f"{where}.{key}: must be a finite number")
        return None
    return float(value)


def parse_offline_rule(item: Mapping[str, Any], where: str = "rule") -> OfflineRule:
    """Check one `"condition": "offline"` rule; raise ValueError listing every problem."""
    problems: list[str] = []
    known = {"name", "condition", "severity", "for_seconds", "scope", "overrides"}
    problems += [f"{where}.{k}: not used by offline rules" if k in _THRESHOLD_FIELDS
                 else f"{where}.{k}: unknown field" for k in item if k not in known]
    name = item.get("name")
    if not isinstance(name, str) or not RULE_NAME.match(name):
        problems.append(f"{where}.name: must match {RULE_NAME.pattern}")
    severity = item.get("severity", "warning")
    if severity not in SEVERITIES:
        problems.append(f"{where}.severity: must be one of {', '.join(SEVERITIES)}")
    window = item.get("for_seconds")
    if window is not None and (isinstance(window, bool) or not isinstance(window, int | float)
                               or not 0 < window < math.inf):
        problems.append(f"{where}.for_seconds: must be a number > 0 (seconds of silence; "
                        "leave it out for DEVICE_STALE_SECONDS)")
    scope = (Selector() if "scope" not in item
             else parse_selector(item["scope"], f"{where}.scope", problems))
    overrides = parse_overrides(item.get("overrides"), {"for_seconds": "positive"},
                                f"{where}.overrides", problems)
    if problems:
        raise ValueError("; ".join(problems))
    return OfflineRule(str(name), str(severity), None if window is None else float(window),
                       scope, overrides)


_THRESHOLD_FIELDS: Final = frozenset({"metric", "threshold", "clear_threshold", "for_count"})
#: A rule of either kind, as ALERT_RULES holds them.
Rule = AlertRule | OfflineRule


def parse_rule(item: Any, where: str = "rule") -> Rule:
    """Check one rule mapping; raise ValueError listing every problem."""
    if not isinstance(item, Mapping):
        raise ValueError(f"{where}: must be an object")
    if item.get("condition") == OFFLINE:
        return parse_offline_rule(item, where)
    problems: list[str] = []
    known = {"name", "metric", "condition", "threshold", "severity", "clear_threshold",
             "for_count", "for_seconds", "scope", "overrides"}
    problems += [f"{where}.{k}: unknown field" for k in item if k not in known]
    name, metric = item.get("name"), item.get("metric")
    if not isinstance(name, str) or not RULE_NAME.fullmatch(name):
        problems.append(f"{where}.name: must match {RULE_NAME.pattern}")
    if not isinstance(metric, str) or not METRIC_NAME.fullmatch(metric):
        problems.append(f"{where}.metric: must match {METRIC_NAME.pattern}")
    condition = item.get("condition")
    if condition not in CONDITIONS:
        problems.append(f"{where}.condition: must be one of {', '.join(CONDITIONS)}, {OFFLINE}")
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
    scope = (Selector() if "scope" not in item
             else parse_selector(item["scope"], f"{where}.scope", problems))
    overrides = parse_overrides(item.get("overrides"), _OVERRIDABLE, f"{where}.overrides",
                                problems)
    if threshold is not None and clear is not None and condition in CONDITIONS:
        _check_hysteresis(str(condition), threshold, clear, f"{where}.clear_threshold",
                          detail="", problems=problems)
        if "clear_threshold" not in item:
            # The clear threshold defaults to the threshold, also an overridden one.
            overrides = tuple(
                replace(o, values=(*o.values, ("clear_threshold", dict(o.values)["threshold"])))
                if "threshold" in dict(o.values) and "clear_threshold" not in dict(o.values)
                else o for o in overrides)
        for i, o in enumerate(overrides):
            values = dict(o.values)
            if "threshold" not in values and "clear_threshold" not in values:
                continue
            t = values.get("threshold", threshold)
            c = values.get("clear_threshold", clear)
            _check_hysteresis(str(condition), t, c, f"{where}.overrides[{i}].clear_threshold",
                              detail=f" (threshold {t:g}, clear_threshold {c:g}: give both)",
                              problems=problems)
    if problems:
        raise ValueError("; ".join(problems))
    assert threshold is not None and clear is not None
    return AlertRule(str(name), str(metric), str(condition), threshold, str(severity), clear,
                     int(for_count), float(for_seconds), scope, overrides)


#: What an override may change on a threshold rule, and how each is checked.
_OVERRIDABLE: Final = {"threshold": "number", "clear_threshold": "number",
                       "for_count": "count", "for_seconds": "nonnegative"}


def _check_hysteresis(condition: str, threshold: float, clear: float, where: str, *,
                      detail: str, problems: list[str]) -> None:
    rising = condition in (">", ">=")
    if (rising and clear > threshold) or (not rising and clear < threshold):
        side = "above" if rising else "below"
        problems.append(f"{where}: must not be {side} the threshold (hysteresis){detail}")


def parse_rules(items: Any) -> tuple[Rule, ...]:
    """Check a JSON list of rules; names must be unique."""
    if not isinstance(items, list):
        raise ValueError("alert rules must be a JSON list of objects")
    problems: list[str] = []
    rules: list[Rule] = []
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


def default_rules() -> tuple[Rule, ...]:
    """Temperature and humidity rules for indoor sensors, as the seed's workers had, and an
    offline rule after DEVICE_STALE_SECONDS of silence."""
    return parse_rules([
        {"name": "temperature-high", "metric": "temperature", "condition": ">",
         "threshold": 30.0, "clear_threshold": 28.0, "severity": "warning", "for_count": 3},
        {"name": "temperature-critical", "metric": "temperature", "condition": ">=",
         "threshold": 40.0, "clear_threshold": 37.0, "severity": "critical"},
        {"name": "humidity-high", "metric": "humidity", "condition": ">",
         "threshold": 80.0, "clear_threshold": 75.0, "severity": "warning", "for_count": 3},
        {"name": "humidity-low", "metric": "humidity", "condition": "<",
         "threshold": 20.0, "clear_threshold": 25.0, "severity": "warning", "for_count": 3},
        {"name": "device-offline", "condition": OFFLINE, "severity": "warning"},
    ])


@dataclass(frozen=True)
class Verdict:
    """What one rule is for one device: whether it applies, why, and with which values."""

    #: The rule with the device's values (overrides applied); as configured if it does not apply.
    rule: Rule
    applies: bool
    #: Why it applies (`all devices`, `prefix 'gh-'`...) or why not.
    reason: str
    #: Index of the override that gave values, and what it changed: field -> (rule's, device's).
    override: int | None = None
    changed: tuple[tuple[str, float | None, float], ...] = ()


def needs_metadata(rule: Rule) -> bool:
    """Whether deciding the rule for a device takes the device's registry metadata."""
    return bool(rule.scope.metadata) or any(o.match.metadata for o in rule.overrides)


def verdict(rule: Rule, device_id: str, metadata: Mapping[str, Any]) -> Verdict:
    """Precedence: the scope decides whether the rule applies; then the first override whose
    selector matches gives its values; the rule's own values fill in the rest."""
    misses = rule.scope.misses(device_id, metadata)
    if misses:
        return Verdict(rule, False, f"scope {rule.scope.explain()}: {'; '.join(misses)}")
    reason = rule.scope.explain()
    for i, o in enumerate(rule.overrides):
        if o.match.matches(device_id, metadata):
            values = dict(o.values)
            changed = tuple((k, getattr(rule, k), v) for k, v in o.values
                            if getattr(rule, k) != v)
            effective: Rule = replace(rule, **values)  # type: ignore[arg-type]
            return Verdict(effective, True, reason, i, changed)
    return Verdict(rule, True, reason)
