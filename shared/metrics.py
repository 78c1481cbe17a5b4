"""Prometheus metrics, defined once so every process exports the same names.

Processes without an HTTP server of their own (listener, workers) expose them with
:func:`serve_metrics` on ``MEDHASH_METRICS_PORT``; the search service mounts ``/metrics``.
"""

from __future__ import annotations

import logging

from prometheus_client import Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("medhash.metrics")

INSTANCES_RECEIVED = Counter(
    "medhash_instances_received_total",
    "C-STORE requests answered by the listener, by outcome.",
    ["outcome"],
)
BYTES_RECEIVED = Counter(
    "medhash_bytes_received_total", "Bytes of instances durably stored by the listener."
)
STORE_SECONDS = Histogram(
    "medhash_store_seconds",
    "Time from a C-STORE request's dataset arriving to its answer.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
ASSOCIATIONS = Gauge("medhash_associations_active", "DICOM associations currently open.")
ASSOCIATIONS_REJECTED = Counter(
    "medhash_associations_rejected_total", "Associations refused, by reason.", ["reason"]
)


def serve_metrics(port: int, host: str = "0.0.0.0") -> None:
    """Expose ``/metrics`` on ``port`` in a background thread (0 disables it)."""
    if port:
        start_http_server(port, addr=host)
        log.info("metrics on http://%s:%d/metrics", host, port)
