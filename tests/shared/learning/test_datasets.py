"""Folder loading (PNG and DICOM), the seeded stratified split, CSV labels over slices,
augmentation and class-balanced batches."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.learning.datasets import (
    Augmenter,
    balanced_batches,
    list_folder,
    load_folder,
    load_labelled_slices,
    split_folder,
    stratified_split,
)
from tests.shared.learning.synthetic import write_png_folder

pytestmark = pytest.mark.unit


def _write_dicom(path: Path, pixels: np.ndarray) -> None:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import (
        ExplicitVRLittleEndian,
        SecondaryCaptureImageStorage,
        generate_uid,
    )

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.PixelData = pixels.astype(np.uint16).tobytes()
    ds.save_as(path, enforce_file_format=True)


def test_load_folder_png_and_dicom(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "data", num_classes=2, per_class=3, size=20)
    _write_dicom(root / "class1" / "extra.dcm", np.arange(400).reshape(20, 20) * 10)
    data = load_folder(root, 16)
    assert data.images.shape == (7, 1, 16, 16) and data.images.dtype == torch.uint8
    assert data.class_names == ["class0", "class1"] and data.labels.tolist() == [0, 0, 0, 1, 1, 1, 1]
    dcm = data.images[data.ids.index("class1/extra.dcm"), 0]
    assert dcm.min() <= 5 and dcm.max() >= 245  # min-max scaled 12-bit ramp (then resized)
    paths, labels, _ = list_folder(root, ["class0", "class1", "class2"])
    assert len(paths) == 7 and labels.max() == 1
    with pytest.raises(ValueError):
        load_folder(root, 16, ["class0"])


def test_stratified_split_is_seeded_and_stratified() -> None:
    labels = np.repeat([0, 1, 2], [10, 20, 5])
    a, b = stratified_split(labels, 0.8, seed=1)
    assert np.bincount(labels[a]).tolist() == [8, 16, 4] and np.bincount(labels[b]).tolist() == [2, 4, 1]
    assert not set(a) & set(b) and len(a) + len(b) == len(labels)
    assert np.array_equal(a, stratified_split(labels, 0.8, seed=1)[0])
    assert not np.array_equal(a, stratified_split(labels, 0.8, seed=2)[0])


def test_split_folder_with_subset(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "data", num_classes=2, per_class=10, size=16)
    train, queries = split_folder(root, 16, seed=0, per_class=5)
    assert len(train) == 8 and len(queries) == 2 and not set(train.ids) & set(queries.ids)


def test_csv_labels_over_slice_source(tmp_path: Path) -> None:
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("PatientID,StudyInstanceUID,SeriesInstanceUID,label\n"
                        ",1.2.1,,liver\n"       # a study-level label
                        ",,1.2.1.9,kidney\n"    # overridden for one series of that study
                        "P7,,,lung\n")          # a patient-level label
    img = np.full((8, 8), 7, dtype=np.uint16)
    source = [
        ("s1", img, {"PatientID": "P1", "StudyInstanceUID": "1.2.1", "SeriesInstanceUID": "1.2.1.1"}),
        ("s2", img, {"PatientID": "P1", "StudyInstanceUID": "1.2.1", "SeriesInstanceUID": "1.2.1.9"}),
        ("s3", img, {"PatientID": "P7", "StudyInstanceUID": "3.3", "SeriesInstanceUID": "3.3.1"}),
        ("s4", img, {"PatientID": "P9", "StudyInstanceUID": "9.9", "SeriesInstanceUID": "9.9.1"}),
    ]
    data = load_labelled_slices(source, csv_path, image_size=4)
    assert data.ids == ["s1", "s2", "s3"]
    assert [data.class_names[i] for i in data.labels] == ["liver", "kidney", "lung"]
    assert data.images.shape == (3, 1, 4, 4)
    csv_path.write_text("PatientID,label\nP1,a\nP1,b\n")
    with pytest.raises(ValueError, match="two labels"):
        load_labelled_slices(source, csv_path, image_size=4)


def test_augmenter_is_seeded_and_in_range() -> None:
    x = torch.rand(6, 1, 24, 24)
    a = Augmenter()(x, torch.Generator().manual_seed(0))
    b = Augmenter()(x, torch.Generator().manual_seed(0))
    assert a.shape == x.shape and torch.equal(a, b)
    assert a.min() >= 0 and a.max() <= 1 and not torch.allclose(a, x)


def test_balanced_batches_hold_several_images_per_class() -> None:
    labels = torch.tensor([0] * 30 + [1] * 5 + [2] * 40 + [3] * 2)
    batches = list(balanced_batches(labels, 16, torch.Generator().manual_seed(0)))
    assert len(batches) == -(-len(labels) // 16)
    for idx in batches:
        counts = torch.bincount(labels[idx])
        assert len(idx) == 16 and (counts[counts > 0] == 4).all()
