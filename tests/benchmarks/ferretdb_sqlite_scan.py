"""Why every `_id` lookup on FerretDB 1.24's SQLite backend reads the whole table.

    python -m tests.benchmarks.ferretdb_sqlite_scan [--mongo URL] [--sizes 1000,16000]

FerretDB creates each collection's unique `_id_` index on the SQL expression
`_ferretdb_sjson->"_id"`, but the queries it sends for `{_id: x}` (finds, and the write-back
of every update) filter on `_ferretdb_sjson->'$._id'`. SQLite uses an expression index only
for the very same expression, so it scans. This script fills a collection through FerretDB,
then, on FerretDB's own database file (read-only), asks SQLite for the query plan and times
the lookup as FerretDB writes it and with the index's expression, side by side, and times
the same `find_one({_id})` through FerretDB. Prints one JSON line per size.

Needs the FerretDB of `--mongo` to run on this machine with `--handler=sqlite`.
"""

from __future__ import annotations

import argparse
import json
import sqlite3
import sys
import time
from pathlib import Path
from statistics import median

import pymongo

from .common import ferretdb_flags

FERRETDB_EXPR = "_ferretdb_sjson->'$._id'"  # internal/backends/sqlite/metadata: IDColumn
INDEX_EXPR = "_ferretdb_sjson->'_id'"  # the _id_ index is on ->"_id": the same to SQLite


def sqlite_dir(mongo: str) -> Path:
    flags = ferretdb_flags(mongo)
    if not flags:
        raise SystemExit(f"no FerretDB listening for {mongo} on this machine")
    if flags.get("handler") != "sqlite":
        raise SystemExit("that FerretDB does not run on SQLite")
    return Path(flags["sqlite-url"].removeprefix("file:").split("?", 1)[0])


def timed(call, repeat: int = 15) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        call()
        times.append((time.perf_counter() - t0) * 1000)
    return round(median(times), 3)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.ferretdb_sqlite_scan")
    parser.add_argument("--mongo", default="mongodb://127.0.0.1:27017")
    parser.add_argument("--sizes", default="1000,4000,16000")
    args = parser.parse_args(argv)
    directory = sqlite_dir(args.mongo)
    client: pymongo.MongoClient = pymongo.MongoClient(args.mongo)
    name = f"bench_sqlite_scan_{int(time.time())}"
    coll = client[name]["buckets"]
    try:
        inserted = 0
        for size in (int(s) for s in args.sizes.split(",")):
            while inserted < size:
                n = min(1000, size - inserted)
                coll.insert_many([{"_id": f"dev-{i % 50}|temperature|{i}", "count": 6,
                                   "sum": 130.0, "ids": [f"e{i}-{k}" for k in range(6)]}
                                  for i in range(inserted, inserted + n)])
                inserted += n
            probe = f"dev-{(size // 2) % 50}|temperature|{size // 2}"
            db = sqlite3.connect(f"file:{directory / (name + '.sqlite')}?mode=ro", uri=True)
            table = db.execute("SELECT table_name FROM _ferretdb_collections WHERE name = ?",
                               ("buckets",)).fetchone()[0]
            arg = json.dumps(probe)
            row: dict[str, object] = {"documents": size}
            for label, expr in (("as FerretDB asks", FERRETDB_EXPR),
                                ("with the index's expression", INDEX_EXPR)):
                sql = f'SELECT _ferretdb_sjson FROM "{table}" WHERE {expr} = ?'
                plan = db.execute(f"EXPLAIN QUERY PLAN {sql}", (arg,)).fetchall()
                row[label] = {"plan": plan[0][3],
                              "ms": timed(lambda sql=sql: db.execute(sql, (arg,)).fetchall())}
            row["find_one({_id}) through FerretDB ms"] = timed(
                lambda: coll.find_one({"_id": probe}))
            db.close()
            print(json.dumps(row), flush=True)
    finally:
        client.drop_database(name)
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
