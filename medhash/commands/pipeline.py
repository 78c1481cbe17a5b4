"""``medhash worker`` and ``medhash reconciler``: the pipeline's processes."""

from __future__ import annotations

import os
import tempfile
from typing import Annotated

import typer

from shared.config import get_settings
from shared.logs import setup_logging


def worker(
    queues: Annotated[str, typer.Option(help="Comma-separated queues to consume.")] = "preprocess",
    concurrency: Annotated[int, typer.Option(help="Worker processes or threads (default: per core).")] = 0,
    pool: Annotated[
        str, typer.Option(help="Celery pool: `prefork` for preprocess; `threads` for encode, so "
                          "concurrent tasks share the model's batches.")
    ] = "prefork",
) -> None:
    """Run a Celery worker on MEDHASH_BROKER_URL (same as `celery -A workers.app worker -Q ...`).

    Encode workers: one process per GPU (`MEDHASH_DEVICE=cuda:N`), `--pool threads
    --concurrency <2 x MEDHASH_ENCODE_BATCH_SIZE>`.
    """
    settings = get_settings()
    if not settings.broker_url:
        raise typer.BadParameter(
            "MEDHASH_BROKER_URL is not set: separate workers need a Redis broker. "
            "On the embedded default, `medhash serve` runs the workers in-process."
        )
    setup_logging(settings)
    if pool == "prefork" and settings.metrics_port and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # tasks run in child processes: their metrics meet in a folder the parent serves
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="medhash-metrics-")
    from shared.metrics import serve_metrics
    from workers.app import app as celery_app

    serve_metrics(settings.metrics_port)
    _preload(queues.split(","), pool)
    argv = ["worker", "-Q", queues, "--loglevel", settings.log_level, "-n", f"{queues}@%h",
            "--pool", pool]
    if concurrency:
        argv += ["--concurrency", str(concurrency)]
    celery_app.worker_main(argv)


def _preload(queues: list[str], pool: str) -> None:
    """Load the model (and the index writer) now, not on the first task: in a thread-pool
    worker they are shared by every task, and loading them took ~20 s of the first one."""
    if pool not in {"threads", "solo"}:
        return  # prefork children build their own after the fork
    from workers import tasks

    if "encode" in queues:
        tasks.encode_stage()
    if "index" in queues:
        tasks.indexer()


def indexer() -> None:
    """Run the indexer: the single writer of the active model's index (queue `index`)."""
    worker(queues="index", concurrency=4, pool="threads")


def search(
    host: Annotated[str | None, typer.Option(help="Address to bind (default MEDHASH_HTTP_HOST).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default MEDHASH_HTTP_PORT).")] = None,
) -> None:
    """Run the search service: HTTP API, /metrics and the search page."""
    import uvicorn

    from services.search import create_app
    from shared.runtime import Runtime

    settings = get_settings()
    setup_logging(settings)
    runtime = Runtime.from_settings(settings)
    try:
        app = create_app(runtime, api_keys=settings.api_keys,
                         expose_patient_data=settings.expose_patient_data,
                         max_upload_bytes=settings.search_max_upload_bytes)
        uvicorn.run(app, host=host or settings.http_host, port=port or settings.http_port,
                    log_config=None)
    finally:
        runtime.close()


def reconciler() -> None:
    """Re-enqueue instances stuck in a state and clean stable series, until SIGINT/SIGTERM."""
    from medhash.commands.ingest import wait_for_signal
    from shared.reconciler import Reconciler
    from shared.runtime import Runtime

    from shared.metrics import serve_metrics

    settings = get_settings()
    setup_logging(settings)
    runtime = Runtime.from_settings(settings)
    serve_metrics(settings.metrics_port)  # medhash_instances{state} and the stage counters
    loop = Reconciler(runtime.catalog, runtime.dispatcher, settings)
    loop.run_once()
    loop.start()
    try:
        wait_for_signal()
    finally:
        loop.stop()
        runtime.close()


def register(app: typer.Typer) -> None:
    for command in (worker, indexer, search, reconciler):
        app.command()(command)
