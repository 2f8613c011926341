"""Device states (reporting, stale, offline, never reported, disabled) and the fleet's counts.

A device's state, first match wins:

1. `disabled`: the registry says `enabled: false`. An operator switched it off: its silence
   is expected, so it counts neither as stale nor as offline (the offline sweep skips it too).
2. `never_reported`: registered, but no report received yet (no `last_seen`). Never offline:
   there is no silence to measure.
3. `offline`: an offline alert (condition `offline`) is open or acknowledged and the device
   has not reported since the silence it was raised for. A report after it means the device
   is back and `alert` is about to resolve the alert: the device is then stale or reporting.
4. `stale`: its last report is older than DEVICE_STALE_SECONDS, and no offline rule says more.
5. `reporting`: otherwise.

`stale` (the boolean the API gave before states existed) keeps its meaning: no report
within DEVICE_STALE_SECONDS, whatever the state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from .alerting import ACKNOWLEDGED, OPEN
from .audience import EVERY_DEVICE, Audience
from .rules import OFFLINE as OFFLINE_CONDITION
from .store import ALERTS, DEVICES, Store

OFFLINE: Final = "offline"
STALE: Final = "stale"
NEVER_REPORTED: Final = "never_reported"
REPORTING: Final = "reporting"
DISABLED: Final = "disabled"
#: The order the fleet page lists them in: what needs a look first.
DEVICE_STATES: Final = (OFFLINE, STALE, NEVER_REPORTED, REPORTING, DISABLED)
_UNRESOLVED: Final = [OPEN, ACKNOWLEDGED]


@dataclass
class OpenAlerts:
    """What a device's unresolved alerts say about it."""

    count: int = 0
    #: The newest last report an unresolved offline alert was raised for (None: no such alert).
    offline_since: datetime | None = None

    def add(self, alert: Mapping[str, Any]) -> None:
        self.count += 1
        since = alert.get("last_seen")
        if alert.get("condition") == OFFLINE_CONDITION and isinstance(since, datetime):
            self.offline_since = since if self.offline_since is None else max(
                self.offline_since, since)


def open_alerts(store: Store, device_ids: list[str]) -> dict[str, OpenAlerts]:
    """The unresolved alerts of these devices, in the one read that counts them."""
    found = {d: OpenAlerts() for d in device_ids}
    with store.guard():
        for doc in store.collection(ALERTS).find(
                {"device_id": {"$in": device_ids}, "state": {"$in": _UNRESOLVED}},
                {"device_id": 1, "condition": 1, "last_seen": 1}):
            found[doc["device_id"]].add(doc)
    return found


def device_state(doc: Mapping[str, Any], now: datetime, stale_after: float,
                 offline_since: datetime | None) -> str:
    """The state of one registry document (see the module's docstring)."""
    if doc.get("enabled", True) is False:
        return DISABLED
    last_seen = doc.get("last_seen")
    if not isinstance(last_seen, datetime):
        return NEVER_REPORTED
    if offline_since is not None and last_seen <= offline_since:
        return OFFLINE
    if (now - last_seen).total_seconds() > stale_after:
        return STALE
    return REPORTING


def fleet_counts(store: Store, now: datetime, stale_after: float, page_size: int,
                 audience: Audience = EVERY_DEVICE) -> dict[str, int]:
    """Every device (of the audience: a token's scope) counted by state, however many.

    One scan of the devices (their `enabled` and `last_seen` only, `page_size` per reply),
    each device's state decided once from the document the scan read, after the unresolved
    offline alerts (over the `open_by_rule` index, `page_size` per reply). So the counts
    always add up to the devices scanned and none is negative, while devices register and
    report meanwhile: separate counts of each state, each at its own moment, did not.
    """
    since = _offline_since(store, page_size, audience)
    counts = dict.fromkeys(DEVICE_STATES, 0)
    with store.guard():
        for doc in store.collection(DEVICES).find(audience.narrow({}, "_id"),
                                                  {"last_seen": 1, "enabled": 1},
                                                  batch_size=page_size):
            counts[device_state(doc, now, stale_after, since.get(doc["_id"]))] += 1
    return counts


def _offline_since(store: Store, batch: int, audience: Audience) -> dict[str, datetime]:
    """Each device with an unresolved offline alert, with the newest silence alerted on.

    One cursor over the unresolved alerts (the `open_by_rule` index starts with `state`),
    fetched `batch` at a time, so no reply grows with their number.
    """
    found: dict[str, OpenAlerts] = {}
    with store.guard():
        for doc in store.collection(ALERTS).find(
                audience.narrow({"state": {"$in": _UNRESOLVED}, "condition": OFFLINE_CONDITION},
                                "device_id"),
                {"device_id": 1, "condition": 1, "last_seen": 1}, batch_size=batch):
            found.setdefault(doc["device_id"], OpenAlerts()).add(doc)
    return {d: a.offline_since for d, a in found.items() if a.offline_since is not None}
