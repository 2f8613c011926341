"""IoT telemetry: the library shared by the ingest, aggregate, alert and query functions."""

__version__ = "0.1.0"
