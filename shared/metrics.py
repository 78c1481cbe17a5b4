"""Prometheus metrics, defined once so every process exports the same names.

Processes without an HTTP server of their own (listener, workers) expose them with
:func:`serve_metrics` on ``MEDHASH_METRICS_PORT``; the search service mounts ``/metrics``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from enum import StrEnum
from functools import wraps
from typing import TypeVar

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    start_http_server,
)
from prometheus_client.multiprocess import MultiProcessCollector

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
    """Expose ``/metrics`` on ``port`` in a background thread (0 disables it).

    With ``PROMETHEUS_MULTIPROC_DIR`` set (a prefork Celery worker: tasks run in child
    processes), the children's metrics are read from that folder and served together.
    """
    if not port:
        return
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    start_http_server(port, addr=host, registry=registry)
    log.info("metrics on http://%s:%d/metrics", host, port)

STAGE_SECONDS = Histogram(
    "medhash_stage_seconds",
    "Time one pipeline stage spent on one instance (preprocess, encode) or one flush (index).",
    ["stage"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
STAGE_OUTCOMES = Counter(
    "medhash_stage_outcomes_total",
    "Instances leaving a stage, by the state they reached (or `noop` for a duplicate delivery).",
    ["stage", "outcome"],
)
FORGET_JOBS = Counter(
    "medhash_forget_jobs_total",
    "Forget jobs by how far a run got: started, objects_deleted, done (a job waiting for an "
    "indexer counts done later, when a resume completes it).",
    ["step"],
)
FORGOTTEN_INSTANCES = Counter(
    "medhash_forgotten_instances_total", "Instances (every version) removed by forget jobs."
)
INSTANCES = Gauge(
    "medhash_instances",
    "Current instances in each pipeline state, as the reconciler last counted them.",
    ["state"],
)


S = TypeVar("S")
R = TypeVar("R", bound=StrEnum)


def stage_metrics(stage: str) -> Callable[[Callable[[S, int], R | None]], Callable[[S, int], R | None]]:
    """Decorate a stage's ``run``: time every call and count the state it reached.

    ``medhash_stage_seconds{stage}`` and ``medhash_stage_outcomes_total{stage,outcome}``
    (``noop`` when the call moved nothing); a call that raises is timed but not counted.
    """
    def decorate(run: Callable[[S, int], R | None]) -> Callable[[S, int], R | None]:
        @wraps(run)
        def measured(self: S, instance_id: int) -> R | None:
            with STAGE_SECONDS.labels(stage=stage).time():
                state = run(self, instance_id)
            STAGE_OUTCOMES.labels(stage=stage, outcome=state.value if state else "noop").inc()
            return state
        return measured
    return decorate
