"""`devices import|export` and `tokens` against the embedded local run, as an operator types
them: whole files checked before any write, idempotent, tokens only where asked."""

from __future__ import annotations

import json
import stat
import urllib.request
from pathlib import Path

import pytest

from iot_telemetry.local.cli import main
from iot_telemetry.registry_csv import read_csv
from iot_telemetry.runtime import get_runtime
from iot_telemetry.store import DEVICES, QUERY_TOKENS
from tests.unit.test_cli import _post, registered_run  # noqa: F401  (a fixture)

FILE = ("id,name,location,units,tenant\n"
        "acme-1,Boiler,basement,temperature=celsius,acme\n"
        "acme-2,,roof,,acme\n"
        '"globex-1","Press, hall 2",hall 2,humidity=%;temperature=celsius,globex\n')


def registry() -> dict[str, dict]:
    return {d["_id"]: d for d in get_runtime().store.collection(DEVICES).find({})}


def test_import_registers_then_updates_and_writes_tokens_only_to_the_file(
        registered_run, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:  # noqa: F811
    (tmp_path / "devices.csv").write_text(FILE)
    out = tmp_path / "tokens.csv"
    assert main(["devices", "import", str(tmp_path / "devices.csv"),
                 "--tokens-out", str(out)]) == 0
    said = capsys.readouterr()
    assert "3 registered, 0 updated" in said.out
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    tokens = dict(line.split(",") for line in out.read_text().splitlines()[1:])
    assert sorted(tokens) == ["acme-1", "acme-2", "globex-1"]
    for token in tokens.values():
        assert token not in said.out + said.err
    assert _post(registered_run.url("ingest"), "acme-1", tokens["acme-1"]) == 202
    first = registry()
    assert first["globex-1"]["name"] == "Press, hall 2"
    assert first["globex-1"]["metadata"] == {
        "location": "hall 2", "tenant": "globex",
        "units": {"humidity": "%", "temperature": "celsius"}}
    assert first["acme-2"]["name"] == "acme-2" and "units" not in first["acme-2"]["metadata"]

    # Again: nothing new, no token needed, nothing changed.
    assert main(["devices", "import", str(tmp_path / "devices.csv")]) == 0
    assert "0 registered, 3 updated" in capsys.readouterr().out
    again = registry()
    assert {k: {f: v for f, v in d.items() if f not in ("last_seen", "first_seen", "latest",
                                                        "last_event_time")}
            for k, d in again.items()} == {
        k: {f: v for f, v in d.items() if f not in ("last_seen", "first_seen", "latest",
                                                    "last_event_time")}
        for k, d in first.items()}

    # An empty cell removes its key; keys of columns the file lacks stay.
    assert main(["devices", "set-metadata", "acme-1", "site=7"]) == 0
    (tmp_path / "change.csv").write_text("id,location\nacme-1,\n")
    assert main(["devices", "import", str(tmp_path / "change.csv")]) == 0
    assert registry()["acme-1"]["metadata"] == {
        "tenant": "acme", "site": "7", "units": {"temperature": "celsius"}}


def test_export_writes_back_what_import_reads(registered_run, tmp_path: Path,  # noqa: F811
                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "devices.csv").write_text(FILE)
    assert main(["devices", "import", str(tmp_path / "devices.csv"), "--discard-tokens"]) == 0
    capsys.readouterr()
    assert main(["devices", "export"]) == 0
    exported = capsys.readouterr().out
    assert exported.splitlines()[0] == "id,name,location,units,tenant"
    assert "token" not in exported and "hash" not in exported
    assert [(r.id, r.name or r.id, r.metadata) for r in read_csv(exported)] == [
        (r.id, r.name or r.id, r.metadata) for r in read_csv(FILE)]
    before = registry()
    (tmp_path / "back.csv").write_text(exported)
    assert main(["devices", "import", str(tmp_path / "back.csv")]) == 0
    assert registry() == before


@pytest.mark.parametrize(("text", "named"), [
    ("id,name\nok-1,a\nbad id,b\n", "line 3: id 'bad id' must match"),
    ("id,name\nok-1,a\nok-2,b,extra\n", "line 3: 3 fields, the header has 2"),
    ("id,name\nok-1,a\nok-1,b\n", "line 3: id 'ok-1' is also on line 2"),
    ("name\nx\n", "line 1: the header has no `id` column"),
    ("id,units\nok-1,temperature\n", "line 2: units: 'temperature' is not METRIC=UNIT"),
    ("id,a.b\nok-1,x\n", "line 1: column 'a.b' is not a metadata key"),
    ("id,name\nok-1,\"open quote\n", "not CSV"),
    ("", "the file is empty"),
])
def test_a_bad_file_imports_nothing_and_names_each_bad_row(
        registered_run, tmp_path: Path, capsys: pytest.CaptureFixture[str],  # noqa: F811
        text: str, named: str) -> None:
    (tmp_path / "bad.csv").write_text(text)
    out = tmp_path / "tokens.csv"
    assert main(["devices", "import", str(tmp_path / "bad.csv"), "--tokens-out", str(out)]) == 1
    assert named in capsys.readouterr().err
    assert registry() == {} and not out.exists()


def test_new_devices_need_somewhere_for_their_tokens(registered_run, tmp_path: Path,  # noqa: F811
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "devices.csv").write_text(FILE)
    assert main(["devices", "import", str(tmp_path / "devices.csv")]) == 1
    assert "--tokens-out" in capsys.readouterr().err
    assert registry() == {}
    (tmp_path / "taken").write_text("x")
    assert main(["devices", "import", str(tmp_path / "devices.csv"),
                 "--tokens-out", str(tmp_path / "taken")]) == 2
    assert "exists already" in capsys.readouterr().err and registry() == {}
    assert main(["devices", "import", str(tmp_path / "devices.csv"), "--print-tokens"]) == 0
    said = capsys.readouterr()
    assert said.out.startswith("id,token\n") and len(said.out.splitlines()) == 4


def test_tokens_commands_on_the_local_run(registered_run, monkeypatch,  # noqa: F811
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["tokens", "add", "acme-viewer", "--role", "read",
                 "--scope", '{"prefix": "acme-"}']) == 0
    token = capsys.readouterr().out.splitlines()[-1]
    assert token.startswith("acme-viewer.")
    for bad, named in ((["--role", "admin"], "role 'admin'"),
                       (["--role", "read", "--scope", '{"tenant": "a"}'], "scope.tenant"),
                       (["--role", "read", "--scope", "{"], "--scope: not JSON")):
        assert main(["tokens", "add", "other", *bad]) == 1
        assert named in capsys.readouterr().err
    assert main(["tokens", "list"]) == 0
    listed = capsys.readouterr().out
    assert "acme-viewer" in listed and '{"prefix": "acme-"}' in listed
    assert token.partition(".")[2] not in listed and "other" not in listed
    assert get_runtime().store.collection(QUERY_TOKENS).count_documents({}) == 1
    assert main(["tokens", "set-scope", "acme-viewer", "--every-device"]) == 0
    assert main(["tokens", "revoke", "acme-viewer"]) == 0
    assert main(["tokens", "revoke", "acme-viewer"]) == 1
    assert "token 'acme-viewer' not found" in capsys.readouterr().err


def test_the_local_token_routes_answer_on_the_local_run_only(registered_run) -> None:  # noqa: F811
    """The management routes are the local run's (the deployed query function has none)."""
    from tests.conftest import Apps

    url = registered_run.url("query") + "local/tokens"
    with urllib.request.urlopen(url, timeout=10) as response:
        assert json.loads(response.read()) == {"tokens": []}
    assert Apps().query.get("/local/tokens").status_code == 404


def test_a_store_outage_halfway_keeps_the_tokens_of_what_was_registered(
        runtime, monkeypatch) -> None:
    """Each row is one write; rows written before an outage keep their tokens, and importing
    the file again registers the rest (and nothing twice)."""
    from iot_telemetry import registry_csv
    from iot_telemetry.errors import DependencyUnavailable

    monkeypatch.setattr(registry_csv, "CHUNK", 2)
    rows = read_csv("id,tenant\n" + "".join(f"d-{n},t\n" for n in range(5)))
    real_bulk, calls = runtime.store.bulk, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise DependencyUnavailable("store down", 5)
        return real_bulk(*args, **kwargs)

    monkeypatch.setattr(runtime.store, "bulk", failing)
    outcome = registry_csv.ImportOutcome()
    with pytest.raises(DependencyUnavailable):
        registry_csv.import_rows(runtime.store, rows, outcome=outcome)
    assert sorted(outcome.created) == ["d-0", "d-1"]
    again = registry_csv.import_rows(runtime.store, rows)
    assert sorted(again.created) == ["d-2", "d-3", "d-4"] and again.updated == ["d-0", "d-1"]
    docs = list(runtime.store.collection(DEVICES).find({}))
    assert len(docs) == 5 and all(d["metadata"] == {"tenant": "t"} for d in docs)
