"""The embedded local run's device registry and query tokens, reachable by
`iot-telemetry devices` and `iot-telemetry tokens`.

The embedded store lives inside the `iot-telemetry local` process, so the CLI cannot open
it the way it opens a MongoDB: the local run answers registry calls on its query port under
PREFIX and token calls under TOKENS (127.0.0.1 only; the deployed query function has no such
routes), and RemoteRegistry and RemoteTokens make them with the same methods as `Registry`
and `TokenBook`.

These routes mint and rotate device and query tokens, so they are the CLI's alone: with
QUERY_AUTH on they need a token (`operate` to change anything), and whatever QUERY_AUTH says
they refuse what a browser sends (an `Origin` or a cross-site `Sec-Fetch-Site`) and any POST
that is neither JSON nor the CSV of an import, so a page open in a browser on this machine
can neither post a form to them nor read their answers.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from werkzeug.wrappers import Request, Response

from iot_telemetry.access import authorize
from iot_telemetry.devices import Device
from iot_telemetry.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    TelemetryError,
    UnsupportedMediaType,
)
from iot_telemetry.query_tokens import OPERATE, READ, TokenInfo
from iot_telemetry.registry_csv import ImportOutcome, export_devices, import_rows, read_csv
from iot_telemetry.runtime import Runtime
from iot_telemetry.settings import Settings

PREFIX: Final = "/local/devices"
TOKENS: Final = "/local/tokens"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status, mimetype="application/json")


def _admit(request: Request, rt: Runtime) -> None:
    """Only the CLI: no browser, JSON (or an import's CSV) only, the token QUERY_AUTH asks
    for."""
    if request.headers.get("Origin") or request.headers.get(
            "Sec-Fetch-Site", "none") not in ("none", "same-origin"):
        raise Forbidden(f"{request.path} is for `iot-telemetry`, not for browsers")
    body = "text/csv" if request.path == PREFIX + "/import" else "application/json"
    if request.method == "POST" and request.mimetype != body:
        raise UnsupportedMediaType(f"{request.path}: POST a body of Content-Type {body}")
    authorize(request, rt.settings, READ if request.method == "GET" else OPERATE,
              rt.query_tokens, "register devices, change them or manage tokens")


def _parts(path: str, prefix: str) -> list[str]:
    return path[len(prefix):].strip("/").split("/") if path != prefix else []


def _handle(request: Request, rt: Runtime) -> Response:
    if request.path == TOKENS or request.path.startswith(TOKENS + "/"):
        return _tokens(request, rt)
    registry = rt.registry
    parts = _parts(request.path, PREFIX)
    if request.method == "GET" and parts == ["export"]:
        return Response("".join(export_devices(rt.store)), 200, mimetype="text/csv")
    if request.method == "POST" and parts == ["import"]:
        outcome = import_rows(rt.store, read_csv(request.get_data(as_text=True)))
        return _json({"created": outcome.created, "updated": outcome.updated,
                      "commands": outcome.commands})
    if request.method == "GET" and not parts:
        return _json({"devices": [
            {"id": d.id, "name": d.name, "metadata": d.metadata, "enabled": d.enabled,
             "registered_at": d.registered_at, "last_seen": d.last_seen}
            for d in registry.list()]})
    if request.method != "POST":
        raise NotFound(f"{request.method} {request.path}")
    if not parts:
        body = request.get_json(silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("id"), str):
            raise BadRequest('body must be {"id": ..., "name": ..., "metadata": {...}}')
        token = registry.add(body["id"], str(body.get("name") or ""), body.get("metadata") or {})
        return _json({"token": token}, 201)
    if len(parts) == 2 and parts[1] == "metadata":
        changes = request.get_json(silent=True)
        if not isinstance(changes, dict) or not all(
                v is None or isinstance(v, str) for v in changes.values()):
            raise BadRequest('body must be {"<key>": "<value>" or null, ...}')
        return _json({"metadata": registry.set_metadata(parts[0], changes)})
    if len(parts) == 2 and parts[1] == "rotate-token":
        return _json({"token": registry.rotate(parts[0])})
    if len(parts) == 2 and parts[1] in ("enable", "disable"):
        registry.set_enabled(parts[0], parts[1] == "enable")
        return _json({"id": parts[0], "enabled": parts[1] == "enable"})
    raise NotFound(f"POST {request.path}")


def _tokens(request: Request, rt: Runtime) -> Response:
    book = rt.query_tokens
    parts = _parts(request.path, TOKENS)
    if request.method == "GET" and not parts:
        return _json({"tokens": [vars(t) for t in book.list()]})
    body = request.get_json(silent=True)
    if request.method != "POST" or not isinstance(body, dict):
        raise NotFound(f"{request.method} {request.path} (POST a JSON object)")
    if not parts:
        return _json({"token": book.add(str(body.get("name")), str(body.get("role")),
                                        body.get("scope"))}, 201)
    if len(parts) == 2 and parts[1] == "revoke":
        book.revoke(parts[0])
        return _json({"name": parts[0], "revoked": True})
    if len(parts) == 2 and parts[1] == "scope":
        book.set_scope(parts[0], body.get("scope"))
        return _json({"name": parts[0], "scope": body.get("scope")})
    raise NotFound(f"POST {request.path}")


def with_registry(app: WSGIApp, runtime: Callable[[], Runtime]) -> WSGIApp:
    """`app`, plus the registry routes under PREFIX and the token routes under TOKENS."""
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if not any(path == p or path.startswith(p + "/") for p in (PREFIX, TOKENS)):
            return app(environ, start_response)
        request = Request(environ)
        try:
            rt = runtime()
            _admit(request, rt)
            response = _handle(request, rt)
        except TelemetryError as exc:
            response = _json(exc.payload(), exc.status)
        return response(environ, start_response)

    return wsgi


class LocalRunUnreachable(TelemetryError):
    """No `iot-telemetry local` answers at the address tried."""


def local_run_token(settings: Settings | None = None) -> str | None:
    """The token the local run's management routes take when QUERY_AUTH=token: the first of
    QUERY_OPERATE_TOKENS (or, to read only, QUERY_READ_TOKENS) in this environment."""
    s = settings or Settings.from_environ(None)
    return next(iter(s.operate_tokens or s.read_tokens), None)


class _LocalRun:
    """Calls to the management routes of a running embedded local run."""

    def __init__(self, query_url: str, prefix: str, token: str | None = None) -> None:
        self.base = query_url.rstrip("/") + prefix
        self.token = token if token is not None else local_run_token()

    def _call(self, path: str, body: Mapping[str, Any] | bytes | None = None,
              method: str = "POST", text: bool = False) -> Any:
        data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
        headers = {"Content-Type": "text/csv" if isinstance(body, bytes) else "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, method=method,  # noqa: S310
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
                raw = response.read()
                return raw.decode() if text else json.loads(raw)
        except urllib.error.HTTPError as exc:
            try:
                payload = json.loads(exc.read())
                message, problems = payload["message"], payload.get("problems")
            except (ValueError, KeyError, TypeError):
                message, problems = f"HTTP {exc.code}", None
            if exc.code == 404 and path in ("", "/export"):
                message = (f"{self.base} is not an embedded `iot-telemetry local` (real mode "
                           "keeps devices and tokens in its store: set MONGO_URL to it)")
            if problems:
                raise BadRequest(problems) from None
            raise TelemetryError(message) from None
        except (urllib.error.URLError, OSError) as exc:
            raise LocalRunUnreachable(str(getattr(exc, "reason", exc))) from None


def _when(value: str | None) -> datetime | None:
    return datetime.fromisoformat(value) if value else None


class RemoteTokens(_LocalRun):
    """The query tokens of a running embedded local run, over HTTP."""

    def __init__(self, query_url: str, token: str | None = None) -> None:
        super().__init__(query_url, TOKENS, token)

    def add(self, name: str, role: str, scope: Any = None) -> str:
        return str(self._call("", {"name": name, "role": role, "scope": scope})["token"])

    def list(self) -> list[TokenInfo]:
        return [TokenInfo(t["name"], t["role"], t["scope"], _when(t["created_at"]),
                          _when(t["last_used_at"]))
                for t in self._call("", method="GET")["tokens"]]

    def revoke(self, name: str) -> None:
        self._call(f"/{name}/revoke", {})

    def set_scope(self, name: str, scope: Any) -> None:
        self._call(f"/{name}/scope", {"scope": scope})


class RemoteRegistry(_LocalRun):
    """The registry of a running embedded local run, over HTTP."""

    def __init__(self, query_url: str, token: str | None = None) -> None:
        super().__init__(query_url, PREFIX, token)

    def import_csv(self, text: str) -> ImportOutcome:
        reply = self._call("/import", text.encode())
        return ImportOutcome(reply["created"], reply["updated"], reply["commands"])

    def export_csv(self) -> str:
        return str(self._call("/export", method="GET", text=True))

    def add(self, device_id: str, name: str = "", metadata: Mapping[str, Any] | None = None,
            ) -> str:
        reply = self._call("", {"id": device_id, "name": name, "metadata": dict(metadata or {})})
        return str(reply["token"])

    def list(self) -> list[Device]:
        return [Device(d["id"], d["name"], d["metadata"], d["enabled"], _when(d["registered_at"]),
                       _when(d["last_seen"]))
                for d in self._call("", method="GET")["devices"]]

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        self._call(f"/{device_id}/{'enable' if enabled else 'disable'}", {})

    def set_metadata(self, device_id: str, changes: Mapping[str, str | None]) -> dict[str, Any]:
        return dict(self._call(f"/{device_id}/metadata", dict(changes))["metadata"])

    def rotate(self, device_id: str) -> str:
        return str(self._call(f"/{device_id}/rotate-token", {})["token"])
