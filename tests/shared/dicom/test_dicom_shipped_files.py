"""Every file pydicom and pydicom-data ship goes through the pipeline without surprises.

Two promises are checked on real-world files (vendors, codecs, broken headers):

* each file ends in frames, :class:`NoPixelData` or :class:`UndecodablePixelData`, never in
  another exception, and never fails where pydicom itself can decode the pixels;
* losslessly compressed or byte-swapped files give exactly the frames of their uncompressed
  little-endian twin, whichever codec plugin decodes them.
"""

from __future__ import annotations

import functools
from collections import Counter
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.data import data_manager, get_testdata_file, get_testdata_files

from shared.dicom.pixels import (
    Frame,
    NoPixelData,
    PixelPipelineError,
    UndecodablePixelData,
    frames_from_bytes,
)

# pydicom warns about the many deliberately broken headers in its test files.
pytestmark = [pytest.mark.unit, pytest.mark.filterwarnings("ignore")]

# (uncompressed little-endian reference, twin). The twins are lossless encodings (RLE, JPEG
# Lossless, JPEG-LS lossless, JPEG 2000 reversible) or the same pixels in big-endian or
# implicit VR. JPEG2000.dcm and SC_rgb_gdcm_KY.dcm use the lossy-capable JPEG 2000 syntax but
# were encoded reversibly; the *_UNC/_UNCR/_dcmd references were decompressed from them.
TWINS: list[tuple[str, str]] = [
    *[
        ("MR_small.dcm", twin)
        for twin in (
            "MR_small_RLE.dcm",
            "MR_small_jp2klossless.dcm",
            "MR_small_jpeg_ls_lossless.dcm",
            "MR_small_bigendian.dcm",
            "MR_small_expb.dcm",
            "MR_small_implicit.dcm",
            "MR_small_padded.dcm",
        )
    ],
    *[
        ("emri_small.dcm", twin)
        for twin in (
            "emri_small_RLE.dcm",
            "emri_small_jpeg_2k_lossless.dcm",
            "emri_small_jpeg_ls_lossless.dcm",
            "emri_small_big_endian.dcm",
        )
    ],
    *[
        (f"SC_rgb{variant}.dcm", f"SC_rgb_{encoding}{variant}.dcm")
        for variant in ("", "_2frame", "_16bit", "_16bit_2frame", "_32bit", "_32bit_2frame")
        for encoding in ("rle", "expb")
    ],
    ("SC_rgb.dcm", "SC_rgb_jpeg_gdcm.dcm"),
    ("SC_rgb_gdcm2k_uncompressed.dcm", "SC_rgb_gdcm_KY.dcm"),
    ("SC_rgb_small_odd.dcm", "SC_rgb_small_odd_big_endian.dcm"),
    ("OBXXXX1A.dcm", "OBXXXX1A_rle.dcm"),
    ("OBXXXX1A.dcm", "OBXXXX1A_expb.dcm"),
    ("OBXXXX1A_2frame.dcm", "OBXXXX1A_rle_2frame.dcm"),
    ("OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm"),
    ("gdcm-US-ALOKA-16.dcm", "gdcm-US-ALOKA-16_big.dcm"),
    ("US1_UNCR.dcm", "US1_J2KR.dcm"),
    ("US1_UNCR.dcm", "examples_jpeg2k.dcm"),
    ("RG1_UNCR.dcm", "RG1_J2KR.dcm"),
    ("RG3_UNCR.dcm", "RG3_J2KR.dcm"),
    ("MR2_UNCR.dcm", "MR2_J2KR.dcm"),
    ("693_UNCR.dcm", "693_J2KR.dcm"),
    ("JPEG2000_UNC.dcm", "JPEG2000.dcm"),
    ("rtdose.dcm", "rtdose_rle.dcm"),
    ("rtdose.dcm", "rtdose_expb.dcm"),
    ("rtdose_1frame.dcm", "rtdose_rle_1frame.dcm"),
    ("rtdose_1frame.dcm", "rtdose_expb_1frame.dcm"),
    ("liver.dcm", "liver_expb.dcm"),
    ("liver_1frame.dcm", "liver_expb_1frame.dcm"),
]

Outcome = list[Frame] | PixelPipelineError


def shipped_files() -> list[Path]:
    """All files of pydicom's test data and of the installed pydicom-data package.

    ``get_testdata_files()`` also downloads every file of pydicom's URL list that is not in
    its cache. pydicom-data is the package those files come from, found through its
    ``pydicom.data.external_sources`` entry point; with the download list emptied the call
    lists exactly what is installed and never touches the network.
    """
    with mock.patch.object(data_manager, "online_test_file_dummy_paths", lambda: {}):
        paths = get_testdata_files()
    return sorted({Path(path) for path in paths if Path(path).is_file()})


def local_file(name: str) -> Path:
    path = get_testdata_file(name, download=False)
    assert path is not None, f"{name} is not installed (pydicom or pydicom-data)"
    return Path(path)


@functools.cache
def outcome(path: Path) -> Outcome:
    """Frames or the pipeline's typed error; any other exception fails the calling test."""
    try:
        return frames_from_bytes(path.read_bytes())
    except PixelPipelineError as error:
        return error


def pydicom_decodes(path: Path) -> bool:
    try:
        _ = dcmread(path, force=True).pixel_array
    except Exception:
        return False
    return True


def test_every_shipped_file_ends_in_frames_skipped_or_failed(
    capsys: pytest.CaptureFixture[str],
) -> None:
    files = shipped_files()
    assert len(files) > 200, "pydicom-data does not seem to be installed"
    results = {path: outcome(path) for path in files}

    for path, result in results.items():
        if isinstance(result, list):
            assert result, path
            for frame in result:
                assert frame.pixels.dtype == np.float32 and frame.pixels.ndim == 2, path
                assert frame.pixels.min() >= 0.0 and frame.pixels.max() <= 1.0, path
        elif isinstance(result, UndecodablePixelData):
            assert not pydicom_decodes(path), f"{path.name}: pydicom decodes it, we said {result}"

    decoded = [r for r in results.values() if isinstance(r, list)]
    skipped = Counter(r.reason for r in results.values() if isinstance(r, NoPixelData))
    failed = Counter(
        r.reason.splitlines()[0] for r in results.values() if isinstance(r, UndecodablePixelData)
    )
    with capsys.disabled():
        print(f"\nshipped files: {len(files)}")
        print(f"  frames:  {len(decoded)} files, {sum(map(len, decoded))} frames")
        print(f"  skipped: {sum(skipped.values())}")
        for reason, count in skipped.most_common():
            print(f"    {count:3d}  {reason}")
        print(f"  failed:  {sum(failed.values())}")
        for reason, count in failed.most_common():
            print(f"    {count:3d}  {reason[:150]}")
    assert decoded and skipped and failed


@pytest.mark.parametrize(("reference", "twin"), TWINS, ids=[twin for _, twin in TWINS])
def test_lossless_twins_give_identical_frames(reference: str, twin: str) -> None:
    expected, actual = outcome(local_file(reference)), outcome(local_file(twin))
    assert isinstance(expected, list), expected
    assert isinstance(actual, list), actual
    assert len(actual) == len(expected)
    for want, got in zip(expected, actual, strict=True):
        np.testing.assert_array_equal(got.pixels, want.pixels)
