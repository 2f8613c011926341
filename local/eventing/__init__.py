"""The local stand-in for Knative Eventing: the eventing/ manifests played without a cluster.

- manifests: eventing/ as a typed model (with schedules and filters);
- delivery: the delivery rules every player shares (retries, dead letters, the ingress);
- memory_broker: the embedded run's in-process Broker;
- dispatcher: real mode's KafkaSource + Kafka Broker + Triggers on real Kafka (with
  kafka_clients and reader);
- pings: PingSource schedules.
"""

from .manifests import Eventing, EventingError, Trigger, load_eventing

__all__ = ["Eventing", "EventingError", "Trigger", "load_eventing"]
