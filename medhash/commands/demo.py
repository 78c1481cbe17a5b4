"""``medhash demo``: the whole story, end to end, on the embedded default in one process.

1. A small labelled set: a class-balanced MedNIST subset when `mednist-64.tar.gz` is
   found (``--mednist`` or ``../shared/data`` beside the checkout), a synthetic one otherwise.
2. A short DAFH training on the 80% that becomes the database.
3. medhash starts (listener, pipeline threads, search service) and the database images are
   sent as DICOM Secondary Captures over C-STORE, like a PACS would.
4. Wait until every instance is indexed, then query with the held-out 20% as PNGs through
   the HTTP API; print the top results, mAP@1 and mAP@10, and the search page's URL.
"""

from __future__ import annotations

import io
import json
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import numpy as np
import typer
from PIL import Image
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from medhash.commands.demo_data import (
    LabelledImage,
    default_mednist_archive,
    mednist_subset,
    split,
    synthetic_set,
    write_class_folders,
    write_dicom,
)
from shared.config import Settings, get_settings
from shared.logs import setup_logging

if TYPE_CHECKING:
    from shared.pipeline.wiring import Runtime

console = Console()


def demo(
    serve: Annotated[bool, typer.Option("--serve", help="Keep medhash and its page up afterwards.")] = False,
    mednist: Annotated[
        Path | None, typer.Option(help="mednist-64.tar.gz (default: ../shared/data beside the checkout).")
    ] = None,
    per_class: Annotated[int, typer.Option(help="Images per class in the demo set.")] = 40,
    epochs: Annotated[int, typer.Option(help="Training epochs.")] = 15,
    bits: Annotated[int, typer.Option(help="Hash code length.")] = 32,
    data_dir: Annotated[
        Path | None, typer.Option(help="Where to keep the demo's data (default: a temp folder).")
    ] = None,
) -> None:
    """Run the whole story on the embedded default; exits 0 when every step held."""
    work = Path(data_dir or tempfile.mkdtemp(prefix="medhash-demo-"))
    console.rule("[bold]medhash demo")
    console.print(f"working in [cyan]{work}[/cyan] (embedded default: SQLite, a folder, threads)")

    archive = mednist or default_mednist_archive()
    if archive is not None:
        images = mednist_subset(archive, per_class)
        console.print(f"1. MedNIST subset from {archive}: {len(images)} images, {per_class} per class")
    else:
        images = synthetic_set(per_class)
        console.print(f"1. no MedNIST archive found: synthetic set of {len(images)} images (4 shapes)")
    database, queries = split(images)

    model = work / "model.pt"
    console.print(f"2. training DAFH (EfficientNet-B0, 64 px, {bits} bits, {epochs} epochs) on the "
                  f"{len(database)} database images")
    from medhash.commands.learning import train

    train(data=write_class_folders(database, work / "train"), out=model, method="dafh", bits=bits,
          backbone="efficientnet_b0",
          epochs=epochs, image_size=64, batch_size=32, lr=1e-3, device="auto", augment=False)

    settings = get_settings().model_copy(update={
        "data_dir": work / "data", "database_url": None, "broker_url": None, "s3_endpoint": None,
        "dicom_host": "127.0.0.1", "dicom_port": get_settings().dicom_port if serve else 0,
        "http_host": "127.0.0.1", "http_port": get_settings().http_port if serve else 0,
        "metrics_port": 0, "model": model, "image_size": 64, "log_level": "WARNING",
        "index_flush_s": 0.5,
    })
    setup_logging(settings)
    ok = _run_story(settings, work, database, queries, serve)
    raise typer.Exit(0 if ok else 1)


def _run_story(settings: Settings, work: Path, database: list[LabelledImage],
               queries: list[LabelledImage], serve: bool) -> bool:
    from services.listener import Listener
    from services.search import create_app
    from services.search.background import BackgroundServer
    from shared.background import wait_for_signal
    from shared.dicom.sender import Sender, collect_files
    from shared.pipeline.wiring import Runtime

    runtime = Runtime.from_settings(settings)
    runtime.start_pipeline()
    listener = Listener(settings, runtime.ingestor)
    address = listener.start()
    http = BackgroundServer(create_app(runtime), settings.http_host, settings.http_port)
    url = f"http://{settings.http_host}:{http.start()}"
    console.print(f"3. medhash up: DICOM {settings.ae_title}@{address.host}:{address.port}, search {url}/")
    try:
        labels = write_dicom(database, work / "dicom")
        files = collect_files(work / "dicom")
        with Progress(console=console) as progress:
            sending = progress.add_task("   C-STORE", total=len(files))
            results = Sender(address.host, address.port, settings.ae_title, "DEMO_PACS").send(
                files, on_result=lambda _r: progress.advance(sending))
            indexing = progress.add_task("   indexed", total=len(files))
            indexed = _wait_indexed(runtime, len(files), lambda n: progress.update(indexing, completed=n))
        stored = sum(r.stored for r in results)
        console.print(f"   {stored}/{len(files)} stored, {indexed}/{len(files)} indexed; "
                      f"states {runtime.catalog.counts_by_state()}")
        ok = stored == indexed == len(files)
        ok = _query(url, labels, queries) and ok
        console.print(f"search page: [link={url}/]{url}/[/link]")
        console.print("[green]demo ok[/green]" if ok else "[red]demo failed[/red]")
        if serve and ok:
            console.print("serving until Ctrl-C")
            wait_for_signal()
        return ok
    finally:
        http.stop()
        listener.stop()
        runtime.close()


def _wait_indexed(runtime: Runtime, expected: int, report: Callable[[int], object],
                  timeout_s: float = 300.0) -> int:
    """Poll the catalog until every instance reached a final state (or time runs out)."""
    deadline = time.monotonic() + timeout_s
    indexed = 0
    while time.monotonic() < deadline:
        counts = runtime.catalog.counts_by_state()
        indexed = counts["indexed"]
        report(indexed)
        if indexed + counts["failed"] + counts["skipped"] >= expected:
            break
        time.sleep(0.3)
    return indexed


def _query(url: str, labels: dict[str, str], queries: list[LabelledImage], k: int = 10) -> bool:
    """Query with every held-out image as a PNG; print a few rankings and mAP@1/@10."""
    relevance = []
    table = Table(title=f"4. {len(queries)} held-out images queried as PNG (top 5 shown for 6)")
    table.add_column("query class")
    table.add_column("top-5 classes (Hamming distance)")
    for number, query in enumerate(queries):
        status, body = _post_search(url, _png(query.pixels), k)
        if status != 200:
            console.print(f"[red]query failed[/red]: {status} {body[:300].decode(errors='replace')}")
            return False
        results = json.loads(body)["results"]
        row = [labels.get(r["sop_instance_uid"]) == query.label for r in results[:k]]
        relevance.append(row + [False] * (k - len(row)))
        if number % max(len(queries) // 6, 1) == 0 and table.row_count < 6:
            table.add_row(query.label, ", ".join(
                f"{labels.get(r['sop_instance_uid'], '?')} ({r['distance']})" for r in results[:5]))
    from shared.learning.evaluation import average_precision

    rel = np.array(relevance, dtype=bool)
    console.print(table)
    console.print(f"   mAP@1 = {average_precision(rel, 1).mean():.3f}   "
                  f"mAP@10 = {average_precision(rel, 10).mean():.3f}   over {len(queries)} queries")
    return True


def _post_search(url: str, png: bytes, k: int) -> tuple[int, bytes]:
    """POST /v1/search with a PNG as multipart ``file`` (the standard library only: the CLI
    must run without the test extras, where httpx lives)."""
    boundary = uuid.uuid4().hex
    body = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="k"\r\n\r\n{k}\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="query.png"\r\n'
        "Content-Type: image/png\r\n\r\n"
    ).encode() + png + f"\r\n--{boundary}--\r\n".encode()
    request = urllib.request.Request(f"{url}/v1/search", data=body, method="POST",
                                     headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    try:
        with _HTTP.open(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the local service, never a proxy


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()
