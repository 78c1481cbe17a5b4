"""``medhash listener``, ``serve``, ``send``, ``status`` and ``settings``."""

from __future__ import annotations

import json
import multiprocessing
import signal
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from shared.config import get_settings, settings_markdown_table
from shared.dicom.sender import SendResult, Sender, collect_files
from shared.logs import setup_logging

console = Console(stderr=True)


def wait_for_signal() -> None:
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    stop.wait()


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
    import os

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
    from shared.ingest import Ingestor
    from shared.metrics import serve_metrics
    from shared.queue import InProcessDispatcher
    from shared.reconciler import Reconciler
    from shared.runtime import Runtime

    settings = get_settings()
    if port is not None:
        settings = settings.model_copy(update={"dicom_port": port})
    setup_logging(settings)
    runtime = Runtime.from_settings(settings)
    serve_metrics(settings.metrics_port)
    stop_pipeline: list[Callable[[], None]] = []
    if in_process_pipeline:
        if isinstance(runtime.dispatcher, InProcessDispatcher):
            from services.pipeline import EmbeddedPipeline
            from services.search import create_app
            from services.search.background import BackgroundServer

            console.print(f"embedded default: data in {settings.data_dir}")
            pipeline = EmbeddedPipeline.start(runtime)
            stop_pipeline.append(pipeline.stop)
            http = BackgroundServer(
                create_app(runtime, encoder=pipeline.encoder, api_keys=settings.api_keys,
                           expose_patient_data=settings.expose_patient_data,
                           max_upload_bytes=settings.search_max_upload_bytes),
                settings.http_host, settings.http_port,
            )
            http_port = http.start()
            stop_pipeline.insert(0, http.stop)
            console.print(f"search page: http://{settings.http_host}:{http_port}/")
        else:
            console.print("distributed: queues on MEDHASH_BROKER_URL for `medhash worker` processes")
            reconciler = Reconciler(runtime.catalog, runtime.dispatcher, settings)
            reconciler.start()
            stop_pipeline.append(reconciler.stop)
    scp = Listener(settings, Ingestor(runtime.store, runtime.catalog, runtime.dispatcher))
    address = scp.start()
    console.print(f"medhash listener: AE {settings.ae_title} on {address.host}:{address.port}")
    try:
        wait_for_signal()
    finally:
        scp.stop()
        for stop in stop_pipeline:
            stop()
        runtime.close()


def send(
    path: Annotated[Path, typer.Argument(help="A DICOM file, or a folder sent recursively.")],
    host: Annotated[str, typer.Option(help="Storage SCP host.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Storage SCP port.")] = 11112,
    called_ae: Annotated[str, typer.Option("--called-ae", help="Called AE title.")] = "MEDHASH",
    calling_ae: Annotated[str, typer.Option("--calling-ae", help="Our AE title.")] = "MEDHASH_SCU",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every file's status to this JSON file.")
    ] = None,
) -> None:
    """C-STORE a file or folder, each file in its own transfer syntax, like storescu.

    Exits 0 when every file was stored (Success or a warning status), 1 otherwise.
    """
    files = collect_files(path)
    sender = Sender(host, port, called_ae, calling_ae)
    results: list[SendResult] = []
    with Progress(
        TextColumn("[bold]sending"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    ) as progress:
        task = progress.add_task("send", total=len(files))

        def advance(result: SendResult) -> None:
            results.append(result)
            progress.advance(task)

        sender.send(files, on_result=advance)

    summary = Counter(
        "stored" if r.stored else (f"0x{r.status:04X}" if r.status is not None else "not sent")
        for r in results
    )
    table = Table(title=f"{len(results)} files to {called_ae}@{host}:{port}")
    table.add_column("outcome")
    table.add_column("files", justify="right")
    for outcome, count in sorted(summary.items()):
        table.add_row(outcome, str(count))
    console.print(table)
    for failed in (r for r in results if not r.stored):
        console.print(f"[red]{failed.path}[/red]: {failed.reason}")
    if json_out is not None:
        json_out.write_text(
            json.dumps(
                [{"path": str(r.path), "status": r.status, "reason": r.reason} for r in results],
                indent=1,
            )
        )
    raise typer.Exit(0 if results and all(r.stored for r in results) else 1)


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count instances by pipeline state."""
    from shared.catalog import open_catalog

    catalog = open_catalog(get_settings())
    try:
        counts = catalog.counts_by_state()
    finally:
        catalog.close()
    total = sum(counts.values())
    if as_json:
        typer.echo(json.dumps({"states": counts, "total": total}))
        return
    table = Table(title="medhash instances")
    table.add_column("state")
    table.add_column("instances", justify="right")
    for state, count in counts.items():
        table.add_row(state, str(count))
    table.add_row("[bold]total", f"[bold]{total}")
    Console().print(table)


def settings(
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the README table.")] = False,
) -> None:
    """Show the effective settings (secrets masked), or the settings table for the docs."""
    if markdown:
        typer.echo(settings_markdown_table())
        return
    values = get_settings().model_dump(mode="json")
    for name in ("s3_secret_key", "database_url"):
        if values.get(name):
            values[name] = "***"
    typer.echo(json.dumps(values, indent=2))


def register(app: typer.Typer) -> None:
    for command in (listener, serve, send, status, settings):
        app.command()(command)
