"""The embedded local run's device registry, reachable by `iot-telemetry devices`.

The embedded store lives inside the `iot-telemetry local` process, so the CLI cannot open
it the way it opens a MongoDB: the local run answers registry calls on its query port under
PREFIX (127.0.0.1 only; the deployed query function has no such routes), and RemoteRegistry
makes them with the same methods as `Registry`.

These routes mint and rotate device tokens, so they are the CLI's alone: with QUERY_AUTH on
they need a token (`operate` to change anything), and whatever QUERY_AUTH says they refuse
what a browser sends (an `Origin` or a cross-site `Sec-Fetch-Site`) and any POST that is not
JSON, so a page open in a browser on this machine can neither post a form to them nor read
their answers.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any, Final

from werkzeug.wrappers import Request, Response

from iot_telemetry.access import OPERATE, READ, authorize
from iot_telemetry.devices import Device, Registry
from iot_telemetry.errors import (
    BadRequest,
    Forbidden,
    NotFound,
    TelemetryError,
    UnsupportedMediaType,
)
from iot_telemetry.settings import Settings

PREFIX: Final = "/local/devices"
WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


def _json(body: Any, status: int = 200) -> Response:
    return Response(json.dumps(body, default=str), status, mimetype="application/json")


def _admit(request: Request, settings: Settings) -> None:
    """Only the CLI: no browser, JSON only, the token QUERY_AUTH asks for."""
    if request.headers.get("Origin") or request.headers.get(
            "Sec-Fetch-Site", "none") not in ("none", "same-origin"):
        raise Forbidden(f"{PREFIX} is for `iot-telemetry devices`, not for browsers")
    if request.method == "POST" and request.mimetype != "application/json":
        raise UnsupportedMediaType(f"{PREFIX}: POST a JSON body (Content-Type: "
                                   "application/json)")
    authorize(request, settings, READ if request.method == "GET" else OPERATE,
              "register devices or change them")


def _handle(request: Request, registry: Registry) -> Response:
    parts = request.path[len(PREFIX):].strip("/").split("/") if request.path != PREFIX else []
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


def with_registry(app: WSGIApp, registry: Callable[[], Registry],
                  settings: Callable[[], Settings]) -> WSGIApp:
    """`app`, plus the registry routes under PREFIX."""
    def wsgi(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path != PREFIX and not path.startswith(PREFIX + "/"):
            return app(environ, start_response)
        request = Request(environ)
        try:
            _admit(request, settings())
            response = _handle(request, registry())
        except TelemetryError as exc:
            response = _json(exc.payload(), exc.status)
        return response(environ, start_response)

    return wsgi


class LocalRunUnreachable(TelemetryError):
    """No `iot-telemetry local` answers at the address tried."""


class RemoteRegistry:
    """The registry of a running embedded local run, over HTTP."""

    def __init__(self, query_url: str, token: str | None = None) -> None:
        self.base = query_url.rstrip("/") + PREFIX
        self.token = token

    def _call(self, path: str, body: Mapping[str, Any] | None = None,
              method: str = "POST") -> Any:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(self.base + path, data=data, method=method,  # noqa: S310
                                         headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read())["message"]
            except (ValueError, KeyError, TypeError):
                message = f"HTTP {exc.code}"
            if exc.code == 404 and path == "":
                message = (f"{self.base} is not an embedded `iot-telemetry local` (real mode "
                           "keeps devices in its store: set MONGO_URL to it)")
            raise TelemetryError(message) from None
        except (urllib.error.URLError, OSError) as exc:
            raise LocalRunUnreachable(str(getattr(exc, "reason", exc))) from None

    def add(self, device_id: str, name: str = "", metadata: Mapping[str, Any] | None = None,
            ) -> str:
        reply = self._call("", {"id": device_id, "name": name, "metadata": dict(metadata or {})})
        return str(reply["token"])

    def list(self) -> list[Device]:
        def when(value: str | None) -> datetime | None:
            return datetime.fromisoformat(value) if value else None

        return [Device(d["id"], d["name"], d["metadata"], d["enabled"], when(d["registered_at"]),
                       when(d["last_seen"]))
                for d in self._call("", method="GET")["devices"]]

    def set_enabled(self, device_id: str, enabled: bool) -> None:
        self._call(f"/{device_id}/{'enable' if enabled else 'disable'}", {})

    def set_metadata(self, device_id: str, changes: Mapping[str, str | None]) -> dict[str, Any]:
        return dict(self._call(f"/{device_id}/metadata", dict(changes))["metadata"])

    def rotate(self, device_id: str) -> str:
        return str(self._call(f"/{device_id}/rotate-token", {})["token"])
