"""The catalog's rows as the code sees them, shared by every part of :class:`~shared.storage.catalog.Catalog`.

Identity is (SOP Instance UID, sha256 of the stored bytes): the same bytes sent again are
one row, different bytes under the same UID are a new row that becomes current while the
old one is kept (``is_current`` false). Every write is a single transaction, so a reader
never sees an instance half-recorded.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from shared.pipeline.states import InstanceState
from shared.storage.catalog.db import Database, Row


class Tables:
    """What every part of the catalog works on: one database, SQL written once for both
    dialects (``?`` placeholders)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def read(self, sql: str, params: Sequence[Any] = ()) -> list[Row]:
        """One read-only statement in its own transaction (SQLite skips the write lock)."""
        with self.database.transaction(write=False) as tx:
            return tx.execute(sql, params)


@dataclass(frozen=True)
class NewInstance:
    """What the listener knows about an instance when its bytes are durable."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    sha256: str
    size_bytes: int
    object_key: str
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    patient_id: str | None = None
    modality: str | None = None
    body_part: str | None = None
    number_of_frames: int = 1
    calling_ae: str | None = None
    patient_key: str | None = None
    """Pseudonym of (IssuerOfPatientID, PatientID): a keyed hash, so "same patient" can be
    compared (filters, the audit trail) without the identifier (:meth:`patient_key`)."""
    patient_name: str | None = None
    study_date: str | None = None
    study_time: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None


@dataclass(frozen=True)
class Instance(NewInstance):
    """A catalog row."""

    id: int = 0
    received_at: float = 0.0
    is_current: bool = True
    state: InstanceState = InstanceState.RECEIVED
    reason: str | None = None
    state_changed_at: float = 0.0
    attempts: int = 0


INSTANCE_COLUMNS = tuple(field.name for field in fields(Instance))
SELECT_INSTANCE = f"SELECT {', '.join(INSTANCE_COLUMNS)} FROM instances"


def instance_of(row: Row) -> Instance:
    values: dict[str, Any] = dict(zip(INSTANCE_COLUMNS, row, strict=True))
    values["state"] = InstanceState(values["state"])
    values["is_current"] = bool(values["is_current"])
    return Instance(**values)


@dataclass(frozen=True)
class RecordOutcome:
    """Result of :meth:`~shared.storage.catalog.instances.InstanceRecords.record_received`."""

    instance_id: int
    duplicate: bool
    """The same bytes were already recorded under this SOP Instance UID: nothing was added."""
    superseded: tuple[int, ...] = ()
    """Rows with the same UID but other bytes that this one replaced as current."""


@dataclass(frozen=True)
class NewSlice:
    """One preprocessed frame of an instance, as the preprocess stage made it."""

    frame_index: int
    object_key: str
    height: int
    width: int
    stats: dict[str, float]
    excluded: bool = False
    exclusion_reason: str | None = None


@dataclass(frozen=True)
class Slice(NewSlice):
    """A catalog row of the ``slices`` table."""

    id: int = 0
    instance_id: int = 0
    series_instance_uid: str | None = None
    created_at: float = 0.0


SLICE_COLUMNS = tuple(field.name for field in fields(Slice))
SELECT_SLICE = f"SELECT {', '.join(SLICE_COLUMNS)} FROM slices"


def slice_of(row: Row) -> Slice:
    values: dict[str, Any] = dict(zip(SLICE_COLUMNS, row, strict=True))
    values["stats"] = json.loads(values["stats"])
    values["excluded"] = bool(values["excluded"])
    return Slice(**values)


@dataclass(frozen=True)
class SliceCodes:
    """Packed hash codes of an instance's slices under one model version."""

    model_version: str
    items: Sequence[tuple[int, bytes]]
    """(slice id, packed code) pairs."""


@dataclass(frozen=True)
class SliceDetail:
    """A slice with the attributes of its instance, for search results and training."""

    slice_id: int
    frame_index: int
    excluded: bool
    object_key: str
    sop_instance_uid: str
    sop_class_uid: str
    study_instance_uid: str | None
    series_instance_uid: str | None
    modality: str | None
    body_part: str | None
    patient_id: str | None
    is_current: bool
    patient_key: str | None = None
    study_date: str | None = None
    calling_ae: str | None = None
    indexed: bool = True
    """The instance has reached ``indexed`` (its codes are in a published generation)."""


SELECT_DETAIL = (
    "SELECT s.id, s.frame_index, s.excluded, s.object_key, i.sop_instance_uid, i.sop_class_uid, "
    "i.study_instance_uid, i.series_instance_uid, i.modality, i.body_part, i.patient_id, "
    "i.is_current, i.patient_key, i.study_date, i.calling_ae, i.state "
    "FROM slices s JOIN instances i ON i.id = s.instance_id"
)


def detail_of(row: Row) -> SliceDetail:
    return SliceDetail(int(row[0]), int(row[1]), bool(row[2]), *row[3:11], bool(row[11]),
                       *row[12:15], row[15] == InstanceState.INDEXED.value)
