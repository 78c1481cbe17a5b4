"""The stages' and the reconciler's part of the catalog: first-delivery-wins transitions with
their slices or codes, attempts, stale instances, and the series cleaning."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence

from shared.pipeline.states import InstanceState
from shared.storage.catalog.records import (
    SELECT_INSTANCE,
    SELECT_SLICE,
    Instance,
    NewSlice,
    Slice,
    SliceCodes,
    Tables,
    instance_of,
    slice_of,
)


class PipelineRecords(Tables):
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
        rows = self.read(
            f"{SELECT_INSTANCE} WHERE state = ? AND is_current AND state_changed_at < ? "
            "ORDER BY state_changed_at LIMIT ?",
            (state.value, time.time() - older_than_s, limit),
        )
        return [instance_of(row) for row in rows]

    def touch(self, instance_id: int) -> None:
        """Restart the instance's timeout in its state (it was just re-enqueued)."""
        with self.database.transaction() as tx:
            tx.execute(
                "UPDATE instances SET state_changed_at = ? WHERE id = ?", (time.time(), instance_id)
            )

    # --- slices and series cleaning ---------------------------------------------------------

    def slices(self, instance_id: int) -> list[Slice]:
        rows = self.read(
            f"{SELECT_SLICE} WHERE instance_id = ? ORDER BY frame_index", (instance_id,)
        )
        return [slice_of(row) for row in rows]

    def series_to_clean(self, stable_s: float) -> list[str]:
        """Series with no new slice for ``stable_s`` whose cleaning is missing or out of date."""
        rows = self.read(
            "SELECT s.series_instance_uid FROM slices s "
            "LEFT JOIN series_cleaning c ON c.series_instance_uid = s.series_instance_uid "
            "WHERE s.series_instance_uid IS NOT NULL "
            "GROUP BY s.series_instance_uid, c.slice_count "
            "HAVING MAX(s.created_at) < ? AND (c.slice_count IS NULL OR c.slice_count <> COUNT(*))",
            (time.time() - stable_s,),
        )
        return [str(row[0]) for row in rows]

    def series_slices(self, series_instance_uid: str) -> list[Slice]:
        rows = self.read(
            f"{SELECT_SLICE} WHERE series_instance_uid = ? ORDER BY id",
            (series_instance_uid,),
        )
        return [slice_of(row) for row in rows]

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

    # --- codes for the indexer ----------------------------------------------------------------

    def codes_of_instances(
        self, instance_ids: Sequence[int], model_version: str
    ) -> list[tuple[int, int, bytes]]:
        """(slice id, instance id, packed code) of the given instances' slices."""
        if not instance_ids:
            return []
        marks = ", ".join("?" for _ in instance_ids)
        rows = self.read(
            "SELECT s.id, s.instance_id, c.code FROM slices s JOIN codes c ON c.slice_id = s.id "
            f"WHERE c.model_version = ? AND s.instance_id IN ({marks}) ORDER BY s.id",
            (model_version, *instance_ids),
        )
        return [(int(a), int(b), bytes(code)) for a, b, code in rows]
