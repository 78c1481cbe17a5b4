"""Training's part of the catalog: the slices a model may learn from."""

from __future__ import annotations

from shared.storage.catalog.records import SELECT_DETAIL, SliceDetail, Tables, detail_of


class TrainingSlices(Tables):
    def training_slices(self) -> list[SliceDetail]:
        """Every slice a model may learn from: kept by series cleaning, of the current
        version of its instance, by slice id (so a seeded split is reproducible)."""
        rows = self.read(f"{SELECT_DETAIL} WHERE s.excluded = ? AND i.is_current ORDER BY s.id", (False,))
        return [detail_of(row) for row in rows]
