"""The device registry: who may write readings, with per-device tokens kept only as hashes.

A token is `<device id>.<secret>`: the id says whose hash to check it against, so a token
of one device presented for another is told apart (403) from a wrong token (401). The
secret is 32 random bytes; the store keeps HMAC-SHA256 of it keyed by a per-device random
salt, never the secret. A 256-bit random secret cannot be guessed, so a slow hash (scrypt,
~85 ms a check) bought nothing but a CPU sink for wrong tokens and a timing difference
between known and unknown devices. Records of the earlier scrypt format still verify, and
are rewritten in the HMAC format on their first successful check.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pymongo import ReturnDocument

from .errors import BadRequest, Conflict, Forbidden, NotFound, Unauthorized
from .scopes import METADATA_KEY
from .store import DEVICES, Store
from .telemetry import DEVICE_ID

HMAC_SHA256: Final = "hmac-sha256"
#: What an unknown device's secret is checked against: the same work as a known one's.
NO_RECORD: Final = {"scheme": HMAC_SHA256, "salt": base64.b64encode(bytes(16)).decode(),
                     "hash": base64.b64encode(bytes(32)).decode()}
_MAX_CACHE: Final = 100_000
#: Fields of a device document that the registry owns (telemetry fields are aggregate's).
REGISTRY_FIELDS: Final = ("name", "metadata", "enabled", "registered_at", "token_rotated_at",
                          "changed_at")
#: When the registry last changed what decides a device's offline rules (registered,
#: enabled or disabled, metadata): the offline sweep looks again at a device changed since
#: its last pass, however long it has been silent (offline.py).
CHANGED_AT: Final = "changed_at"


def _hmac(secret: str, salt: bytes) -> bytes:
    return hmac.new(salt, secret.encode(), hashlib.sha256).digest()


def hash_record(secret: str) -> dict[str, Any]:
    """The record stored for a secret: its HMAC-SHA256 under a fresh random salt."""
    salt = secrets.token_bytes(16)
    return {"scheme": HMAC_SHA256, "salt": base64.b64encode(salt).decode(),
            "hash": base64.b64encode(_hmac(secret, salt)).decode()}


def new_credential(device_id: str) -> tuple[str, dict[str, Any]]:
    """A fresh token and the hash record stored for it."""
    secret = secrets.token_urlsafe(32)
    return f"{device_id}.{secret}", hash_record(secret)


def is_legacy(record: Mapping[str, Any]) -> bool:
    """A record of the earlier scrypt format (salt, n, r, p, hash)."""
    return "scheme" not in record and "n" in record


def matches(secret: str, record: Mapping[str, Any]) -> bool:
    """Constant-time check of a secret against a stored hash record (either format)."""
    try:
        salt = base64.b64decode(record["salt"])
        expected = base64.b64decode(record["hash"])
        if is_legacy(record):
            actual = hashlib.scrypt(secret.encode(), salt=salt, n=int(record["n"]),
                                    r=int(record["r"]), p=int(record["p"]), dklen=32)
        elif record.get("scheme") == HMAC_SHA256:
            actual = _hmac(secret, salt)
        else:
            return False
    except (KeyError, ValueError, TypeError):
        return False
    return hmac.compare_digest(actual, expected)


def metadata_of(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    """A registry document's metadata ({} when it has none, or none that is an object)."""
    metadata = doc.get("metadata")
    return metadata if isinstance(metadata, Mapping) else {}


def split_token(token: str) -> tuple[str, str]:
    device_id, _, secret = token.rpartition(".")
    if not device_id or not secret or not DEVICE_ID.fullmatch(device_id):
        raise Unauthorized("malformed device token")
    return device_id, secret


def bearer(headers: Mapping[str, str] | Any) -> str | None:
    value = headers.get("Authorization")
    if not value:
        return None
    scheme, _, token = value.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be `Bearer <token>`")
    return token.strip()


@dataclass(frozen=True)
class Device:
    """A registered device as the CLI and API show it (never with its hash)."""

    id: str
    name: str
    metadata: dict[str, Any]
    enabled: bool
    registered_at: datetime | None
    last_seen: datetime | None

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> Device:
        return cls(doc["_id"], doc.get("name") or doc["_id"], dict(doc.get("metadata") or {}),
                   doc.get("enabled", True), doc.get("registered_at"), doc.get("last_seen"))


class Registry:
    """Registry operations on the `devices` collection, and token checks with a short cache."""

    def __init__(self, store: Store, cache_seconds: float = 5.0) -> None:
        self.store = store
        self.cache_seconds = cache_seconds
        self._verified: dict[tuple[str, bytes], float] = {}
        self._lock = threading.Lock()

    def add(self, device_id: str, name: str = "", metadata: Mapping[str, Any] | None = None,
            now: datetime | None = None) -> str:
        """Register a device; return its token (shown once, never stored)."""
        if not DEVICE_ID.fullmatch(device_id):
            raise BadRequest(f"device id must match {DEVICE_ID.pattern}")
        token, record = new_credential(device_id)
        now = now or datetime.now(UTC)
        with self.store.guard():
            result = self.store.collection(DEVICES).update_one(
                {"_id": device_id, "token": {"$exists": False}},
                {"$set": {"name": name or device_id, "metadata": dict(metadata or {}),
                          "enabled": True, "registered_at": now, "token": record,
                          "token_rotated_at": now, CHANGED_AT: now}},
                upsert=False)
            if result.matched_count == 0:
                existing = self.store.collection(DEVICES).find_one({"_id": device_id})
                if existing is not None and "token" in existing:
                    raise Conflict(f"device {device_id!r} is already registered")
                self.store.collection(DEVICES).insert_one(
                    {"_id": device_id, "name": name or device_id,
                     "metadata": dict(metadata or {}), "enabled": True, "registered_at": now,
                     "token": record, "token_rotated_at": now, CHANGED_AT: now})
        return token

    def list(self) -> list[Device]:
        with self.store.guard():
            docs = self.store.collection(DEVICES).find({}, {"token": 0, "latest": 0}).sort("_id")
            return [Device.from_doc(d) for d in docs]

    def set_metadata(self, device_id: str, changes: Mapping[str, str | None]) -> dict[str, Any]:
        """Set metadata keys (None removes one); return the device's metadata after.

        Rules scoped or overridden by metadata follow within ALERT_METADATA_CACHE_SECONDS.
        """
        bad = [k for k in changes if not METADATA_KEY.fullmatch(k)]
        if bad or not changes:
            raise BadRequest(f"metadata keys must match {METADATA_KEY.pattern}"
                             + (f": {', '.join(map(repr, bad))}" if bad else ""))
        update: dict[str, Any] = {"$set": {CHANGED_AT: datetime.now(UTC)}}
        sets = {f"metadata.{k}": v for k, v in changes.items() if v is not None}
        unsets = {f"metadata.{k}": "" for k, v in changes.items() if v is None}
        update["$set"].update(sets)
        if unsets:
            update["$unset"] = unsets
        with self.store.guard():
            doc = self.store.collection(DEVICES).find_one_and_update(
                {"_id": device_id}, update,
                return_document=ReturnDocument.AFTER)
        if doc is None:
            raise NotFound(f"device {device_id!r} not found")
        return dict(doc.get("metadata") or {})

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        with self.store.guard():
            result = self.store.collection(DEVICES).update_one(
                {"_id": device_id}, {"$set": {"enabled": enabled,
                                              CHANGED_AT: datetime.now(UTC)}})
        if result.matched_count == 0:
            raise NotFound(f"device {device_id!r} not found")
        self.forget(device_id)

    def rotate(self, device_id: str, now: datetime | None = None) -> str:
        token, record = new_credential(device_id)
        with self.store.guard():
            result = self.store.collection(DEVICES).update_one(
                {"_id": device_id},
                {"$set": {"token": record, "token_rotated_at": now or datetime.now(UTC)}})
        if result.matched_count == 0:
            raise NotFound(f"device {device_id!r} not found")
        self.forget(device_id)
        return token

    def forget(self, device_id: str) -> None:
        with self._lock:
            for key in [k for k in self._verified if k[0] == device_id]:
                del self._verified[key]

    def _upgrade(self, device_id: str, secret: str, record: Mapping[str, Any]) -> None:
        """Rewrite a verified scrypt record as HMAC; a rotation meanwhile wins (same hash)."""
        with self.store.guard():
            self.store.collection(DEVICES).update_one(
                {"_id": device_id, "token.hash": record["hash"]},
                {"$set": {"token": hash_record(secret)}})

    def cached(self, token: str | None) -> str | None:
        """The device of a token verified lately (no store command); None when not known."""
        if token is None:
            return None
        try:
            device_id, secret = split_token(token)
        except Unauthorized:
            return None
        key = (device_id, hashlib.sha256(secret.encode()).digest())
        with self._lock:
            return device_id if self._verified.get(key, 0.0) > time.monotonic() else None

    def authenticate(self, token: str | None) -> str:
        """The device a token belongs to; 401 if missing or wrong, 403 if disabled."""
        if token is None:
            raise Unauthorized("a device token is required: Authorization: Bearer <token>")
        device_id, secret = split_token(token)
        key = (device_id, hashlib.sha256(secret.encode()).digest())
        now = time.monotonic()
        with self._lock:
            if self._verified.get(key, 0.0) > now:
                return device_id
        with self.store.guard():
            doc = self.store.collection(DEVICES).find_one(
                {"_id": device_id}, {"token": 1, "enabled": 1})
        record = doc.get("token") if doc else None
        # An unknown device costs the same hash as a known one: no timing tells them apart.
        if not matches(secret, record or NO_RECORD) or record is None:
            raise Unauthorized("unknown device or wrong token")
        assert doc is not None
        if is_legacy(record):
            self._upgrade(device_id, secret, record)
        if not doc.get("enabled", True):
            raise Forbidden(f"device {device_id!r} is disabled")
        with self._lock:
            if len(self._verified) >= _MAX_CACHE:
                self._verified.clear()
            self._verified[key] = now + self.cache_seconds
        return device_id
