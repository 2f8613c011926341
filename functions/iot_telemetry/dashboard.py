"""dashboard: the operators' page that `query` serves at / over its own API, and its files."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Final

import flask
from werkzeug.routing import Rule

from .errors import NotFound
from .runtime import Runtime

PAGE: Final = "index.html"
ASSET_PREFIX: Final = "/assets"
# Only these kinds of file are served; anything else in static/ (the vendoring script,
# licences, READMEs) ships with the package but is not part of the page.
CONTENT_TYPES: Final = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
}
# The page runs only its own files and talks only to the API beside it.
SECURITY_HEADERS: Final = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


@dataclass(frozen=True)
class Asset:
    """One static file as served: its bytes, content type and entity tag."""

    body: bytes
    content_type: str
    etag: str


class Assets:
    """The files under static/, read from the installed package once, on first use."""

    def __init__(self, root: Traversable) -> None:
        self._root = root
        self._files: dict[str, Asset] | None = None
        self._lock = threading.Lock()

    def get(self, name: str) -> Asset | None:
        with self._lock:
            if self._files is None:
                self._files = dict(self._load(self._root, ""))
        return self._files.get(name)

    def _load(self, folder: Traversable, prefix: str) -> Iterator[tuple[str, Asset]]:
        for entry in folder.iterdir():
            name = prefix + entry.name
            if entry.is_dir():
                yield from self._load(entry, name + "/")
                continue
            suffix = "." + entry.name.rsplit(".", 1)[-1] if "." in entry.name else ""
            if suffix in CONTENT_TYPES:
                body = entry.read_bytes()
                yield name, Asset(body, CONTENT_TYPES[suffix],
                                  hashlib.sha256(body).hexdigest()[:20])


ASSETS: Final = Assets(resources.files(__package__ or "iot_telemetry") / "static")


def wants_page(request: flask.Request) -> bool:
    """True for a browser asking for HTML; API clients (*/*, JSON, no Accept) get JSON."""
    return request.accept_mimetypes.best_match(["application/json", "text/html"]) == "text/html"


def _send(request: flask.Request, asset: Asset) -> flask.Response:
    response = flask.Response(asset.body, content_type=asset.content_type,
                              headers=SECURITY_HEADERS)
    # Small files: revalidate every time (a 304 is cheap) so an upgrade shows at once.
    response.headers["Cache-Control"] = "no-cache"
    response.set_etag(asset.etag)
    response.make_conditional(request)  # 304 when the browser's copy is current
    return response


def page(request: flask.Request) -> flask.Response:
    """The dashboard page (static HTML; everything it shows comes from the JSON API)."""
    asset = ASSETS.get(PAGE)
    if asset is None:
        raise NotFound(f"dashboard page {PAGE} is missing from the installed package")
    response = _send(request, asset)
    response.vary.add("Accept")
    return response


def _asset(request: flask.Request, rt: Runtime, _audience: object, name: str,
           ) -> flask.Response:
    asset = ASSETS.get(name)
    if asset is None:
        raise NotFound(f"no static file {name!r}")
    return _send(request, asset)


def rules() -> list[Rule]:
    """The page's own routes, kept out of the API's (and so out of its OpenAPI document)."""
    # Not /static/: functions-framework's Flask app answers that prefix itself (with a 404).
    return [Rule(f"{ASSET_PREFIX}/<path:name>", endpoint="asset", methods=["GET"])]


ENDPOINTS: Final[dict[str, Callable[..., flask.Response]]] = {"asset": _asset}
