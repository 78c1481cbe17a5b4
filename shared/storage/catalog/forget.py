"""Forgetting's part of the catalog: the job that removes a patient or a study, recorded so a
crash at any point resumes where it stopped.

:meth:`ForgetRecords.begin_forget` does the catalog's part in one transaction: it writes the
job and everything the later steps need (every object key, every slice id), then deletes the
instances' codes, slices and rows. From that commit on, no search, retrieve or QIDO query can
return the instances (search results are checked against the catalog, so a searcher still
holding an older index generation drops them too), and a crash leaves a job that lists what
is left to do: objects to delete, index entries to tombstone. The PatientID itself is never
written into the job: its target is the patient's pseudonym (``patient:<patient_key>``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

from shared.storage.catalog.db import Transaction
from shared.storage.catalog.records import Tables


class ForgetState(StrEnum):
    OBJECTS = "objects"
    """Catalog rows gone; the raw and slice objects are being deleted."""
    INDEX = "index"
    """Objects gone; waiting until no index generation kept in the store holds a code of it."""
    DONE = "done"


Selector = Literal["patient", "study", "retention"]

JOB_COLUMNS = "id, selector, target, requested_by, state, instances, objects, slices, created_at, updated_at"


@dataclass(frozen=True)
class ForgetJob:
    id: int
    selector: str
    target: str
    requested_by: str
    state: ForgetState
    instances: int
    objects: int
    slices: int
    created_at: float
    updated_at: float


def _job(row: Sequence[object]) -> ForgetJob:
    values = list(row)
    values[4] = ForgetState(values[4])
    return ForgetJob(*values)  # type: ignore[arg-type]


class ForgetRecords(Tables):
    def begin_forget(self, selector: Selector, column: str, value: str, target: str,
                     requested_by: str) -> ForgetJob:
        """Record a job for every instance (every version) whose ``column`` equals ``value``,
        then delete their codes, slices and rows, all in one transaction.

        ``column`` is ``patient_id`` or ``study_instance_uid`` (never caller text in SQL);
        ``target`` is what the job and the audit trail show (a pseudonym, not a PatientID).
        """
        if column not in ("patient_id", "study_instance_uid"):
            raise ValueError(f"cannot forget by {column!r}")
        now = time.time()
        with self.database.transaction() as tx:
            instances = tx.execute(f"SELECT id, object_key FROM instances WHERE {column} = ?",
                                   (value,))
            ids = [int(row[0]) for row in instances]
            slices = self._slices_of(tx, ids)
            objects = sorted({str(key) for _, key in instances} | {key for _, key in slices})
            job_id = int(tx.execute(
                "INSERT INTO forget_jobs (selector, target, requested_by, state, instances, "
                "objects, slices, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) "
                "RETURNING id",
                (selector, target, requested_by,
                 (ForgetState.OBJECTS if ids else ForgetState.DONE).value, len(ids),
                 len(objects), len(slices), now, now))[0][0])
            for kind, values in (("object", objects), ("slice", [str(i) for i, _ in slices])):
                for item in values:
                    tx.execute("INSERT INTO forget_items (job_id, kind, value) VALUES (?, ?, ?)",
                               (job_id, kind, item))
            self._delete_rows(tx, ids, [slice_id for slice_id, _ in slices])
            rows = tx.execute(f"SELECT {JOB_COLUMNS} FROM forget_jobs WHERE id = ?", (job_id,))
        return _job(rows[0])

    @staticmethod
    def _slices_of(tx: Transaction, instance_ids: list[int]) -> list[tuple[int, str]]:
        found: list[tuple[int, str]] = []
        for start in range(0, len(instance_ids), 500):
            chunk = instance_ids[start:start + 500]
            found += [(int(row[0]), str(row[1])) for row in tx.execute(
                f"SELECT id, object_key FROM slices WHERE instance_id IN "
                f"({', '.join('?' for _ in chunk)})", chunk)]
        return found

    @staticmethod
    def _delete_rows(tx: Transaction, instance_ids: list[int], slice_ids: list[int]) -> None:
        for start in range(0, len(slice_ids), 500):
            chunk = slice_ids[start:start + 500]
            marks = ", ".join("?" for _ in chunk)
            tx.execute(f"DELETE FROM codes WHERE slice_id IN ({marks})", chunk)
            tx.execute(f"DELETE FROM slices WHERE id IN ({marks})", chunk)
        for start in range(0, len(instance_ids), 500):
            chunk = instance_ids[start:start + 500]
            tx.execute(f"DELETE FROM instances WHERE id IN ({', '.join('?' for _ in chunk)})",
                       chunk)
        # a series' cleaning verdict outlives nothing of it
        tx.execute("DELETE FROM series_cleaning WHERE series_instance_uid NOT IN "
                   "(SELECT series_instance_uid FROM slices WHERE series_instance_uid IS NOT NULL)")

    def forget_job(self, job_id: int) -> ForgetJob | None:
        rows = self.read(f"SELECT {JOB_COLUMNS} FROM forget_jobs WHERE id = ?", (job_id,))
        return _job(rows[0]) if rows else None

    def forget_jobs(self, *, unfinished: bool = False, limit: int = 100) -> list[ForgetJob]:
        """Jobs newest first; ``unfinished``: only those still to complete (oldest first)."""
        if unfinished:
            rows = self.read(f"SELECT {JOB_COLUMNS} FROM forget_jobs WHERE state <> ? "
                             "ORDER BY id LIMIT ?", (ForgetState.DONE.value, limit))
        else:
            rows = self.read(f"SELECT {JOB_COLUMNS} FROM forget_jobs ORDER BY id DESC LIMIT ?",
                             (limit,))
        return [_job(row) for row in rows]

    def forget_items(self, job_id: int, kind: str, *, pending_only: bool = True) -> list[str]:
        rows = self.read(
            "SELECT value FROM forget_items WHERE job_id = ? AND kind = ?"
            + (" AND NOT done" if pending_only else "") + " ORDER BY value", (job_id, kind))
        return [str(row[0]) for row in rows]

    def mark_forget_items_done(self, job_id: int, kind: str, values: Sequence[str]) -> None:
        with self.database.transaction() as tx:
            for value in values:
                tx.execute("UPDATE forget_items SET done = TRUE WHERE job_id = ? AND kind = ? "
                           "AND value = ?", (job_id, kind, value))

    def set_forget_state(self, job_id: int, state: ForgetState) -> None:
        with self.database.transaction() as tx:
            tx.execute("UPDATE forget_jobs SET state = ?, updated_at = ? WHERE id = ?",
                       (state.value, time.time(), job_id))

    # --- the index's part, done by each model version's indexer -----------------------------

    def pending_removals(self, model_version: str) -> dict[int, list[int]]:
        """Slice ids to tombstone in this model version's index, by unfinished job."""
        rows = self.read(
            "SELECT f.job_id, f.value FROM forget_items f JOIN forget_jobs j ON j.id = f.job_id "
            "WHERE f.kind = 'slice' AND j.state <> ? AND NOT EXISTS (SELECT 1 FROM forget_index x "
            "WHERE x.job_id = f.job_id AND x.model_version = ?)",
            (ForgetState.DONE.value, model_version))
        pending: dict[int, list[int]] = {}
        for job_id, value in rows:
            pending.setdefault(int(job_id), []).append(int(value))
        return pending

    def record_removals_applied(self, job_ids: Sequence[int], model_version: str) -> None:
        with self.database.transaction() as tx:
            for job_id in job_ids:
                tx.execute("INSERT INTO forget_index (job_id, model_version, applied_at) "
                           "VALUES (?, ?, ?) ON CONFLICT (job_id, model_version) DO NOTHING",
                           (job_id, model_version, time.time()))

    def clear_removals_applied(self, job_id: int, model_version: str) -> None:
        """Ask the indexer of ``model_version`` to apply the job's removals again (a check
        found one of its codes still in a kept generation)."""
        with self.database.transaction() as tx:
            tx.execute("DELETE FROM forget_index WHERE job_id = ? AND model_version = ?",
                       (job_id, model_version))

    # --- retention ---------------------------------------------------------------------------

    def studies_received_before(self, cutoff: float, limit: int = 1000) -> list[str]:
        """Studies whose newest instance (any version) was received before ``cutoff``."""
        rows = self.read(
            "SELECT study_instance_uid FROM instances WHERE study_instance_uid IS NOT NULL "
            "GROUP BY study_instance_uid HAVING MAX(received_at) < ? ORDER BY 1 LIMIT ?",
            (cutoff, limit))
        return [str(row[0]) for row in rows]
