"""Which rules apply to a device, with its values: the rules as configured, decided per device
from its id and its registry metadata, kept per process for a short time.

Deciding a rule scoped by metadata needs the device's metadata, which lives in the registry
(`devices.metadata`) and is not in the telemetry event. Reading it for every event would add
a store command per event to alert's hot path (issue 11 counts them), so each process keeps
what it read for ALERT_METADATA_CACHE_SECONDS: a registry change takes effect within that
time, and a device costs one read per that time, not one per event. Rules that name no
metadata (scope and overrides by id only, or none, as the defaults) never read it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final

from .rules import AlertRule, Rule, Verdict, needs_metadata, verdict
from .store import DEVICES, Store

_MAX_DEVICES: Final = 100_000
#: The metadata of every device when no rule names any (the same object: see verdicts).
_NO_METADATA: Final[Mapping[str, Any]] = {}


class MetadataCache:
    """Devices' registry metadata as read within the last `seconds`, for at most `size` devices."""

    def __init__(self, store: Store, seconds: float, size: int = _MAX_DEVICES) -> None:
        self.store = store
        self.seconds = seconds
        self.size = size
        self._entries: OrderedDict[str, tuple[float, dict[str, Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, device_id: str) -> dict[str, Any]:
        return self.get_many([device_id])[device_id]

    def get_many(self, device_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Metadata of each device ({} for an unknown one); one store read for those not fresh."""
        now = time.monotonic()
        found: dict[str, dict[str, Any]] = {}
        with self._lock:
            for device_id in device_ids:
                entry = self._entries.get(device_id)
                if entry is not None and entry[0] > now:
                    found[device_id] = entry[1]
        missing = [d for d in dict.fromkeys(device_ids) if d not in found]
        if missing:
            with self.store.guard():
                docs = {d["_id"]: d for d in self.store.collection(DEVICES).find(
                    {"_id": {"$in": missing}}, {"metadata": 1})}
            for device_id in missing:
                found[device_id] = self.put(
                    device_id, (docs.get(device_id) or {}).get("metadata"), now)
        return found

    def put(self, device_id: str, metadata: Any, now: float | None = None) -> dict[str, Any]:
        """Keep a device's metadata as just read, for `seconds`."""
        value = dict(metadata) if isinstance(metadata, Mapping) else {}
        with self._lock:
            self._entries[device_id] = ((now or time.monotonic()) + self.seconds, value)
            self._entries.move_to_end(device_id)
            while len(self._entries) > self.size:
                self._entries.popitem(last=False)
        return value


class RuleResolver:
    """The configured rules decided per device (see rules.verdict for the precedence)."""

    def __init__(self, rules: Sequence[Rule], metadata: MetadataCache) -> None:
        self.rules = tuple(rules)
        self.metadata = metadata
        #: Whether any rule depends on the device at all: with none, every rule applies as is.
        self.scoped = any(not r.scope.everything or r.overrides for r in self.rules)
        self.needs_metadata = any(needs_metadata(r) for r in self.rules)
        #: Per device, the rules found not applying whose alerts were checked closed.
        self._checked: OrderedDict[str, frozenset[str]] = OrderedDict()
        #: Per device, its verdicts and the metadata object they were decided on.
        self._decided: OrderedDict[str, tuple[Mapping[str, Any], list[Verdict]]] = OrderedDict()
        self._lock = threading.Lock()
        self.threshold_rules = tuple(r for r in self.rules if isinstance(r, AlertRule))

    def verdicts(self, device_id: str, metadata: Mapping[str, Any] | None = None,
                 ) -> list[Verdict] | None:
        """Every rule decided for the device; None when no rule depends on the device."""
        if not self.scoped:
            return None
        if metadata is None:
            metadata = self.metadata.get(device_id) if self.needs_metadata else _NO_METADATA
        # The cache hands out the same metadata object until it reads it again: deciding the
        # rules again (~20 us for five) is needed only then, not for every event.
        with self._lock:
            hit = self._decided.get(device_id)
        if hit is not None and hit[0] is metadata:
            return hit[1]
        decided = [verdict(r, device_id, metadata) for r in self.rules]
        with self._lock:
            self._decided[device_id] = (metadata, decided)
            self._decided.move_to_end(device_id)
            while len(self._decided) > _MAX_DEVICES:
                self._decided.popitem(last=False)
        return decided

    def threshold_rules_for(self, verdicts: Sequence[Verdict] | None) -> tuple[AlertRule, ...]:
        """The threshold rules that apply to a device (its verdicts), with its values."""
        if verdicts is None:
            return self.threshold_rules
        return tuple(v.rule for v in verdicts if v.applies and isinstance(v.rule, AlertRule))

    @staticmethod
    def not_applying(verdicts: Sequence[Verdict] | None) -> frozenset[str]:
        """Names of the rules that do not apply to a device (its verdicts)."""
        return frozenset(v.rule.name for v in verdicts or () if not v.applies)

    def needs_check(self, device_id: str, names: frozenset[str]) -> bool:
        """Whether this process has yet to check that no alert of these rules is open for
        the device: only when the set changed (a first event, a scope or metadata change)."""
        with self._lock:
            if not names:
                # Every rule applies again: a later change must be checked afresh.
                self._checked.pop(device_id, None)
                return False
            return self._checked.get(device_id) != names

    def checked(self, device_id: str, names: frozenset[str]) -> None:
        with self._lock:
            self._checked[device_id] = names
            self._checked.move_to_end(device_id)
            while len(self._checked) > _MAX_DEVICES:
                self._checked.popitem(last=False)
