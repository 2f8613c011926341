"""Every store call the project sends (store_cases.CASES), on each server the tests use.

The atomic store (TEST_MONGO_URL) runs the proofs; FerretDB (TEST_FERRETDB_URL, marker
`ferretdb`) is the compatibility lane: `pytest -m ferretdb` runs it alone. A case a
server is known to get wrong is listed below with what it does instead; it is a strict
xfail, so the day the server gets it right the run fails until the entry is removed.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pymongo
import pytest

from tests.integration.conftest import require_server
from tests.integration.store_cases import CASES, Case, outcome

pytestmark = pytest.mark.integration

FERRETDB = os.environ.get("TEST_FERRETDB_URL", "mongodb://127.0.0.1:27017")

# What each server does instead of what MongoDB does (see local/services/README.md).
KNOWN_GAPS: dict[str, dict[str, str]] = {
    "atomic": {
        "update command, ordered, stops at duplicate key":
            "mongo-java-server 1.47 runs the updates after the refused one too",
    },
    "ferretdb": {
        "find_one_and_update with projection":
            "FerretDB 1.24: findAndModify `fields` is NotImplemented",
        "update command, unordered, upserts + duplicate-key writeErrors":
            "FerretDB 1.24 leaves n, nModified and upserted out of a reply with writeErrors",
        "update command, ordered, stops at duplicate key":
            "FerretDB 1.24 reports the refused update at index 0, not its own index",
        "pymongo bulk_write unordered with duplicate key":
            "pymongo raises KeyError('nModified') on FerretDB 1.24's reply",
        "TTL index (expireAfterSeconds)":
            "FerretDB 1.24: index option expireAfterSeconds is NotImplemented",
    },
}


def _params() -> Iterator[object]:
    for store, marks in (("atomic", []), ("ferretdb", [pytest.mark.ferretdb])):
        for case in CASES:
            gap = KNOWN_GAPS[store].get(case.name)
            extra = [pytest.mark.xfail(reason=gap, strict=True)] if gap else []
            yield pytest.param(store, case, marks=[*marks, *extra], id=f"{store}-{case.name}")


@pytest.fixture(scope="module")
def clients(mongo_url: str) -> Iterator[dict[str, pymongo.MongoClient[dict[str, object]]]]:
    out: dict[str, pymongo.MongoClient[dict[str, object]]] = {}
    yield out
    for c in out.values():
        c.close()


@pytest.mark.parametrize(("store", "case"), list(_params()))
def test_store_accepts(store: str, case: Case, mongo_url: str,
                       clients: dict[str, pymongo.MongoClient[dict[str, object]]]) -> None:
    url = mongo_url if store == "atomic" else require_server(FERRETDB, "FerretDB")
    if store not in clients:
        clients[store] = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000,
                                             socketTimeoutMS=60000)
    client = clients[store]
    db = f"iot_compat_{uuid.uuid4().hex[:10]}"
    try:
        ok, what = outcome(client, db, case)
    finally:
        client.drop_database(db)
    assert ok, f"{store} ({url}): {case.name} (used by {case.used_by}): {what}"
