"""Typed settings read once from the environment; the only module that reads it."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Final, TypeVar

from .channels import Channel, parse_channels
from .clients import Network, parse_networks
from .rules import AlertRule, OfflineRule, Rule, default_rules, parse_rules

T = TypeVar("T")

#: Scheme of the in-process broker and store of the embedded local run.
MEMORY_URL: Final = "memory://"
LOG_LEVELS: Final = ("DEBUG", "INFO", "WARNING", "ERROR")
#: A retention that never ends (ROLLUP_DAY_RETENTION_DAYS).
FOREVER: Final = "forever"
DAY_SECONDS: Final = 86_400
#: How long before its hour's event keys may go aggregate stops counting a reading: room
#: for clocks that disagree and a write in flight while the sweep runs.
RETENTION_MARGIN_SECONDS: Final = DAY_SECONDS


class ConfigError(ValueError):
    """A setting is missing or invalid; the message names the variable."""

    def __init__(self, variable: str, problem: str) -> None:
        super().__init__(f"{variable}: {problem}")
        self.variable = variable


def _setting(env: str, default: Any, doc: str) -> Any:
    return field(default=default, metadata={"env": env, "doc": doc})


@dataclass(frozen=True)
class Settings:
    """Every configuration variable of every function, with its default and meaning."""

    kafka_bootstrap_servers: str = _setting(
        "KAFKA_BOOTSTRAP_SERVERS", "localhost:9092",
        "Kafka brokers, comma-separated (`memory://` = in-process broker of the local run)")
    kafka_topic: str = _setting("KAFKA_TOPIC", "iot.telemetry", "Topic ingest writes telemetry to")
    kafka_security_protocol: str = _setting(
        "KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL")
    kafka_sasl_mechanism: str = _setting(
        "KAFKA_SASL_MECHANISM", "PLAIN", "SASL mechanism when a SASL protocol is used")
    kafka_sasl_username: str = _setting("KAFKA_SASL_USERNAME", "", "SASL user (from a Secret)")
    kafka_sasl_password: str = _setting("KAFKA_SASL_PASSWORD", "", "SASL password (from a Secret)")
    kafka_send_timeout_seconds: float = _setting(
        "KAFKA_SEND_TIMEOUT_SECONDS", 10.0,
        "How long ingest waits for Kafka's acknowledgement (acks=all) before answering 503")
    kafka_max_record_bytes: int = _setting(
        "KAFKA_MAX_RECORD_BYTES", 1_000_000,
        "Largest Kafka record ingest writes (one event with its headers; 413 past it); also "
        "the producer's max.request.size. Keep it below the topic's max.message.bytes "
        "(Kafka's default 1048588) with room for the headers the Broker adds")
    mongo_url: str = _setting(
        "MONGO_URL", "mongodb://localhost:27017",
        "MongoDB-API server URL (`memory://` = in-process, non-persistent store)")
    mongo_db: str = _setting("MONGO_DB", "iot", "Database name")
    mongo_timeout_ms: int = _setting(
        "MONGO_TIMEOUT_MS", 5000, "Server selection and socket timeout of the store client")
    log_level: str = _setting("LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR")
    threads: int = _setting(
        "THREADS", 8,
        "Requests one process serves at once: gunicorn's threads (query), the threads that "
        "run the library's blocking calls (ingest, aggregate, alert); each Knative Service "
        "sets it equal to its containerConcurrency")
    ingest_max_body_bytes: int = _setting(
        "INGEST_MAX_BODY_BYTES", 1_048_576, "Largest request body ingest reads (413 past it)")
    ingest_max_batch_events: int = _setting(
        "INGEST_MAX_BATCH_EVENTS", 500, "Most events in one batch-mode request")
    ingest_max_samples: int = _setting(
        "INGEST_MAX_SAMPLES", 1000, "Most buffered `samples` in one event")
    ingest_max_age_seconds: int = _setting(
        "INGEST_MAX_AGE_SECONDS", 7 * 24 * 3600, "Oldest accepted reading, seconds before now; "
        "also how long a device may resend an event without `time` (see Delivery)")
    ingest_max_future_seconds: int = _setting(
        "INGEST_MAX_FUTURE_SECONDS", 300, "Furthest accepted reading, seconds after now")
    ingest_retry_after_seconds: int = _setting(
        "INGEST_RETRY_AFTER_SECONDS", 5, "Retry-After sent with 503 when Kafka cannot take a write")
    ingest_auth: str = _setting(
        "INGEST_AUTH", "open",
        "`open`: any well-formed device is accepted (and registered on first data); "
        "`registered`: only enabled devices presenting their own token")
    ingest_rate_limit: float = _setting(
        "INGEST_RATE_LIMIT", 50.0,
        "Events per second one device may send, per instance (429 past it)")
    ingest_rate_burst: int = _setting(
        "INGEST_RATE_BURST", 1000, "Events a device may send at once before its rate limit applies")
    auth_cache_seconds: float = _setting(
        "AUTH_CACHE_SECONDS", 5.0,
        "How long a verified device token, a stored query token and the devices of a token's "
        "scope are trusted without checking the store again (a disabled device, a rotated or "
        "revoked token, a metadata change stop or start counting within this time)")
    ingest_auth_failures_per_minute: int = _setting(
        "INGEST_AUTH_FAILURES_PER_MINUTE", 30,
        "Failed device authentications one client address may make per minute, per instance, "
        "before 429 (checked before any token work)")
    ingest_trusted_proxies: str = _setting(
        "INGEST_TRUSTED_PROXIES", "127.0.0.0/8,::1/128,10.0.0.0/8,172.16.0.0/12,192.168.0.0/16,"
        "fc00::/7",
        "Proxies (comma-separated CIDRs) skipped in X-Forwarded-For to find a client's address")
    query_auth: str = _setting(
        "QUERY_AUTH", "open", "`open`: no token needed; `token`: a bearer token required, from "
        "the two variables below (fleet-wide) or `iot-telemetry tokens add` (kept in the store)")
    query_read_tokens: str = _setting(
        "QUERY_READ_TOKENS", "", "Comma-separated bearer tokens allowed to read (from a Secret)")
    query_operate_tokens: str = _setting(
        "QUERY_OPERATE_TOKENS", "",
        "Comma-separated bearer tokens allowed to read and acknowledge alerts (from a Secret)")
    query_cors_origins: str = _setting(
        "QUERY_CORS_ORIGINS", "", "Origins allowed to call the query API from a browser "
        "(comma-separated; empty = no cross-origin access)")
    alert_rules: tuple[Rule, ...] | None = _setting(
        "ALERT_RULES", None,
        "Alert rules as a JSON list (see Alert rules); unset = ALERT_RULES_FILE or defaults")
    alert_rules_file: str = _setting(
        "ALERT_RULES_FILE", "", "Path of a JSON file of alert rules (e.g. a mounted ConfigMap)")
    alert_metadata_cache_seconds: float = _setting(
        "ALERT_METADATA_CACHE_SECONDS", 30.0,
        "How long alert keeps a device's registry metadata for rules scoped or overridden by "
        "metadata before reading it again (a metadata change takes effect within this time)")
    alert_sink: str = _setting(
        "K_SINK", "",
        "Broker URL for alert events beyond the one sent as reply (injected by a SinkBinding)")
    notify_channels: tuple[Channel, ...] = _setting(
        "NOTIFY_CHANNELS", (),
        "Where notify sends alert events: a JSON list of channels (see Notifications); a "
        "channel's `url_env`/`secret_env` name variables holding its URL and secret")
    notify_max_per_minute: int = _setting(
        "NOTIFY_MAX_PER_MINUTE", 20,
        "Alert messages one channel is sent per minute; the rest are folded into one summary "
        "message after the minute")
    notify_timeout_seconds: float = _setting(
        "NOTIFY_TIMEOUT_SECONDS", 10.0,
        "How long notify waits for a channel to answer before the delivery is retried")
    dashboard_url: str = _setting(
        "DASHBOARD_URL", "",
        "Public URL of the dashboard (the query function), for links in notifications "
        "(`DASHBOARD_URL/#/devices/<id>`); empty = no links")
    query_max_buckets: int = _setting(
        "QUERY_MAX_BUCKETS", 2000, "Most buckets one series request may span (400 past it)")
    query_default_limit: int = _setting("QUERY_DEFAULT_LIMIT", 50, "Default page size of /alerts")
    query_max_limit: int = _setting("QUERY_MAX_LIMIT", 500, "Largest page size of /alerts")
    query_export_max_rows: int = _setting(
        "QUERY_EXPORT_MAX_ROWS", 10_000,
        "Most alerts one CSV download of /alerts holds (read a page of QUERY_MAX_LIMIT at a time)")
    device_stale_seconds: int = _setting(
        "DEVICE_STALE_SECONDS", 300,
        "A device not heard from for this long is reported stale, and gets an offline alert "
        "from offline rules without `for_seconds`")
    rollup_minute_retention_days: int = _setting(
        "ROLLUP_MINUTE_RETENTION_DAYS", 30,
        "Days an hour's minute slots and event keys are kept after the hour (see Retention and "
        "storage); "
        "readings older than this minus a day are skipped by aggregate, so keep "
        "INGEST_MAX_AGE_SECONDS and Kafka's retention below it")
    rollup_hour_retention_days: int = _setting(
        "ROLLUP_HOUR_RETENTION_DAYS", 396,
        "Days a day's hour totals are kept after the day (13 months; at least "
        "ROLLUP_MINUTE_RETENTION_DAYS)")
    rollup_day_retention_days: int | None = _setting(
        "ROLLUP_DAY_RETENTION_DAYS", None,
        "Days day totals are kept after their month (`forever`, or at least "
        "ROLLUP_HOUR_RETENTION_DAYS)")
    raw_retention_hours: int = _setting(
        "RAW_RETENTION_HOURS", 48,
        "Hours raw readings (series `step=raw`) are kept after their ten-minute window; "
        "0 keeps none (and aggregate writes none)")

    @property
    def read_tokens(self) -> tuple[str, ...]:
        return _items(self.query_read_tokens)

    @property
    def operate_tokens(self) -> tuple[str, ...]:
        return _items(self.query_operate_tokens)

    @property
    def trusted_proxies(self) -> tuple[Network, ...]:
        return parse_networks(self.ingest_trusted_proxies)

    @property
    def cors_origins(self) -> tuple[str, ...]:
        return _items(self.query_cors_origins)

    @property
    def rules(self) -> tuple[AlertRule, ...]:
        """The threshold rules (evaluated on readings)."""
        return tuple(r for r in self.alert_rules or () if isinstance(r, AlertRule))

    @property
    def offline_rules(self) -> tuple[OfflineRule, ...]:
        """The offline rules (evaluated by sweeps on the devices' last report)."""
        return tuple(r for r in self.alert_rules or () if isinstance(r, OfflineRule))

    @property
    def embedded_broker(self) -> bool:
        return self.kafka_bootstrap_servers.startswith(MEMORY_URL)

    @property
    def embedded_store(self) -> bool:
        return self.mongo_url.startswith(MEMORY_URL)

    @classmethod
    def from_environ(cls, env: Mapping[str, str] | None = None,
                     overrides: Mapping[str, str] | None = None) -> Settings:
        """Read and check every variable; raise ConfigError naming the first bad one."""
        env = {**(os.environ if env is None else env), **(overrides or {})}
        values: dict[str, Any] = {}
        for f in fields(cls):
            name = f.metadata["env"]
            raw = env.get(name)
            if raw is None or raw.strip() == "":
                continue
            if f.name == "notify_channels":  # a channel may name variables holding its secrets
                values[f.name] = _channels(name, raw.strip(), env)
                continue
            values[f.name] = _PARSERS.get(f.name, _parser_for(f.default))(name, raw.strip())
        settings = cls(**values)
        settings._check()
        if settings.alert_rules is None:
            object.__setattr__(settings, "alert_rules", _load_rules_file(settings.alert_rules_file))
        return settings

    def _check(self) -> None:
        if self.log_level not in LOG_LEVELS:
            raise ConfigError("LOG_LEVEL", f"must be one of {', '.join(LOG_LEVELS)}")
        if self.kafka_security_protocol not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
            raise ConfigError("KAFKA_SECURITY_PROTOCOL", "unknown protocol")
        if not self.embedded_store and not self.mongo_url.startswith(
            ("mongodb://", "mongodb+srv://")
        ):
            raise ConfigError("MONGO_URL", "must start with mongodb://, mongodb+srv:// or memory://")
        if self.ingest_auth not in ("open", "registered"):
            raise ConfigError("INGEST_AUTH", "must be `open` or `registered`")
        if self.query_auth not in ("open", "token"):
            raise ConfigError("QUERY_AUTH", "must be `open` or `token`")
        try:
            parse_networks(self.ingest_trusted_proxies)
        except ValueError as exc:
            raise ConfigError("INGEST_TRUSTED_PROXIES", str(exc)) from None
        if self.dashboard_url and not self.dashboard_url.startswith(("http://", "https://")):
            raise ConfigError("DASHBOARD_URL", "must be an http:// or https:// URL")
        if self.threads < 1:
            raise ConfigError("THREADS", "must be at least 1")
        if self.query_default_limit > self.query_max_limit:
            raise ConfigError("QUERY_DEFAULT_LIMIT", "must not exceed QUERY_MAX_LIMIT")
        self._check_retention()

    def _check_retention(self) -> None:
        # A reading older than the minute retention may find its hour's event keys gone, so
        # aggregate skips it (retention.py); ingest must refuse it first.
        minutes = self.rollup_minute_retention_days * DAY_SECONDS
        if self.ingest_max_age_seconds + RETENTION_MARGIN_SECONDS >= minutes:
            raise ConfigError(
                "INGEST_MAX_AGE_SECONDS",
                f"must be less than ROLLUP_MINUTE_RETENTION_DAYS ({minutes} s) minus one day: "
                "older readings could no longer be deduplicated")
        if self.rollup_hour_retention_days < self.rollup_minute_retention_days:
            raise ConfigError("ROLLUP_HOUR_RETENTION_DAYS",
                              "must be at least ROLLUP_MINUTE_RETENTION_DAYS")
        days = self.rollup_day_retention_days
        if days is not None and days < self.rollup_hour_retention_days:
            raise ConfigError("ROLLUP_DAY_RETENTION_DAYS",
                              "must be `forever` or at least ROLLUP_HOUR_RETENTION_DAYS")

    @classmethod
    def variables(cls) -> list[tuple[str, str, str]]:
        """(variable, default, meaning) of every setting, for the README and `--help`."""
        out = []
        for f in fields(cls):
            default = f.default
            shown = ("(defaults)" if f.name == "alert_rules" else
                     "" if f.name == "notify_channels" else
                     FOREVER if f.name == "rollup_day_retention_days" else str(default))
            out.append((f.metadata["env"], shown, f.metadata["doc"]))
        return out


def _items(text: str) -> tuple[str, ...]:
    """The non-empty entries of a comma-separated setting."""
    return tuple(item.strip() for item in text.split(",") if item.strip())


def _positive(parse: Callable[[str], T]) -> Callable[[str, str], T]:
    def check(name: str, raw: str) -> T:
        try:
            value = parse(raw)
        except ValueError:
            raise ConfigError(name, f"{raw!r} is not a number") from None
        if not value > 0:  # type: ignore[operator]
            raise ConfigError(name, "must be greater than 0")
        return value

    return check


def _text(name: str, raw: str) -> str:
    return raw


def _level(name: str, raw: str) -> str:
    return raw.upper()


def _rules(name: str, raw: str) -> tuple[Rule, ...]:
    try:
        return parse_rules(json.loads(raw))
    except (ValueError, TypeError) as exc:
        raise ConfigError(name, str(exc)) from None


def _channels(name: str, raw: str, env: Mapping[str, str]) -> tuple[Channel, ...]:
    try:
        return parse_channels(json.loads(raw), env)
    except (ValueError, TypeError) as exc:
        raise ConfigError(name, str(exc)) from None


def _parser_for(default: Any) -> Callable[[str, str], Any]:
    if isinstance(default, bool):
        raise TypeError("boolean settings need an explicit parser")
    if isinstance(default, int):
        return _positive(int)
    if isinstance(default, float):
        return _positive(float)
    return _text


def _lower(name: str, raw: str) -> str:
    return raw.lower()


def _hours_or_off(name: str, raw: str) -> int:
    try:
        hours = int(raw)
    except ValueError:
        raise ConfigError(name, f"{raw!r} is not a whole number of hours") from None
    if hours < 0:
        raise ConfigError(name, "must be 0 (off) or more")
    return hours


def _days_or_forever(name: str, raw: str) -> int | None:
    if raw.lower() == FOREVER:
        return None
    days: int = _positive(int)(name, raw)
    return days


_PARSERS: dict[str, Callable[[str, str], Any]] = {
    "log_level": _level, "alert_rules": _rules, "ingest_auth": _lower, "query_auth": _lower,
    "rollup_day_retention_days": _days_or_forever, "raw_retention_hours": _hours_or_off}


def _load_rules_file(path: str) -> tuple[Rule, ...]:
    if not path:
        return default_rules()
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("ALERT_RULES_FILE", f"cannot read {path}: {exc.strerror}") from None
    return _rules("ALERT_RULES_FILE", text)
