"""``medhash demo``: the story so far, end to end, on the embedded default in one process.

It makes a small synthetic CT study with pydicom, starts the listener, sends the study over
DICOM C-STORE exactly like a PACS would, and shows what the catalog and object store hold.
Preprocessing, encoding, indexing and search join the story as they land (issues 3-5).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import Progress

from shared.config import get_settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import StudyIds, write_ct_series
from shared.logs import setup_logging

console = Console()


def demo(
    instances: Annotated[int, typer.Option(help="CT slices in the synthetic study.")] = 24,
    serve: Annotated[bool, typer.Option("--serve", help="Keep the listener up afterwards.")] = False,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where to keep the demo's data (default: a temp folder).")
    ] = None,
) -> None:
    """Run the whole story on the embedded default and exit 0 when it held together."""
    from services.listener import Listener
    from shared.runtime import Runtime
    from shared.ingest import Ingestor

    work = Path(data_dir or tempfile.mkdtemp(prefix="medhash-demo-"))
    settings = get_settings().model_copy(
        update={
            "data_dir": work / "data",
            "database_url": None,
            "broker_url": None,
            "s3_endpoint": None,
            "dicom_host": "127.0.0.1",
            "dicom_port": 0 if not serve else get_settings().dicom_port,
            "log_level": "WARNING",
        }
    )
    setup_logging(settings)
    console.rule("[bold]medhash demo")
    console.print(f"embedded default in [cyan]{work}[/cyan] (SQLite catalog, folder object store)")

    files = write_ct_series(work / "study", instances, rows=256, columns=256, ids=StudyIds.new("DEMO0001"))
    console.print(f"1. made a synthetic CT study: {len(files)} slices, 256x256, with pydicom")

    runtime = Runtime.from_settings(settings)
    listener = Listener(settings, Ingestor(runtime.store, runtime.catalog, runtime.dispatcher))
    address = listener.start()
    console.print(f"2. listener up: AE {settings.ae_title} on {address.host}:{address.port}")

    try:
        with Progress(console=console) as progress:
            task = progress.add_task("3. C-STORE", total=len(files))
            results = Sender(address.host, address.port, settings.ae_title, "DEMO_PACS").send(
                files, on_result=lambda _r: progress.advance(task)
            )
        stored = sum(r.stored for r in results)
        counts = runtime.catalog.counts_by_state()
        objects = len(list(runtime.store.list("raw/")))
        console.print(f"   {stored}/{len(files)} acknowledged Success by the listener")
        console.print(f"4. catalog: {counts}; object store: {objects} raw objects")
        ok = stored == len(files) == counts["received"] == objects
        console.print(
            "[green]demo ok[/green]: every acknowledged instance is durable and catalogued"
            if ok
            else "[red]demo failed[/red]: counts disagree"
        )
        if serve and ok:
            console.print(f"listening on {address.host}:{address.port}; Ctrl-C to stop")
            from medhash.commands.ingest import wait_for_signal

            wait_for_signal()
    finally:
        listener.stop()
        runtime.close()
    raise typer.Exit(0 if ok else 1)
