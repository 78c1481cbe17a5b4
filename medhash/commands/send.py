"""``medhash send``: C-STORE a file or folder, like storescu."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
)
from rich.table import Table

from shared.dicom.sender import Sender, SendResult, collect_files

console = Console(stderr=True)


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

    Exits 0 when every file was stored (Success or a warning status), 1 otherwise, 2 when
    PATH is neither a file nor a folder.
    """
    try:
        files = collect_files(path)
    except OSError as exc:  # missing, unreadable: one line, no traceback
        typer.echo(f"medhash send: {exc}", err=True)
        raise typer.Exit(2) from None
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
