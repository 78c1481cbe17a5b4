"""Synthetic DICOM made with pydicom, for tests, benchmarks and the demo (no downloads).

CT slices carry a plausible header (rescale, window, patient/study/series) and pixels with
structure (an ellipse "body" with noise), so the pixel pipeline and the models see
something image-like. Secondary Capture instances wrap an existing 8-bit picture (a PNG or
JPEG from a labelled set) so the demo can send real images over C-STORE.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from shared.dicom.part10 import IMPLEMENTATION_CLASS_UID

UID_PREFIX = "1.2.826.0.1.3680043.10.1427."


@dataclass(frozen=True)
class StudyIds:
    """UIDs shared by the instances of one synthetic series."""

    patient_id: str
    study_instance_uid: str
    series_instance_uid: str

    @classmethod
    def new(cls, patient_id: str = "SYNTH0001") -> StudyIds:
        return cls(
            patient_id=patient_id,
            study_instance_uid=generate_uid(UID_PREFIX),
            series_instance_uid=generate_uid(UID_PREFIX),
        )


def _file_meta(sop_class: str, sop_instance: str, transfer_syntax: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = IMPLEMENTATION_CLASS_UID
    meta.ImplementationVersionName = "MEDHASH_SYNTH"
    return meta


def _common(ds: Dataset, ids: StudyIds, sop_class: str, instance_number: int) -> None:
    ds.SOPClassUID = sop_class
    ds.PatientID = ids.patient_id
    ds.PatientName = "Synthetic^Patient"
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "O"
    ds.StudyInstanceUID = ids.study_instance_uid
    ds.SeriesInstanceUID = ids.series_instance_uid
    ds.StudyDate = "20260101"
    ds.StudyTime = "120000"
    ds.StudyID = "1"
    ds.AccessionNumber = ""
    ds.ReferringPhysicianName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number


def ct_pixels(rows: int, columns: int, rng: np.random.Generator) -> np.ndarray:
    """A CT-like slice in stored values (HU + 1024): air, an ellipse of tissue, a bright disc."""
    yy, xx = np.mgrid[0:rows, 0:columns].astype(np.float32)
    cy, cx = rows / 2, columns / 2
    body = ((yy - cy) / (0.42 * rows)) ** 2 + ((xx - cx) / (0.36 * columns)) ** 2 <= 1.0
    oy, ox = rng.uniform(0.35, 0.65) * rows, rng.uniform(0.35, 0.65) * columns
    bone = (yy - oy) ** 2 + (xx - ox) ** 2 <= (0.06 * min(rows, columns)) ** 2
    hu = np.full((rows, columns), -1000.0, dtype=np.float32)
    hu[body] = 40.0
    hu[bone] = 700.0
    hu += rng.normal(0.0, 12.0, size=hu.shape).astype(np.float32)
    return np.clip(hu + 1024.0, 0, 4095).astype(np.uint16)


def make_ct(
    ids: StudyIds,
    instance_number: int,
    *,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """One CT slice, Explicit VR Little Endian, 12 bits stored, rescale -1024, soft-tissue window."""
    uid = sop_instance_uid or generate_uid(UID_PREFIX)
    ds = Dataset()
    ds.file_meta = _file_meta(CTImageStorage, uid, ExplicitVRLittleEndian)
    _common(ds, ids, CTImageStorage, instance_number)
    ds.SOPInstanceUID = uid
    ds.Modality = "CT"
    ds.BodyPartExamined = "CHEST"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SliceThickness = "1.0"
    ds.ImagePositionPatient = [0, 0, float(instance_number)]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.7, 0.7]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = rows
    ds.Columns = columns
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.RescaleType = "HU"
    ds.WindowCenter = "40"
    ds.WindowWidth = "400"
    rng = np.random.default_rng(seed * 100_003 + instance_number)
    ds.PixelData = ct_pixels(rows, columns, rng).tobytes()
    return ds


def make_secondary_capture(
    ids: StudyIds,
    instance_number: int,
    pixels: np.ndarray,
    *,
    modality: str = "OT",
    body_part: str | None = None,
    sop_instance_uid: str | None = None,
) -> Dataset:
    """Wrap an 8-bit greyscale picture as a Secondary Capture instance."""
    if pixels.ndim != 2 or pixels.dtype != np.uint8:
        raise ValueError("secondary capture needs a 2-D uint8 greyscale array")
    uid = sop_instance_uid or generate_uid(UID_PREFIX)
    ds = Dataset()
    ds.file_meta = _file_meta(SecondaryCaptureImageStorage, uid, ExplicitVRLittleEndian)
    _common(ds, ids, SecondaryCaptureImageStorage, instance_number)
    ds.SOPInstanceUID = uid
    ds.Modality = modality
    if body_part:
        ds.BodyPartExamined = body_part
    ds.ConversionType = "WSD"
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated = 8
    ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    return ds


def write(ds: Dataset, path: Path) -> Path:
    """Save as a Part 10 file with the dataset's own file meta (no implicit conversion)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def write_ct_series(
    folder: Path,
    count: int,
    *,
    rows: int = 512,
    columns: int = 512,
    seed: int = 0,
    ids: StudyIds | None = None,
) -> list[Path]:
    """``count`` CT slices of one series as ``folder/ct_0001.dcm`` ..."""
    ids = ids or StudyIds.new()
    return [
        write(make_ct(ids, n, rows=rows, columns=columns, seed=seed), folder / f"ct_{n:04d}.dcm")
        for n in range(1, count + 1)
    ]
