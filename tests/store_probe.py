"""Atomicity probe: does this MongoDB-API server keep single-document atomicity?

The exactly-once claims rest on MongoDB's guarantee that one update of one document is
atomic, so concurrent `$inc`s or `findAndModify`s from separate connections never lose
each other. This probe sends them from several clients at once and requires the exact
count; tests/run.sh runs it before the tests against every store they use.

    python -m tests.store_probe mongodb://127.0.0.1:27018 --name mongo-java-server
    python -m tests.store_probe mongodb://127.0.0.1:27017 --name FerretDB --report-only

Exit status: 0 when every check holds (or with --report-only), 1 when writes were lost
or a check did not answer, 2 when the server cannot be reached at all.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pymongo
from pymongo.errors import PyMongoError

Doc = dict[str, Any]


@dataclass(frozen=True)
class Result:
    check: str
    expected: int
    got: int | None  # None: the check failed with an error
    error: str = ""
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.got == self.expected

    def line(self) -> str:
        if self.got is None:
            return f"{self.check}: ERROR {self.error} (after {self.seconds:.1f}s)"
        lost = self.expected - self.got
        verdict = "ok" if self.ok else f"LOST {lost}" if lost > 0 else f"{-lost} TOO MANY"
        return f"{self.check}: {self.got} of {self.expected} {verdict} ({self.seconds:.1f}s)"


def _clients(url: str, n: int, timeout_s: float) -> list[pymongo.MongoClient[Doc]]:
    # One client per worker, each with one connection: separate connections are what
    # several function instances are, and what a store that serializes per connection fails.
    return [pymongo.MongoClient(url, maxPoolSize=1, serverSelectionTimeoutMS=5000,
                                socketTimeoutMS=int(timeout_s * 1000))
            for _ in range(n)]


def _concurrently(clients: list[pymongo.MongoClient[Doc]],
                  work: Callable[[pymongo.MongoClient[Doc], int], None]) -> list[str]:
    errors: list[str] = []
    start = threading.Barrier(len(clients))

    def run(i: int) -> None:
        start.wait()
        try:
            work(clients[i], i)
        except PyMongoError as e:
            errors.append(f"{type(e).__name__}: {e}")

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(clients))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return errors


def probe_inc(url: str, db: str, clients: int, ops: int, timeout_s: float) -> Result:
    name = f"{clients} clients x {ops} $inc on one document"
    cs = _clients(url, clients, timeout_s)
    coll = cs[0][db]["probe_inc"]
    t0 = time.monotonic()
    try:
        coll.insert_one({"_id": "counter", "n": 0})

        def work(c: pymongo.MongoClient[Doc], _: int) -> None:
            col = c[db]["probe_inc"]
            for _ in range(ops):
                col.update_one({"_id": "counter"}, {"$inc": {"n": 1}})

        errors = _concurrently(cs, work)
        if errors:
            return Result(name, clients * ops, None, errors[0], time.monotonic() - t0)
        doc = coll.find_one({"_id": "counter"}) or {}
        return Result(name, clients * ops, int(doc.get("n", 0)), seconds=time.monotonic() - t0)
    except PyMongoError as e:
        return Result(name, clients * ops, None, f"{type(e).__name__}: {e}",
                      time.monotonic() - t0)
    finally:
        for c in cs:
            c.close()


def probe_find_and_modify(url: str, db: str, clients: int, ops: int,
                          timeout_s: float) -> Result:
    name = f"{clients} clients x {ops} find_one_and_update $push on one document"
    cs = _clients(url, clients, timeout_s)
    coll = cs[0][db]["probe_fam"]
    t0 = time.monotonic()
    try:
        coll.insert_one({"_id": "list", "items": []})

        def work(c: pymongo.MongoClient[Doc], i: int) -> None:
            col = c[db]["probe_fam"]
            for k in range(ops):
                col.find_one_and_update({"_id": "list"}, {"$push": {"items": f"{i}-{k}"}})

        errors = _concurrently(cs, work)
        if errors:
            return Result(name, clients * ops, None, errors[0], time.monotonic() - t0)
        doc = coll.find_one({"_id": "list"}) or {}
        items = doc.get("items", [])
        return Result(name, clients * ops, len(set(items)), seconds=time.monotonic() - t0)
    except PyMongoError as e:
        return Result(name, clients * ops, None, f"{type(e).__name__}: {e}",
                      time.monotonic() - t0)
    finally:
        for c in cs:
            c.close()


def probe_upsert_batch(url: str, db: str, n: int, timeout_s: float) -> Result:
    # aggregate writes its buckets with one unordered `update` command of upserts
    name = f"one unordered update command of {n} upserts"
    c = _clients(url, 1, timeout_s)[0]
    t0 = time.monotonic()
    try:
        updates = [{"q": {"_id": f"d{i}"}, "u": {"$inc": {"n": 1}}, "upsert": True}
                   for i in range(n)]
        c[db].command("update", "probe_batch", updates=updates, ordered=False)
        got = c[db]["probe_batch"].count_documents({"n": 1})
        return Result(name, n, got, seconds=time.monotonic() - t0)
    except PyMongoError as e:
        return Result(name, n, None, f"{type(e).__name__}: {e}", time.monotonic() - t0)
    finally:
        c.close()


def run(url: str, clients: int = 8, incs: int = 500, pushes: int = 100,
        timeout_s: float = 60.0) -> list[Result]:
    db = f"iot_probe_{uuid.uuid4().hex[:10]}"
    try:
        return [probe_inc(url, db, clients, incs, timeout_s),
                probe_find_and_modify(url, db, clients, pushes, timeout_s),
                probe_upsert_batch(url, db, 100, timeout_s)]
    finally:
        c: pymongo.MongoClient[Doc] = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000,
                                                          socketTimeoutMS=int(timeout_s * 1000))
        with contextlib.suppress(PyMongoError):  # the verdict matters more than the cleanup
            c.drop_database(db)
        c.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.store_probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("url", help="mongodb:// URL of the server to probe")
    p.add_argument("--name", default="", help="the server's name for the messages")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--incs", type=int, default=500, help="$inc per client")
    p.add_argument("--pushes", type=int, default=100, help="find_one_and_update per client")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds per server reply")
    p.add_argument("--report-only", action="store_true",
                   help="print the verdict but exit 0 (a store known not to keep atomicity)")
    a = p.parse_args(argv)
    store = f"{a.name} at {a.url}" if a.name else a.url
    try:
        c: pymongo.MongoClient[Doc] = pymongo.MongoClient(a.url, serverSelectionTimeoutMS=5000)
        c.admin.command("ping")
        c.close()
    except PyMongoError as e:
        print(f"store probe: cannot reach {store}: {e}", file=sys.stderr)
        return 2
    results = run(a.url, a.clients, a.incs, a.pushes, a.timeout)
    for r in results:
        print(f"store probe [{a.name or a.url}] {r.line()}", file=sys.stderr)
    failed = [r for r in results if not r.ok]
    if not failed:
        print(f"store probe: {store} keeps single-document atomicity", file=sys.stderr)
        return 0
    what = "; ".join(r.line() for r in failed)
    if a.report_only:
        print(f"store probe: {store} does NOT keep single-document atomicity ({what}). "
              "Expected for this store, reported only: the proofs run on the atomic store.",
              file=sys.stderr)
        return 0
    print(f"store probe FAILED: {store} loses concurrent writes to one document ({what}). "
          "The tests' exactly-once proofs need a store that keeps single-document "
          "atomicity; see local/services/README.md.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
