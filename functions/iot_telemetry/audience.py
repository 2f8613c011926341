"""What one query request may see: every device, or the devices its token's scope selects.

A scope is resolved to device ids from the registry (ids and metadata) and kept per scope for
AUTH_CACHE_SECONDS, so a metadata change (`devices set-metadata`) or a new device moves in or
out of a scope within that time, and a request costs no read of the registry within it. The
routes then put the ids into their store queries (`{"device_id": {"$in": ids}}`) instead of
reading everything and filtering it. A device outside the scope answers as one that does not
exist: the same 404 and body, and, like an unknown id, no store read.
"""

from __future__ import annotations

import bisect
import re
from typing import Any, Final

from .devices import metadata_of
from .errors import NotFound
from .expiring import ExpiringCache
from .scopes import Selector
from .store import DEVICES, Store

_MAX_SCOPES: Final = 1_000
#: A glob's literal head: what comes before its first wildcard.
_GLOB_HEAD: Final = re.compile(r"[^*?\[]*")


class Audience:
    """The devices a request may see (`ids` None: every device)."""

    def __init__(self, ids: frozenset[str] | None) -> None:
        self.ids = ids
        self._listed = sorted(ids) if ids is not None else []

    @property
    def scoped(self) -> bool:
        return self.ids is not None

    def sees(self, device_id: str) -> bool:
        return self.ids is None or device_id in self.ids

    def require(self, device_id: str) -> None:
        """404 for a device outside the scope, worded as for a device that does not exist."""
        if not self.sees(device_id):
            raise not_found(device_id)

    def window(self, after: str | None, prefix: str | None, count: int) -> list[str]:
        """Up to `count` ids of the scope in id order, after `after`, starting with `prefix`
        (a page of GET /devices: its cursor and prefix)."""
        start = bisect.bisect_right(self._listed, after) if after else 0
        if prefix:
            start = max(start, bisect.bisect_left(self._listed, prefix))
        out = self._listed[start:start + count]
        if prefix and out and not out[-1].startswith(prefix):
            out = [d for d in out if d.startswith(prefix)]  # past the prefix's ids: cut there
        return out

    def condition(self, field: str) -> dict[str, Any]:
        """A store filter on `field` (a device id) selecting what this request may see."""
        return {} if self.ids is None else {field: {"$in": self._listed}}

    def narrow(self, filt: dict[str, Any], field: str) -> dict[str, Any]:
        """`filt` and the scope's condition on `field`, apart under `$and` so neither
        replaces a condition of the other on the same field."""
        if self.ids is None:
            return filt
        return {"$and": [filt, self.condition(field)]} if filt else self.condition(field)


EVERY_DEVICE: Final = Audience(None)


def not_found(device_id: str) -> NotFound:
    return NotFound(f"device {device_id!r} not found")


def registry_filter(selector: Selector) -> dict[str, Any]:
    """A store filter that holds every device the selector picks (and may hold more: the
    selector itself decides, so a glob or a number compares exactly as for rule scopes)."""
    parts: list[dict[str, Any]] = []
    if selector.device is not None:
        parts.append({"_id": selector.device})
    head = _GLOB_HEAD.match(selector.glob).group(0) if selector.glob else ""  # type: ignore[union-attr]
    for prefix in (selector.prefix, head):
        if prefix:
            parts.append({"_id": {"$regex": "^" + re.escape(prefix)}})
    parts += [{f"metadata.{key}": value} for key, value in selector.metadata
              if isinstance(value, str)]
    return {"$and": parts} if parts else {}


class ScopeResolver:
    """Each scope's devices as read within the last `seconds`."""

    def __init__(self, store: Store, seconds: float) -> None:
        self.store = store
        self._resolved: ExpiringCache[Selector, Audience] = ExpiringCache(seconds, _MAX_SCOPES)

    def audience(self, scope: Selector | None) -> Audience:
        if scope is None:
            return EVERY_DEVICE
        return self._resolved.get(scope, lambda: self._read(scope))

    def _read(self, scope: Selector) -> Audience:
        with self.store.guard():
            docs = self.store.collection(DEVICES).find(registry_filter(scope), {"metadata": 1})
            return Audience(frozenset(d["_id"] for d in docs
                                      if scope.matches(d["_id"], metadata_of(d))))
