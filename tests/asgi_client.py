"""A test client for the functions functions-framework serves as ASGI apps (ingest,
aggregate, alert), with the calls and answers of Flask's test client that the tests use.

It drives the real app functions-framework builds (`create_app` returns the Starlette app
for an `aio` function), as uvicorn would call it, on an event loop of its own.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit


class AsgiResponse:
    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
        self.status_code = status
        self.headers = _Headers((k.decode("latin-1"), v.decode("latin-1")) for k, v in headers)
        self.data = body

    @property
    def content_type(self) -> str:
        return self.headers.get("content-type", "")

    @property
    def mimetype(self) -> str:
        return self.content_type.split(";", 1)[0].strip()

    def get_json(self, silent: bool = False) -> Any:
        try:
            return json.loads(self.data) if self.data else None
        except ValueError:
            if silent:
                return None
            raise

    @property
    def json(self) -> Any:
        return self.get_json()

    def get_data(self, as_text: bool = False) -> bytes | str:
        return self.data.decode() if as_text else self.data


class _Headers(dict[str, str]):
    """Response headers, looked up without regard to case."""

    def __init__(self, items: Any) -> None:
        super().__init__()
        for k, v in items:
            self[k.lower()] = v

    def get(self, key: str, default: Any = None) -> Any:  # type: ignore[override]
        return super().get(key.lower(), default)

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return isinstance(key, str) and super().__contains__(key.lower())


class AsgiClient:
    """Sends one request at a time to an ASGI app and returns its whole answer."""

    def __init__(self, app: Any, client: tuple[str, int] = ("127.0.0.1", 50000)) -> None:
        self.app = app
        self.client = client
        self._loops = threading.local()  # tests call one client from several threads

    def open(self, path: str, method: str = "GET", data: bytes | str | None = None,
             headers: Mapping[str, str] | None = None, json_body: Any = None,
             ) -> AsgiResponse:
        if json_body is not None:
            data = json.dumps(json_body)
            headers = {"Content-Type": "application/json", **(headers or {})}
        body = data.encode() if isinstance(data, str) else (data or b"")
        loop = getattr(self._loops, "loop", None)
        if loop is None:
            loop = self._loops.loop = asyncio.new_event_loop()
        return loop.run_until_complete(self.request(method, path, body, headers or {}))

    async def request(self, method: str, path: str, body: bytes,
                      headers: Mapping[str, str]) -> AsgiResponse:
        url = urlsplit(path)
        # As a client on the wire: UTF-8 bytes, which the server reads as latin-1.
        raw = [(k.lower().encode(), str(v).encode())
               for k, v in headers.items()]
        if body and not any(k == b"content-length" for k, _ in raw):
            raw.append((b"content-length", str(len(body)).encode()))
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
                 "method": method, "scheme": "http", "path": url.path or "/",
                 "raw_path": (url.path or "/").encode(), "query_string": url.query.encode(),
                 "root_path": "", "headers": raw, "client": self.client,
                 "server": ("127.0.0.1", 8080)}
        sent = False
        status = 500
        answer_headers: list[tuple[bytes, bytes]] = []
        chunks: list[bytes] = []

        async def receive() -> dict[str, Any]:
            nonlocal sent
            if sent:
                await asyncio.sleep(3600)  # the client waits for the answer, as one would
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status, answer_headers
            if message["type"] == "http.response.start":
                status = message["status"]
                answer_headers = list(message.get("headers", []))
            elif message["type"] == "http.response.body":
                chunks.append(message.get("body", b""))

        await self.app(scope, receive, send)
        return AsgiResponse(status, answer_headers, b"".join(chunks))

    def get(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self.open(path, "GET", **kwargs)

    def post(self, path: str, json: Any = None, **kwargs: Any) -> AsgiResponse:
        return self.open(path, "POST", json_body=json, **kwargs)

    def put(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self.open(path, "PUT", **kwargs)

    def delete(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self.open(path, "DELETE", **kwargs)

    def head(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self.open(path, "HEAD", **kwargs)

    def options(self, path: str, **kwargs: Any) -> AsgiResponse:
        return self.open(path, "OPTIONS", **kwargs)
