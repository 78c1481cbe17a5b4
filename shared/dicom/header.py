"""The few header attributes the catalog keeps, read without touching pixel data.

Parsing stops before (7FE0,0010), so a 2 GB multi-frame costs the same as a CT slice and no
codec is involved: decoding pixels is the CPU workers' job, never the listener's.
"""

from __future__ import annotations

from dataclasses import dataclass
from io import BytesIO

import pydicom
from pydicom.dataset import Dataset

_TAGS = [
    "SOPInstanceUID", "SOPClassUID", "StudyInstanceUID", "SeriesInstanceUID",
    "PatientID", "Modality", "BodyPartExamined", "NumberOfFrames",
]
"""Only these are converted; every other element is skipped over by its length."""


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


def read_header(part10: bytes) -> HeaderSummary:
    """Summarise a DICOM Part 10 byte stream; :class:`UnreadableDataset` when it does not parse."""
    try:
        dataset = pydicom.dcmread(BytesIO(part10), stop_before_pixels=True, specific_tags=_TAGS)
        return HeaderSummary(
            sop_instance_uid=_text(dataset, "SOPInstanceUID"),
            sop_class_uid=_text(dataset, "SOPClassUID"),
            study_instance_uid=_text(dataset, "StudyInstanceUID"),
            series_instance_uid=_text(dataset, "SeriesInstanceUID"),
            patient_id=_text(dataset, "PatientID"),
            modality=_text(dataset, "Modality"),
            body_part=_text(dataset, "BodyPartExamined"),
            number_of_frames=_frames(dataset),
        )
    except Exception as exc:  # pydicom raises many types for malformed input
        raise UnreadableDataset(f"dataset does not parse: {type(exc).__name__}: {exc}") from exc
