"""The store keeps what it acknowledged when it is killed (SIGKILL, no clean shutdown).

The functions take an acknowledged write as done (the event is acknowledged to Kafka
after it), so a store that acknowledges a write and loses it on a crash loses counts.
mongo-java-server's H2 backend left alone commits about once a second; the launcher in
local/services/mongo-java-server/ commits every write before replying.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pymongo
import pytest
from pymongo.errors import PyMongoError

from tests.integration.pipeline_harness import STORE, check_scripts_drive, kill_store, service

pytestmark = pytest.mark.integration

Doc = dict[str, object]
WRITERS = 4


@pytest.fixture
def restarts_store() -> Iterator[None]:
    yield
    service(STORE, "start")  # whatever happened, leave it running for the next test


def test_acknowledged_writes_survive_sigkill_of_the_store(mongo_url: str, mongo_db: str,
                                                          restarts_store: None) -> None:
    check_scripts_drive(None, mongo_url)
    acked_inserts: list[list[str]] = [[] for _ in range(WRITERS)]
    acked_incs = [0] * WRITERS
    started = threading.Barrier(WRITERS + 1)
    stop = threading.Event()

    def writer(i: int) -> None:
        client: pymongo.MongoClient[Doc] = pymongo.MongoClient(
            mongo_url, serverSelectionTimeoutMS=2000, socketTimeoutMS=5000, retryWrites=False)
        coll = client[mongo_db]["durable"]
        started.wait()
        k = 0
        try:
            while not stop.is_set():
                coll.insert_one({"_id": f"w{i}-{k}", "n": k})
                acked_inserts[i].append(f"w{i}-{k}")
                coll.update_one({"_id": "counter"}, {"$inc": {"n": 1}}, upsert=True)
                acked_incs[i] += 1
                k += 1
        except PyMongoError:
            pass  # the store died under us: what was acknowledged before is what counts
        finally:
            client.close()

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
    for t in threads:
        t.start()
    started.wait()
    # Let a few hundred writes be acknowledged, then kill mid-stream.
    while sum(len(a) for a in acked_inserts) < 300:
        threading.Event().wait(0.02)
    kill_store()
    stop.set()
    for t in threads:
        t.join()
    service(STORE, "start")

    client: pymongo.MongoClient[Doc] = pymongo.MongoClient(mongo_url)
    coll = client[mongo_db]["durable"]
    acked = [k for a in acked_inserts for k in a]
    present = {d["_id"] for d in coll.find({"_id": {"$in": acked}}, {"_id": 1})}
    counter = (coll.find_one({"_id": "counter"}) or {}).get("n", 0)
    client.close()
    lost = [k for k in acked if k not in present]
    assert not lost, f"{len(lost)} of {len(acked)} acknowledged inserts lost: {lost[:5]}..."
    # each writer may have had one $inc applied but not yet acknowledged when it died
    assert sum(acked_incs) <= int(counter) <= sum(acked_incs) + WRITERS, (counter, acked_incs)
