"""DICOMweb's part of the catalog: QIDO-RS matching (studies, series, instances) and the
instances a WADO-RS retrieve returns.

Every value a client sends becomes a bound parameter, never SQL text: a wildcard match
(``*`` and ``?``, PS3.4 C.2.2.2.4) turns into ``LIKE ... ESCAPE '\\'`` with the client's own
``%``, ``_`` and ``\\`` escaped first, so ``%`` matches a percent sign and a quote or an SQL
fragment is only ever a (non-matching) value. Only current instances are listed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from shared.storage.catalog.records import (
    SELECT_INSTANCE,
    Instance,
    Tables,
    instance_of,
)

ESCAPE = "\\"


@dataclass(frozen=True)
class Match:
    """QIDO-RS attribute matches (all of them must hold); an empty field matches everything.

    ``patient_id`` and ``accession_number`` may hold ``*``/``?`` wildcards; the UID lists
    are exact matches of any of their values (UID list matching); ``study_date_from`` /
    ``study_date_to`` are inclusive ``YYYYMMDD`` bounds (either may be missing: an open range).
    """

    patient_id: str | None = None
    accession_number: str | None = None
    modality: str | None = None
    study_uids: tuple[str, ...] = ()
    series_uids: tuple[str, ...] = ()
    sop_uids: tuple[str, ...] = ()
    study_date_from: str | None = None
    study_date_to: str | None = None

    def where(self) -> tuple[str, list[Any]]:
        """The SQL condition over ``instances`` and its parameters."""
        conditions = ["is_current", "study_instance_uid IS NOT NULL"]
        params: list[Any] = []
        for column, value in (("patient_id", self.patient_id),
                              ("accession_number", self.accession_number),
                              ("modality", self.modality)):
            if value is None:
                continue
            if "*" in value or "?" in value:
                conditions.append(f"{column} LIKE ? ESCAPE '{ESCAPE}'")
                params.append(like_pattern(value))
            else:
                conditions.append(f"{column} = ?")
                params.append(value)
        for column, values in (("study_instance_uid", self.study_uids),
                               ("series_instance_uid", self.series_uids),
                               ("sop_instance_uid", self.sop_uids)):
            if values:
                conditions.append(f"{column} IN ({', '.join('?' for _ in values)})")
                params.extend(values)
        if self.study_date_from is not None:
            conditions.append("study_date >= ?")
            params.append(self.study_date_from)
        if self.study_date_to is not None:
            conditions.append("study_date <= ?")
            params.append(self.study_date_to)
        return " AND ".join(conditions), params


def like_pattern(value: str) -> str:
    """A DICOM wildcard value as a LIKE pattern: the value's own ``\\``, ``%`` and ``_`` escaped,
    then ``*`` -> ``%`` and ``?`` -> ``_``."""
    escaped = (value.replace(ESCAPE, ESCAPE * 2).replace("%", ESCAPE + "%")
               .replace("_", ESCAPE + "_"))
    return escaped.replace("*", "%").replace("?", "_")


@dataclass(frozen=True)
class StudyRow:
    study_instance_uid: str
    study_date: str | None
    study_time: str | None
    accession_number: str | None
    patient_id: str | None
    patient_name: str | None
    study_description: str | None
    series: int
    instances: int
    modalities: tuple[str, ...] = field(default=())


@dataclass(frozen=True)
class SeriesRow:
    study_instance_uid: str
    series_instance_uid: str
    modality: str | None
    series_number: int | None
    instances: int


class DicomwebQueries(Tables):
    def qido_studies(self, match: Match, limit: int, offset: int) -> list[StudyRow]:
        """Studies with at least one current instance matching ``match``, by Study UID; the
        counts and modalities describe the whole study, not only the matching instances."""
        where, params = match.where()
        rows = self.read(
            "SELECT study_instance_uid, MIN(study_date), MIN(study_time), MIN(accession_number), "
            "MIN(patient_id), MIN(patient_name), MIN(study_description), "
            "COUNT(DISTINCT series_instance_uid), COUNT(*) FROM instances "
            "WHERE is_current AND study_instance_uid IN "
            f"(SELECT study_instance_uid FROM instances WHERE {where}) "
            "GROUP BY study_instance_uid ORDER BY study_instance_uid LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        studies = [StudyRow(*row[:7], int(row[7]), int(row[8])) for row in rows]
        if not studies:
            return []
        uids = [study.study_instance_uid for study in studies]
        marks = ", ".join("?" for _ in uids)
        modalities: dict[str, list[str]] = {}
        for study, modality in self.read(
            "SELECT DISTINCT study_instance_uid, modality FROM instances WHERE is_current AND "
            f"modality IS NOT NULL AND study_instance_uid IN ({marks}) ORDER BY 1, 2", uids,
        ):
            modalities.setdefault(study, []).append(modality)
        return [StudyRow(**{**study.__dict__,
                            "modalities": tuple(modalities.get(study.study_instance_uid, ()))})
                for study in studies]

    def qido_series(self, match: Match, limit: int, offset: int) -> list[SeriesRow]:
        """Series with at least one current instance matching ``match``, by (study, series)."""
        where, params = match.where()
        rows = self.read(
            "SELECT study_instance_uid, series_instance_uid, MIN(modality), MIN(series_number), "
            "COUNT(*) FROM instances WHERE is_current AND series_instance_uid IN "
            f"(SELECT series_instance_uid FROM instances WHERE {where}) "
            "GROUP BY study_instance_uid, series_instance_uid "
            "ORDER BY study_instance_uid, series_instance_uid LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [SeriesRow(row[0], row[1], row[2], row[3], int(row[4])) for row in rows]

    def qido_instances(self, match: Match, limit: int, offset: int) -> list[Instance]:
        """Current instances matching ``match``, by (study, series, instance number, id)."""
        where, params = match.where()
        rows = self.read(
            f"{SELECT_INSTANCE} WHERE {where} ORDER BY study_instance_uid, series_instance_uid, "
            "instance_number, id LIMIT ? OFFSET ?",
            (*params, limit, offset),
        )
        return [instance_of(row) for row in rows]

    def retrievable(self, study_uid: str, series_uid: str | None = None,
                    sop_uid: str | None = None) -> list[Instance]:
        """The current instances a WADO-RS retrieve of this study, series or instance returns."""
        conditions = ["is_current", "study_instance_uid = ?"]
        params: list[Any] = [study_uid]
        for column, value in (("series_instance_uid", series_uid), ("sop_instance_uid", sop_uid)):
            if value is not None:
                conditions.append(f"{column} = ?")
                params.append(value)
        rows = self.read(
            f"{SELECT_INSTANCE} WHERE {' AND '.join(conditions)} "
            "ORDER BY series_instance_uid, instance_number, id", params)
        return [instance_of(row) for row in rows]


__all__: Sequence[str] = ["DicomwebQueries", "Match", "SeriesRow", "StudyRow", "like_pattern"]
