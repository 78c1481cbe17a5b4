"""12-bit JPEG Extended (1.2.840.10008.1.2.4.51) decodes in the pixel pipeline exactly as dcmtk does.

The references are dcmtk's own: ``dcmcjpeg +ee`` encodes synthetic 12-bit CT slices, and
``dcmdjpeg`` decodes every stream; the pipeline's frames from the JPEG file must equal its
frames from dcmtk's uncompressed output, which holds only if the decoded values are equal.
``JPEG-lossy.dcm`` (shipped by pydicom) has the SOS values pylibjpeg rejects.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest
from pydicom import dcmread
from pydicom.uid import JPEGExtended12Bit

from shared.dicom.pixels import frames_from_bytes
from shared.dicom.synthetic import StudyIds, make_ct, write
from tests.conftest import dcmtk
from tests.shipped import shipped_files

pytestmark = [pytest.mark.integration, pytest.mark.filterwarnings("ignore")]


def dcmtk_run(tool: str, source: Path, target: Path, *options: str) -> Path:
    subprocess.run([dcmtk(tool), *options, str(source), str(target)], check=True, capture_output=True, timeout=60)
    return target


def twelve_bit_ct(folder: Path, seed: int) -> Path:
    ds = make_ct(StudyIds.new(), 1, rows=96, columns=80, seed=seed)
    values = np.clip(ds.pixel_array.astype(np.int32) + 300 * seed, 0, 4095).astype(np.uint16)
    ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 12, 11, 0
    ds.PixelData = values.tobytes()
    plain = write(ds, folder / f"ct12-{seed}.dcm")
    return dcmtk_run("dcmcjpeg", plain, folder / f"ct12-{seed}-jpeg.dcm", "+ee")


@pytest.mark.parametrize("source", ["JPEG-lossy.dcm", "JPGExtended.dcm", 0, 1])
def test_twelve_bit_jpeg_extended_frames_equal_dcmtks_decoding(source: str | int, tmp_path: Path) -> None:
    jpeg = (next(p for p in shipped_files() if p.name == source) if isinstance(source, str)
            else twelve_bit_ct(tmp_path, source))
    assert str(dcmread(jpeg, stop_before_pixels=True).file_meta.TransferSyntaxUID) == JPEGExtended12Bit
    decoded_by_dcmtk = dcmtk_run("dcmdjpeg", jpeg, tmp_path / "dcmdjpeg.dcm")
    ours, reference = frames_from_bytes(jpeg.read_bytes()), frames_from_bytes(decoded_by_dcmtk.read_bytes())
    assert len(ours) == len(reference) >= 1
    for mine, theirs in zip(ours, reference, strict=True):
        assert np.array_equal(mine.pixels, theirs.pixels)
        assert mine.voi == theirs.voi
