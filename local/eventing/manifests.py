"""The eventing/ manifests as a frozen, typed model: Broker, sources, Triggers, sinks, bindings.

The local runner (in-memory broker and Kafka dispatcher) reads the same files that are
applied to the cluster, so filters, retries, backoff and dead letters cannot drift apart.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, Literal

import yaml

from .filters import MATCH_ALL, AttributesFilter, Filter, parse_filters, string_pairs
from .schedules import Cron, parse_duration

ORDER_ANNOTATION: Final = "kafka.eventing.knative.dev/delivery.order"
BROKER_CLASS_ANNOTATION: Final = "eventing.knative.dev/broker.class"
SERVICE_API: Final = "serving.knative.dev/v1"
KAFKA_SINK_API: Final = "eventing.knative.dev/v1alpha1"
BROKER_API: Final = "eventing.knative.dev/v1"
#: Per-attempt timeout of the Kafka Broker dispatcher when a delivery sets none.
DEFAULT_TIMEOUT_SECONDS: Final = 600.0
#: The Kafka Broker retries these besides every 5xx (knative/specs data-plane.md).
RETRIABLE_4XX: Final = frozenset({404, 408, 409, 429})
#: The type Knative gives every PingSource event (ceOverrides can only add extensions).
PING_TYPE: Final = "dev.knative.sources.ping"
#: Time zones the local runner plays PingSource schedules in.
UTC_ZONES: Final = frozenset({"UTC", "Etc/UTC", "Etc/GMT", "GMT", "Z"})

BackoffPolicy = Literal["exponential", "linear"]


class EventingError(ValueError):
    """The manifests are invalid or unplayable locally; the message lists every problem."""

    def __init__(self, problems: list[str] | str) -> None:
        self.problems: tuple[str, ...] = (
            (problems,) if isinstance(problems, str) else tuple(problems))
        super().__init__("invalid eventing manifests:\n  " + "\n  ".join(self.problems))


# --- delivery -------------------------------------------------------------------------------

def retriable(status: int | None) -> bool:
    """Whether the Kafka Broker retries a delivery answered so (None: no answer, network error)."""
    return status is None or status >= 500 or status in RETRIABLE_4XX


@dataclass(frozen=True)
class Delivery:
    """A Trigger's effective delivery spec (its own fields over the Broker's defaults)."""

    retry: int = 0
    backoff_policy: BackoffPolicy = "exponential"
    backoff_delay: float = 0.0
    timeout: float = DEFAULT_TIMEOUT_SECONDS
    dead_letter_sink: str | None = None

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number `attempt` (1 = the first retry).

        As the Kafka Broker dispatcher computes it (WebClientCloudEventSender
        .computeRetryPolicy, called with retryCounter + 1): exponential
        backoffDelay * 2^attempt, linear backoffDelay * attempt. So PT0.2S exponential
        waits 0.4 s, 0.8 s, 1.6 s, ... (the DeliverySpec doc: "backoffDelay*2^<numberOfRetries>").
        """
        if attempt < 1:
            raise ValueError("attempt counts retries from 1")
        if self.backoff_policy == "linear":
            return self.backoff_delay * attempt
        return self.backoff_delay * 2.0 ** attempt

    def retry_budget(self) -> float:
        """Total seconds spent waiting between attempts before dead-lettering."""
        return sum(self.backoff(n) for n in range(1, self.retry + 1))


_DELIVERY_FIELDS: Final = ("retry", "backoffPolicy", "backoffDelay", "timeout", "deadLetterSink",
                           "retryAfterMax", "format")


def _merge_delivery(own: Any, default: Any) -> dict[str, Any]:
    # Like the Kafka Broker control plane (MergeEgressConfig): each field the Trigger
    # sets wins, the others come from the Broker's delivery.
    merged: dict[str, Any] = dict(default) if isinstance(default, Mapping) else {}
    if isinstance(own, Mapping):
        merged.update({k: v for k, v in own.items() if v is not None})
    return merged


def parse_delivery(spec: Mapping[str, Any], where: str, sinks: Mapping[str, Sink],
                   problems: list[str]) -> Delivery:
    unknown = sorted(set(spec) - set(_DELIVERY_FIELDS))
    if unknown:
        problems.append(f"{where}: unknown fields {unknown}")
    retry = spec.get("retry", 0)
    if not isinstance(retry, int) or isinstance(retry, bool) or retry < 0:
        problems.append(f"{where}.retry: must be a non-negative integer, got {retry!r}")
        retry = 0
    policy = spec.get("backoffPolicy", "exponential")
    if policy not in ("exponential", "linear"):
        problems.append(f"{where}.backoffPolicy: must be exponential or linear, got {policy!r}")
        policy = "exponential"
    delay = _duration(spec.get("backoffDelay"), f"{where}.backoffDelay", problems, 0.0)
    timeout = _duration(spec.get("timeout"), f"{where}.timeout", problems, DEFAULT_TIMEOUT_SECONDS)
    if "timeout" in spec and timeout <= 0:
        problems.append(f"{where}.timeout: must be greater than 0")
        timeout = DEFAULT_TIMEOUT_SECONDS
    dls = None
    if spec.get("deadLetterSink") is not None:
        dls = _sink_ref(spec["deadLetterSink"], f"{where}.deadLetterSink", sinks, problems)
    return Delivery(retry=retry, backoff_policy=policy, backoff_delay=delay, timeout=timeout,
                    dead_letter_sink=dls)


def _duration(value: Any, where: str, problems: list[str], default: float) -> float:
    if value is None:
        return default
    try:
        return parse_duration(value)
    except ValueError as exc:
        problems.append(f"{where}: {exc}")
        return default


# --- resources ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ref:
    """A KReference: what a subscriber, sink or dead-letter sink points at."""

    api_version: str
    kind: str
    name: str
    namespace: str | None = None


@dataclass(frozen=True)
class Sink:
    """A KafkaSink: an Addressable that writes what it receives to one topic."""

    name: str
    namespace: str
    topic: str
    bootstrap_servers: tuple[str, ...]
    partitions: int | None = None
    replication_factor: int | None = None
    content_mode: str = "binary"


@dataclass(frozen=True)
class Broker:
    """The Kafka-class Broker and the settings of its topic (from its config ConfigMap)."""

    name: str
    namespace: str
    partitions: int
    replication_factor: int
    bootstrap_servers: tuple[str, ...]
    delivery: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))

    @property
    def topic(self) -> str:
        """The topic the Kafka Broker keeps its events in (brokers.topic.template default)."""
        return f"knative-broker-{self.namespace}-{self.name}"


@dataclass(frozen=True)
class Source:
    """A KafkaSource reading topics into the Broker."""

    name: str
    namespace: str
    topics: tuple[str, ...]
    consumer_group: str
    initial_offset: Literal["earliest", "latest"]
    sink: Ref
    ordered: bool
    bootstrap_servers: tuple[str, ...]


@dataclass(frozen=True)
class Trigger:
    """A Trigger: a filter on the Broker's events and where, and how hard, to deliver them."""

    name: str
    namespace: str
    broker: str
    filter: Filter
    subscriber: Ref
    delivery: Delivery
    ordered: bool

    def matches(self, attributes: Mapping[str, Any]) -> bool:
        return self.filter.matches(attributes)

    @property
    def service(self) -> str | None:
        """Name of the Knative Service subscribed, or None when the subscriber is a KafkaSink."""
        return self.subscriber.name if self.subscriber.kind == "Service" else None

    @property
    def sink(self) -> str | None:
        """Name of the KafkaSink subscribed, or None when the subscriber is a Service."""
        return self.subscriber.name if self.subscriber.kind == "KafkaSink" else None

    @property
    def consumer_group(self) -> str:
        """The consumer group of this Trigger (triggers.consumergroup.template default)."""
        return f"knative-trigger-{self.namespace}-{self.name}"


@dataclass(frozen=True)
class Ping:
    """A PingSource: one event into the Broker at each time of its cron schedule."""

    name: str
    namespace: str
    schedule: Cron
    data: Any = None
    content_type: str = "application/json"

    @property
    def source(self) -> str:
        """The source attribute Knative's PingSource adapter sets."""
        return f"/apis/v1/namespaces/{self.namespace}/pingsources/{self.name}"

    def event(self, at: datetime, event_id: str) -> tuple[dict[str, Any], Any]:
        """The event of the tick scheduled at `at` (its `time`), as Knative sends it."""
        stamp = at.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
        return ({"specversion": "1.0", "type": PING_TYPE, "source": self.source,
                 "id": event_id, "time": stamp, "datacontenttype": self.content_type},
                self.data)


@dataclass(frozen=True)
class Binding:
    """A SinkBinding: a Knative Service whose K_SINK is the Broker's ingress."""

    name: str
    namespace: str
    service: str


@dataclass(frozen=True)
class Eventing:
    broker: Broker
    sources: tuple[Source, ...]
    triggers: tuple[Trigger, ...]
    sinks: Mapping[str, Sink]
    bindings: tuple[Binding, ...] = ()
    pings: tuple[Ping, ...] = ()

    def sink_env(self, service: str, ingress_url: str | None) -> dict[str, str]:
        """What a SinkBinding injects into `service`: K_SINK = the Broker ingress, if bound."""
        if ingress_url and any(b.service == service for b in self.bindings):
            return {"K_SINK": ingress_url}
        return {}

    def trigger(self, name: str) -> Trigger:
        for trigger in self.triggers:
            if trigger.name == name:
                return trigger
        raise KeyError(f"no Trigger named {name!r}")

    def sink_topic(self, name: str) -> str:
        return self.sinks[name].topic

    @property
    def services(self) -> tuple[str, ...]:
        """Knative Services the Triggers deliver to (each needs a URL locally)."""
        return tuple(sorted({t.service for t in self.triggers if t.service}))


# --- loading --------------------------------------------------------------------------------

_KINDS: Final = {
    ("v1", "ConfigMap"), ("eventing.knative.dev/v1", "Broker"),
    ("eventing.knative.dev/v1", "Trigger"), ("sources.knative.dev/v1", "KafkaSource"),
    ("eventing.knative.dev/v1alpha1", "KafkaSink"), ("sources.knative.dev/v1", "SinkBinding"),
    ("sources.knative.dev/v1", "PingSource"),
}


def _documents(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.suffix in (".yaml", ".yml"))
    for file in files:
        for doc in yaml.safe_load_all(file.read_text(encoding="utf-8")):
            if isinstance(doc, dict):
                yield file.name, doc


def load_eventing(path: Path) -> Eventing:
    """Read every manifest under `path` (a directory or one file) into the model.

    Raises EventingError listing every problem found, NotImplementedError for
    features the local runner cannot play (CESQL filters).
    """
    problems: list[str] = []
    by_kind: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for file, doc in _documents(Path(path)):
        api, kind = str(doc.get("apiVersion")), str(doc.get("kind"))
        name = (doc.get("metadata") or {}).get("name")
        if (api, kind) not in _KINDS:
            problems.append(f"{file}: {api}/{kind} {name} is not a kind the local runner plays")
            continue
        if not isinstance(name, str) or not name:
            problems.append(f"{file}: {kind} without metadata.name")
            continue
        by_kind.setdefault(kind, []).append((f"{file}: {kind} {name}", doc))

    sinks = {s.name: s for s in (_sink(w, d, problems) for w, d in by_kind.get("KafkaSink", []))}
    configmaps = {(namespace, name): d for _, d in by_kind.get("ConfigMap", [])
                  for name, namespace, _ in [_meta(d)]}
    brokers = [_broker(w, d, configmaps, problems) for w, d in by_kind.get("Broker", [])]
    if len(brokers) != 1:
        problems.append(f"exactly one Broker is needed, found {len(brokers)}")
        raise EventingError(problems)
    broker = brokers[0]
    sources = tuple(_source(w, d, broker, problems) for w, d in by_kind.get("KafkaSource", []))
    triggers = tuple(_trigger(w, d, broker, sinks, problems) for w, d in by_kind.get("Trigger", []))
    bindings = tuple(b for w, d in by_kind.get("SinkBinding", [])
                     if (b := _binding(w, d, broker, problems)) is not None)
    pings = tuple(p for w, d in by_kind.get("PingSource", [])
                  if (p := _ping(w, d, broker, problems)) is not None)
    names = [t.name for t in triggers]
    problems.extend(f"Trigger {n} is defined twice" for n in sorted({n for n in names
                                                                       if names.count(n) > 1}))
    if problems:
        raise EventingError(problems)
    return Eventing(broker, sources, triggers, MappingProxyType(sinks), bindings, pings)


def _meta(doc: Mapping[str, Any]) -> tuple[str, str, Mapping[str, Any]]:
    meta = doc.get("metadata") or {}
    return meta["name"], meta.get("namespace") or "default", meta.get("annotations") or {}


def _spec(doc: Mapping[str, Any], where: str, problems: list[str]) -> Mapping[str, Any]:
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        problems.append(f"{where}: spec must be a mapping")
        return {}
    return spec


def _servers(value: Any, where: str, problems: list[str]) -> tuple[str, ...]:
    if isinstance(value, str):
        value = value.split(",")
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        problems.append(f"{where}: must be a non-empty list of host:port")
        return ()
    return tuple(v.strip() for v in value)


def _positive_int(value: Any, where: str, problems: list[str]) -> int | None:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or isinstance(value, bool):
        problems.append(f"{where}: must be a positive integer, got {value!r}")
        return None
    return number


def _ref(spec: Any, where: str, problems: list[str]) -> Ref | None:
    ref = spec.get("ref") if isinstance(spec, Mapping) else None
    if not isinstance(ref, Mapping):
        problems.append(f"{where}: needs a ref (uri destinations are not played locally)")
        return None
    api, kind, name = ref.get("apiVersion"), ref.get("kind"), ref.get("name")
    if not all(isinstance(v, str) and v for v in (api, kind, name)):
        problems.append(f"{where}.ref: needs apiVersion, kind and name")
        return None
    return Ref(str(api), str(kind), str(name), ref.get("namespace"))


def _sink_ref(spec: Any, where: str, sinks: Mapping[str, Sink], problems: list[str]) -> str | None:
    ref = _ref(spec, where, problems)
    if ref is None:
        return None
    if (ref.api_version, ref.kind) != (KAFKA_SINK_API, "KafkaSink") or ref.name not in sinks:
        problems.append(f"{where}: must reference a KafkaSink defined in the manifests, "
                        f"got {ref.api_version}/{ref.kind} {ref.name}")
        return None
    return ref.name


def _sink(where: str, doc: Mapping[str, Any], problems: list[str]) -> Sink:
    name, namespace, _ = _meta(doc)
    spec = _spec(doc, where, problems)
    topic = spec.get("topic")
    if not isinstance(topic, str) or not topic:
        problems.append(f"{where}: spec.topic is required")
        topic = ""
    mode = spec.get("contentMode", "binary")
    if mode not in ("binary", "structured"):
        problems.append(f"{where}: spec.contentMode must be binary or structured")
    partitions = spec.get("numPartitions")
    replicas = spec.get("replicationFactor")
    return Sink(
        name=name, namespace=namespace, topic=topic,
        bootstrap_servers=_servers(spec.get("bootstrapServers"), f"{where}: spec.bootstrapServers",
                                   problems),
        partitions=None if partitions is None else _positive_int(
            partitions, f"{where}: spec.numPartitions", problems),
        replication_factor=None if replicas is None else _positive_int(
            replicas, f"{where}: spec.replicationFactor", problems),
        content_mode=str(mode),
    )


def _broker(where: str, doc: Mapping[str, Any],
            configmaps: Mapping[tuple[str, str], Mapping[str, Any]],
            problems: list[str]) -> Broker:
    name, namespace, annotations = _meta(doc)
    spec = _spec(doc, where, problems)
    if annotations.get(BROKER_CLASS_ANNOTATION) != "Kafka":
        problems.append(f"{where}: the local runner plays Kafka-class Brokers only "
                        f"(annotation {BROKER_CLASS_ANNOTATION}: Kafka)")
    config = spec.get("config") or {}
    key = (str(config.get("namespace") or namespace), str(config.get("name")))
    data: Mapping[str, Any] = {}
    if config.get("kind") != "ConfigMap" or key not in configmaps:
        problems.append(f"{where}: spec.config must reference a ConfigMap defined in the "
                        f"manifests, got {config.get('kind')} {config.get('name')}")
    else:
        data = configmaps[key].get("data") or {}
    partitions = _positive_int(data.get("default.topic.partitions"),
                               f"{where}: config default.topic.partitions", problems)
    replicas = _positive_int(data.get("default.topic.replication.factor"),
                             f"{where}: config default.topic.replication.factor", problems)
    delivery = spec.get("delivery") or {}
    if not isinstance(delivery, Mapping):
        problems.append(f"{where}: spec.delivery must be a mapping")
        delivery = {}
    return Broker(
        name=name, namespace=namespace, partitions=partitions or 1,
        replication_factor=replicas or 1,
        bootstrap_servers=_servers(data.get("bootstrap.servers"),
                                   f"{where}: config bootstrap.servers", problems),
        delivery=MappingProxyType(dict(delivery)),
    )


def _is_broker(ref: Ref | None, broker: Broker) -> bool:
    return (ref is not None and (ref.api_version, ref.kind) == (BROKER_API, "Broker")
            and ref.name == broker.name and (ref.namespace or broker.namespace) == broker.namespace)


def _source(where: str, doc: Mapping[str, Any], broker: Broker, problems: list[str]) -> Source:
    name, namespace, _ = _meta(doc)
    spec = _spec(doc, where, problems)
    topics = spec.get("topics")
    if not isinstance(topics, list) or not topics or not all(isinstance(t, str) for t in topics):
        problems.append(f"{where}: spec.topics must be a non-empty list of topic names")
        topics = []
    sink = _ref(spec.get("sink"), f"{where}: spec.sink", problems)
    if sink is not None and not _is_broker(sink, broker):
        problems.append(f"{where}: spec.sink must reference Broker {broker.name}")
    offset = spec.get("initialOffset", "latest")
    if offset not in ("earliest", "latest"):
        problems.append(f"{where}: spec.initialOffset must be earliest or latest")
        offset = "latest"
    ordering = spec.get("ordering", "ordered")
    if ordering not in ("ordered", "unordered"):
        problems.append(f"{where}: spec.ordering must be ordered or unordered")
    group = spec.get("consumerGroup")
    if not isinstance(group, str) or not group:
        problems.append(f"{where}: spec.consumerGroup is required by the local runner "
                        "(a generated group would lose its offsets on every run)")
        group = ""
    return Source(
        name=name, namespace=namespace, topics=tuple(topics), consumer_group=group,
        initial_offset=offset,
        sink=sink or Ref(BROKER_API, "Broker", broker.name), ordered=ordering == "ordered",
        bootstrap_servers=_servers(spec.get("bootstrapServers"), f"{where}: spec.bootstrapServers",
                                   problems),
    )


def _binding(where: str, doc: Mapping[str, Any], broker: Broker, problems: list[str],
             ) -> Binding | None:
    name, namespace, _ = _meta(doc)
    spec = _spec(doc, where, problems)
    subject = spec.get("subject")
    if not isinstance(subject, Mapping) or (subject.get("apiVersion"), subject.get("kind")) != (
            SERVICE_API, "Service") or not isinstance(subject.get("name"), str):
        problems.append(f"{where}: spec.subject must name a {SERVICE_API} Service (the local "
                        "runner binds functions by name, not by selector)")
        return None
    sink = _ref(spec.get("sink"), f"{where}: spec.sink", problems)
    if sink is not None and not _is_broker(sink, broker):
        problems.append(f"{where}: spec.sink must reference Broker {broker.name}")
    if spec.get("ceOverrides"):
        problems.append(f"{where}: spec.ceOverrides is not played locally")
    return Binding(name, namespace, str(subject["name"]))


def _ping(where: str, doc: Mapping[str, Any], broker: Broker, problems: list[str],
          ) -> Ping | None:
    name, namespace, _ = _meta(doc)
    spec = _spec(doc, where, problems)
    before = len(problems)
    schedule: Cron | None = None
    try:
        schedule = Cron.parse(spec.get("schedule"))  # type: ignore[arg-type]
    except ValueError as exc:
        problems.append(f"{where}: spec.schedule {exc}")
    zone = spec.get("timezone")
    if zone is not None and zone not in UTC_ZONES:
        problems.append(f"{where}: spec.timezone {zone!r}: the local runner plays schedules "
                        "in UTC only")
    sink = _ref(spec.get("sink"), f"{where}: spec.sink", problems)
    if sink is not None and not _is_broker(sink, broker):
        problems.append(f"{where}: spec.sink must reference Broker {broker.name}")
    for unplayed in ("dataBase64", "ceOverrides"):
        if spec.get(unplayed):
            problems.append(f"{where}: spec.{unplayed} is not played locally")
    content_type = spec.get("contentType") or "application/json"
    data: Any = None
    if spec.get("data") is not None:
        if content_type.split(";")[0].strip() != "application/json":
            problems.append(f"{where}: spec.contentType must be application/json locally")
        else:
            try:
                data = json.loads(spec["data"])
            except (TypeError, ValueError) as exc:
                problems.append(f"{where}: spec.data is not JSON: {exc}")
    if len(problems) > before or schedule is None:
        return None
    return Ping(name, namespace, schedule, data, content_type)


def _trigger(where: str, doc: Mapping[str, Any], broker: Broker, sinks: Mapping[str, Sink],
             problems: list[str]) -> Trigger:
    name, namespace, annotations = _meta(doc)
    spec = _spec(doc, where, problems)
    if spec.get("broker") != broker.name or namespace != broker.namespace:
        problems.append(f"{where}: spec.broker must be {broker.name} in namespace "
                        f"{broker.namespace}")
    order = annotations.get(ORDER_ANNOTATION, "unordered")
    if order not in ("ordered", "unordered"):
        problems.append(f"{where}: annotation {ORDER_ANNOTATION} must be ordered or unordered")
    # As in Knative: when `filters` is set, `filter` is ignored.
    selected: Filter = MATCH_ALL
    if spec.get("filters"):
        selected = parse_filters(spec["filters"], f"{where}: spec.filters", problems)
    elif spec.get("filter") is not None:
        attrs = (spec["filter"] or {}).get("attributes") or {}
        if attrs:
            selected = AttributesFilter(string_pairs(attrs, f"{where}: spec.filter.attributes",
                                                      problems, allow_empty=True))
    subscriber = _ref(spec.get("subscriber"), f"{where}: spec.subscriber", problems)
    if subscriber is not None:
        kind = (subscriber.api_version, subscriber.kind)
        if kind == (KAFKA_SINK_API, "KafkaSink"):
            if subscriber.name not in sinks:
                problems.append(f"{where}: subscriber KafkaSink {subscriber.name} is not defined")
        elif kind != (SERVICE_API, "Service"):
            problems.append(f"{where}: subscriber must be a {SERVICE_API} Service or a KafkaSink")
    merged = _merge_delivery(spec.get("delivery"), broker.delivery)
    return Trigger(
        name=name, namespace=namespace, broker=str(spec.get("broker")), filter=selected,
        subscriber=subscriber or Ref(SERVICE_API, "Service", ""),
        delivery=parse_delivery(merged, f"{where}: delivery", sinks, problems),
        ordered=order == "ordered",
    )
