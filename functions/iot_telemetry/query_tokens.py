"""Query API tokens kept in the store: a name, a role (`read` or `operate`) and an optional
scope, a selector of devices in the language of rule scopes (scopes.py).

A token is `<name>.<secret>`, the secret 256 random bits; the store keeps only its
HMAC-SHA256 under a random salt (as device tokens, devices.py), checked in constant time, and
a name that does not exist costs the same check against a dummy record. Each instance keeps
what it read of a name (its record, or that there is none) for AUTH_CACHE_SECONDS, so a
revoked token or a changed scope takes effect within that time everywhere, and a request
costs no store read within it. `last used` is written at most once a minute per token and
instance, not once per request.
"""

from __future__ import annotations

import logging
import re
import secrets
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pymongo.errors import DuplicateKeyError

from .devices import NO_RECORD, hash_record, matches
from .errors import BadRequest, Conflict, DependencyUnavailable, NotFound
from .expiring import ExpiringCache
from .scopes import Selector, parse_selector
from .store import QUERY_TOKENS, Store

log = logging.getLogger(__name__)

READ: Final = "read"
OPERATE: Final = "operate"
ROLES: Final = (READ, OPERATE)
#: A token's name: no `.`, which ends the name inside the token.
TOKEN_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
#: How often one instance records that a token was used (a store write each time).
LAST_USED_EVERY: Final = 60.0
_MAX_CACHE: Final = 10_000


@dataclass(frozen=True)
class Grant:
    """What a request's token allows: a role, and the devices it may see (None: all)."""

    role: str
    scope: Selector | None = None
    #: The stored token's name; None for QUERY_*_TOKENS and QUERY_AUTH=open.
    name: str | None = None


@dataclass(frozen=True)
class TokenInfo:
    """A stored token as `tokens list` shows it (never its secret or hash)."""

    name: str
    role: str
    scope: dict[str, Any] | None
    created_at: datetime | None
    last_used_at: datetime | None


def check_name(name: str) -> str:
    if not isinstance(name, str) or not TOKEN_NAME.fullmatch(name):
        raise BadRequest(f"token name {name!r} must match {TOKEN_NAME.pattern}")
    return name


def check_role(role: str) -> str:
    if role not in ROLES:
        raise BadRequest(f"role {role!r}: must be one of {', '.join(ROLES)}")
    return role


def parse_scope(value: Any) -> Selector | None:
    """A token's scope (None: every device); BadRequest naming every problem found."""
    if value is None:
        return None
    problems: list[str] = []
    selector = parse_selector(value, "scope", problems)
    if problems:
        raise BadRequest(problems)
    return selector


class TokenBook:
    """The `query_tokens` collection: add, list, revoke, rescope, and check a token."""

    def __init__(self, store: Store, cache_seconds: float = 5.0) -> None:
        self.store = store
        self._read: ExpiringCache[str, Mapping[str, Any] | None] = ExpiringCache(
            cache_seconds, _MAX_CACHE)
        self._touched: dict[str, float] = {}
        self._lock = threading.Lock()

    def add(self, name: str, role: str, scope: Any = None, now: datetime | None = None) -> str:
        """Store a new token; return it (shown once, never stored)."""
        check_name(name)
        check_role(role)
        selector = parse_scope(scope)
        secret = secrets.token_urlsafe(32)
        doc = {"_id": name, "role": role,
               "scope": selector.describe() if selector is not None else None,
               "hash": hash_record(secret), "created_at": now or datetime.now(UTC)}
        try:
            with self.store.guard():
                self.store.collection(QUERY_TOKENS).insert_one(doc)
        except DuplicateKeyError:
            raise Conflict(f"token {name!r} already exists (revoke it first)") from None
        self.forget(name)
        return f"{name}.{secret}"

    def list(self) -> list[TokenInfo]:
        with self.store.guard():
            docs = list(self.store.collection(QUERY_TOKENS).find({}, {"hash": 0}).sort("_id"))
        return [TokenInfo(d["_id"], d.get("role", READ), d.get("scope"), d.get("created_at"),
                          d.get("last_used_at")) for d in docs]

    def revoke(self, name: str) -> None:
        check_name(name)
        with self.store.guard():
            result = self.store.collection(QUERY_TOKENS).delete_one({"_id": name})
        if result.deleted_count == 0:
            raise NotFound(f"token {name!r} not found")
        self.forget(name)

    def set_scope(self, name: str, scope: Any) -> None:
        """Change a token's scope (None: every device); other instances follow within
        AUTH_CACHE_SECONDS."""
        check_name(name)
        selector = parse_scope(scope)
        with self.store.guard():
            result = self.store.collection(QUERY_TOKENS).update_one(
                {"_id": name},
                {"$set": {"scope": selector.describe() if selector is not None else None}})
        if result.matched_count == 0:
            raise NotFound(f"token {name!r} not found")
        self.forget(name)

    def forget(self, name: str) -> None:
        self._read.forget(name)

    def verify(self, token: str) -> Grant | None:
        """The grant of a stored token, or None if it is not one."""
        name, _, secret = token.rpartition(".")
        if not TOKEN_NAME.fullmatch(name) or not secret:
            return None
        doc = self._read.get(name, lambda: self._doc(name))
        record = doc.get("hash") if doc else None
        # A name that does not exist costs the same check as one that does.
        if not matches(secret, record or NO_RECORD) or record is None or doc is None:
            return None
        self._touch(name)
        role = doc.get("role")
        return Grant(role if role in ROLES else READ,
                     parse_scope(doc["scope"]) if doc.get("scope") else None, name)

    def _doc(self, name: str) -> Mapping[str, Any] | None:
        with self.store.guard():
            return self.store.collection(QUERY_TOKENS).find_one(
                {"_id": name}, {"role": 1, "scope": 1, "hash": 1})

    def _touch(self, name: str) -> None:
        """Record the use, at most once per LAST_USED_EVERY per token in this instance."""
        now = time.monotonic()
        with self._lock:
            if self._touched.get(name, 0.0) > now:
                return
            if len(self._touched) >= _MAX_CACHE:
                self._touched.clear()
            self._touched[name] = now + LAST_USED_EVERY
        try:
            with self.store.guard():
                self.store.collection(QUERY_TOKENS).update_one(
                    {"_id": name}, {"$max": {"last_used_at": datetime.now(UTC)}})
        except DependencyUnavailable as exc:  # a missed mark is no reason to refuse a read
            log.warning("could not record that query token %r was used: %s", name, exc)
