"""``medhash status`` and ``medhash settings``: what the pipeline holds, how it is configured."""

from __future__ import annotations

import json
from typing import Annotated
from urllib.parse import urlsplit, urlunsplit

import typer
from rich.console import Console
from rich.table import Table

from shared.config import Settings, get_settings, settings_markdown_table


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
    typer.echo(json.dumps(masked_settings(get_settings()), indent=2))


def masked_settings(current: Settings) -> dict[str, object]:
    """The settings as JSON values, every field marked secret in ``shared.config`` masked.

    A URL keeps everything but its password (``redis://:***@redis:6379/0``), so an operator
    still sees which server is configured; other secrets become ``***`` (each item of a list).
    """
    values = current.model_dump(mode="json")
    for name, field in Settings.model_fields.items():
        extra = field.json_schema_extra
        if not (isinstance(extra, dict) and extra.get("secret")) or not values.get(name):
            continue
        value = values[name]
        if isinstance(value, list):
            values[name] = ["***" for _ in value]
        elif "://" in str(value):
            values[name] = _mask_url_password(str(value))
        else:
            values[name] = "***"
    return values


def _mask_url_password(url: str) -> str:
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}***@{host}"))
