"""``medhash status`` and ``medhash settings``: what the pipeline holds, how it is configured."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from shared.config import get_settings, settings_markdown_table


def status(
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Count instances by pipeline state."""
    from shared.storage.catalog import open_catalog

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
