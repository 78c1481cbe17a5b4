"""The few header attributes the catalog keeps, read without touching pixel data.

Parsing stops before (7FE0,0010), so a 2 GB multi-frame costs the same as a CT slice and no
codec is involved: decoding pixels is the CPU workers' job, never the listener's.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset

_TEXT = {
    "sop_instance_uid": "SOPInstanceUID", "sop_class_uid": "SOPClassUID",
    "study_instance_uid": "StudyInstanceUID", "series_instance_uid": "SeriesInstanceUID",
    "patient_id": "PatientID", "modality": "Modality", "body_part": "BodyPartExamined",
    "issuer_of_patient_id": "IssuerOfPatientID", "patient_name": "PatientName",
    "study_time": "StudyTime", "accession_number": "AccessionNumber",
    "study_description": "StudyDescription",
}
"""The text attributes of the summary, by the DICOM keyword each is read from."""
_INTEGERS = {"series_number": "SeriesNumber", "instance_number": "InstanceNumber"}
_TAGS = [*_TEXT.values(), *_INTEGERS.values(), "StudyDate", "NumberOfFrames"]
"""Only these are converted; every other element is skipped over by its length."""


_DATE = re.compile(r"(19|20|21)[0-9]{2}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])")


class UnreadableDataset(ValueError):
    """The bytes do not parse as a DICOM dataset."""


@dataclass(frozen=True)
class HeaderSummary:
    sop_instance_uid: str | None
    sop_class_uid: str | None
    study_instance_uid: str | None
    series_instance_uid: str | None
    patient_id: str | None
    modality: str | None
    body_part: str | None
    number_of_frames: int
    issuer_of_patient_id: str | None = None
    patient_name: str | None = None
    study_date: str | None = None
    """``YYYYMMDD`` when the file's StudyDate is a date, else None (QIDO and filters compare it)."""
    study_time: str | None = None
    accession_number: str | None = None
    study_description: str | None = None
    series_number: int | None = None
    instance_number: int | None = None


def _text(dataset: Dataset, keyword: str) -> str | None:
    value = dataset.get(keyword)
    if value is None or value == "":
        return None
    # NUL is padding at the ends and never meaningful inside text; PostgreSQL refuses it
    return str(value).replace("\x00", "").strip() or None


def _frames(dataset: Dataset) -> int:
    try:
        return max(1, int(dataset.get("NumberOfFrames") or 1))
    except (TypeError, ValueError):
        return 1


def _integer(dataset: Dataset, keyword: str) -> int | None:
    try:
        value = dataset.get(keyword)
        return None if value is None or value == "" else int(value)
    except (TypeError, ValueError):
        return None


def _date(dataset: Dataset, keyword: str) -> str | None:
    """A DA value as ``YYYYMMDD``; a malformed one (``2024-01-02``, text) is kept out."""
    text = _text(dataset, keyword)
    return text if text is not None and _DATE.fullmatch(text) else None


def read_header(part10: bytes) -> HeaderSummary:
    """Summarise a DICOM Part 10 byte stream; :class:`UnreadableDataset` when it does not parse."""
    try:
        dataset = pydicom.dcmread(BytesIO(part10), stop_before_pixels=True, specific_tags=_TAGS)
        return HeaderSummary(
            **{name: _text(dataset, keyword) for name, keyword in _TEXT.items()},
            **{name: _integer(dataset, keyword) for name, keyword in _INTEGERS.items()},
            study_date=_date(dataset, "StudyDate"),
            number_of_frames=_frames(dataset),
        )
    except Exception as exc:  # pydicom raises many types for malformed input
        raise UnreadableDataset(f"dataset does not parse: {type(exc).__name__}: {exc}") from exc
