"""The catalog: every instance medhash was told about, and where it is in the pipeline.

Identity is (SOP Instance UID, sha256 of the stored bytes): the same bytes sent again are
one row, different bytes under the same UID are a new row that becomes current while the
old one is kept (``is_current`` false). Every write is a single transaction, so a reader
never sees an instance half-recorded.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, fields
from typing import Any

from shared.catalog.db import Database, Row
from shared.catalog.states import InstanceState


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
    """Domain operations over a :class:`~shared.catalog.db.Database`."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def find_duplicate(self, sop_instance_uid: str, sha256: str) -> int | None:
        """The id of the row holding exactly these bytes for this UID, if there is one."""
        with self.database.transaction() as tx:
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
        with self.database.transaction() as tx:
            rows = tx.execute(f"{_SELECT_INSTANCE} WHERE id = ?", (instance_id,))
        return _instance(rows[0]) if rows else None

    def versions(self, sop_instance_uid: str) -> list[Instance]:
        """Every stored version of an instance, newest first."""
        with self.database.transaction() as tx:
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
        with self.database.transaction() as tx:
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
        with self.database.transaction() as tx:
            rows = tx.execute(
                "SELECT state, COUNT(*) FROM instances WHERE is_current GROUP BY state"
            )
        counts = {state.value: 0 for state in InstanceState}
        counts.update({str(state): int(count) for state, count in rows})
        return counts

    def close(self) -> None:
        self.database.close()
