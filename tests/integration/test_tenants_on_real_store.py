"""Scoped query tokens on the real MongoDB-API server (TEST_MONGO_URL), across two query
instances: two functions-framework processes, each with its own caches, and the CLI acting on
the store at MONGO_URL. A revocation, a scope change and a metadata change reach both within
AUTH_CACHE_SECONDS; a bulk import costs a few store commands per thousand rows."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from iot_telemetry.local.cli import main
from iot_telemetry.observability import STORE_COMMANDS
from iot_telemetry.registry_csv import import_rows, read_csv
from iot_telemetry.store import DEVICES
from tests.integration.test_core_on_real_services import real_runtime

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
CACHE_SECONDS = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, token: str) -> tuple[int, object]:
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                                   "Accept": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.fixture
def two_queries(mongo_url: str, mongo_db: str) -> Iterator[list[str]]:
    """Two query instances on the same store, as two Knative revisions' pods would be."""
    env = {**{k: v for k, v in os.environ.items() if k not in ("QUERY_READ_TOKENS",
                                                                "QUERY_OPERATE_TOKENS")},
           "MONGO_URL": mongo_url, "MONGO_DB": mongo_db, "KAFKA_BOOTSTRAP_SERVERS": "memory://",
           "QUERY_AUTH": "token", "AUTH_CACHE_SECONDS": str(CACHE_SECONDS),
           "LOG_LEVEL": "WARNING"}
    procs, urls = [], []
    for _ in range(2):
        port = _free_port()
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "functions_framework", "--target", "query", "--source",
             str(REPO / "functions" / "query.py"), "--signature-type", "http",
             "--host", "127.0.0.1", "--port", str(port)],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        urls.append(f"http://127.0.0.1:{port}/")
    try:
        for url in urls:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urllib.request.urlopen(url + "healthz", timeout=2):
                        break
                except OSError:
                    assert time.monotonic() < deadline, f"{url} did not start"
                    time.sleep(0.2)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(timeout=30)


def test_revocation_and_scope_changes_reach_every_instance(
        mongo_url, mongo_db, two_queries, monkeypatch, tmp_path,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("MONGO_URL", mongo_url)
    monkeypatch.setenv("MONGO_DB", mongo_db)
    (tmp_path / "devices.csv").write_text(
        "id,name,tenant\nacme-1,,acme\nacme-2,,acme\nglobex-1,,globex\n")
    assert main(["devices", "import", str(tmp_path / "devices.csv"), "--discard-tokens"]) == 0
    assert main(["tokens", "add", "acme", "--role", "read",
                 "--scope", '{"metadata": {"tenant": "acme"}}']) == 0
    token = capsys.readouterr().out.splitlines()[-1]

    def seen(url: str) -> list[str] | int:
        status, body = get(url + "devices", token)
        return [d["id"] for d in body["devices"]] if status == 200 else status  # type: ignore[index]

    for url in two_queries:
        assert seen(url) == ["acme-1", "acme-2"]
        assert get(url + "devices/globex-1", token)[0] == 404
        assert get(url + "fleet", token)[1]["devices"] == 2  # type: ignore[index]

    # A metadata change moves a device into the scope, on both instances.
    assert main(["devices", "set-metadata", "globex-1", "tenant=acme"]) == 0
    time.sleep(CACHE_SECONDS + 0.5)
    for url in two_queries:
        assert seen(url) == ["acme-1", "acme-2", "globex-1"]

    # The token's own scope changes.
    assert main(["tokens", "set-scope", "acme", "--scope", '{"device": "acme-2"}']) == 0
    time.sleep(CACHE_SECONDS + 0.5)
    for url in two_queries:
        assert seen(url) == ["acme-2"]

    # Revoked: refused by both within AUTH_CACHE_SECONDS.
    assert main(["tokens", "revoke", "acme"]) == 0
    time.sleep(CACHE_SECONDS + 0.5)
    for url in two_queries:
        assert seen(url) == 401
    capsys.readouterr()
    assert main(["tokens", "list"]) == 0
    assert capsys.readouterr().out == ""


def test_a_bulk_import_costs_commands_per_thousand_rows(mongo_url, mongo_db) -> None:
    # A thousand-row write takes seconds on mongo-java-server on a loaded machine.
    rt = real_runtime(mongo_url, mongo_db, MONGO_TIMEOUT_MS="120000")
    text = "id,name,tenant\n" + "".join(f"dev-{n:05d},,t{n % 3}\n" for n in range(2500))
    rows = read_csv(text)

    def commands() -> float:
        return sum(s.value for m in STORE_COMMANDS.collect() for s in m.samples
                   if s.name.endswith("_total"))

    before = commands()
    first = import_rows(rt.store, rows)
    # 3 reads and 3 writes, and once per process the server's buildInfo (store.bulk asks
    # whether it is FerretDB, which takes one statement per command).
    assert commands() - before == 7 and len(first.created) == 2500
    before = commands()
    again = import_rows(rt.store, rows)
    assert commands() - before == 6 and not again.created and len(again.updated) == 2500
    assert rt.store.collection(DEVICES).count_documents({"token": {"$exists": True}}) == 2500
