"""The embedded pipeline: four functions, an in-process broker and store, in one process."""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import uvicorn
from functions_framework import create_app
from starlette.applications import Starlette
from werkzeug.serving import make_server

from iot_telemetry import publisher, store
from iot_telemetry.runtime import Runtime, get_runtime, set_runtime
from iot_telemetry.settings import MEMORY_URL, Settings

from .eventing import load_eventing
from .eventing.delivery import QuietHandler
from .eventing.memory_broker import MemoryBroker
from .layout import BROKER_PORT, EVENTING_DIR, FUNCTIONS, PORTS, source
from .registry_endpoint import with_registry

log = logging.getLogger(__name__)


class Server(Protocol):
    """A function's HTTP server in this process."""

    server_port: int

    def serve_forever(self) -> None: ...

    def shutdown(self) -> None: ...

    def server_close(self) -> None: ...


class AsgiServer:
    """uvicorn serving an ASGI app (ingest, aggregate, alert) from a thread of this process,
    on its own event loop, as functions-framework's ASGI mode serves it in a process."""

    def __init__(self, host: str, port: int, app: Any) -> None:
        self.socket = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind((host, port))
        self.socket.listen(2048)  # connections queue before the loop runs (uvicorn's backlog)
        self.server_port: int = self.socket.getsockname()[1]
        # lifespan off: functions-framework's app has no startup or shutdown hooks.
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
        self._stopped = threading.Event()

    def serve_forever(self) -> None:
        try:  # a thread's own loop; uvicorn installs no signal handlers off the main thread
            asyncio.run(self.server.serve(sockets=[self.socket]))
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self.server.should_exit = True
        self._stopped.wait(30)

    def server_close(self) -> None:
        self.socket.close()


def serve_app(host: str, port: int, app: Any) -> Server:
    """The server for an app functions-framework built: ASGI (Starlette) on uvicorn, WSGI
    (Flask, and query's with the registry routes) on werkzeug."""
    if isinstance(app, Starlette):
        return AsgiServer(host, port, app)
    return make_server(host, port, app, threaded=True, request_handler=QuietHandler)


@dataclass
class EmbeddedPipeline:
    """Runs ingest, query, aggregate and alert on HTTP ports, wired by `eventing/` in memory.

    Port 0 picks a free port (tests); the store is mongomock and forgets everything on exit.
    Its device registry is reachable on the query port (registry_endpoint).
    """

    ports: Mapping[str, int] = field(default_factory=lambda: dict(PORTS))
    broker_port: int | None = BROKER_PORT
    host: str = "127.0.0.1"
    eventing_dir: Path = EVENTING_DIR
    environ: Mapping[str, str] | None = None
    servers: dict[str, Server] = field(default_factory=dict)
    broker: MemoryBroker | None = None
    _threads: list[threading.Thread] = field(default_factory=list)

    def url(self, function: str) -> str:
        return f"http://{self.host}:{self.servers[function].server_port}/"

    def start(self) -> EmbeddedPipeline:
        overrides = {"KAFKA_BOOTSTRAP_SERVERS": MEMORY_URL, "MONGO_URL": MEMORY_URL}
        store.reset_embedded()
        set_runtime(Runtime(Settings.from_environ(self.environ, overrides)))
        for function in FUNCTIONS:
            app = create_app(function, str(source(function)), "http")  # type: ignore[no-untyped-call]
            if function == "query":
                app = with_registry(app, get_runtime)
            server = serve_app(self.host, self.ports[function], app)
            self.servers[function] = server
            thread = threading.Thread(target=server.serve_forever, name=f"http-{function}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        self.broker = MemoryBroker(
            load_eventing(self.eventing_dir),
            subscribers={f: self.url(f) for f in ("aggregate", "alert", "notify")},
            ingress_port=self.broker_port,
        )
        self.broker.start()
        publisher.set_memory_sink(self.broker)
        # One runtime serves every function here: it gets K_SINK if eventing/ binds any of
        # them (alert posts its second and further alert events of one delivery there).
        bound = [self.broker.sink_env(f) for f in FUNCTIONS]
        if any(bound):
            overrides.update({k: v for env in bound for k, v in env.items()})
            set_runtime(Runtime(Settings.from_environ(self.environ, overrides)))
        return self

    def wait_idle(self, timeout: float = 30.0) -> bool:
        """Return once every delivery has been made (or dead-lettered)."""
        assert self.broker is not None
        return bool(self.broker.wait_idle(timeout))

    def stats(self) -> dict[str, Any]:
        return dict(self.broker.stats()) if self.broker else {}

    def stop(self) -> None:
        publisher.set_memory_sink(None)
        for server in self.servers.values():
            server.shutdown()
            server.server_close()
        if self.broker is not None:
            self.broker.stop()
        set_runtime(None)
        self.servers.clear()

    def __enter__(self) -> EmbeddedPipeline:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
