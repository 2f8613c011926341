"""Server CPU per operation of a MongoDB-API store for the two calls exactly-once rests on.

    python -m tests.benchmarks.store_figures mongodb://127.0.0.1:27018 [--ops 2000]

One client, one connection, one document: `update_one` with `$inc`, then
`find_one_and_update` with `$inc` returning the document after, then the same two from 8
clients at once. The store's process is found by its port (it must run on this machine);
its CPU time over each phase, divided by the operations, is the figure. The latency is the
client's view and includes Python's own time.
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pymongo
from pymongo import ReturnDocument

from .common import store_backend, store_cpu_seconds, store_server

Doc = dict[str, Any]


Call = Callable[[pymongo.collection.Collection[Doc]], Any]


def phase(url: str, clients: int, ops: int, call: Call, db: str) -> tuple[float, float]:
    """(store CPU ms per op, client-side ms per op) of `ops` calls from each of `clients`."""
    cs: list[pymongo.MongoClient[Doc]] = [pymongo.MongoClient(url, maxPoolSize=1)
                                          for _ in range(clients)]
    for c in cs:
        c.admin.command("ping")
    go = threading.Barrier(clients + 1)

    def work(c: pymongo.MongoClient[Doc]) -> None:
        coll = c[db]["figures"]
        go.wait()
        for _ in range(ops):
            call(coll)

    threads = [threading.Thread(target=work, args=(c,)) for c in cs]
    for t in threads:
        t.start()
    cpu0 = store_cpu_seconds(url)
    t0 = time.perf_counter()
    go.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    cpu = store_cpu_seconds(url) - cpu0
    for c in cs:
        c.close()
    n = clients * ops
    return cpu * 1000 / n, wall * 1000 / n


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.benchmarks.store_figures",
                                description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url")
    p.add_argument("--ops", type=int, default=2000, help="operations per client and phase")
    a = p.parse_args(argv)
    kind, pid = store_server(a.url)
    if pid is None:
        print(f"no process listens on {a.url} on this machine: its CPU cannot be read",
              file=sys.stderr)
        return 2
    db = f"iot_figures_{uuid.uuid4().hex[:8]}"
    setup: pymongo.MongoClient[Doc] = pymongo.MongoClient(a.url)
    setup[db]["figures"].insert_one({"_id": "d", "n": 0})
    calls: dict[str, Call] = {
        "$inc": lambda c: c.update_one({"_id": "d"}, {"$inc": {"n": 1}}),
        "find_one_and_update": lambda c: c.find_one_and_update(
            {"_id": "d"}, {"$inc": {"n": 1}}, return_document=ReturnDocument.AFTER),
    }
    # warm up (JIT, caches) before measuring
    phase(a.url, 1, min(a.ops, 500), calls["$inc"], db)
    print(f"store {kind} (pid {pid}, backend {store_backend(a.url) or '?'}) at {a.url}")
    print("| call | clients | store CPU ms/op | client ms/op |")
    print("|---|---|---|---|")
    for clients in (1, 8):
        for name, call in calls.items():
            ops = a.ops if clients == 1 else max(1, a.ops // clients)
            cpu, lat = phase(a.url, clients, ops, call, db)
            print(f"| {name} | {clients} | {cpu:.3f} | {lat:.3f} |")
    setup.drop_database(db)
    setup.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
