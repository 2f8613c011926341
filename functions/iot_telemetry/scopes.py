"""Which devices a rule applies to (its scope) and the values it takes for some of them
(its overrides), with the reasons `iot-telemetry rules check` and GET /rules show.

A selector names devices by id (`device`: exactly; `prefix`; `glob`: `*`, `?`, `[...]`) and
by registry metadata (`metadata`: every key given must equal the device's); every part
given must hold. A rule's `scope` is one selector (none: every device). Its `overrides`
are a list of selectors with values; the first whose selector matches the device gives
its values, the rule's own fill in the rest.
"""

from __future__ import annotations

import fnmatch
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from .telemetry import DEVICE_ID

#: What a prefix may hold: the characters of device ids.
_PREFIX: Final = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
#: A glob: the characters of device ids and fnmatch's `*`, `?`, `[`, `]`, `!`.
_GLOB: Final = re.compile(r"^[A-Za-z0-9._:*?\[\]!-]{1,128}$")
#: A metadata key rules can name (no `.` or `$`: they would be paths and operators in the store).
METADATA_KEY: Final = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{0,63}$")
SELECTOR_FIELDS: Final = ("device", "prefix", "glob", "metadata")
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Selector:
    """Devices named by id and registry metadata; every part given must hold."""

    device: str | None = None
    prefix: str | None = None
    glob: str | None = None
    metadata: tuple[tuple[str, Scalar], ...] = ()

    @property
    def everything(self) -> bool:
        return not (self.device or self.prefix or self.glob or self.metadata)

    def misses(self, device_id: str, metadata: Mapping[str, Any]) -> list[str]:
        """Why the device is not selected (empty: it is)."""
        out = []
        if self.device is not None and device_id != self.device:
            out.append(f"id is not {self.device!r}")
        if self.prefix is not None and not device_id.startswith(self.prefix):
            out.append(f"id does not start with {self.prefix!r}")
        if self.glob is not None and not fnmatch.fnmatchcase(device_id, self.glob):
            out.append(f"id does not match {self.glob!r}")
        for key, want in self.metadata:
            have = metadata.get(key)
            # 1 == True in Python; in metadata they are different values.
            if type(have) is not type(want) and not (
                    isinstance(have, int | float) and isinstance(want, int | float)
                    and not isinstance(have, bool) and not isinstance(want, bool)):
                have_text = "no " + key if key not in metadata else f"{key}={_show(have)}"
                out.append(f"metadata has {have_text}, not {key}={_show(want)}")
            elif have != want:
                out.append(f"metadata has {key}={_show(have)}, not {key}={_show(want)}")
        return out

    def matches(self, device_id: str, metadata: Mapping[str, Any]) -> bool:
        return not self.misses(device_id, metadata)

    def explain(self) -> str:
        """What the selector matched on, e.g. `prefix 'gh-' and metadata location=gh-2`."""
        if self.everything:
            return "all devices"
        parts = []
        if self.device is not None:
            parts.append(f"device {self.device!r}")
        if self.prefix is not None:
            parts.append(f"prefix {self.prefix!r}")
        if self.glob is not None:
            parts.append(f"glob {self.glob!r}")
        parts += [f"metadata {k}={_show(v)}" for k, v in self.metadata]
        return " and ".join(parts)

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {k: getattr(self, k) for k in ("device", "prefix", "glob")
                               if getattr(self, k) is not None}
        if self.metadata:
            out["metadata"] = dict(self.metadata)
        return out


#: The scope of a rule without one.
EVERY_DEVICE: Final = Selector()


def _show(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def parse_selector(item: Any, where: str, problems: list[str]) -> Selector:
    """Check a selector mapping, adding every problem found to `problems`."""
    if not isinstance(item, Mapping) or not item:
        problems.append(f"{where}: must be an object with at least one of "
                        f"{', '.join(SELECTOR_FIELDS)}")
        return Selector()
    problems += [f"{where}.{k}: unknown field (use {', '.join(SELECTOR_FIELDS)})"
                 for k in item if k not in SELECTOR_FIELDS]
    device, prefix, glob = item.get("device"), item.get("prefix"), item.get("glob")
    if device is not None and not (isinstance(device, str) and DEVICE_ID.fullmatch(device)):
        problems.append(f"{where}.device: must be a device id ({DEVICE_ID.pattern})")
    if prefix is not None and not (isinstance(prefix, str) and _PREFIX.fullmatch(prefix)):
        problems.append(f"{where}.prefix: must match {_PREFIX.pattern}")
    if glob is not None and not (isinstance(glob, str) and _GLOB.fullmatch(glob)):
        problems.append(f"{where}.glob: must match {_GLOB.pattern} (device id characters "
                        "and * ? [ ] !)")
    pairs: list[tuple[str, Scalar]] = []
    metadata = item.get("metadata")
    if metadata is not None:
        if not isinstance(metadata, Mapping) or not metadata:
            problems.append(f"{where}.metadata: must be a non-empty object of key: value")
        else:
            for key, value in metadata.items():
                if not isinstance(key, str) or not METADATA_KEY.fullmatch(key):
                    problems.append(f"{where}.metadata: key {key!r} must match "
                                    f"{METADATA_KEY.pattern}")
                elif not isinstance(value, str | int | float) or (
                        isinstance(value, float) and not math.isfinite(value)):
                    problems.append(f"{where}.metadata.{key}: must be a string, a number or "
                                    "a boolean (compared for equality)")
                else:
                    pairs.append((key, value))
    return Selector(device if isinstance(device, str) else None,
                    prefix if isinstance(prefix, str) else None,
                    glob if isinstance(glob, str) else None, tuple(pairs))


@dataclass(frozen=True)
class Override:
    """Values a rule takes for the devices a selector matches."""

    match: Selector
    values: tuple[tuple[str, float], ...]

    def describe(self) -> dict[str, Any]:
        return {"match": self.match.describe(), **dict(self.values)}


def parse_overrides(items: Any, fields: Mapping[str, str], where: str,
                    problems: list[str]) -> tuple[Override, ...]:
    """Check a rule's `overrides`; `fields` maps each overridable field to its check:
    `number`, `positive` (> 0), `nonnegative` (>= 0) or `count` (integer >= 1)."""
    if items is None:
        return ()
    if not isinstance(items, list) or not items:
        problems.append(f"{where}: must be a non-empty list of "
                        '{"match": {...}, <field>: <value>}')
        return ()
    out = []
    for i, item in enumerate(items):
        at = f"{where}[{i}]"
        if not isinstance(item, Mapping):
            problems.append(f"{at}: must be an object")
            continue
        match = parse_selector(item.get("match"), f"{at}.match", problems)
        values: list[tuple[str, float]] = []
        for key, value in item.items():
            if key == "match":
                continue
            check = fields.get(key)
            if check is None:
                problems.append(f"{at}.{key}: cannot be overridden (only "
                                f"{', '.join(fields)})")
            elif _valid(check, value):
                values.append((key, float(value) if check != "count" else int(value)))
            else:
                problems.append(f"{at}.{key}: {_MEANING[check]}")
        if len(item) == 1 and "match" in item:
            problems.append(f"{at}: overrides nothing (give one of {', '.join(fields)})")
        out.append(Override(match, tuple(values)))
    return tuple(out)


_MEANING: Final = {"number": "must be a finite number", "positive": "must be a number > 0",
                   "nonnegative": "must be a number >= 0", "count": "must be an integer >= 1"}


def _valid(check: str, value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return False
    if check == "count":
        return isinstance(value, int) and value >= 1
    return {"number": True, "positive": value > 0, "nonnegative": value >= 0}[check]
