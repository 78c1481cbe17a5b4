"""The catalog: every instance medhash was told about, and where it is in the pipeline.

Identity is (SOP Instance UID, sha256 of the stored bytes): the same bytes sent again are
one row, different bytes under the same UID are a new row that becomes current while the
old one is kept (``is_current`` false). Every write is a single transaction, so a reader
never sees an instance half-recorded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import Any

from shared.pipeline.states import InstanceState
from shared.storage.catalog.db import Database, Row


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


_INSTANCE_COLUMNS = tuple(field.name for field in fields(Instance))
_SELECT_INSTANCE = f"SELECT {', '.join(_INSTANCE_COLUMNS)} FROM instances"


def _instance(row: Row) -> Instance:
    values: dict[str, Any] = dict(zip(_INSTANCE_COLUMNS, row, strict=True))
    values["state"] = InstanceState(values["state"])
    values["is_current"] = bool(values["is_current"])
    return Instance(**values)


@dataclass(frozen=True)
class RecordOutcome:
    """Result of :meth:`Catalog.record_received`."""

    instance_id: int
    duplicate: bool
    """The same bytes were already recorded under this SOP Instance UID: nothing was added."""
    superseded: tuple[int, ...] = ()
    """Rows with the same UID but other bytes that this one replaced as current."""


class Catalog:
    """Domain operations over a :class:`~shared.storage.catalog.db.Database`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def find_duplicate(self, sop_instance_uid: str, sha256: str) -> int | None:
        """The id of the row holding exactly these bytes for this UID, if there is one."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT id FROM instances WHERE sop_instance_uid = ? AND sha256 = ?",
                (sop_instance_uid, sha256),
            )
        return int(rows[0][0]) if rows else None

    def record_received(self, new: NewInstance) -> RecordOutcome:
        """Insert a received instance (idempotent on UID + sha256) and make it current."""
        now = time.time()
        columns = [field.name for field in fields(NewInstance)]
        values = [getattr(new, name) for name in columns]
        columns += ["received_at", "state", "state_changed_at", "is_current"]
        values += [now, InstanceState.RECEIVED.value, now, True]
        with self.database.transaction() as tx:
            inserted = tx.execute(
                f"INSERT INTO instances ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' for _ in columns)}) "
                "ON CONFLICT (sop_instance_uid, sha256) DO NOTHING RETURNING id",
                values,
            )
            if not inserted:
                existing = tx.execute(
                    "SELECT id FROM instances WHERE sop_instance_uid = ? AND sha256 = ?",
                    (new.sop_instance_uid, new.sha256),
                )
                return RecordOutcome(instance_id=int(existing[0][0]), duplicate=True)
            instance_id = int(inserted[0][0])
            older = tx.execute(
                "SELECT id FROM instances WHERE sop_instance_uid = ? AND id <> ? AND is_current",
                (new.sop_instance_uid, instance_id),
            )
            if older:
                tx.execute(
                    "UPDATE instances SET is_current = FALSE WHERE sop_instance_uid = ? AND id <> ?",
                    (new.sop_instance_uid, instance_id),
                )
        return RecordOutcome(
            instance_id=instance_id,
            duplicate=False,
            superseded=tuple(int(row[0]) for row in older),
        )

    def get(self, instance_id: int) -> Instance | None:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(f"{_SELECT_INSTANCE} WHERE id = ?", (instance_id,))
        return _instance(rows[0]) if rows else None

    def versions(self, sop_instance_uid: str) -> list[Instance]:
        """Every stored version of an instance, newest first."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                f"{_SELECT_INSTANCE} WHERE sop_instance_uid = ? ORDER BY id DESC",
                (sop_instance_uid,),
            )
        return [_instance(row) for row in rows]

    def current(self, sop_instance_uid: str) -> Instance | None:
        """The current version of an instance (the newest bytes received)."""
        versions = self.versions(sop_instance_uid)
        return next((version for version in versions if version.is_current), None)

    def all_instances(self) -> list[Instance]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(f"{_SELECT_INSTANCE} ORDER BY id")
        return [_instance(row) for row in rows]

    def set_state(
        self, instance_id: int, state: InstanceState, reason: str | None = None
    ) -> None:
        with self.database.transaction() as tx:
            tx.execute(
                "UPDATE instances SET state = ?, reason = ?, state_changed_at = ? WHERE id = ?",
                (state.value, reason, time.time(), instance_id),
            )

    def counts_by_state(self) -> dict[str, int]:
        """Number of current instances in each state (every state listed, zeros included)."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT state, COUNT(*) FROM instances WHERE is_current GROUP BY state"
            )
        counts = {state.value: 0 for state in InstanceState}
        counts.update({str(state): int(count) for state, count in rows})
        return counts

    # --- pipeline transitions ---------------------------------------------------------------

    def count_attempt(self, instance_id: int, delta: int = 1) -> int:
        """Count one more (or, with ``delta=-1``, one fewer) attempt; returns the new count.

        Not flushed: it guards against a worker dying, which never loses a WAL commit.
        """
        with self.database.transaction(durable=False) as tx:
            rows = tx.execute(
                "UPDATE instances SET attempts = attempts + ? WHERE id = ? RETURNING attempts",
                (delta, instance_id),
            )
        return int(rows[0][0]) if rows else 0

    def transition(
        self,
        instance_id: int,
        expected: InstanceState,
        new: InstanceState,
        reason: str | None = None,
        slices: Sequence[NewSlice] = (),
        codes: SliceCodes | None = None,
    ) -> bool:
        """Move ``expected`` -> ``new`` (and record its slices or codes) in one transaction.

        Returns False, writing nothing, when the instance is no longer in ``expected``: a
        redelivered or duplicated task that lost the race leaves no second set of effects.
        Attempts restart at zero for the next stage. Not flushed to disk on SQLite: a stage's
        result lost to a power cut puts the instance back a state, and it is derived again.
        """
        now = time.time()
        with self.database.transaction(durable=False) as tx:
            moved = tx.execute(
                "UPDATE instances SET state = ?, reason = ?, state_changed_at = ?, attempts = 0 "
                "WHERE id = ? AND state = ? RETURNING series_instance_uid",
                (new.value, reason, now, instance_id, expected.value),
            )
            if not moved:
                return False
            series = moved[0][0]
            for item in slices:
                tx.execute(
                    "INSERT INTO slices (instance_id, frame_index, series_instance_uid, "
                    "object_key, height, width, stats, excluded, exclusion_reason, created_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (instance_id, frame_index) DO NOTHING",
                    (instance_id, item.frame_index, series, item.object_key, item.height,
                     item.width, json.dumps(item.stats), item.excluded, item.exclusion_reason, now),
                )
            for slice_id, code in codes.items if codes else ():
                tx.execute(
                    "INSERT INTO codes (slice_id, model_version, code, created_at) "
                    "VALUES (?, ?, ?, ?) ON CONFLICT (slice_id, model_version) "
                    "DO UPDATE SET code = excluded.code, created_at = excluded.created_at",
                    (slice_id, codes.model_version, code, now),  # type: ignore[union-attr]
                )
        return True

    def transition_many(
        self, instance_ids: Sequence[int], expected: InstanceState, new: InstanceState
    ) -> list[int]:
        """:meth:`transition` for many instances at once; returns the ids that moved."""
        moved: list[int] = []
        now = time.time()
        with self.database.transaction(durable=False) as tx:
            for instance_id in instance_ids:
                if tx.execute(
                    "UPDATE instances SET state = ?, reason = NULL, state_changed_at = ?, "
                    "attempts = 0 WHERE id = ? AND state = ? RETURNING id",
                    (new.value, now, instance_id, expected.value),
                ):
                    moved.append(instance_id)
        return moved

    def stale(self, state: InstanceState, older_than_s: float, limit: int = 1000) -> list[Instance]:
        """Current instances that have sat in ``state`` for longer than ``older_than_s``."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                f"{_SELECT_INSTANCE} WHERE state = ? AND is_current AND state_changed_at < ? "
                "ORDER BY state_changed_at LIMIT ?",
                (state.value, time.time() - older_than_s, limit),
            )
        return [_instance(row) for row in rows]

    def touch(self, instance_id: int) -> None:
        """Restart the instance's timeout in its state (it was just re-enqueued)."""
        with self.database.transaction() as tx:
            tx.execute(
                "UPDATE instances SET state_changed_at = ? WHERE id = ?", (time.time(), instance_id)
            )

    # --- slices and series cleaning ---------------------------------------------------------

    def slices(self, instance_id: int) -> list[Slice]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                f"{_SELECT_SLICE} WHERE instance_id = ? ORDER BY frame_index", (instance_id,)
            )
        return [_slice(row) for row in rows]

    def all_slices(self) -> list[Slice]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(f"{_SELECT_SLICE} ORDER BY id")
        return [_slice(row) for row in rows]

    def series_to_clean(self, stable_s: float) -> list[str]:
        """Series with no new slice for ``stable_s`` whose cleaning is missing or out of date."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT s.series_instance_uid FROM slices s "
                "LEFT JOIN series_cleaning c ON c.series_instance_uid = s.series_instance_uid "
                "WHERE s.series_instance_uid IS NOT NULL "
                "GROUP BY s.series_instance_uid, c.slice_count "
                "HAVING MAX(s.created_at) < ? AND (c.slice_count IS NULL OR c.slice_count <> COUNT(*))",
                (time.time() - stable_s,),
            )
        return [str(row[0]) for row in rows]

    def series_slices(self, series_instance_uid: str) -> list[Slice]:
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                f"{_SELECT_SLICE} WHERE series_instance_uid = ? ORDER BY id",
                (series_instance_uid,),
            )
        return [_slice(row) for row in rows]

    def record_series_cleaning(
        self, series_instance_uid: str, verdicts: Sequence[tuple[int, str | None]]
    ) -> None:
        """Store each slice's exclusion reason (None: kept) and mark the series as cleaned."""
        with self.database.transaction() as tx:
            for slice_id, reason in verdicts:
                tx.execute(
                    "UPDATE slices SET excluded = ?, exclusion_reason = ? WHERE id = ?",
                    (reason is not None, reason, slice_id),
                )
            tx.execute(
                "INSERT INTO series_cleaning (series_instance_uid, slice_count, cleaned_at) "
                "VALUES (?, ?, ?) ON CONFLICT (series_instance_uid) DO UPDATE SET "
                "slice_count = excluded.slice_count, cleaned_at = excluded.cleaned_at",
                (series_instance_uid, len(verdicts), time.time()),
            )

    # --- codes ---------------------------------------------------------------------------------

    def codes_of_instances(
        self, instance_ids: Sequence[int], model_version: str
    ) -> list[tuple[int, int, bytes]]:
        """(slice id, instance id, packed code) of the given instances' slices."""
        if not instance_ids:
            return []
        marks = ", ".join("?" for _ in instance_ids)
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT s.id, s.instance_id, c.code FROM slices s JOIN codes c ON c.slice_id = s.id "
                f"WHERE c.model_version = ? AND s.instance_id IN ({marks}) ORDER BY s.id",
                (model_version, *instance_ids),
            )
        return [(int(a), int(b), bytes(code)) for a, b, code in rows]

    def codes_of_sop(self, sop_instance_uid: str, model_version: str) -> list[tuple[int, bytes]]:
        """(slice id, packed code) of the current version of an instance, by frame."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT s.id, c.code FROM instances i JOIN slices s ON s.instance_id = i.id "
                "JOIN codes c ON c.slice_id = s.id WHERE i.sop_instance_uid = ? AND i.is_current "
                "AND c.model_version = ? ORDER BY s.frame_index",
                (sop_instance_uid, model_version),
            )
        return [(int(a), bytes(code)) for a, code in rows]

    def all_codes(self, model_version: str) -> list[tuple[int, bytes]]:
        """Every (slice id, code) of a model version, by slice id: the index's ground truth."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(
                "SELECT slice_id, code FROM codes WHERE model_version = ? ORDER BY slice_id",
                (model_version,),
            )
        return [(int(a), bytes(code)) for a, code in rows]

    def slice_details(self, slice_ids: Sequence[int]) -> dict[int, SliceDetail]:
        """What a search result shows about each slice, keyed by slice id."""
        if not slice_ids:
            return {}
        marks = ", ".join("?" for _ in slice_ids)
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(f"{_SELECT_DETAIL} WHERE s.id IN ({marks})", tuple(slice_ids))
        return {detail.slice_id: detail for detail in map(_slice_detail, rows)}

    def training_slices(self) -> list[SliceDetail]:
        """Every slice a model may learn from: kept by series cleaning, of the current
        version of its instance, by slice id (so a seeded split is reproducible)."""
        with self.database.transaction(write=False) as tx:
            rows = tx.execute(f"{_SELECT_DETAIL} WHERE s.excluded = ? AND i.is_current ORDER BY s.id", (False,))
        return [_slice_detail(row) for row in rows]

    def close(self) -> None:
        self.database.close()


@dataclass(frozen=True)
class SliceCodes:
    """Packed hash codes of an instance's slices under one model version."""

    model_version: str
    items: Sequence[tuple[int, bytes]]
    """(slice id, packed code) pairs."""


@dataclass(frozen=True)
class SliceDetail:
    """A slice with the attributes of its instance, for search results."""

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


_SELECT_DETAIL = (
    "SELECT s.id, s.frame_index, s.excluded, s.object_key, i.sop_instance_uid, i.sop_class_uid, "
    "i.study_instance_uid, i.series_instance_uid, i.modality, i.body_part, i.patient_id, i.is_current "
    "FROM slices s JOIN instances i ON i.id = s.instance_id"
)


def _slice_detail(row: Row) -> SliceDetail:
    return SliceDetail(int(row[0]), int(row[1]), bool(row[2]), *row[3:11], bool(row[11]))


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


_SLICE_COLUMNS = tuple(field.name for field in fields(Slice))
_SELECT_SLICE = f"SELECT {', '.join(_SLICE_COLUMNS)} FROM slices"


def _slice(row: Row) -> Slice:
    values: dict[str, Any] = dict(zip(_SLICE_COLUMNS, row, strict=True))
    values["stats"] = json.loads(values["stats"])
    values["excluded"] = bool(values["excluded"])
    return Slice(**values)
