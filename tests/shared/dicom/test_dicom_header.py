"""The header summary the catalog keeps: the tags DICOMweb and filtered search match on."""

from __future__ import annotations

import io

import numpy as np
import pytest

from shared.dicom.header import read_header
from shared.dicom.synthetic import StudyIds, make_secondary_capture

pytestmark = pytest.mark.unit


def encoded(**changes: object) -> bytes:
    ds = make_secondary_capture(StudyIds.new(patient_id="PAT-7"), 3, np.zeros((8, 8), np.uint8),
                                modality="MR", body_part="HEAD")
    for name, value in changes.items():
        setattr(ds, name, value)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_the_summary_reads_dates_numbers_and_patient_attributes() -> None:
    header = read_header(encoded(AccessionNumber="ACC-1", StudyDescription="Head MR",
                                 IssuerOfPatientID="HOSP", SeriesNumber=4))
    assert (header.patient_id, header.issuer_of_patient_id) == ("PAT-7", "HOSP")
    assert header.patient_name == "Synthetic^Patient"
    assert (header.study_date, header.study_time) == ("20260101", "120000")
    assert (header.accession_number, header.study_description) == ("ACC-1", "Head MR")
    assert (header.series_number, header.instance_number) == (4, 3)
    assert (header.modality, header.body_part, header.number_of_frames) == ("MR", "HEAD", 1)


@pytest.mark.parametrize("date", ["2026-01-01", "20261301", "yesterday", "2026010"])
def test_a_malformed_study_date_is_kept_out(date: str) -> None:
    assert read_header(encoded(StudyDate=date)).study_date is None


def test_unreadable_numbers_are_none_not_a_refusal() -> None:
    header = read_header(encoded(SeriesNumber="", InstanceNumber=""))
    assert header.series_number is None and header.instance_number is None
