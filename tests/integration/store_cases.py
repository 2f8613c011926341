"""Every operator and command the project sends to its store, as a list of small cases.

Each case seeds a fresh collection, runs one call the way the functions do, and compares
the outcome with what MongoDB returns. test_store_compat.py runs the list against each
store the tests use; `python -m tests.integration.store_cases URL...` prints a table of
which cases each server accepts (the table in local/services/README.md comes from it).

To cover a new operator, append a Case: the seed documents, the call, and MongoDB's
answer (a value, or a check that returns True).
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import pymongo
from pymongo import ASCENDING, DESCENDING, ReturnDocument, UpdateOne
from pymongo.collection import Collection
from pymongo.errors import BulkWriteError, DuplicateKeyError, PyMongoError

Doc = dict[str, Any]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Case:
    name: str
    run: Callable[[Collection[Doc]], Any]
    expect: Any  # the value run returns on MongoDB, or a predicate on it
    seed: Sequence[Doc] = field(default_factory=list)
    used_by: str = ""  # where the project sends it

    def check(self, got: Any) -> bool:
        return bool(self.expect(got)) if callable(self.expect) else bool(got == self.expect)


def _ids(docs: Any) -> list[Any]:
    return [d["_id"] for d in docs]


def _strip_id(doc: Doc | None) -> Doc | None:
    return None if doc is None else {k: v for k, v in doc.items() if k != "_id"}


def _utc(doc: Doc | None, *keys: str) -> Doc | None:
    # pymongo returns naive UTC datetimes unless tz_aware; compare in UTC either way
    if doc is None:
        return None
    out = dict(doc)
    for k in keys:
        if isinstance(out.get(k), datetime) and out[k].tzinfo is None:
            out[k] = out[k].replace(tzinfo=UTC)
    return out


def _dup_key(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except DuplicateKeyError:
        return "duplicate key"
    return "accepted"


# ------------------------------------------------------------------ the cases

def _find_in_projection(c: Collection[Doc]) -> Any:
    return sorted((d["_id"], sorted(d)) for d in c.find({"_id": {"$in": ["a", "c", "x"]}},
                                                        {"ids": 0}))


def _find_include_projection(c: Collection[Doc]) -> Any:
    return c.find_one({"_id": "a"}, {"token": 1, "enabled": 1})


def _sort_compound(c: Collection[Doc]) -> Any:
    return _ids(c.find({}).sort([("raised_at", DESCENDING), ("_id", DESCENDING)]).limit(3))


def _or_cursor(c: Collection[Doc]) -> Any:
    at = T0 + timedelta(minutes=1)
    return sorted(_ids(c.find({"$or": [{"raised_at": {"$lt": at}},
                                       {"raised_at": at, "_id": {"$lt": "c"}}]})))


def _range_sort(c: Collection[Doc]) -> Any:
    return _ids(c.find({"device_id": "d", "metric": "m",
                        "t": {"$gte": T0, "$lt": T0 + timedelta(hours=2)}},
                       {"ids": 0}).sort("t", 1))


def _regex_gt_limit(c: Collection[Doc]) -> Any:
    return _ids(c.find({"$and": [{"_id": {"$gt": "dev-1"}}, {"_id": {"$regex": "^dev\\-"}}]},
                       {"token": 0}).sort("_id", 1).limit(2))


def _regex_gt_one_expression(c: Collection[Doc]) -> Any:
    return _ids(c.find({"_id": {"$gt": "dev-1", "$regex": "^dev\\-"}}).sort("_id", 1))


def _in_two_fields(c: Collection[Doc]) -> Any:
    return sorted(_ids(c.find({"device_id": {"$in": ["d1", "d2"]},
                               "state": {"$in": ["open", "acknowledged"]}}, {"device_id": 1})))


def _count_enabled_by_last_seen(c: Collection[Doc]) -> Any:
    enabled = {"enabled": {"$ne": False}}
    cut = T0 + timedelta(hours=1)
    return (c.count_documents({}), c.count_documents({"enabled": False}),
            c.count_documents({"$and": [enabled, {"last_seen": {"$lt": cut}}]}),
            c.count_documents({"$and": [enabled, {"last_seen": {"$gte": cut}}]}))


def _in_equality_in_batches(c: Collection[Doc]) -> Any:
    return sorted(_ids(c.find({"state": {"$in": ["open", "acknowledged"]},
                               "condition": "offline"}, {"device_id": 1}, batch_size=1)))


def _exists_false_update(c: Collection[Doc]) -> Any:
    r1 = c.update_one({"_id": "a", "token": {"$exists": False}}, {"$set": {"token": "t"}})
    r2 = c.update_one({"_id": "b", "token": {"$exists": False}}, {"$set": {"token": "t"}})
    return r1.matched_count, r2.matched_count


def _set_on_insert_upsert(c: Collection[Doc]) -> Any:
    for v in (1, 2):
        c.update_one({"_id": "k"}, {"$setOnInsert": {"first": v}, "$set": {"latest": v}},
                     upsert=True)
    return c.find_one({"_id": "k"})


def _inc_upsert(c: Collection[Doc]) -> Any:
    for _ in range(3):
        c.update_one({"_id": "k"}, {"$inc": {"n": 1, "sum": 0.5}}, upsert=True)
    return c.find_one({"_id": "k"})


def _min_max_numbers(c: Collection[Doc]) -> Any:
    c.update_one({"_id": "a"}, {"$min": {"lo": 3, "new_lo": 7}, "$max": {"hi": 9, "new_hi": 1}})
    c.update_one({"_id": "a"}, {"$min": {"lo": 8}, "$max": {"hi": 2}})
    return _strip_id(c.find_one({"_id": "a"}))


def _min_max_dates(c: Collection[Doc]) -> Any:
    early, late = T0 - timedelta(minutes=5), T0 + timedelta(minutes=5)
    c.update_one({"_id": "a"}, {"$min": {"first": early}, "$max": {"last": late}})
    c.update_one({"_id": "a"}, {"$min": {"first": late}, "$max": {"last": early}})
    return _utc(_strip_id(c.find_one({"_id": "a"})), "first", "last")


def _min_max_strings(c: Collection[Doc]) -> Any:
    # order-preserving string encodings: zero-padded numbers and ISO times compare as text
    c.update_one({"_id": "a"}, {"$max": {"hi": "0010|x", "t": "2026-03-01T12:05:00Z"},
                                "$min": {"lo": "0002|y", "f": "2026-03-01T11:55:00Z"}})
    c.update_one({"_id": "a"}, {"$max": {"hi": "0009|z", "t": "2026-03-01T12:04:59Z"},
                                "$min": {"lo": "0003|a", "f": "2026-03-01T11:55:01Z"}})
    return _strip_id(c.find_one({"_id": "a"}))


def _max_on_insert(c: Collection[Doc]) -> Any:
    # alerting: an upsert whose $max creates the field
    c.update_one({"_id": "a"}, {"$setOnInsert": {"state": "open"},
                                "$max": {"count": 3, "last_seen": T0}}, upsert=True)
    return _utc(_strip_id(c.find_one({"_id": "a"})), "last_seen")


def _dotted_numeric_keys(c: Collection[Doc]) -> Any:
    c.update_one({"_id": "a"}, {"$set": {"m.05": {"n": 1, "v": 1}}, "$inc": {"v": 1}},
                 upsert=True)
    c.update_one({"_id": "a"}, {"$inc": {"m.temp.n.05": 2, "m.05.n": 1},
                                "$max": {"m.temp.max.05": 7}})
    return _strip_id(c.find_one({"_id": "a"}))


def _dotted_numeric_filter(c: Collection[Doc]) -> Any:
    # _propagate: newer snapshot only, or the slot does not exist yet
    def put(slot: str, v: int) -> int:
        r = c.update_one({"_id": "a", "$or": [{f"m.{slot}.v": {"$lt": v}},
                                              {f"m.{slot}": {"$exists": False}}]},
                         {"$set": {f"m.{slot}": {"v": v}}, "$inc": {"v": 1}})
        return r.modified_count
    return [put("05", 2), put("05", 1), put("07", 1), put("05", 3)]


def _push(c: Collection[Doc]) -> Any:
    c.update_one({"_id": "a"}, {"$push": {"ids": "k2"}})
    c.update_one({"_id": "b"}, {"$push": {"ids": "k1"}}, upsert=True)
    return [c.find_one({"_id": "a"})["ids"], c.find_one({"_id": "b"})["ids"]]  # type: ignore[index]


def _ne_array_upsert(c: Collection[Doc]) -> Any:
    # _minutes: count an event once; a redelivery's upsert is refused as a duplicate key
    def apply(key: str) -> str:
        return _dup_key(lambda: c.update_one(
            {"_id": "a", "ids": {"$ne": key}}, {"$inc": {"n": 1}, "$push": {"ids": key}},
            upsert=True))
    return [apply("k1"), apply("k2"), apply("k1"), c.find_one({"_id": "a"})["n"]]  # type: ignore[index]


def _fam_upsert_after(c: Collection[Doc]) -> Any:
    got = c.find_one_and_update({"_id": "a", "ids": {"$ne": "k1"}},
                                {"$setOnInsert": {"t": T0}, "$inc": {"n": 1},
                                 "$push": {"ids": "k1"}},
                                upsert=True, return_document=ReturnDocument.AFTER)
    again = _dup_key(lambda: c.find_one_and_update(
        {"_id": "a", "ids": {"$ne": "k1"}}, {"$inc": {"n": 1}, "$push": {"ids": "k1"}},
        upsert=True, return_document=ReturnDocument.AFTER))
    return _utc(_strip_id(got), "t"), again


def _fam_no_match(c: Collection[Doc]) -> Any:
    # acknowledge(): no upsert, the condition false -> None
    hit = c.find_one_and_update({"_id": "a", "state": "open"}, {"$set": {"state": "ack"}},
                                return_document=ReturnDocument.AFTER)
    miss = c.find_one_and_update({"_id": "a", "state": "open"}, {"$set": {"state": "ack"}},
                                 return_document=ReturnDocument.AFTER)
    return (hit or {}).get("state"), miss


def _fam_projection(c: Collection[Doc]) -> Any:
    return c.find_one_and_update({"_id": "a"}, {"$inc": {"n": 1}}, projection={"ids": 0},
                                 return_document=ReturnDocument.AFTER)


def _update_command(c: Collection[Doc]) -> Any:
    # store.bulk: one unordered update command; duplicate keys come back as writeErrors
    reply = c.database.command({"update": c.name, "ordered": False, "updates": [
        {"q": {"_id": "a", "ids": {"$ne": "k1"}}, "u": {"$push": {"ids": "k1"}}, "upsert": True},
        {"q": {"_id": "new"}, "u": {"$inc": {"n": 1}}, "upsert": True},
        {"q": {"_id": "b"}, "u": {"$inc": {"n": 1}}, "upsert": True},
        {"q": {"_id": "c"}, "u": {"$set": {"x": 1}}, "upsert": False}]})
    return {"n": reply.get("n"), "nModified": reply.get("nModified"),
            "upserted": [(u["index"], u["_id"]) for u in reply.get("upserted") or []],
            "writeErrors": [(e["index"], e["code"]) for e in reply.get("writeErrors") or []]}


def _update_command_refusal_in_the_middle(c: Collection[Doc]) -> Any:
    # rollup._count: a batch whose second statement is a redelivery (refused) and whose
    # third is new work that must still be applied and not reported as refused
    reply = c.database.command({"update": c.name, "ordered": False, "updates": [
        {"q": {"_id": "b"}, "u": {"$inc": {"n": 1}}, "upsert": True},
        {"q": {"_id": "a", "ids": {"$ne": "k1"}}, "u": {"$push": {"ids": "k1"}}, "upsert": True},
        {"q": {"_id": "a", "ids": {"$ne": "k2"}}, "u": {"$push": {"ids": "k2"}}, "upsert": True}]})
    return ([(e["index"], e["code"]) for e in reply.get("writeErrors") or []],
            c.find_one({"_id": "a"})["ids"])  # type: ignore[index]


def _update_command_ordered(c: Collection[Doc]) -> Any:
    reply = c.database.command({"update": c.name, "ordered": True, "updates": [
        {"q": {"_id": "b"}, "u": {"$inc": {"n": 1}}, "upsert": True},
        {"q": {"_id": "a", "ids": {"$ne": "k1"}}, "u": {"$push": {"ids": "k1"}}, "upsert": True},
        {"q": {"_id": "b"}, "u": {"$inc": {"n": 1}}, "upsert": True}]})
    return ([(e["index"], e["code"]) for e in reply.get("writeErrors") or []],
            c.find_one({"_id": "b"})["n"])  # type: ignore[index]


def _bulk_write(c: Collection[Doc]) -> Any:
    try:
        r = c.bulk_write([UpdateOne({"_id": "a", "ids": {"$ne": "k1"}},
                                    {"$push": {"ids": "k1"}}, upsert=True),
                          UpdateOne({"_id": "b"}, {"$inc": {"n": 1}}, upsert=True)],
                         ordered=False)
        return "no error", r.modified_count
    except BulkWriteError as e:
        d = e.details
        return ([(w["index"], w["code"]) for w in d["writeErrors"]], d.get("nModified"),
                d.get("nUpserted"))


def _unique_compound_index(c: Collection[Doc]) -> Any:
    c.create_index([("device_id", ASCENDING), ("metric", ASCENDING), ("t", ASCENDING)],
                   name="series", unique=True)
    c.insert_one({"_id": "1", "device_id": "d", "metric": "m", "t": T0})
    second = _dup_key(lambda: c.insert_one({"_id": "2", "device_id": "d", "metric": "m",
                                            "t": T0}))
    info = c.index_information()["series"]
    return second, bool(info.get("unique"))


def _secondary_indexes(c: Collection[Doc]) -> Any:
    c.create_index([("raised_at", DESCENDING), ("_id", DESCENDING)], name="newest")
    c.create_index([("device_id", ASCENDING), ("raised_at", DESCENDING)], name="by_device")
    c.create_index([("last_seen", DESCENDING)], name="recent")
    again = c.create_index([("last_seen", DESCENDING)], name="recent")  # idempotent
    return again, sorted(c.index_information())


def _ttl_index(c: Collection[Doc]) -> Any:
    c.create_index([("expires_at", ASCENDING)], name="ttl", expireAfterSeconds=0)
    c.create_index([("t", ASCENDING)], name="ttl_t", expireAfterSeconds=86400)
    info = c.index_information()
    return info["ttl"].get("expireAfterSeconds"), info["ttl_t"].get("expireAfterSeconds")


def _plain_index_on_ttl_field(c: Collection[Doc]) -> Any:
    # Where TTL indexes are refused, store.ensure_indexes makes a plain one for the sweep.
    c.create_index("exp", name="expiry")
    return c.index_information()["expiry"]["key"]


def _unexpired_days_page(c: Collection[Doc]) -> Any:
    page = _ids(c.find({"exp": {"$exists": False}, "t": {"$lt": T0}}).limit(2))
    return len(page), set(page) <= {"a", "c", "d"}, sorted(_ids(
        c.find({"exp": {"$exists": False}, "t": {"$lt": T0}})))


def _delete_expired(c: Collection[Doc]) -> Any:
    gone = c.delete_many({"exp": {"$lte": T0}}).deleted_count
    return gone, sorted(_ids(c.find({})))


def _count(c: Collection[Doc]) -> Any:
    return c.count_documents({"state": {"$in": ["open", "acknowledged"]}}), c.count_documents({})


def _optimistic_rev(c: Collection[Doc]) -> Any:
    ok = c.update_one({"_id": "a", "rev": 1}, {"$set": {"applied": True, "rev": 2}})
    stale = c.update_one({"_id": "a", "rev": 1}, {"$set": {"applied": False}})
    return ok.matched_count, stale.matched_count


def _lte_date_filter(c: Collection[Doc]) -> Any:
    newer = c.update_one({"_id": "a", "last_seen": {"$lte": T0 + timedelta(seconds=1)}},
                         {"$set": {"last_seen": T0 + timedelta(seconds=1)}})
    older = c.update_one({"_id": "a", "last_seen": {"$lte": T0 - timedelta(seconds=1)}},
                         {"$set": {"last_seen": T0 - timedelta(seconds=1)}})
    return newer.modified_count, older.modified_count


def _insert_duplicate_id(c: Collection[Doc]) -> Any:
    return _dup_key(lambda: c.insert_one({"_id": "a"}))


def _fam_set_unset_dotted(c: Collection[Doc]) -> Any:
    # devices.set_metadata: keys set and removed inside `metadata` (FerretDB 1.24 has no
    # projection in findAndModify, so the whole document comes back)
    return c.find_one_and_update(
        {"_id": "a"}, {"$set": {"metadata.location": "gh-3"}, "$unset": {"metadata.row": ""}},
        return_document=ReturnDocument.AFTER)


def _raw_window_upsert(c: Collection[Doc]) -> Any:
    # raw.updates: $set of many dotted keys, $inc of the size, under a size filter; a second
    # delivery sets the same fields; a full window refuses the upsert as a duplicate key
    def keep(values: dict[str, float], size: int) -> str:
        return _dup_key(lambda: c.update_one(
            {"_id": "d|w", "b": {"$lt": 100}},
            {"$set": {**{f"r.x.{k}": v for k, v in values.items()}, "e.k1": "ev-1"},
             "$inc": {"b": size}, "$setOnInsert": {"t": T0}}, upsert=True))
    first = keep({"000001aa0": 1.5, "000002aa1": 2.5}, 40)
    again = keep({"000001aa0": 1.5, "000002aa1": 2.5}, 40)
    full = keep({"000003bb0": 9.0}, 40)
    late = keep({"000004cc0": 7.0}, 40)
    doc = c.find_one({"_id": "d|w"})
    assert doc is not None
    return [first, again, full, late, doc["r"]["x"], doc["b"]]


def _raw_window_range(c: Collection[Doc]) -> Any:
    # raw._windows: one device's windows by a range of _id, oldest first, one metric projected
    return [(d["_id"], sorted(d.get("r", {}))) for d in c.find(
        {"_id": {"$gte": "d|2026-03-01T12:00", "$lte": "d|2026-03-01T12:20"}},
        {"t": 1, "b": 1, "e": 1, "r.x": 1}).sort("_id", 1).batch_size(2)]


def _ping(c: Collection[Doc]) -> Any:
    return c.database.client.admin.command("ping").get("ok")


ROLLUP = [{"_id": "a", "ids": ["k1"], "n": 1}, {"_id": "b", "n": 5}]
ALERTS = [{"_id": "a", "raised_at": T0, "device_id": "d1", "state": "open"},
          {"_id": "b", "raised_at": T0 + timedelta(minutes=1), "device_id": "d1",
           "state": "resolved"},
          {"_id": "c", "raised_at": T0 + timedelta(minutes=1), "device_id": "d2",
           "state": "acknowledged"},
          {"_id": "d", "raised_at": T0 + timedelta(minutes=2), "device_id": "d3",
           "state": "open"}]

CASES: list[Case] = [
    Case("ping", _ping, 1.0, used_by="store.ping"),
    Case("find _id $in + exclusion projection", _find_in_projection,
         [("a", ["_id", "n"]), ("c", ["_id", "x"])],
         [{"_id": "a", "ids": ["k"], "n": 1}, {"_id": "b"}, {"_id": "c", "ids": [], "x": 2}],
         "rollup.read_series, alerting._transitions"),
    Case("find_one + inclusion projection", _find_include_projection,
         {"_id": "a", "token": "t", "enabled": True},
         [{"_id": "a", "token": "t", "enabled": True, "name": "n"}], "devices.authenticate"),
    Case("find sort desc compound + limit", _sort_compound, ["d", "c", "b"], ALERTS,
         "query alerts page"),
    Case("find $or cursor ($lt, equality)", _or_cursor, ["a", "b"], ALERTS, "query alerts cursor"),
    Case("find range $gte/$lt on dates + sort", _range_sort, ["h0", "h1"],
         [{"_id": f"h{i}", "device_id": "d", "metric": "m", "t": T0 + timedelta(hours=i),
           "ids": []} for i in range(3)], "rollup.read_series"),
    Case("find $and of $gt and $regex on _id + sort + limit", _regex_gt_limit,
         ["dev-2", "dev-3"],
         [{"_id": i} for i in ("dev-1", "dev-2", "dev-3", "dev-4", "other")], "query devices"),
    Case("find $gt and $regex in one field expression", _regex_gt_one_expression,
         ["dev-2", "dev-3", "dev-4"],
         [{"_id": i} for i in ("dev-1", "dev-2", "dev-3", "dev-4", "other")],
         "not sent (query devices uses $and)"),
    Case("find $in on two fields + projection", _in_two_fields, ["a", "c"], ALERTS,
         "fleet.open_alerts"),
    Case("count_documents", _count, (3, 4), ALERTS, "tests"),
    Case("count_documents $ne false under $and with a date range",
         _count_enabled_by_last_seen, (4, 1, 1, 1),
         [{"_id": "a", "enabled": True, "last_seen": T0},
          {"_id": "b", "last_seen": T0 + timedelta(hours=2)},
          {"_id": "c", "enabled": False, "last_seen": T0}, {"_id": "d"}],
         "fleet.fleet_counts"),
    Case("find $in + equality, a batch per getMore", _in_equality_in_batches,
         ["a", "b", "e"],
         [{"_id": i, "device_id": "d", "state": st, "condition": cond}
          for i, st, cond in (("a", "open", "offline"), ("b", "acknowledged", "offline"),
                              ("c", "resolved", "offline"), ("d", "open", ">"),
                              ("e", "open", "offline"))],
         "fleet._offline_since"),
    Case("update $exists false", _exists_false_update, (1, 0),
         [{"_id": "a"}, {"_id": "b", "token": "x"}], "devices.register"),
    Case("upsert $setOnInsert + $set", _set_on_insert_upsert,
         {"_id": "k", "first": 1, "latest": 2}, used_by="alerting, rollup"),
    Case("upsert $inc int and float", _inc_upsert, {"_id": "k", "n": 3, "sum": 1.5},
         used_by="rollup._minutes"),
    Case("$min/$max numbers", _min_max_numbers,
         {"lo": 3, "new_lo": 7, "hi": 9, "new_hi": 1}, [{"_id": "a"}], "rollup._minutes"),
    Case("$min/$max dates", _min_max_dates,
         {"first": T0 - timedelta(minutes=5), "last": T0 + timedelta(minutes=5)},
         [{"_id": "a"}], "rollup._minutes, alerting"),
    Case("$min/$max strings (order-preserving encodings)", _min_max_strings,
         {"hi": "0010|x", "t": "2026-03-01T12:05:00Z", "lo": "0002|y",
          "f": "2026-03-01T11:55:00Z"}, [{"_id": "a"}], "new rollup layout"),
    Case("upsert $setOnInsert + $max creating fields", _max_on_insert,
         {"state": "open", "count": 3, "last_seen": T0}, used_by="alerting raise"),
    Case("dotted paths with numeric-looking keys ($set/$inc/$max m.temp.n.05)",
         _dotted_numeric_keys,
         {"m": {"05": {"n": 2, "v": 1}, "temp": {"n": {"05": 2}, "max": {"05": 7}}}, "v": 1},
         used_by="rollup._propagate, new rollup layout"),
    Case("filter on m.05.v $lt / m.05 $exists false in $or", _dotted_numeric_filter,
         [1, 0, 1, 1], [{"_id": "a", "v": 0}], "rollup._propagate"),
    Case("$push onto array (and upsert creating it)", _push, [["k1", "k2"], ["k1"]],
         [{"_id": "a", "ids": ["k1"]}], "rollup._minutes"),
    Case("upsert with ids $ne: redelivery refused as duplicate key", _ne_array_upsert,
         ["accepted", "accepted", "duplicate key", 2], used_by="rollup._minutes"),
    Case("find_one_and_update upsert, return AFTER; refused redelivery", _fam_upsert_after,
         ({"t": T0, "n": 1, "ids": ["k1"]}, "duplicate key"),
         used_by="rollup._upsert_returning"),
    Case("find_one_and_update no match returns None", _fam_no_match, ("ack", None),
         [{"_id": "a", "state": "open"}], "alerting.acknowledge"),
    Case("find_one_and_update with projection", _fam_projection, {"_id": "a", "n": 2},
         [{"_id": "a", "ids": ["k1"], "n": 1}], "wanted by the new rollup (not sent today)"),
    Case("update command, unordered, upserts + duplicate-key writeErrors", _update_command,
         {"n": 2, "nModified": 1, "upserted": [(1, "new")], "writeErrors": [(0, 11000)]},
         ROLLUP, "store.bulk"),
    Case("update command, unordered, a refusal between statements",
         _update_command_refusal_in_the_middle, ([(1, 11000)], ["k1", "k2"]), ROLLUP,
         "store.bulk (rollup hours)"),
    Case("update command, ordered, stops at duplicate key", _update_command_ordered,
         ([(1, 11000)], 6), ROLLUP, "rollup._bulk_until_done"),
    Case("pymongo bulk_write unordered with duplicate key", _bulk_write,
         ([(0, 11000)], 1, 0), ROLLUP, "not sent (store.bulk uses the update command)"),
    Case("unique compound index refuses duplicates", _unique_compound_index,
         ("duplicate key", True), used_by="store.ensure_indexes"),
    Case("secondary indexes, create_index idempotent", _secondary_indexes,
         ("recent", ["_id_", "by_device", "newest", "recent"]), used_by="store.ensure_indexes"),
    Case("TTL index (expireAfterSeconds)", _ttl_index, (0, 86400),
         used_by="store.ensure_indexes (retention)"),
    Case("plain index on the expiry field", _plain_index_on_ttl_field, [("exp", 1)],
         used_by="store.ensure_indexes (no TTL indexes)"),
    Case("find $exists false + $lt on date, limit", _unexpired_days_page,
         (2, True, ["a", "c", "d"]),
         [{"_id": "d", "t": T0 - timedelta(days=1)}, {"_id": "c", "t": T0 - timedelta(days=2)},
          {"_id": "b", "t": T0 - timedelta(days=3), "exp": T0},
          {"_id": "a", "t": T0 - timedelta(days=4)}, {"_id": "e", "t": T0}],
         "retention.sweep (days to compact)"),
    Case("delete_many $lte on date", _delete_expired, (2, ["c", "d"]),
         [{"_id": "a", "exp": T0 - timedelta(days=1)}, {"_id": "b", "exp": T0},
          {"_id": "c", "exp": T0 + timedelta(seconds=1)}, {"_id": "d"}],
         "retention.sweep (expired documents)"),
    Case("update filter on rev (optimistic)", _optimistic_rev, (1, 0),
         [{"_id": "a", "rev": 1}], "alerting state"),
    Case("update filter $lte on date", _lte_date_filter, (1, 0),
         [{"_id": "a", "last_seen": T0}], "alerting updated"),
    Case("insert_one duplicate _id", _insert_duplicate_id, "duplicate key", [{"_id": "a"}],
         "devices.register"),
    Case("find_one_and_update $set/$unset of dotted keys", _fam_set_unset_dotted,
         {"_id": "a", "name": "n", "metadata": {"location": "gh-3", "floor": 2}},
         [{"_id": "a", "name": "n", "metadata": {"location": "gh-2", "row": 4, "floor": 2}}],
         "devices.set_metadata"),
    Case("upsert $set of many dotted keys + $inc under a $lt filter (raw window)",
         _raw_window_upsert,
         ["accepted", "accepted", "accepted", "duplicate key",
          {"000001aa0": 1.5, "000002aa1": 2.5, "000003bb0": 9.0}, 120],
         used_by="raw.updates"),
    Case("find _id range $gte/$lte + sort + batches + nested projection", _raw_window_range,
         [("d|2026-03-01T12:00", ["x"]), ("d|2026-03-01T12:10", []),
          ("d|2026-03-01T12:20", ["x"])],
         [{"_id": "d|2026-03-01T11:50", "r": {"x": {"1": 1.0}}},
          {"_id": "d|2026-03-01T12:00", "r": {"x": {"1": 1.0}, "y": {"1": 2.0}}},
          {"_id": "d|2026-03-01T12:10", "r": {"y": {"1": 2.0}}},
          {"_id": "d|2026-03-01T12:20", "r": {"x": {"2": 3.0}}},
          {"_id": "d-2|2026-03-01T12:10", "r": {"x": {"1": 1.0}}},
          {"_id": "d|2026-03-01T12:30", "r": {"x": {"1": 1.0}}}],
         "raw.read"),
]


def outcome(client: pymongo.MongoClient[Doc], db: str, case: Case) -> tuple[bool, str]:
    """Run one case in a fresh collection: (accepted as MongoDB would, what happened)."""
    coll = client[db][f"c_{uuid.uuid4().hex[:8]}"]
    try:
        if case.seed:
            coll.insert_many([dict(d) for d in case.seed])
        got = case.run(coll)
    except Exception as e:  # a client-side KeyError on a short reply is a refusal too
        return False, f"{type(e).__name__}: {str(e)[:300]}"
    finally:
        with contextlib.suppress(PyMongoError):
            coll.drop()
    if case.check(got):
        return True, "ok"
    return False, f"got {got!r}, MongoDB gives {case.expect!r}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m tests.integration.store_cases",
                                description="Which of the project's store calls each server "
                                            "accepts, as a Markdown table.")
    p.add_argument("servers", nargs="+", metavar="NAME=URL")
    a = p.parse_args(argv)
    servers = [s.split("=", 1) for s in a.servers]
    results: dict[str, list[tuple[bool, str]]] = {}
    for name, url in servers:
        client: pymongo.MongoClient[Doc] = pymongo.MongoClient(url, serverSelectionTimeoutMS=5000,
                                                               socketTimeoutMS=60000)
        db = f"iot_cases_{uuid.uuid4().hex[:8]}"
        results[name] = [outcome(client, db, c) for c in CASES]
        with contextlib.suppress(PyMongoError):
            client.drop_database(db)
        client.close()
    names = [n for n, _ in servers]
    print("| case | used by | " + " | ".join(names) + " |")
    print("|---|---|" + "---|" * len(names))
    for i, c in enumerate(CASES):
        cells = ["yes" if results[n][i][0] else "**no**: " + results[n][i][1].replace("|", "\\|")
                 for n in names]
        print(f"| {c.name} | {c.used_by} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
