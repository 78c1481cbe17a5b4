"""Whole-table reads of the catalog for the tests' audits: every instance, slice and code.

The product never reads a whole table (the stages, the search and the reconciler ask for
what they need), so these live beside the test servers, over the catalog's own row types.
"""

from __future__ import annotations

from shared.storage.catalog import Catalog, Instance, Slice
from shared.storage.catalog.records import (
    SELECT_INSTANCE,
    SELECT_SLICE,
    instance_of,
    slice_of,
)


def all_instances(catalog: Catalog) -> list[Instance]:
    """Every row, every version, by id: what an audit compares with the object store."""
    return [instance_of(row) for row in catalog.read(f"{SELECT_INSTANCE} ORDER BY id")]


def all_slices(catalog: Catalog) -> list[Slice]:
    """Every slice row, by id: what an audit compares with the object store and the index."""
    return [slice_of(row) for row in catalog.read(f"{SELECT_SLICE} ORDER BY id")]


def all_codes(catalog: Catalog, model_version: str) -> list[tuple[int, bytes]]:
    """Every (slice id, code) of a model version, by slice id: the index's ground truth."""
    rows = catalog.read("SELECT slice_id, code FROM codes WHERE model_version = ? ORDER BY slice_id",
                        (model_version,))
    return [(int(slice_id), bytes(code)) for slice_id, code in rows]
