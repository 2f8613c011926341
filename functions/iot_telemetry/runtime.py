"""Process-wide state: settings read once, and the clients built from them once."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import cached_property

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


class Runtime:
    """Settings plus lazily created, thread-safe clients (one each per process)."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._lock = threading.RLock()  # a client may be built while building another

    @cached_property
    def store(self) -> Store:
        with self._lock:
            return Store(self.settings)

    @cached_property
    def rollups(self) -> RollupWriter:
        """One writer per process, so concurrent deliveries share its group commit."""
        with self._lock:
            return RollupWriter(self.store, retention=self.retention,
                                event_times=self.event_times)

    @cached_property
    def event_times(self) -> EventTimes:
        """Settles the times of events without one (aggregate's and alert's, shared)."""
        with self._lock:
            return EventTimes(self.store, self.retention)

    @cached_property
    def retention(self) -> Retention:
        return Retention.of(self.settings)

    @cached_property
    def alert_states(self) -> StateCache:
        """The alert states this process wrote last (see alerting.StateCache)."""
        with self._lock:
            return StateCache()

    @cached_property
    def alert_commit(self) -> GroupCommit[tuple[AlertBook, TelemetryEvent], Outcome]:
        """One per process, so concurrent deliveries share alert's store round trips
        (AlertBook.handle_batch); each pairs its event with the book of its device's rules."""
        def run(items: Sequence[tuple[AlertBook, TelemetryEvent]],
                ) -> list[Outcome | Exception]:
            return items[0][0].handle_batch(items)

        with self._lock:
            return GroupCommit(run)

    @cached_property
    def rule_resolver(self) -> RuleResolver:
        """The rules decided per device, with the metadata this process read lately."""
        with self._lock:
            return RuleResolver(self.settings.alert_rules or (), MetadataCache(
                self.store, self.settings.alert_metadata_cache_seconds))

    @cached_property
    def offline_reports(self) -> ReportCache:
        """The devices this process heard from lately (see offline.ReportCache)."""
        with self._lock:
            return ReportCache()

    @cached_property
    def registry(self) -> Registry:
        with self._lock:
            return Registry(self.store, self.settings.auth_cache_seconds)

    @cached_property
    def query_tokens(self) -> TokenBook:
        """The query tokens kept in the store, each read at most once per AUTH_CACHE_SECONDS."""
        with self._lock:
            return TokenBook(self.store, self.settings.auth_cache_seconds)

    @cached_property
    def scopes(self) -> ScopeResolver:
        """The devices of each token scope, read at most once per AUTH_CACHE_SECONDS."""
        with self._lock:
            return ScopeResolver(self.store, self.settings.auth_cache_seconds)

    @cached_property
    def rate_limiter(self) -> RateLimiter:
        with self._lock:
            return RateLimiter(self.settings.ingest_rate_limit, self.settings.ingest_rate_burst)

    @cached_property
    def auth_failures(self) -> RateLimiter:
        """Failed device authentications per client address."""
        with self._lock:
            per_minute = self.settings.ingest_auth_failures_per_minute
            return RateLimiter(per_minute / 60.0, per_minute)

    @cached_property
    def trusted_proxies(self) -> tuple[Network, ...]:
        return self.settings.trusted_proxies

    @cached_property
    def sink(self) -> RecordSink:
        with self._lock:
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
