"""The long-running processes: ``medhash serve``, ``listener``, ``worker``, ``indexer``,
``search`` and ``reconciler``."""

from __future__ import annotations

import multiprocessing
import os
import tempfile
from collections.abc import Callable
from typing import Annotated

import typer
from rich.console import Console

from shared.background import wait_for_signal
from shared.config import get_settings
from shared.logs import setup_logging

console = Console(stderr=True)


def listener(
    port: Annotated[int | None, typer.Option(help="Override MEDHASH_DICOM_PORT.")] = None,
    processes: Annotated[
        int | None, typer.Option(help="Override MEDHASH_LISTENER_PROCESSES.")
    ] = None,
) -> None:
    """Run the DICOM listener (C-ECHO, C-STORE) until SIGINT/SIGTERM."""
    settings = get_settings()
    count = processes or settings.listener_processes
    if count <= 1:
        _run(port, in_process_pipeline=False)
        return
    if (port or settings.dicom_port) == 0:
        raise typer.BadParameter("several listener processes need a fixed port, not 0")
    # spawned, not forked: each process opens its own catalog pool and store clients
    context = multiprocessing.get_context("spawn")
    children = [context.Process(target=_run_one, args=(port, index), daemon=False)
                for index in range(count)]
    for child in children:
        child.start()
    try:
        wait_for_signal()
    finally:
        for child in children:
            child.terminate()
        for child in children:
            child.join(timeout=15)


def _run_one(port: int | None, index: int) -> None:
    """One of several listener processes; its metrics port is offset by its index."""
    base = get_settings().metrics_port
    if base:
        os.environ["MEDHASH_METRICS_PORT"] = str(base + index)
        get_settings.cache_clear()
    _run(port, in_process_pipeline=False)


def serve(
    port: Annotated[int | None, typer.Option(help="Override MEDHASH_DICOM_PORT.")] = None,
) -> None:
    """Run medhash in one process: listener, pipeline stages and reconciler.

    On the embedded default every stage runs on threads of this process (encoding and
    indexing once MEDHASH_MODEL is set); with MEDHASH_BROKER_URL set, messages go to Redis
    for separate `medhash worker` processes and this process runs listener and reconciler.
    """
    _run(port, in_process_pipeline=True)


def _run(port: int | None, *, in_process_pipeline: bool) -> None:
    from services.listener import Listener
    from shared.metrics import serve_metrics
    from shared.pipeline.wiring import Runtime

    settings = get_settings()
    if port is not None:
        settings = settings.model_copy(update={"dicom_port": port})
    setup_logging(settings)
    runtime = Runtime.from_settings(settings)
    serve_metrics(settings.metrics_port)
    stop_http: list[Callable[[], None]] = []
    if in_process_pipeline:
        runtime.start_pipeline()
        if runtime.runs_stages:
            from services.search import create_app
            from services.search.background import BackgroundServer

            console.print(f"embedded default: data in {settings.data_dir}")
            http = BackgroundServer(
                create_app(runtime, api_keys=settings.api_keys,
                           expose_patient_data=settings.expose_patient_data,
                           max_upload_bytes=settings.search_max_upload_bytes),
                settings.http_host, settings.http_port,
            )
            http_port = http.start()
            stop_http.append(http.stop)
            console.print(f"search page: http://{settings.http_host}:{http_port}/")
        else:
            console.print("distributed: queues on MEDHASH_BROKER_URL for `medhash worker` processes")
    scp = Listener(settings, runtime.ingestor)
    address = scp.start()
    console.print(f"medhash listener: AE {settings.ae_title} on {address.host}:{address.port}")
    try:
        wait_for_signal()
    finally:
        scp.stop()
        for stop in stop_http:
            stop()
        runtime.close()


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
    from shared.pipeline.states import Stage
    from workers.tasks import runtime

    if "encode" in queues:
        runtime.stage(Stage.ENCODE)
    if "index" in queues:
        runtime.stage(Stage.INDEX)


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
    from shared.pipeline.wiring import Runtime

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
    from shared.metrics import serve_metrics
    from shared.pipeline.wiring import Runtime

    settings = get_settings()
    setup_logging(settings)
    runtime = Runtime.from_settings(settings)
    serve_metrics(settings.metrics_port)  # medhash_instances{state} and the stage counters
    runtime.reconciler.run_once()
    runtime.reconciler.start()
    try:
        wait_for_signal()
    finally:
        runtime.close()


def register(app: typer.Typer) -> None:
    for command in (listener, serve, worker, indexer, search, reconciler):
        app.command()(command)
