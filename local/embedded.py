"""The embedded pipeline: four functions, an in-process broker and store, in one process."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from functions_framework import create_app
from werkzeug.serving import BaseWSGIServer, make_server

from iot_telemetry import publisher, store
from iot_telemetry.runtime import Runtime, get_runtime, set_runtime
from iot_telemetry.settings import MEMORY_URL, Settings

from .eventing import load_eventing
from .eventing.delivery import QuietHandler
from .eventing.memory_broker import MemoryBroker
from .layout import BROKER_PORT, EVENTING_DIR, FUNCTIONS, PORTS, source
from .registry_endpoint import with_registry

log = logging.getLogger(__name__)


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
    servers: dict[str, BaseWSGIServer] = field(default_factory=dict)
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
                app = with_registry(app, lambda: get_runtime().registry)
            server = make_server(self.host, self.ports[function], app, threaded=True,
                                 request_handler=QuietHandler)
            self.servers[function] = server
            thread = threading.Thread(target=server.serve_forever, name=f"http-{function}",
                                      daemon=True)
            thread.start()
            self._threads.append(thread)
        self.broker = MemoryBroker(
            load_eventing(self.eventing_dir),
            subscribers={f: self.url(f) for f in ("aggregate", "alert")},
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
