"""Keep-alive HTTP/1.1 client connections: the local dispatcher's deliveries, alert's posts
to the Broker ingress (K_SINK)."""

from __future__ import annotations

import http.client
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit


@dataclass(frozen=True)
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes
    reason: str = ""


class HttpSession:
    """Keep-alive HTTP/1.1 connections, one per host; for one thread (one partition worker)."""

    def __init__(self) -> None:
        self._connections: dict[tuple[str, str, int], http.client.HTTPConnection] = {}

    def post(self, url: str, headers: Mapping[str, str], body: bytes,
             timeout: float) -> HttpAnswer:
        """POST once; raises OSError (incl. timeouts) or http.client.HTTPException on no answer."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {url!r}")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname, port)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        for reuse in (True, False):
            conn = self._connections.get(key)
            fresh = conn is None
            if conn is None:
                cls = (http.client.HTTPSConnection if parts.scheme == "https"
                       else http.client.HTTPConnection)
                conn = cls(parts.hostname, port, timeout=timeout)
                self._connections[key] = conn
            conn.timeout = timeout
            if conn.sock is not None:
                conn.sock.settimeout(timeout)
            try:
                conn.request("POST", path, body=body, headers=dict(headers))
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                # A kept-alive connection the server already closed: try once on a new one.
                self._drop(key)
                if fresh or not reuse:
                    raise
                continue
            except Exception:
                self._drop(key)
                raise
            if response.will_close:
                self._drop(key)
            return HttpAnswer(response.status, {k.lower(): v for k, v in response.getheaders()},
                              data, response.reason)
        raise AssertionError("unreachable")  # pragma: no cover

    def _drop(self, key: tuple[str, str, int]) -> None:
        conn = self._connections.pop(key, None)
        if conn is not None:
            conn.close()

    def close(self) -> None:
        for key in list(self._connections):
            self._drop(key)
