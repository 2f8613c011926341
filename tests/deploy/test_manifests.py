"""Knative manifests: upstream schemas, Knative's webhooks, kustomize, the deploy script,
names across files.

kn, kustomize, kubeconform and knative-validate come from knative/tools/build-tools.sh
(pinned, built from the Go module proxy, cached); a missing tool is built, never a reason
to skip.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from iot_telemetry.rules import parse_rules
from iot_telemetry.settings import Settings

pytestmark = pytest.mark.deploy

REPO = Path(__file__).resolve().parents[2]
KNATIVE = REPO / "knative"
EVENTING = REPO / "eventing"
FUNCTIONS = ("ingest", "aggregate", "alert", "query", "notify")
NAMESPACE = "iot"
IMAGE = "registry.example.com/iot/iot-telemetry:1.2.3"
SERVICE_API = "serving.knative.dev/v1"
KUSTOMIZE_KINDS = {"Kustomization", "Component"}
# kubeconform looks a kind up in these, in order; a kind found in neither fails.
SCHEMA_LOCATIONS = (
    str(KNATIVE / "schemas/kubernetes/{{ .ResourceKind }}{{ .KindSuffix }}.json"),
    str(KNATIVE / "schemas/crds/{{ .Group }}/{{ .ResourceKind }}_{{ .ResourceAPIVersion }}.json"),
)
SECRET_SETTINGS = {"MONGO_URL", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
                   "QUERY_READ_TOKENS", "QUERY_OPERATE_TOKENS"}
# Read by functions-framework (and gunicorn), not by the Settings object.
FRAMEWORK_ENV = {"FUNCTION_TARGET", "FUNCTION_SOURCE", "THREADS"}
# Knative refuses these in a container's env.
RESERVED_ENV = {"PORT", "K_SERVICE", "K_CONFIGURATION", "K_REVISION"}

Doc = dict[str, Any]


def manifest_files() -> list[Path]:
    """Every YAML file under knative/ and eventing/ (whichever exist), not the tools' own."""
    files: list[Path] = []
    for root in (KNATIVE, EVENTING):
        if root.is_dir():
            files += sorted(p for p in root.rglob("*") if p.suffix in (".yaml", ".yml")
                            and not p.is_relative_to(KNATIVE / "tools"))
    return files


def load(path: Path) -> list[Doc]:
    with path.open(encoding="utf-8") as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def load_text(text: str) -> list[Doc]:
    return [d for d in yaml.safe_load_all(text) if d is not None]


def is_kustomization(path: Path) -> bool:
    return any(d.get("kind") in KUSTOMIZE_KINDS for d in load(path))


def rel(path: Path) -> str:
    return str(path.relative_to(REPO))


def base_docs() -> list[Doc]:
    """The documents of knative/base that kustomize applies (not secret.example.yaml)."""
    kustomization = load(KNATIVE / "base/kustomization.yaml")[0]
    return [d for name in kustomization["resources"] for d in load(KNATIVE / "base" / name)]


def eventing_docs() -> list[Doc]:
    return [d for p in manifest_files() if p.is_relative_to(EVENTING) and not is_kustomization(p)
            for d in load(p)]


def find(docs: list[Doc], kind: str, name: str | None = None) -> list[Doc]:
    return [d for d in docs if d.get("kind") == kind
            and (name is None or d["metadata"]["name"] == name)]


def service(name: str) -> Doc:
    (svc,) = [d for d in find(load(KNATIVE / f"base/{name}.yaml"), "Service")
              if d["apiVersion"] == SERVICE_API]
    return svc


def container(svc: Doc) -> Doc:
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    return c  # type: ignore[no-any-return]


def annotations(svc: Doc, prefix: str = "autoscaling.knative.dev/") -> dict[str, str]:
    found = svc["spec"]["template"].get("metadata", {}).get("annotations", {})
    return {k: v for k, v in found.items() if k.startswith(prefix)}


# ---------------------------------------------------------------- tools


@pytest.fixture(scope="session")
def tools() -> Path:
    """bin directory holding kn, kustomize, kubeconform, knative-validate (built once, cached)."""
    done = subprocess.run(["bash", str(KNATIVE / "tools/build-tools.sh")], capture_output=True,
                          text=True, timeout=3600, check=False)
    if done.returncode != 0:
        pytest.fail(f"build-tools.sh failed:\n{done.stderr[-4000:]}", pytrace=False)
    return Path(done.stdout.strip().splitlines()[-1])


def run(cmd: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600,
                          check=False, **kwargs)
    assert done.returncode == 0, f"{' '.join(map(str, cmd))} failed:\n{done.stdout}\n{done.stderr}"
    return done


def kubeconform(tools: Path, *targets: Path, check: bool = True) -> list[dict[str, Any]]:
    """Validate files or directories strictly; the per-resource results."""
    cmd = [str(tools / "kubeconform"), "-strict", "-output", "json", "-verbose"]
    for location in SCHEMA_LOCATIONS:
        cmd += ["-schema-location", location]
    done = subprocess.run([*cmd, *map(str, targets)], capture_output=True, text=True,
                          timeout=600, check=False)
    results: list[dict[str, Any]] = json.loads(done.stdout)["resources"]
    if check:
        bad = [r for r in results if r["status"] != "statusValid"]
        assert done.returncode == 0 and not bad, json.dumps(bad or done.stderr, indent=1)
    return results


def kustomize_build(tools: Path, directory: Path) -> str:
    return run([tools / "kustomize", "build", directory]).stdout


@pytest.fixture(scope="session")
def overlay_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of knative/ (kustomize refuses absolute paths) for overlays written by tests."""
    root = tmp_path_factory.mktemp("overlays")
    shutil.copytree(KNATIVE / "base", root / "base")
    shutil.copytree(KNATIVE / "components", root / "components")
    return root


# ---------------------------------------------------------------- schemas


@pytest.mark.parametrize("path", [p for p in manifest_files() if not is_kustomization(p)],
                         ids=rel)
def test_manifest_validates_against_upstream_schema(tools: Path, path: Path) -> None:
    results = kubeconform(tools, path)
    assert len(results) == len(load(path)), "kubeconform skipped documents"


def test_kustomization_files_hold_nothing_else() -> None:
    """kustomization files are checked by kustomize itself (it rejects unknown fields)."""
    for path in manifest_files():
        kinds = {d.get("kind") for d in load(path)}
        assert not (kinds & KUSTOMIZE_KINDS) or kinds <= KUSTOMIZE_KINDS, rel(path)


def test_unknown_kind_fails_validation(tools: Path, tmp_path: Path) -> None:
    doc = tmp_path / "unknown.yaml"
    doc.write_text("apiVersion: example.com/v1\nkind: Gadget\nmetadata: {name: g}\n")
    (result,) = kubeconform(tools, doc, check=False)
    assert result["status"] == "statusError" and "could not find schema" in result["msg"]


def test_schema_check_rejects_what_the_api_server_would(tools: Path, tmp_path: Path) -> None:
    svc = service("ingest")
    container(svc)["securityContext"]["runAsRoot"] = True  # no such field
    svc["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/min-scale"] = 2
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(svc))
    (result,) = kubeconform(tools, path, check=False)
    assert result["status"] == "statusInvalid"
    assert "runAsRoot" in result["msg"] and "min-scale" in result["msg"]


def test_committed_schemas_match_pinned_upstream() -> None:
    done = subprocess.run(["bash", str(KNATIVE / "tools/fetch-schemas.sh"), "--check"],
                          capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-4000:]


# ---------------------------------------------------------------- kustomize


def test_base_builds_and_validates(tools: Path, tmp_path: Path) -> None:
    out = tmp_path / "base.yaml"
    out.write_text(kustomize_build(tools, KNATIVE / "base"))
    kubeconform(tools, out)
    built = {(d["kind"], d["metadata"]["name"]) for d in load(out)}
    assert {("Service", f) for f in FUNCTIONS} <= built
    assert ("Secret", "iot-credentials") not in built, "secrets are created by the operator"


def test_every_kustomization_builds(tools: Path, overlay_root: Path, tmp_path: Path) -> None:
    """Kustomizations build as they are; each Component through an overlay over the base."""
    found = [p for p in manifest_files() if is_kustomization(p)]
    assert KNATIVE / "base/kustomization.yaml" in found
    for path in found:
        (doc,) = load(path)
        if doc["kind"] == "Kustomization":
            out = kustomize_build(tools, path.parent)
        else:
            component = path.parent.relative_to(KNATIVE)
            overlay = overlay_root / f"with-{path.parent.name}"
            overlay.mkdir(exist_ok=True)
            (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
                "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
                "resources": ["../base"], "components": [f"../{component}"]}))
            out = kustomize_build(tools, overlay)
        target = tmp_path / f"{rel(path).replace('/', '_')}.out.yaml"
        target.write_text(out)
        kubeconform(tools, target)


def test_monitoring_component_scrapes_every_function(tools: Path, overlay_root: Path) -> None:
    overlay = overlay_root / "monitoring-check"
    overlay.mkdir()
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump({
        "apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
        "resources": ["../base"], "components": ["../components/monitoring"],
        "images": [{"name": "iot-telemetry", "newName": IMAGE.rsplit(":", 1)[0],
                    "newTag": IMAGE.rsplit(":", 1)[1]}]}))
    docs = load_text(kustomize_build(tools, overlay))
    (monitor,) = find(docs, "PodMonitor")
    (selector,) = monitor["spec"]["selector"]["matchExpressions"]
    assert selector["key"] == "serving.knative.dev/service"
    assert sorted(selector["values"]) == sorted(FUNCTIONS)
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("user-port", "/metrics")
    assert {container(s)["image"] for s in find(docs, "Service")} == {IMAGE}


# ---------------------------------------------------------------- the Services


@pytest.mark.parametrize("name", FUNCTIONS)
def test_service_runs_its_function_safely(name: str) -> None:
    svc = service(name)
    spec = svc["spec"]["template"]["spec"]
    c = container(svc)
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["FUNCTION_TARGET"] == name
    assert env["FUNCTION_SOURCE"] == f"/app/functions/{name}.py"
    source = (REPO / "functions" / f"{name}.py").read_text(encoding="utf-8")
    # The event path is served in functions-framework's ASGI mode, which an `aio` function
    # selects under the image's one command; query and notify stay Flask functions.
    pattern = (rf"^def {name}\(" if name in ("query", "notify")
               else rf"^@aio\.http\nasync def {name}\(")
    assert re.search(pattern, source, re.M), f"functions/{name}.py has no {name}()"
    variables = {v for v, _, _ in Settings.variables()}
    assert set(env) <= variables | FRAMEWORK_ENV and not set(env) & RESERVED_ENV
    assert c["envFrom"] == [{"configMapRef": {"name": "iot-config"}},
                            {"secretRef": {"name": "iot-credentials"}}]
    assert c["resources"] == {"requests": {"cpu": "100m", "memory": "128Mi"},
                              "limits": {"cpu": "500m", "memory": "512Mi"}}
    (port,) = c["ports"]
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": port["containerPort"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": port["containerPort"]}
    assert c["securityContext"] == {
        "runAsNonRoot": True, "runAsUser": 10001, "readOnlyRootFilesystem": True,
        "allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"}}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]], "read-only root needs a writable /tmp"
    assert set(mounts.values()) == set(volumes), "Knative rejects unmounted volumes"
    if "ALERT_RULES_FILE" in env:
        rules_dir = os.path.dirname(env["ALERT_RULES_FILE"])
        assert volumes[mounts[rules_dir]]["configMap"]["name"] == "iot-alert-rules"


@pytest.mark.parametrize("name", FUNCTIONS)
def test_service_autoscaling_is_consistent(name: str) -> None:
    svc = service(name)
    scale = annotations(svc)
    spec = svc["spec"]["template"]["spec"]
    assert scale["autoscaling.knative.dev/class"] == "kpa.autoscaling.knative.dev"
    assert scale["autoscaling.knative.dev/metric"] in ("concurrency", "rps")
    low, first, high = (int(scale[f"autoscaling.knative.dev/{k}"])
                        for k in ("min-scale", "initial-scale", "max-scale"))
    assert 0 <= low <= first <= high
    assert int(scale["autoscaling.knative.dev/target"]) <= spec["containerConcurrency"]
    env = {e["name"]: e.get("value") for e in container(svc)["env"]}
    assert env["THREADS"] == str(spec["containerConcurrency"]), "one thread per admitted request"
    # The local real mode runs the function with the same threads.
    from iot_telemetry.local.layout import THREADS

    assert THREADS[name] == int(env["THREADS"])
    # Scale settings live in the revision template only: deploy.sh reads them from there.
    assert not any(k.startswith("autoscaling.") for k in svc["metadata"].get("annotations", {}))


def test_seed_replica_floors_and_ceilings_are_kept() -> None:
    seed = {"ingest": (2, 10), "aggregate": (1, 5), "query": (2, 8)}
    for name, (low, high) in seed.items():
        scale = annotations(service(name))
        assert int(scale["autoscaling.knative.dev/min-scale"]) == low
        assert int(scale["autoscaling.knative.dev/max-scale"]) == high
    assert int(annotations(service("alert"))["autoscaling.knative.dev/min-scale"]) >= 1


# ---------------------------------------------------------------- configuration


def test_config_map_holds_settings_and_no_secrets() -> None:
    (config,) = find(base_docs(), "ConfigMap", "iot-config")
    variables = {v for v, _, _ in Settings.variables()}
    assert set(config["data"]) <= variables, set(config["data"]) - variables
    assert not set(config["data"]) & SECRET_SETTINGS
    (example,) = load(KNATIVE / "base/secret.example.yaml")
    assert example["metadata"]["name"] == "iot-credentials"
    assert set(example["stringData"]) == SECRET_SETTINGS
    check = {**config["data"], **example["stringData"]}
    Settings.from_environ({}, {k: v for k, v in check.items() if v})


def test_notify_channels_config_map_parses_and_reaches_notify_only() -> None:
    (channels,) = find(base_docs(), "ConfigMap", "iot-notify-channels")
    Settings.from_environ({}, {"NOTIFY_CHANNELS": channels["data"]["channels.json"]})
    for name in FUNCTIONS:
        refs = [e["valueFrom"]["configMapKeyRef"] for e in container(service(name))["env"]
                if e["name"] == "NOTIFY_CHANNELS"]
        assert refs == ([{"name": "iot-notify-channels", "key": "channels.json"}]
                        if name == "notify" else [])


def test_alert_rules_config_map_parses() -> None:
    (rules,) = find(base_docs(), "ConfigMap", "iot-alert-rules")
    assert parse_rules(json.loads(rules["data"]["alert-rules.json"]))


# ---------------------------------------------------------------- names across files


def test_everything_lives_in_one_namespace() -> None:
    docs = base_docs() + eventing_docs()
    (namespace,) = find(base_docs(), "Namespace")
    assert namespace["metadata"]["name"] == NAMESPACE
    cluster_scoped = {"Namespace", "ClusterDomainClaim"}
    for d in docs:
        if d["kind"] not in cluster_scoped:
            assert d["metadata"].get("namespace") == NAMESPACE, (d["kind"], d["metadata"]["name"])


def test_domain_mappings_point_at_services_and_have_claims() -> None:
    docs = base_docs()
    mappings = {d["metadata"]["name"]: d["spec"]["ref"]["name"]
                for d in find(docs, "DomainMapping")}
    assert mappings == {"api.iot.local": "ingest", "dashboard.iot.local": "query"}
    claims = {d["metadata"]["name"]: d["spec"]["namespace"]
              for d in find(docs, "ClusterDomainClaim")}
    assert claims == dict.fromkeys(mappings, NAMESPACE)


def test_eventing_references_resolve() -> None:
    events = eventing_docs()
    if not events:
        pytest.fail("eventing/ holds no manifests", pytrace=False)
    services = {d["metadata"]["name"] for d in find(base_docs(), "Service")
                if d["apiVersion"] == SERVICE_API}
    brokers = {d["metadata"]["name"]: d for d in find(events, "Broker")}
    sinks = {d["metadata"]["name"] for d in find(events, "KafkaSink")}
    known = {("Service", SERVICE_API): services, ("KafkaSink", None): sinks,
             ("Broker", None): set(brokers)}

    def resolves(ref: Doc) -> bool:
        names = known.get((ref["kind"], ref["apiVersion"] if ref["kind"] == "Service" else None))
        return names is not None and ref["name"] in names

    for trigger in find(events, "Trigger"):
        assert trigger["spec"]["broker"] in brokers
        assert resolves(trigger["spec"]["subscriber"]["ref"]), trigger["metadata"]["name"]
        dead = trigger["spec"].get("delivery", {}).get("deadLetterSink")
        assert dead is None or resolves(dead["ref"]), trigger["metadata"]["name"]
    for source in find(events, "KafkaSource") + find(events, "PingSource"):
        assert resolves(source["spec"]["sink"]["ref"])
    # Each PingSource's ticks (Knative's type and source) reach the one function sweeping:
    # offline alerts in alert, rollup retention in aggregate, flood summaries in notify.
    sweepers = {}
    for ping in find(events, "PingSource"):
        source = f"/apis/v1/namespaces/{NAMESPACE}/pingsources/{ping['metadata']['name']}"
        sweepers[ping["metadata"]["name"]] = [
            t["spec"]["subscriber"]["ref"]["name"] for t in find(events, "Trigger")
            if t["spec"]["filter"]["attributes"] == {
                "type": "dev.knative.sources.ping", "source": source}]
    assert sweepers == {"offline-sweep": ["alert"], "rollup-retention": ["aggregate"],
                        "notify-summaries": ["notify"]}
    for broker in brokers.values():
        assert broker["metadata"]["annotations"]["eventing.knative.dev/broker.class"] == "Kafka"
    subscribed = {(t["spec"]["filter"]["attributes"]["type"],
                   t["spec"]["subscriber"]["ref"]["name"]) for t in find(events, "Trigger")}
    assert {("iot.telemetry.v1", "aggregate"), ("iot.telemetry.v1", "alert")} <= subscribed
    assert "iot-broker" in brokers and "iot-dead-letters" in sinks


def test_alert_and_query_get_the_broker_as_k_sink() -> None:
    # alert replies with one alert event and POSTs the others of the same delivery to
    # K_SINK, query POSTs the `acknowledged` events there: without a SinkBinding nothing
    # sets it on the cluster and they are lost.
    events = eventing_docs()
    bindings = [(d["spec"]["subject"], d["spec"]["sink"]["ref"])
                for d in find(events, "SinkBinding")]
    broker = {"apiVersion": "eventing.knative.dev/v1", "kind": "Broker", "name": "iot-broker"}
    assert bindings == [({"apiVersion": SERVICE_API, "kind": "Service", "name": name}, broker)
                        for name in ("alert", "query")]
    assert {d["metadata"]["name"] for d in find(base_docs(), "Service")
            if d["apiVersion"] == SERVICE_API} >= {"alert", "query"}
    [namespace] = find(base_docs(), "Namespace")
    assert namespace["metadata"]["labels"]["bindings.knative.dev/include"] == "true"


def test_kafka_settings_agree_with_eventing() -> None:
    events = eventing_docs()
    (config,) = find(base_docs(), "ConfigMap", "iot-config")
    servers = sorted(config["data"]["KAFKA_BOOTSTRAP_SERVERS"].split(","))
    sources = find(events, "KafkaSource")
    assert any(config["data"]["KAFKA_TOPIC"] in s["spec"]["topics"] for s in sources)
    for d in sources + find(events, "KafkaSink"):
        assert sorted(d["spec"]["bootstrapServers"]) == servers, d["metadata"]["name"]
    for broker in find(events, "Broker"):
        ref = broker["spec"]["config"]
        (broker_config,) = find(events, ref["kind"], ref["name"])
        assert sorted(broker_config["data"]["bootstrap.servers"].split(",")) == servers


# ---------------------------------------------------------------- deploy.sh


@pytest.fixture(scope="session")
def rendered(tools: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    env = {**os.environ, "KN": str(tools / "kn"), "PATH": f"{tools}:{os.environ['PATH']}"}
    env.pop("KUBECONFIG", None)
    run(["bash", KNATIVE / "deploy.sh", "--dry-run", out, "--image", IMAGE], env=env)
    return out


def test_dry_run_claims_to_create_nothing(tools: Path, tmp_path: Path) -> None:
    env = {**os.environ, "KN": str(tools / "kn"), "PATH": f"{tools}:{os.environ['PATH']}"}
    env.pop("KUBECONFIG", None)
    done = run(["bash", KNATIVE / "deploy.sh", "--dry-run", tmp_path, "--image", IMAGE], env=env)
    output = done.stdout + done.stderr
    assert "created" not in output.lower(), output
    assert f"rendered Service ingest -> {tmp_path}/ingest.yaml" in output


def test_dry_run_renders_every_function_and_validates(tools: Path, rendered: Path) -> None:
    assert sorted(p.name for p in rendered.iterdir()) == sorted(
        [f"{f}.yaml" for f in FUNCTIONS] + ["base.yaml", "eventing.yaml"])
    results = kubeconform(tools, rendered)
    kinds = [r["kind"] for r in results]
    assert kinds.count("Service") == len(FUNCTIONS)
    assert kinds.count("SinkBinding") == 2  # alert-events, query-events


def _comparable(svc: Doc) -> Doc:
    """The parts of a Service a deploy must get right, in a canonical form."""
    template = svc["spec"]["template"]
    spec = json.loads(json.dumps(template["spec"]))
    for c in spec["containers"]:
        c["env"] = sorted(c.get("env", []), key=lambda e: e["name"])
    spec["volumes"] = sorted(spec.get("volumes", []), key=lambda v: v["name"])
    return {
        "name": svc["metadata"]["name"],
        "namespace": svc["metadata"]["namespace"],
        "labels": svc["metadata"].get("labels", {}),
        "revision_annotations": {k: v for k, v in template["metadata"]["annotations"].items()
                                 if not k.startswith("client.knative.dev/")},
        "spec": spec,
    }


@pytest.mark.parametrize("name", FUNCTIONS)
def test_dry_run_service_equals_manifest(rendered: Path, name: str) -> None:
    (kn_service,) = load(rendered / f"{name}.yaml")
    manifest = service(name)
    container(manifest)["image"] = IMAGE
    assert container(kn_service)["image"] == IMAGE
    assert _comparable(kn_service) == _comparable(manifest)


def test_dry_run_applies_the_rest_of_the_base(tools: Path, rendered: Path) -> None:
    def key(d: Doc) -> tuple[str, str]:
        return d["kind"], d["metadata"]["name"]

    whole = load_text(kustomize_build(tools, KNATIVE / "base"))
    expected = sorted((d for d in whole if d["kind"] != "Service"), key=key)
    assert sorted(load(rendered / "base.yaml"), key=key) == expected
    assert sorted(load(rendered / "eventing.yaml"), key=key) == sorted(eventing_docs(), key=key)


def _walk(node: Any) -> Iterator[Any]:
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from _walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from _walk(v)


def test_rendered_services_reference_only_shipped_config(rendered: Path) -> None:
    config_maps = {d["metadata"]["name"] for d in find(load(rendered / "base.yaml"), "ConfigMap")}
    for name in FUNCTIONS:
        for node in _walk(load(rendered / f"{name}.yaml")):
            if isinstance(node, dict) and "configMapRef" in node:
                assert node["configMapRef"]["name"] in config_maps
            if isinstance(node, dict) and "configMap" in node:
                assert node["configMap"]["name"] in config_maps
            if isinstance(node, dict) and "secretRef" in node:
                assert node["secretRef"]["name"] == "iot-credentials"


STUB_KUBECTL = """#!/usr/bin/env bash
echo "kubectl $*" >> "$STUB_LOG"
case "$1" in
  config) echo stub-context ;;
  get) exit "${STUB_SECRET_MISSING:-0}" ;;
  apply) [ "$2 $3" = "-f -" ] && cat > "$STUB_DIR/applied-base.yaml" ;;
esac
exit 0
"""
STUB_KN = """#!/usr/bin/env bash
echo "kn $*" >> "$STUB_LOG"
"""


def _deploy_with_stubs(tmp_path: Path, **env: str) -> tuple[subprocess.CompletedProcess[str],
                                                           list[str]]:
    """Run deploy.sh against stand-ins for kubectl and kn that record their calls."""
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "kubectl").write_text(STUB_KUBECTL)
    (stubs / "kn").write_text(STUB_KN)
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    log = tmp_path / "calls.log"
    log.touch()
    done = subprocess.run(
        ["bash", str(KNATIVE / "deploy.sh"), "--image", IMAGE], capture_output=True, text=True,
        timeout=600, check=False,
        env={**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "KN": str(stubs / "kn"),
             "STUB_LOG": str(log), "STUB_DIR": str(tmp_path), **env})
    return done, log.read_text().splitlines()


def test_deploy_applies_base_then_services_with_kn_then_eventing(
        tools: Path, rendered: Path, tmp_path: Path) -> None:
    done, calls = _deploy_with_stubs(tmp_path)
    assert done.returncode == 0, done.stderr
    steps = [c.split()[:3] for c in calls if not c.startswith("kubectl config")]
    eventing = (["kubectl", "apply", "-k"] if (EVENTING / "kustomization.yaml").exists()
                else ["kubectl", "apply", "-f"])
    assert steps == [["kubectl", "apply", "-f"], ["kubectl", "get", "secret"],
                     *[["kn", "service", "apply"]] * len(FUNCTIONS), eventing]
    assert load(tmp_path / "applied-base.yaml") == load(rendered / "base.yaml")
    for name, call in zip(FUNCTIONS, [c for c in calls if c.startswith("kn ")], strict=True):
        assert call.startswith(f"kn service apply {name} --filename ")
        assert f"--image {IMAGE}" in call and "--namespace iot" in call


def test_deploy_stops_before_kn_without_the_secret(tools: Path, tmp_path: Path) -> None:
    done, calls = _deploy_with_stubs(tmp_path, STUB_SECRET_MISSING="1")
    assert done.returncode != 0
    assert "kubectl create secret generic iot-credentials" in done.stderr
    assert not [c for c in calls if c.startswith("kn ")]


# ---------------------------------------------------------------- Knative's own validation
#
# The schemas say what fields exist; Knative's admission webhooks say which values they
# take. knative-validate (knative/tools/validate/) runs their SetDefaults and Validate
# from the pinned Knative modules, offline, on every Knative object of the files given.

# Knative kinds no webhook validates (their CRD schema is all there is).
SCHEMA_ONLY_KINDS = {"ClusterDomainClaim"}


def knative_validate(tools: Path, *files: Path,
                     config: Path | None = None) -> subprocess.CompletedProcess[str]:
    cmd = [str(tools / "knative-validate"), "-v"]
    if config is not None:
        cmd += ["-config", str(config)]
    return subprocess.run([*cmd, *map(str, files)], capture_output=True, text=True,
                          timeout=600, check=False, cwd=REPO)


def webhook_checked(paths: list[Path], shown: dict[Path, str]) -> set[str]:
    """The line knative-validate prints for each Knative object of paths that passed."""
    expected = set()
    for path in paths:
        for index, doc in enumerate(load(path), start=1):
            group = doc.get("apiVersion", "").rpartition("/")[0]
            if group.endswith("knative.dev") and doc["kind"] not in SCHEMA_ONLY_KINDS:
                meta = doc["metadata"]
                expected.add(f"{shown[path]}: document {index}: {doc['kind']} "
                             f"{meta['namespace']}/{meta['name']}: valid")
    return expected


def passed(done: subprocess.CompletedProcess[str]) -> set[str]:
    return {line.partition(" (")[0] for line in done.stdout.splitlines()
            if re.search(r": valid \([a-z, -]+\)$", line)}


def findings(done: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in done.stdout.splitlines()
            if not re.search(r": (valid|skipped) \(.*\)$", line)]


def test_knative_webhooks_accept_every_manifest(tools: Path) -> None:
    paths = [p for p in manifest_files() if not is_kustomization(p)]
    done = knative_validate(tools, *(p.relative_to(REPO) for p in paths))
    assert done.returncode == 0 and not findings(done), done.stdout + done.stderr
    expected = webhook_checked(paths, {p: rel(p) for p in paths})
    assert expected <= passed(done), sorted(expected - passed(done))
    kinds = {line.split(": ")[2].split()[0] for line in expected}
    assert {"Service", "DomainMapping", "Broker", "Trigger", "KafkaSource",
            "KafkaSink"} <= kinds


def test_knative_webhooks_accept_what_deploy_renders(tools: Path, rendered: Path) -> None:
    paths = sorted(rendered.iterdir())
    done = knative_validate(tools, *paths)
    assert done.returncode == 0 and not findings(done), done.stdout + done.stderr
    expected = webhook_checked(paths, {p: str(p) for p in paths})
    assert expected <= passed(done), sorted(expected - passed(done))
    assert sum(": Service iot/" in line for line in expected) == len(FUNCTIONS)


def test_knative_webhooks_accept_what_kustomize_builds(tools: Path) -> None:
    built = kustomize_build(tools, KNATIVE / "base")
    done = subprocess.run([str(tools / "knative-validate"), "-v", "-"], input=built,
                          capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0 and not findings(done), done.stdout + done.stderr
    valid = [line for line in passed(done) if line.startswith("(stdin): document ")]
    assert sum(": Service iot/" in line for line in valid) == len(FUNCTIONS), done.stdout
    assert sum(": DomainMapping iot/" in line for line in valid) == 2, done.stdout


def _ingest(edit: Callable[[Doc], None]) -> Doc:
    svc = service("ingest")
    edit(svc)
    return svc


def _set_annotations(**values: str) -> Callable[[Doc], None]:
    def edit(svc: Doc) -> None:
        svc["spec"]["template"]["metadata"]["annotations"].update(
            {f"autoscaling.knative.dev/{k.replace('_', '-')}": v for k, v in values.items()})
    return edit


def _eventing(kind: str, name: str, edit: Callable[[Doc], None]) -> Doc:
    (doc,) = find(eventing_docs(), kind, name)
    edit(doc)
    return doc


def _trigger_delivery(**values: Any) -> Callable[[Doc], None]:
    return lambda t: t["spec"]["delivery"].update(values)


def _drop(key: str) -> Callable[[Doc], None]:
    return lambda d: d["spec"].pop(key)


# Each case: one invalid object, what Knative's webhook says about it, and whether the
# schema check (kubeconform) refuses it too; most only the webhooks refuse.
INVALID: dict[str, tuple[Callable[[], Doc], str, bool]] = {
    "target-negative": (
        lambda: _ingest(_set_annotations(target="-1")),
        "target -1 should be at least 0.01: "
        "spec.template.metadata.annotations.autoscaling.knative.dev/target", False),
    "min-scale-above-max-scale": (
        lambda: _ingest(_set_annotations(min_scale="5", max_scale="2")),
        "max-scale=2 is less than min-scale=5", False),
    "container-concurrency-2000": (
        lambda: _ingest(lambda s: s["spec"]["template"]["spec"].update(containerConcurrency=2000)),
        "expected 0 <= 2000 <= 1000: spec.template.spec.containerConcurrency", False),
    "timeout-beyond-max": (
        lambda: _ingest(lambda s: s["spec"]["template"]["spec"].update(timeoutSeconds=601)),
        "expected 0 <= 601 <= 600: spec.template.spec.timeoutSeconds", False),
    # What the manifests had until knative-validate found it.
    "readiness-timeout-without-period": (
        lambda: _ingest(lambda s: container(s)["readinessProbe"].update(timeoutSeconds=3)),
        "timeoutSeconds is disallowed when periodSeconds is zero: "
        "spec.template.spec.containers[0].readinessProbe.timeoutSeconds", False),
    "backoff-delay-not-iso8601": (
        lambda: _eventing("Trigger", "alert", _trigger_delivery(backoffDelay="5s")),
        "invalid value: 5s: spec.delivery.backoffDelay", False),
    "delivery-timeout-not-iso8601": (
        lambda: _eventing("Trigger", "alert", _trigger_delivery(timeout="30")),
        "invalid value: 30: spec.delivery.timeout", False),
    "filter-invalid-cesql": (
        lambda: _eventing("Trigger", "alert",
                          lambda t: t["spec"].update(filters=[{"cesql": "type = 'a' AND ("}])),
        "spec.filters[0].cesql", False),
    "kafka-source-without-bootstrap-servers": (
        lambda: _eventing("KafkaSource", "iot-telemetry-source", _drop("bootstrapServers")),
        "[eventing-kafka] missing field(s): spec.bootstrapServers", True),
    "kafka-sink-replication-factor-zero": (
        lambda: _eventing("KafkaSink", "iot-alerts",
                          lambda s: s["spec"].update(replicationFactor=0)),
        "[eventing-kafka] invalid value: 0: spec.replicationFactor", False),
    # The Kafka Broker's own webhook, beside Eventing's.
    "kafka-broker-config-not-a-config-map": (
        lambda: _eventing("Broker", "iot-broker",
                          lambda b: b["spec"]["config"].update(kind="Secret")),
        "[eventing-kafka] invalid value: Secret: spec.config.kind", False),
    # A Knative kind the tool has no webhook type for must not pass unchecked.
    "unsupported-knative-kind": (
        lambda: {"apiVersion": "sinks.knative.dev/v1alpha1", "kind": "JobSink",
                 "metadata": {"name": "job", "namespace": NAMESPACE}, "spec": {}},
        "has no offline validation here", False),
}


@pytest.mark.parametrize("case", INVALID)
def test_knative_webhooks_refuse_invalid_objects(tools: Path, tmp_path: Path, case: str) -> None:
    make, message, schema_refuses = INVALID[case]
    bad = make()
    path = tmp_path / "bad.yaml"
    # A valid document first: the finding must name the right document.
    path.write_text(yaml.safe_dump_all([service("query"), bad]))
    status = {r["name"]: r["status"] for r in kubeconform(tools, path, check=False)}
    assert status["query"] == "statusValid"
    assert (status[bad["metadata"]["name"]] != "statusValid") == schema_refuses, status
    done = knative_validate(tools, path)
    assert done.returncode == 1, done.stdout + done.stderr
    where = f"{path}: document 2: {bad['kind']} {NAMESPACE}/{bad['metadata']['name']}: "
    errors = findings(done)
    assert errors and all(line.startswith(where) for line in errors), done.stdout
    assert any(message in line for line in errors), done.stdout


def test_knative_validate_uses_the_cluster_config_given(tools: Path, tmp_path: Path) -> None:
    """-config replaces the release's ConfigMaps, in kubectl's List form too."""
    def config_map(namespace: str, name: str, **data: str) -> Doc:
        return {"apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1"},
                "data": {"_example": "ignored", **data}}

    config = tmp_path / "cluster-config.yaml"
    config.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": [
        config_map("knative-eventing", "config-features", **{"delivery-timeout": "disabled"}),
        config_map("knative-serving", "config-autoscaler",
                   **{"max-scale-limit": "5", "max-scale": "5"})]}))
    triggers, ingest = EVENTING / "triggers.yaml", KNATIVE / "base/ingest.yaml"
    done = knative_validate(tools, triggers, ingest, config=config)
    assert done.returncode == 1
    errors = findings(done)
    assert len(errors) == len(load(triggers)) + 1, errors
    assert all("must not set the field(s): spec.delivery.timeout" in e for e in errors[:-1])
    assert errors[-1].endswith("expected 1 <= 10 <= 5: "
                               "spec.template.metadata.annotations.autoscaling.knative.dev/max-scale")

    config.write_text(yaml.safe_dump(config_map("knative-serving", "config-autoscaler",
                                                **{"max-scale-limit": "-5"})))
    done = knative_validate(tools, ingest, config=config)
    assert done.returncode == 2 and "cannot load the Knative configuration" in done.stderr

    config.write_text(yaml.safe_dump(config_map("knative-eventing", "config-featurez")))
    done = knative_validate(tools, ingest, config=config)
    assert done.returncode == 2 and "config-featurez is not one the webhooks read" in done.stderr
