"""query: the dashboard API over the store (devices, series, alerts)."""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from itertools import chain
from typing import Any, Final

import flask
from werkzeug.exceptions import MethodNotAllowed as RouteMethodNotAllowed
from werkzeug.exceptions import NotFound as RouteNotFound
from werkzeug.routing import Map, RequestRedirect, Rule

from . import access, dashboard, export, fleet, openapi, raw
from .alertevents import announce_acknowledgement
from .alerting import ACKNOWLEDGED, OPEN, RESOLVED, AlertBook, public
from .audience import EVERY_DEVICE, Audience, not_found
from .errors import BadRequest, MethodNotAllowed, NotFound, TelemetryError
from .events import loads
from .observability import ALERTS_ACKNOWLEDGED, QUERY_SECONDS, Timer
from .query_tokens import OPERATE, READ
from .rules import SEVERITIES, verdict
from .runtime import Runtime, get_runtime
from .series import STEPS, bucket_start, read_points, reading_of
from .service import json_response, serve
from .store import ALERTS, DEVICES
from .telemetry import DEVICE_ID, METRIC_NAME, format_time, parse_time, read_time

FUNCTION = "query"
STATES: Final = (OPEN, ACKNOWLEDGED, RESOLVED)
ALERT_ID: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,200}$")
ACTOR: Final = re.compile(r"^[\w .@:-]{1,100}$")
# ASCII only: str.isdigit() and int() also take other scripts' digits and superscripts.
DIGITS: Final = re.compile(r"[0-9]{1,18}")
# Times a request may name: a day inside datetime's range on either side, so that the
# default `from` (an hour before `to`) and the bucket after the last one stay representable.
EARLIEST: Final = datetime(1, 1, 2, tzinfo=UTC)
LATEST: Final = datetime(9999, 12, 30, tzinfo=UTC)

ROUTES = Map([
    Rule("/devices", endpoint="devices", methods=["GET"]),
    Rule("/devices/<device_id>", endpoint="device", methods=["GET"]),
    Rule("/devices/<device_id>/series", endpoint="series", methods=["GET"]),
    Rule("/fleet", endpoint="fleet", methods=["GET"]),
    Rule("/alerts", endpoint="alerts", methods=["GET"]),
    Rule("/alerts/<alert_id>", endpoint="alert", methods=["GET"]),
    Rule("/alerts/<alert_id>/ack", endpoint="ack", methods=["POST"]),
    Rule("/rules", endpoint="rules", methods=["GET"]),
    Rule("/openapi.json", endpoint="openapi", methods=["GET"]),
    Rule("/", endpoint="index", methods=["GET"]),
], strict_slashes=False)
# What the function serves: the API above (described by openapi.py) and the dashboard's files.
_SERVED = Map([*(rule.empty() for rule in ROUTES.iter_rules()), *dashboard.rules()],
              strict_slashes=False)


def handle(request: flask.Request, runtime: Runtime | None = None) -> flask.Response:
    rt = runtime or get_runtime()
    return serve(FUNCTION, request, lambda r: _guarded(r, rt), lambda: {"store": rt.store.ping()},
                 lambda req, response: access.add_cors(req, response, rt.settings))


def _public(request: flask.Request) -> bool:
    """The page, its files and the API description need no token (the page asks for one)."""
    path = request.path
    return path in ("/", "/openapi.json") or path.startswith(dashboard.ASSET_PREFIX + "/")


def _guarded(request: flask.Request, rt: Runtime) -> flask.Response:
    """Token check by role (GET: read, POST: operate) around the routes, which see only the
    devices of the token's scope (CORS: in handle)."""
    if request.method == "OPTIONS":
        return access.preflight(request, rt.settings)
    audience = EVERY_DEVICE
    if not _public(request):
        needed = OPERATE if request.method == "POST" else READ
        grant = access.authorize(request, rt.settings, needed, rt.query_tokens)
        audience = rt.scopes.audience(grant.scope)
    return _route(request, rt, audience)


class Params:
    """Typed access to query parameters; unknown or repeated ones are refused."""

    def __init__(self, request: flask.Request, allowed: set[str]) -> None:
        self.args = request.args
        problems = [f"unknown parameter {k!r}" for k in self.args if k not in allowed]
        problems += [f"parameter {k!r} given more than once" for k in allowed
                     if len(self.args.getlist(k)) > 1]
        if problems:
            raise BadRequest(problems)

    def _get(self, name: str) -> str | None:
        value = self.args.get(name)
        if value == "":
            raise BadRequest(f"{name}: must not be empty (leave it out instead)")
        return value

    def text(self, name: str, pattern: re.Pattern[str] | None = None,
             choices: tuple[str, ...] = ()) -> str | None:
        value = self._get(name)
        if value is None:
            return None
        if choices and value not in choices:
            raise BadRequest(f"{name}: must be one of {', '.join(choices)}")
        if pattern is not None and not pattern.fullmatch(value):
            raise BadRequest(f"{name}: must match {pattern.pattern}")
        return value

    def time(self, name: str) -> datetime | None:
        value = self._get(name)
        if value is None:
            return None
        try:
            parsed = read_time(value)
        except ValueError as exc:
            raise BadRequest(f"{name}: {exc}") from None
        if not EARLIEST <= parsed <= LATEST:
            raise BadRequest(f"{name}: must be from {format_time(EARLIEST)} to "
                             f"{format_time(LATEST)}")
        return parsed

    def integer(self, name: str, default: int, low: int, high: int) -> int:
        value = self._get(name)
        if value is None:
            return default
        if not DIGITS.fullmatch(value) or not low <= int(value) <= high:
            raise BadRequest(f"{name}: must be an integer from {low} to {high}")
        return int(value)


def _route(request: flask.Request, rt: Runtime, audience: Audience) -> flask.Response:
    timer = Timer()
    route, status = "unmatched", 500
    try:
        try:
            rule, args = _SERVED.bind("", url_scheme="http").match(
                request.path, method=request.method, return_rule=True)
        except RequestRedirect:  # only the same path with a slash added: not a route
            raise NotFound(f"no route {request.path}") from None
        except RouteNotFound:
            raise NotFound(f"no route {request.path}") from None
        except RouteMethodNotAllowed as exc:
            allowed = sorted(exc.valid_methods or [])
            raise MethodNotAllowed(f"{request.path} answers {', '.join(allowed)}",
                                   allowed) from None
        route = rule.rule
        response = _ENDPOINTS[str(rule.endpoint)](request, rt, audience, **args)
        status = response.status_code
        return response
    except TelemetryError as exc:
        status = exc.status
        raise
    finally:
        QUERY_SECONDS.labels(route, str(status)).observe(timer.elapsed())


def _index(request: flask.Request, rt: Runtime, audience: Audience) -> flask.Response:
    Params(request, set())
    if dashboard.wants_page(request):
        return dashboard.page(request)
    response = json_response({"service": "iot-telemetry query", "openapi": "/openapi.json",
                              "routes": [r.rule for r in ROUTES.iter_rules()]})
    response.vary.add("Accept")
    return response


def _openapi(request: flask.Request, rt: Runtime, audience: Audience) -> flask.Response:
    Params(request, set())
    return json_response(openapi.document(rt.settings))


def _device_view(doc: Mapping[str, Any], now: datetime, stale_after: int,
                 alerts: fleet.OpenAlerts | None = None) -> dict[str, Any]:
    last_seen = doc.get("last_seen")
    metrics = {name: {"value": value, "time": format_time(at)}
               for name, (at, value) in sorted(
                   (name, reading_of(key)) for name, key in (doc.get("latest") or {}).items())}
    view: dict[str, Any] = {
        "id": doc["_id"],
        "first_seen": format_time(doc["first_seen"]) if doc.get("first_seen") else None,
        "last_seen": format_time(last_seen) if last_seen else None,
        "last_event_time": (format_time(doc["last_event_time"])
                            if doc.get("last_event_time") else None),
        "stale": last_seen is None or (now - last_seen).total_seconds() > stale_after,
        "state": fleet.device_state(doc, now, stale_after,
                                    alerts.offline_since if alerts else None),
        "metrics": metrics,
        "name": doc.get("name") or doc["_id"],
        "enabled": doc.get("enabled", True),
        "metadata": doc.get("metadata") or {},
    }
    if alerts is not None:
        view["open_alerts"] = alerts.count
    return view


def _devices(request: flask.Request, rt: Runtime, audience: Audience) -> flask.Response:
    p = Params(request, {"limit", "cursor", "prefix"})
    limit = p.integer("limit", rt.settings.query_default_limit, 1, rt.settings.query_max_limit)
    cursor = p.text("cursor", DEVICE_ID)
    prefix = p.text("prefix", re.compile(r"^[A-Za-z0-9._:-]{1,128}$"))
    # Each condition on _id apart under $and: mongo-java-server ignores the other
    # operators of a field expression that holds $regex.
    parts: list[dict[str, Any]] = []
    if audience.scoped:
        # The scope's ids are known and sorted: the page's are the next `limit` of them, so
        # the store is asked for those only, not for the whole scope's.
        window = audience.window(cursor, prefix, limit + 1)
        parts.append({"_id": {"$in": window[:limit]}})
    else:
        if cursor:
            parts.append({"_id": {"$gt": cursor}})
        if prefix:
            parts.append({"_id": {"$regex": "^" + re.escape(prefix)}})
    filt: dict[str, Any] = {"$and": parts} if parts else {}
    with rt.store.guard():
        docs = list(rt.store.collection(DEVICES).find(filt, {"token": 0})
                    .sort("_id", 1).limit(limit + 1))
    page = docs[:limit]
    if audience.scoped:
        next_cursor = window[limit - 1] if len(window) > limit else None
    else:
        next_cursor = page[-1]["_id"] if len(docs) > limit else None
    alerts = fleet.open_alerts(rt.store, [d["_id"] for d in page])
    now = datetime.now(UTC)
    return json_response({
        "devices": [_device_view(d, now, rt.settings.device_stale_seconds, alerts[d["_id"]])
                    for d in page],
        "next_cursor": next_cursor,
    })


def _fleet(request: flask.Request, rt: Runtime, audience: Audience) -> flask.Response:
    """Devices counted by state over the whole fleet, or the token's scope (the fleet page
    shows at most a cap)."""
    Params(request, set())
    now = datetime.now(UTC)
    counts = fleet.fleet_counts(rt.store, now, rt.settings.device_stale_seconds,
                                rt.settings.query_max_limit, audience)
    return json_response({"devices": sum(counts.values()), "states": counts,
                          "stale_after_seconds": rt.settings.device_stale_seconds,
                          "at": format_time(now)})


def _device_id(value: str) -> str:
    if not DEVICE_ID.fullmatch(value):
        raise BadRequest(f"device id must match {DEVICE_ID.pattern}")
    return value


def _device(request: flask.Request, rt: Runtime, audience: Audience,
            device_id: str) -> flask.Response:
    Params(request, set())
    device_id = _device_id(device_id)
    audience.require(device_id)
    with rt.store.guard():
        doc = rt.store.collection(DEVICES).find_one({"_id": device_id}, {"token": 0})
    if doc is None:
        raise not_found(device_id)
    alerts = fleet.open_alerts(rt.store, [device_id])
    return json_response(_device_view(doc, datetime.now(UTC), rt.settings.device_stale_seconds,
                                      alerts[device_id]))


def default_step(span: timedelta) -> str:
    """The finest step that keeps a range within about 1500 buckets."""
    for step in ("1m", "1h"):
        if span / STEPS[step] <= 1500:
            return step
    return "1d"


def _series(request: flask.Request, rt: Runtime, audience: Audience,
            device_id: str) -> flask.Response:
    p = Params(request, {"metric", "from", "to", "step", "format", "limit", "cursor"})
    fmt = p.text("format", choices=export.FORMATS)
    device_id = _device_id(device_id)
    # A scoped token gets 404 for a device it does not see, as for one that does not exist
    # (a fleet-wide token gets no buckets for an id nothing reported).
    audience.require(device_id)
    metric = p.text("metric", METRIC_NAME)
    if metric is None:
        raise BadRequest("metric: required")
    now = datetime.now(UTC)
    to = p.time("to") or now
    start = p.time("from") or to - timedelta(hours=1)
    if start >= to:
        raise BadRequest("from: must be before to")
    chosen = p.text("step", choices=(*STEPS, raw.STEP))
    if chosen == raw.STEP:
        return _raw_series(request, rt, p, fmt, device_id=device_id, metric=metric,
                           span=(start, to, now))
    for name in ("limit", "cursor"):
        if name in request.args:
            raise BadRequest(f"{name}: only with step=raw (buckets come in one answer)")
    step = chosen or default_step(to - start)
    first = bucket_start(start, step)
    buckets = math.ceil((to - first) / STEPS[step])
    if buckets > rt.settings.query_max_buckets:
        # Named after what the client can change: the step it chose, or else the range.
        raise BadRequest(f"{'step' if chosen else 'from'}: {buckets} buckets of {step} "
                         f"requested, at most {rt.settings.query_max_buckets}; use a larger "
                         "step or a shorter range")
    points = read_points(rt.store, device_id, metric, step, first=first, to=to,
                         compacted_before=rt.retention.compactable_before(now))
    if export.wants_csv(request, fmt):
        return export.response(
            export.SERIES_COLUMNS, export.series_rows(device_id, metric, step, points),
            export.filename(device_id, metric, step, _compact(first), _compact(to)))
    response = json_response({"device_id": device_id, "metric": metric, "step": step,
                              "from": format_time(first), "to": format_time(to),
                              "buckets": points})
    response.vary.add("Accept")
    return response


def _raw_series(request: flask.Request, rt: Runtime, p: Params, fmt: str | None, *,
                device_id: str, metric: str,
                span: tuple[datetime, datetime, datetime]) -> flask.Response:
    """step=raw: the readings themselves, a page at a time (raw.py)."""
    start, to, now = span
    kept = rt.retention.raw
    if kept is None:
        raise BadRequest("step: raw readings are not kept here (RAW_RETENTION_HOURS=0)")
    kept_from = now - kept
    limit = p.integer("limit", raw.DEFAULT_LIMIT, 1, raw.MAX_LIMIT)
    cursor = p.text("cursor")
    after = raw.decode_cursor(cursor) if cursor else None
    span_kept = (max(start, kept_from), to)
    if export.wants_csv(request, fmt):
        rows = limit if "limit" in request.args else rt.settings.query_export_max_rows
        pages = raw.pages(rt.store, device_id, metric, span_kept, after=after, rows=rows)
        first = next(pages)  # read now: a store outage is a 503, not a download cut short
        return export.response(
            export.RAW_COLUMNS, export.raw_rows(device_id, metric, chain([first], pages)),
            export.filename(device_id, metric, raw.STEP, _compact(start), _compact(to)))
    page = raw.read(rt.store, device_id, metric, start=span_kept[0], to=to, after=after,
                    limit=limit)
    response = json_response({
        "device_id": device_id, "metric": metric, "step": raw.STEP,
        "from": format_time(start), "to": format_time(to),
        "kept_from": format_time(kept_from), "complete": page.complete,
        "readings": [r.public() for r in page.readings],
        "next_cursor": raw.encode_cursor(page.readings[-1].position) if page.more else None})
    response.vary.add("Accept")
    return response


def _compact(t: datetime) -> str:
    """A time as a file name part: 20261126T1000Z."""
    return t.astimezone(UTC).strftime("%Y%m%dT%H%MZ")


def encode_cursor(doc: Mapping[str, Any]) -> str:
    raw = json.dumps([format_time(doc["raised_at"]), doc["_id"]]).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(value: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        at, alert_id = loads(raw)
        parsed = parse_time(at)
        if parsed is None or not isinstance(alert_id, str):
            raise ValueError(value)
        return parsed, alert_id
    except (ValueError, TypeError, binascii.Error, BadRequest):
        raise BadRequest("cursor: not a cursor this API returned") from None


def _alerts(request: flask.Request, rt: Runtime, audience: Audience) -> flask.Response:
    p = Params(request, {"state", "device_id", "severity", "limit", "cursor", "format"})
    fmt = p.text("format", choices=export.FORMATS)
    filt: dict[str, Any] = {}
    if state := p.text("state", choices=STATES):
        filt["state"] = state
    if device_id := p.text("device_id", DEVICE_ID):
        filt["device_id"] = device_id
    if severity := p.text("severity", choices=SEVERITIES):
        filt["severity"] = severity
    limit = p.integer("limit", rt.settings.query_default_limit, 1, rt.settings.query_max_limit)
    if cursor := p.text("cursor"):
        at, last_id = decode_cursor(cursor)
        filt["$or"] = _older_than(at, last_id)
    # A device outside the scope then has no alerts, as a device that does not exist.
    filt = audience.narrow(filt, "device_id")
    if export.wants_csv(request, fmt):
        # A CSV may span pages: `limit` (checked as for JSON) caps its rows if given.
        rows = limit if "limit" in request.args else rt.settings.query_export_max_rows
        return _alerts_csv(rt, filt, rows, (state, severity, device_id))
    with rt.store.guard():
        docs = list(rt.store.collection(ALERTS).find(filt)
                    .sort([("raised_at", -1), ("_id", -1)]).limit(limit + 1))
    page = docs[:limit]
    response = json_response({"alerts": [public(d) for d in page], "next_cursor":
                              encode_cursor(page[-1]) if len(docs) > limit else None})
    response.vary.add("Accept")
    return response


def _older_than(at: datetime, alert_id: str) -> list[dict[str, Any]]:
    """The `$or` of alerts after (raised_at, id) in newest-first order: what a cursor means."""
    return [{"raised_at": {"$lt": at}}, {"raised_at": at, "_id": {"$lt": alert_id}}]


def _alert_pages(rt: Runtime, filt: dict[str, Any], rows: int,
                 ) -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
    """Up to `rows` alerts matching `filt`, newest first, a page (QUERY_MAX_LIMIT) per store
    read, each page with the registry documents of its devices; the next page starts where
    a `next_cursor` would, so no read grows with the number of alerts."""
    after: dict[str, Any] | None = None
    while rows > 0:
        size = min(rows, rt.settings.query_max_limit)
        page_filt = filt if after is None else {"$and": [filt, after]}
        with rt.store.guard():
            docs = list(rt.store.collection(ALERTS).find(page_filt)
                        .sort([("raised_at", -1), ("_id", -1)]).limit(size))
            ids = sorted({d["device_id"] for d in docs})
            devices = {d["_id"]: d for d in rt.store.collection(DEVICES).find(
                {"_id": {"$in": ids}}, {"name": 1, "metadata": 1})} if ids else {}
        yield [public(d) for d in docs], devices
        if len(docs) < size:
            return
        rows -= size
        after = {"$or": _older_than(docs[-1]["raised_at"], docs[-1]["_id"])}


def _alerts_csv(rt: Runtime, filt: dict[str, Any], rows: int,
                named: tuple[str | None, ...]) -> flask.Response:
    pages = _alert_pages(rt, filt, rows)
    # Read the first page now: a store outage is then a 503, not a download cut short.
    first = next(pages)

    def every_page() -> Iterator[tuple[list[dict[str, Any]], dict[str, Any]]]:
        yield first
        yield from pages

    return export.response(export.ALERT_COLUMNS, export.alert_rows(every_page()),
                           export.filename("alerts", *(n for n in named if n)))


def _alert_rules(request: flask.Request, rt: Runtime, audience: Audience) -> flask.Response:
    """The alert rules (as `alert` evaluates them), for charts that draw their thresholds."""
    p = Params(request, {"device_id", "metric"})
    device_id = p.text("device_id", DEVICE_ID)
    metric = p.text("metric", METRIC_NAME)
    rules = [r for r in rt.settings.rules if metric is None or r.metric == metric]
    if device_id is None:
        return json_response({"rules": [r.describe() for r in rules]})
    audience.require(device_id)
    # Read now, not from alert's cache: a page showing a device should see its metadata.
    with rt.store.guard():
        doc = rt.store.collection(DEVICES).find_one({"_id": device_id}, {"metadata": 1})
    metadata = (doc or {}).get("metadata") or {}
    applying, not_applying = [], []
    for rule in rules:
        decided = verdict(rule, device_id, metadata)
        if not decided.applies:
            not_applying.append({"name": rule.name, "reason": decided.reason})
            continue
        shown = {k: v for k, v in decided.rule.describe().items()
                 if k not in ("scope", "overrides")}
        applying.append({**shown, "matched_by": decided.reason, "overridden": {
            name: before for name, before, _after in decided.changed}})
    return json_response({"device_id": device_id, "rules": applying,
                          "not_applying": not_applying})


def _alert_id(value: str) -> str:
    if not ALERT_ID.fullmatch(value):
        raise BadRequest(f"alert id must match {ALERT_ID.pattern}")
    return value


def _alert(request: flask.Request, rt: Runtime, audience: Audience,
           alert_id: str) -> flask.Response:
    Params(request, set())
    alert_id = _alert_id(alert_id)
    with rt.store.guard():
        doc = rt.store.collection(ALERTS).find_one(
            audience.narrow({"_id": alert_id}, "device_id"))
    if doc is None:
        raise NotFound(f"alert {alert_id!r} not found")
    return json_response(public(doc))


def _ack(request: flask.Request, rt: Runtime, audience: Audience,
         alert_id: str) -> flask.Response:
    Params(request, set())
    alert_id = _alert_id(alert_id)
    by = "api"
    body = request.get_data()
    if body.strip():
        payload = loads(body)
        if not isinstance(payload, dict) or set(payload) - {"by"}:
            raise BadRequest('body must be {"by": "<who acknowledges>"} or empty')
        if "by" in payload:
            if not isinstance(payload["by"], str) or not ACTOR.fullmatch(payload["by"]):
                raise BadRequest(f"by: must match {ACTOR.pattern}")
            by = payload["by"]
    now = datetime.now(UTC)
    within = audience.condition("device_id")  # an operate token acknowledges its own only
    announce_acknowledgement(rt.store, rt.settings.alert_sink, alert_id, by, now,
                             within=within)
    doc, changed = AlertBook(rt.store, rt.settings.rules).acknowledge(alert_id, by, now, within)
    if changed:
        ALERTS_ACKNOWLEDGED.inc()
    return json_response(doc)


_ENDPOINTS: dict[str, Callable[..., flask.Response]] = {
    "index": _index, "openapi": _openapi, "devices": _devices, "device": _device,
    "fleet": _fleet,
    "series": _series, "alerts": _alerts, "alert": _alert, "ack": _ack,
    "rules": _alert_rules,
    **dashboard.ENDPOINTS,
}
