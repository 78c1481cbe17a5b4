"""The search service's part of the catalog: codes of a stored instance and what a result
shows about each slice."""

from __future__ import annotations

from collections.abc import Sequence

from shared.storage.catalog.records import SELECT_DETAIL, SliceDetail, Tables, detail_of


class SearchLookups(Tables):
    def codes_of_sop(self, sop_instance_uid: str, model_version: str) -> list[tuple[int, bytes]]:
        """(slice id, packed code) of the current version of an instance, by frame."""
        rows = self.read(
            "SELECT s.id, c.code FROM instances i JOIN slices s ON s.instance_id = i.id "
            "JOIN codes c ON c.slice_id = s.id WHERE i.sop_instance_uid = ? AND i.is_current "
            "AND c.model_version = ? ORDER BY s.frame_index",
            (sop_instance_uid, model_version),
        )
        return [(int(a), bytes(code)) for a, code in rows]

    def slice_details(self, slice_ids: Sequence[int]) -> dict[int, SliceDetail]:
        """What a search result shows about each slice, keyed by slice id."""
        if not slice_ids:
            return {}
        marks = ", ".join("?" for _ in slice_ids)
        rows = self.read(f"{SELECT_DETAIL} WHERE s.id IN ({marks})", tuple(slice_ids))
        return {detail.slice_id: detail for detail in map(detail_of, rows)}
