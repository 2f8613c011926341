"""Trigger filters of the eventing/ manifests: `spec.filter.attributes` and the
`spec.filters` dialects (exact, prefix, suffix, all, any, not)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

# --- filters --------------------------------------------------------------------------------

class Filter(Protocol):
    def matches(self, attributes: Mapping[str, Any]) -> bool:
        """Whether an event with these context attributes passes."""


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else str(value)


@dataclass(frozen=True)
class AttributesFilter:
    """`spec.filter.attributes`: all equal; an empty value means "present, any value"."""

    attributes: tuple[tuple[str, str], ...]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        for name, wanted in self.attributes:
            value = attributes.get(name)
            if value is None or (wanted == "" and _text(value) == ""):
                return False
            if wanted != "" and _text(value) != wanted:
                return False
        return True


@dataclass(frozen=True)
class ExactFilter:
    attributes: tuple[tuple[str, str], ...]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return all(name in attributes and _text(attributes[name]) == wanted
                   for name, wanted in self.attributes)


@dataclass(frozen=True)
class PrefixFilter:
    attributes: tuple[tuple[str, str], ...]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return all(name in attributes and _text(attributes[name]).startswith(prefix)
                   for name, prefix in self.attributes)


@dataclass(frozen=True)
class SuffixFilter:
    attributes: tuple[tuple[str, str], ...]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return all(name in attributes and _text(attributes[name]).endswith(suffix)
                   for name, suffix in self.attributes)


@dataclass(frozen=True)
class AllFilter:
    filters: tuple[Filter, ...]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return all(f.matches(attributes) for f in self.filters)


@dataclass(frozen=True)
class AnyFilter:
    filters: tuple[Filter, ...]

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return any(f.matches(attributes) for f in self.filters)


@dataclass(frozen=True)
class NotFilter:
    filter: Filter

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return not self.filter.matches(attributes)


MATCH_ALL: Final[Filter] = AllFilter(())

_DIALECTS: Final = ("exact", "prefix", "suffix", "all", "any", "not", "cesql")


def string_pairs(spec: Any, where: str, problems: list[str], *, allow_empty: bool,
                  ) -> tuple[tuple[str, str], ...]:
    if not isinstance(spec, Mapping) or not spec:
        problems.append(f"{where}: must be a non-empty mapping of attribute to value")
        return ()
    pairs = []
    for name, value in spec.items():
        if not isinstance(name, str) or not name or not isinstance(value, str):
            problems.append(f"{where}.{name}: attribute names and values must be strings")
        elif value == "" and not allow_empty:
            problems.append(f"{where}.{name}: value must not be empty")
        else:
            pairs.append((name, value))
    return tuple(sorted(pairs))


def parse_filters(spec: Any, where: str, problems: list[str]) -> Filter:
    """`spec.filters` (the SubscriptionsAPI dialects): a list, all of which must match."""
    if not isinstance(spec, list):
        problems.append(f"{where}: must be a list of filter expressions")
        return MATCH_ALL
    return AllFilter(tuple(_dialect(item, f"{where}[{i}]", problems)
                           for i, item in enumerate(spec)))


def _dialect(spec: Any, where: str, problems: list[str]) -> Filter:
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: must be a mapping with one of {', '.join(_DIALECTS)}")
        return MATCH_ALL
    keys = [k for k in spec if spec[k] is not None]
    if len(keys) != 1 or keys[0] not in _DIALECTS:
        problems.append(f"{where}: needs exactly one of {', '.join(_DIALECTS)}, got {keys}")
        return MATCH_ALL
    dialect, body = keys[0], spec[keys[0]]
    sub = f"{where}.{dialect}"
    if dialect == "cesql":
        raise NotImplementedError(
            f"{sub}: CESQL filters are not supported by the local runner; use exact, prefix, "
            "suffix, all, any or not (or filter.attributes)")
    if dialect in ("exact", "prefix", "suffix"):
        pairs = string_pairs(body, sub, problems, allow_empty=False)
        if dialect == "exact":
            return ExactFilter(pairs)
        return PrefixFilter(pairs) if dialect == "prefix" else SuffixFilter(pairs)
    if dialect == "not":
        return NotFilter(_dialect(body, sub, problems))
    if not isinstance(body, list) or not body:
        problems.append(f"{sub}: must be a non-empty list of filter expressions")
        return MATCH_ALL
    inner = tuple(_dialect(item, f"{sub}[{i}]", problems) for i, item in enumerate(body))
    return AllFilter(inner) if dialect == "all" else AnyFilter(inner)
