"""The catalog (PostgreSQL, or SQLite for the embedded default): the pipeline's source of truth."""

from __future__ import annotations

from shared.config import Settings
from shared.pipeline.states import InstanceState
from shared.storage.catalog.catalog import Catalog
from shared.storage.catalog.db import CatalogError, CatalogUnavailable, open_database
from shared.storage.catalog.records import (
    Instance,
    NewInstance,
    NewSlice,
    RecordOutcome,
    Slice,
    SliceCodes,
    SliceDetail,
)
from shared.storage.catalog.search import SliceFilter


def open_catalog(settings: Settings) -> Catalog:
    """The catalog the settings describe, with its schema migrated to the latest version."""
    return Catalog(open_database(settings.database_url, settings.sqlite_path))


__all__ = [
    "Catalog",
    "CatalogError",
    "CatalogUnavailable",
    "Instance",
    "InstanceState",
    "NewInstance",
    "NewSlice",
    "Slice",
    "SliceCodes",
    "SliceDetail",
    "SliceFilter",
    "RecordOutcome",
    "open_catalog",
]
