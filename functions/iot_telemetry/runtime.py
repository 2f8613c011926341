"""Process-wide state: settings read once, and the clients built from them once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar, overload

from .alerting import AlertBook, Outcome, StateCache
from .applicability import MetadataCache, RuleResolver
from .audience import ScopeResolver
from .clients import Network
from .devices import Registry
from .eventtime import EventTimes
from .groupcommit import GroupCommit
from .observability import configure_logging
from .offline import ReportCache
from .publisher import RecordSink, make_sink
from .query_tokens import TokenBook
from .ratelimit import RateLimiter
from .retention import Retention
from .rollup import RollupWriter
from .settings import Settings
from .store import Store
from .telemetry import TelemetryEvent

log = logging.getLogger(__name__)
T = TypeVar("T")


class built_once(Generic[T]):  # lower case: a decorator, like cached_property
    """A client of a runtime, built on first use and kept.

    One reentrant lock per runtime guards every build, so building one client may build
    another, and two threads never wait on each other. functools.cached_property holds a
    lock of its own per attribute (shared by every instance) while it builds: with the
    runtime's lock taken inside, a thread building `rollups` (which needs `event_times`)
    and one building `event_times` waited on each other for good once the ASGI mode's
    blocking pool sent deliveries to a new runtime at once.
    """

    def __init__(self, build: Callable[[Any], T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__

    @overload
    def __get__(self, instance: None, owner: type) -> built_once[T]: ...

    @overload
    def __get__(self, instance: Runtime, owner: type) -> T: ...

    def __get__(self, instance: Runtime | None, owner: type) -> built_once[T] | T:
        if instance is None:
            return self
        cache = instance.__dict__
        if self.name in cache:  # set once built: later reads do not reach here
            value: T = cache[self.name]
            return value
        with instance._lock:
            if self.name not in cache:
                cache[self.name] = self.build(instance)
            built: T = cache[self.name]
            return built


class Runtime:
    """Settings plus lazily created, thread-safe clients (one each per process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()  # a client may be built while building another

    @built_once
    def store(self) -> Store:
        return Store(self.settings)

    @built_once
    def rollups(self) -> RollupWriter:
        """One writer per process, so concurrent deliveries share its group commit."""
        return RollupWriter(self.store, retention=self.retention,
                            event_times=self.event_times)

    @built_once
    def event_times(self) -> EventTimes:
        """Settles the times of events without one (aggregate's and alert's, shared)."""
        return EventTimes(self.store, self.retention)

    @built_once
    def retention(self) -> Retention:
        return Retention.of(self.settings)

    @built_once
    def alert_states(self) -> StateCache:
        """The alert states this process wrote last (see alerting.StateCache)."""
        return StateCache()

    @built_once
    def alert_commit(self) -> GroupCommit[tuple[AlertBook, TelemetryEvent], Outcome]:
        """One per process, so concurrent deliveries share alert's store round trips
        (AlertBook.handle_batch); each pairs its event with the book of its device's rules."""
        def run(items: Sequence[tuple[AlertBook, TelemetryEvent]],
                ) -> list[Outcome | Exception]:
            return items[0][0].handle_batch(items)

        return GroupCommit(run)

    @built_once
    def rule_resolver(self) -> RuleResolver:
        """The rules decided per device, with the metadata this process read lately."""
        return RuleResolver(self.settings.alert_rules or (), MetadataCache(
            self.store, self.settings.alert_metadata_cache_seconds))

    @built_once
    def offline_reports(self) -> ReportCache:
        """The devices this process heard from lately (see offline.ReportCache)."""
        return ReportCache()

    @built_once
    def registry(self) -> Registry:
        return Registry(self.store, self.settings.auth_cache_seconds)

    @built_once
    def query_tokens(self) -> TokenBook:
        """The query tokens kept in the store, each read at most once per AUTH_CACHE_SECONDS."""
        return TokenBook(self.store, self.settings.auth_cache_seconds)

    @built_once
    def scopes(self) -> ScopeResolver:
        """The devices of each token scope, read at most once per AUTH_CACHE_SECONDS."""
        return ScopeResolver(self.store, self.settings.auth_cache_seconds)

    @built_once
    def rate_limiter(self) -> RateLimiter:
        return RateLimiter(self.settings.ingest_rate_limit, self.settings.ingest_rate_burst)

    @built_once
    def auth_failures(self) -> RateLimiter:
        """Failed device authentications per client address."""
        per_minute = self.settings.ingest_auth_failures_per_minute
        return RateLimiter(per_minute / 60.0, per_minute)

    @built_once
    def trusted_proxies(self) -> tuple[Network, ...]:
        return self.settings.trusted_proxies

    @built_once
    def sink(self) -> RecordSink:
        return make_sink(self.settings)


_runtime: Runtime | None = None
_runtime_lock = threading.Lock()


def get_runtime() -> Runtime:
    """The process's runtime; the first call reads the environment and fails on bad settings."""
    global _runtime
    with _runtime_lock:
        if _runtime is None:
            settings = Settings.from_environ()
            configure_logging(settings.log_level)
            if settings.embedded_store:
                log.warning("store: in-process MongoDB-API store, NOT persistent (memory://)")
            log.info("device access: %s; query access: %s", settings.ingest_auth,
                     settings.query_auth)
            _runtime = Runtime(settings)
        return _runtime


def set_runtime(runtime: Runtime | None) -> None:
    """Install a runtime built from explicit settings (local runner, tests)."""
    global _runtime
    with _runtime_lock:
        _runtime = runtime
