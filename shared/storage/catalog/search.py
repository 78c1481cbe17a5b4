"""The search service's part of the catalog: codes of a stored instance, what a result shows
about each slice, and which slices a filtered search may return."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from shared.pipeline.states import InstanceState
from shared.storage.catalog.records import SELECT_DETAIL, SliceDetail, Tables, detail_of


@dataclass(frozen=True)
class SliceFilter:
    """Which slices a search may return; every field that is set must hold.

    One rule, written twice side by side so the two cannot drift: :meth:`admits` for the
    index's candidates, :meth:`where` for the catalog scan a very selective filter falls back
    to. Superseded versions are never admitted. A slice whose attribute is unknown (no
    Modality, no StudyDate) fails a filter on that attribute; ``exclude_patient_key`` and
    ``exclude_study_uid`` drop only slices known to be of that patient or study.
    """

    include_excluded: bool = False
    modalities: frozenset[str] = frozenset()
    body_parts: frozenset[str] = frozenset()
    study_date_from: str | None = None
    """Inclusive ``YYYYMMDD``."""
    study_date_to: str | None = None
    calling_aes: frozenset[str] = frozenset()
    exclude_patient_key: str | None = None
    exclude_study_uid: str | None = None

    @property
    def selective(self) -> bool:
        """Whether anything beyond the default (current, not excluded) is asked for."""
        return self != SliceFilter(include_excluded=self.include_excluded)

    def admits(self, detail: SliceDetail) -> bool:
        return (
            detail.is_current
            and (self.include_excluded or not detail.excluded)
            and (not self.modalities or detail.modality in self.modalities)
            and (not self.body_parts or detail.body_part in self.body_parts)
            and (self.study_date_from is None
                 or (detail.study_date is not None and detail.study_date >= self.study_date_from))
            and (self.study_date_to is None
                 or (detail.study_date is not None and detail.study_date <= self.study_date_to))
            and (not self.calling_aes or detail.calling_ae in self.calling_aes)
            and (self.exclude_patient_key is None or detail.patient_key != self.exclude_patient_key)
            and (self.exclude_study_uid is None
                 or detail.study_instance_uid != self.exclude_study_uid)
        )

    def where(self) -> tuple[str, list[Any]]:
        """:meth:`admits` as an SQL condition over ``slices s JOIN instances i``."""
        conditions = ["i.is_current"]
        params: list[Any] = []
        if not self.include_excluded:
            conditions.append("s.excluded = ?")
            params.append(False)
        for column, values in (("i.modality", self.modalities), ("i.body_part", self.body_parts),
                               ("i.calling_ae", self.calling_aes)):
            if values:
                conditions.append(f"{column} IN ({', '.join('?' for _ in values)})")
                params.extend(sorted(values))
        if self.study_date_from is not None:
            conditions.append("i.study_date >= ?")
            params.append(self.study_date_from)
        if self.study_date_to is not None:
            conditions.append("i.study_date <= ?")
            params.append(self.study_date_to)
        for column, value in (("i.patient_key", self.exclude_patient_key),
                              ("i.study_instance_uid", self.exclude_study_uid)):
            if value is not None:
                conditions.append(f"({column} IS NULL OR {column} <> ?)")
                params.append(value)
        return " AND ".join(conditions), params


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

    def indexed_codes(self, model_version: str, where: SliceFilter) -> list[tuple[int, bytes]]:
        """(slice id, code) of every indexed slice the filter admits, by slice id: the exact
        answer's domain when the filter admits too few of the index's nearest codes."""
        condition, params = where.where()
        rows = self.read(
            "SELECT s.id, c.code FROM slices s JOIN instances i ON i.id = s.instance_id "
            "JOIN codes c ON c.slice_id = s.id "
            f"WHERE c.model_version = ? AND i.state = ? AND {condition} ORDER BY s.id",
            (model_version, InstanceState.INDEXED.value, *params),
        )
        return [(int(slice_id), bytes(code)) for slice_id, code in rows]
