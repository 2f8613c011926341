"""The atomic store finds a filter's documents by the `_id` index whenever the filter holds an
`_id` condition, as MongoDB does: aggregate's hour update (`{_id, ids: {$ne}, v: {$lt}}`) and
alert's compare-and-swap (`{_id, rev}`) read one document, not the whole collection.

mongo-java-server as released looks up by `_id` only for a bare `{_id}` filter; our launcher
(local/services/mongo-java-server/Launcher.java) does it for the rest. Counted, not timed:
serverStatus's `metrics.queryExecutor.scannedObjects` (MongoDB's own counter of documents
examined, which the launcher reports too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
import pytest

from iot_telemetry.rollup import RollupWriter
from iot_telemetry.series import hour_id
from iot_telemetry.store import ROLLUP_HOURS
from tests.integration.test_rollup_on_real_store import store_of
from tests.unit.test_rollup_exact import event_of

pytestmark = pytest.mark.integration

#: Documents beside the ones a test touches: a scan examines all of them.
OTHERS = 300

Client = pymongo.MongoClient[dict[str, Any]]


def scanned(client: Client) -> int:
    status = client.admin.command("serverStatus")
    try:
        return int(status["metrics"]["queryExecutor"]["scannedObjects"])
    except KeyError:
        pytest.fail("serverStatus has no metrics.queryExecutor.scannedObjects: TEST_MONGO_URL "
                    "is neither MongoDB nor the launcher of local/services/mongo-java-server.sh",
                    pytrace=False)


def test_hour_updates_examine_their_own_document(mongo_url: str, mongo_db: str) -> None:
    store = store_of(mongo_url, mongo_db)
    client: Client = pymongo.MongoClient(mongo_url)
    t = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    # before "dev" in both orders a scan may take (key order, insertion order)
    client[mongo_db][ROLLUP_HOURS].insert_many(
        [{"_id": hour_id(f"a-{i}", t - timedelta(hours=i % 24)), "v": 1, "ids": [i]}
         for i in range(OTHERS)])
    writer = RollupWriter(store)
    assert writer.apply(event_of("dev", t, {"x": 1.0}, "e0"))  # the upsert that creates it
    before = scanned(client)
    for i in range(1, 6):
        assert writer.apply(event_of("dev", t + timedelta(seconds=i), {"x": float(i)}, f"e{i}"))
    assert not writer.apply(event_of("dev", t + timedelta(seconds=3), {"x": 3.0}, "e3"))
    examined = scanned(client) - before
    doc = client[mongo_db][ROLLUP_HOURS].find_one({"_id": hour_id("dev", t)})
    store.close()
    client.close()
    assert doc is not None and doc["v"] == 6 and doc["tot"]["x"]["c"] == 6
    # Each event: its hour, day and device documents, a few times over for the redelivery's
    # second round and its check; a scan would be OTHERS for each hour update.
    assert examined <= 10 * 6, (
        f"6 events examined {examined} documents beside {OTHERS} others: the hour update "
        "`{_id, ids: {$ne}, v: {$lt}}` scans the collection instead of using the _id index")


def test_compare_and_swap_examines_one_document(mongo_url: str, mongo_db: str) -> None:
    client: Client = pymongo.MongoClient(mongo_url)
    states = client[mongo_db]["alert_state"]
    states.insert_many([{"_id": f"dev-{i:03d}|rule", "rev": 1} for i in range(OTHERS)])
    before = scanned(client)
    # alerting.py's write of a state it read at rev 1, then a writer that read it earlier
    won = states.update_one({"_id": "dev-299|rule", "rev": 1}, {"$set": {"rev": 2, "x": "a"}})
    lost = states.update_one({"_id": "dev-299|rule", "rev": 1}, {"$set": {"rev": 2, "x": "b"}})
    examined = scanned(client) - before
    doc = states.find_one({"_id": "dev-299|rule"})
    client.close()
    assert (won.matched_count, lost.matched_count) == (1, 0)
    assert doc == {"_id": "dev-299|rule", "rev": 2, "x": "a"}
    assert examined == 2, f"two updates by {{_id, rev}} examined {examined} documents"


@pytest.mark.parametrize(("query", "expected"), [
    ({"_id": "k3", "v": {"$lt": 5}}, ["k3"]),
    ({"_id": "k3", "v": {"$gte": 5}}, []),
    ({"_id": "k3", "ids": {"$ne": 3}}, []),
    ({"_id": "k3", "ids": {"$ne": 4}}, ["k3"]),
    ({"_id": {"$in": ["k1", "k6", "k9", "nope"]}, "v": {"$gt": 1}}, ["k6", "k9"]),
    ({"_id": "nope", "v": 1}, []),
    ({"_id": {"$gt": "k7"}, "v": {"$gt": 1}}, ["k8", "k9"]),  # not a lookup: scanned as before
    ({"v": {"$gt": 7}}, ["k8", "k9"]),
])
def test_a_looked_up_filter_matches_what_a_scan_matches(mongo_url: str, mongo_db: str,
                                                        query: dict[str, Any],
                                                        expected: list[str]) -> None:
    client: Client = pymongo.MongoClient(mongo_url)
    coll = client[mongo_db]["docs"]
    coll.insert_many([{"_id": f"k{i}", "v": i, "ids": [i]} for i in range(10)])
    found = sorted(d["_id"] for d in coll.find(query, {"_id": 1}))
    counted = coll.count_documents(query)
    updated = coll.update_many(query, {"$inc": {"n": 1}}).modified_count
    client.close()
    assert (found, counted, updated) == (expected, len(expected), len(expected))
