"""The pixel pipeline on tiny synthetic instances whose every output value is computed by hand.

Each dataset is built with pydicom (Dataset + FileMetaDataset, PixelData bytes set here) and
written to bytes, so the tests exercise the same path as a file from the object store.
"""

from __future__ import annotations

import math
from io import BytesIO
from typing import Any

import numpy as np
import pytest
from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.pixels.decoders import pylibjpeg as pylibjpeg_plugin
from pydicom.pixels.decoders.base import get_decoder
from pydicom.pixels.processing import convert_color_space
from pydicom.sequence import Sequence
from pydicom.uid import (
    MPEG2MPML,
    UID,
    BasicTextSRStorage,
    CTImageStorage,
    EnhancedCTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    MRImageStorage,
    RTStructureSetStorage,
    SecondaryCaptureImageStorage,
    generate_uid,
)

from shared.dicom.pixels import (
    BT601_LUMA,
    CT_BRAIN,
    NoPixelData,
    UndecodablePixelData,
    Window,
    WindowPolicy,
    frame_from_image,
    frames_from_bytes,
    iter_frames,
    resize_keep_aspect,
)

pytestmark = pytest.mark.unit


def make_dataset(
    pixels: np.ndarray | None,
    *,
    photometric: str = "MONOCHROME2",
    modality: str = "OT",
    sop_class: str = SecondaryCaptureImageStorage,
    transfer_syntax: str = ExplicitVRLittleEndian,
    frames: int | None = None,
    bits_stored: int | None = None,
    **attributes: object,
) -> Dataset:
    """A minimal valid instance; `pixels` is (rows, cols[, 3]) or, with `frames`, (n, ...)."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.file_meta.MediaStorageSOPClassUID = UID(sop_class)
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = modality
    if pixels is not None:
        colour = photometric in ("RGB", "YBR_FULL")
        shape = pixels.shape[1:] if frames else pixels.shape
        ds.Rows, ds.Columns = shape[0], shape[1]
        ds.SamplesPerPixel = 3 if colour else 1
        if colour:
            ds.PlanarConfiguration = 0
        ds.PhotometricInterpretation = photometric
        ds.BitsAllocated = pixels.dtype.itemsize * 8
        ds.BitsStored = bits_stored or ds.BitsAllocated
        ds.HighBit = ds.BitsStored - 1
        ds.PixelRepresentation = int(pixels.dtype.kind == "i")
        if frames:
            ds.NumberOfFrames = frames
        big_endian = transfer_syntax == ExplicitVRBigEndian
        ds.PixelData = pixels.astype(
            pixels.dtype.newbyteorder(">" if big_endian else "<")
        ).tobytes()
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    return ds


def to_bytes(ds: Dataset) -> bytes:
    buffer = BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def single_frame(ds: Dataset, policy: WindowPolicy | None = None) -> np.ndarray:
    """Decode from bytes (the worker's path) and return the only frame's pixels."""
    frames = frames_from_bytes(to_bytes(ds), policy)
    assert len(frames) == 1
    assert frames[0].pixels.dtype == np.float32
    return frames[0].pixels


def lut_item(descriptor: list[int], data: list[int]) -> Dataset:
    """A LUT item with explicit US VRs (LUT Descriptor/Data are ambiguous US/SS/OW)."""
    item = Dataset()
    item.add_new(0x00283002, "US", descriptor)
    item.add_new(0x00283006, "US", data)
    return item


# CT stored values with slope 1, intercept -1024 -> HU -160, 0, 40, 239, 240.
CT_STORED = np.array([[864, 1024, 1064, 1263, 1264]], dtype=np.int16)
# LINEAR window c=40 w=400 (PS3.3 C.11.2.1.2.1): x <= -160 -> 0; x > 239 -> 1;
# else (x - 39.5) / 399 + 0.5.
CT_SOFT_TISSUE_EXPECTED = [0.0, (0 - 39.5) / 399 + 0.5, (40 - 39.5) / 399 + 0.5, 1.0, 1.0]


def ct_dataset(**attributes: Any) -> Dataset:
    return make_dataset(
        CT_STORED,
        modality="CT",
        sop_class=CTImageStorage,
        RescaleSlope=1,
        RescaleIntercept=-1024,
        **attributes,
    )


# --- Modality LUT ---------------------------------------------------------------------------


def test_rescale_slope_intercept_then_min_max() -> None:
    stored = np.array([[0, 100], [1000, 2000]], dtype=np.int16)
    ds = make_dataset(stored, RescaleSlope=2, RescaleIntercept=-1024)
    # -> -1024, -824, 976, 2976; min/max over [-1024, 2976] (range 4000)
    frame = frames_from_bytes(to_bytes(ds))[0]
    np.testing.assert_allclose(frame.pixels, [[0.0, 0.05], [0.5, 1.0]], atol=1e-7)
    assert frame.modality_lut == "rescale slope=2 intercept=-1024"
    assert frame.voi == "min/max [-1024, 2976]"


def test_modality_lut_sequence() -> None:
    stored = np.array([[0, 1, 2, 3, 9]], dtype=np.uint16)
    ds = make_dataset(stored, ModalityLUTSequence=Sequence([lut_item([4, 0, 16], [0, 10, 20, 40])]))
    frame = frames_from_bytes(to_bytes(ds))[0]
    # LUT output 0, 10, 20, 40, 40 (beyond the table -> last entry), then min/max.
    np.testing.assert_allclose(frame.pixels, [[0.0, 0.25, 0.5, 1.0, 1.0]], atol=1e-7)
    assert frame.modality_lut == "modality LUT sequence"


# --- VOI ------------------------------------------------------------------------------------


def test_file_window_linear() -> None:
    frame = frames_from_bytes(to_bytes(ct_dataset(WindowCenter=40, WindowWidth=400)))[0]
    np.testing.assert_allclose(frame.pixels, [CT_SOFT_TISSUE_EXPECTED], atol=1e-6)
    assert frame.voi == "window center=40 width=400 (file)"


def test_first_of_several_windows_is_used() -> None:
    ds = ct_dataset(WindowCenter=[40, 300], WindowWidth=[400, 1500])
    np.testing.assert_allclose(single_frame(ds), [CT_SOFT_TISSUE_EXPECTED], atol=1e-6)


def test_ct_without_window_gets_the_soft_tissue_default() -> None:
    frame = frames_from_bytes(to_bytes(ct_dataset()))[0]
    np.testing.assert_allclose(frame.pixels, [CT_SOFT_TISSUE_EXPECTED], atol=1e-6)
    assert frame.voi == "window center=40 width=400 (default CT)"


def test_modality_default_window_is_configurable() -> None:
    policy = WindowPolicy(modality_windows={"CT": CT_BRAIN})
    # c=40 w=80: x <= 0 -> 0; x > 79 -> 1; else (x - 39.5) / 79 + 0.5.
    expected = [0.0, 0.0, (40 - 39.5) / 79 + 0.5, 1.0, 1.0]
    np.testing.assert_allclose(single_frame(ct_dataset(), policy), [expected], atol=1e-6)


def test_modality_without_default_uses_min_max() -> None:
    stored = np.array([[100, 150, 300]], dtype=np.uint16)
    frame = frames_from_bytes(
        to_bytes(make_dataset(stored, modality="MR", sop_class=MRImageStorage))
    )[0]
    np.testing.assert_allclose(frame.pixels, [[0.0, 0.25, 1.0]], atol=1e-7)
    assert frame.voi == "min/max [100, 300]"


def test_override_beats_file_window_and_use_file_voi_false_ignores_it() -> None:
    ds = ct_dataset(WindowCenter=40, WindowWidth=80)
    override = WindowPolicy(override=Window(center=40, width=400))
    np.testing.assert_allclose(single_frame(ds, override), [CT_SOFT_TISSUE_EXPECTED], atol=1e-6)
    ignore_file = WindowPolicy(use_file_voi=False)  # falls through to the CT default 40/400
    np.testing.assert_allclose(single_frame(ds, ignore_file), [CT_SOFT_TISSUE_EXPECTED], atol=1e-6)


def test_invalid_file_window_falls_through_to_the_default() -> None:
    ds = ct_dataset(WindowCenter=40, WindowWidth=0)
    assert frames_from_bytes(to_bytes(ds))[0].voi == "window center=40 width=400 (default CT)"


def test_unknown_voi_function_means_linear() -> None:
    ds = ct_dataset(WindowCenter=40, WindowWidth=400, VOILUTFunction="BOGUS")
    np.testing.assert_allclose(single_frame(ds), [CT_SOFT_TISSUE_EXPECTED], atol=1e-6)


@pytest.mark.parametrize("window", [Window(40, 0), Window(40, 0.5), Window(float("nan"), 10)])
def test_policy_rejects_invalid_windows(window: Window) -> None:
    with pytest.raises(ValueError, match="invalid window"):
        WindowPolicy(override=window)


@pytest.mark.parametrize(
    ("function", "expected"),
    [
        # LINEAR_EXACT: (x - c) / w + 0.5, clipped
        ("LINEAR_EXACT", [0.0, 0.4, 0.5, (239 - 40) / 400 + 0.5, 1.0]),
        # SIGMOID: 1 / (1 + exp(-4 (x - c) / w))
        ("SIGMOID", [1 / (1 + math.exp(-4 * (x - 40) / 400)) for x in (-160, 0, 40, 239, 240)]),
    ],
)
def test_voi_lut_functions(function: str, expected: list[float]) -> None:
    ds = ct_dataset(WindowCenter=40, WindowWidth=400, VOILUTFunction=function)
    np.testing.assert_allclose(single_frame(ds), [expected], atol=1e-6)


def test_voi_lut_sequence_normalised_by_the_lut_range() -> None:
    stored = np.array([[0, 1, 2, 3, 10]], dtype=np.uint16)
    ds = make_dataset(stored, VOILUTSequence=Sequence([lut_item([4, 0, 16], [100, 200, 300, 500])]))
    frame = frames_from_bytes(to_bytes(ds))[0]
    # LUT output 100, 200, 300, 500, 500 -> (v - 100) / 400
    np.testing.assert_allclose(frame.pixels, [[0.0, 0.25, 0.5, 1.0, 1.0]], atol=1e-7)
    assert frame.voi == "VOI LUT sequence (file)"


# --- MONOCHROME1 ----------------------------------------------------------------------------


def test_monochrome1_inverted_after_min_max() -> None:
    ds = make_dataset(np.array([[0, 500, 1000]], dtype=np.uint16), photometric="MONOCHROME1")
    frame = frames_from_bytes(to_bytes(ds))[0]
    np.testing.assert_allclose(frame.pixels, [[1.0, 0.5, 0.0]], atol=1e-7)
    assert frame.inverted


def test_unwindowed_8_bit_keeps_its_full_scale_and_matches_the_same_picture() -> None:
    """8-bit data without a window is shown 0..255, as the same picture as PNG would be."""
    pixels = np.array([[0, 50, 100]], dtype=np.uint8)
    frame = frames_from_bytes(to_bytes(make_dataset(pixels)))[0]
    np.testing.assert_allclose(frame.pixels, [[0.0, 50 / 255, 100 / 255]], atol=1e-7)
    assert frame.voi == "full scale 0-255 (no window)"
    np.testing.assert_array_equal(frame.pixels, frame_from_image(pixels))
    inverted = frames_from_bytes(to_bytes(make_dataset(pixels, photometric="MONOCHROME1")))[0]
    np.testing.assert_allclose(inverted.pixels, [[1.0, 1 - 50 / 255, 1 - 100 / 255]], atol=1e-7)


def test_monochrome1_inverted_after_windowing() -> None:
    ds = make_dataset(
        np.array([[0, 128, 255]], dtype=np.uint8),
        photometric="MONOCHROME1",
        WindowCenter=128,
        WindowWidth=256,
    )
    # window: (x - 127.5) / 255 + 0.5 -> 0, 0.50196, 1; inverted -> 1, 0.49804, 0
    expected = [1.0, 1.0 - ((128 - 127.5) / 255 + 0.5), 0.0]
    np.testing.assert_allclose(single_frame(ds), [expected], atol=1e-6)


# --- frames ---------------------------------------------------------------------------------


def test_multi_frame_gives_one_frame_each() -> None:
    stored = np.array([[[0, 10], [20, 40]], [[5, 5], [5, 5]], [[7, 8], [9, 11]]], dtype=np.uint16)
    frames = frames_from_bytes(to_bytes(make_dataset(stored, frames=3)))
    assert [f.index for f in frames] == [0, 1, 2]
    np.testing.assert_allclose(frames[0].pixels, [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)
    np.testing.assert_array_equal(frames[1].pixels, np.zeros((2, 2)))  # constant -> black
    np.testing.assert_allclose(frames[2].pixels, [[0.0, 0.25], [0.5, 1.0]], atol=1e-7)


def _lut_group(intercept: float | None, center: float) -> Dataset:
    group = Dataset()
    if intercept is not None:
        transform = Dataset()
        transform.RescaleSlope = 1
        transform.RescaleIntercept = intercept
        transform.RescaleType = "HU"
        group.PixelValueTransformationSequence = Sequence([transform])
    voi = Dataset()
    voi.WindowCenter = center
    voi.WindowWidth = 400
    group.FrameVOILUTSequence = Sequence([voi])
    return group


def test_enhanced_multi_frame_takes_rescale_and_window_per_frame() -> None:
    stored = np.array([[[864, 1024, 1064]], [[864, 1024, 1064]]], dtype=np.int16)
    shared = Dataset()
    transform = Dataset()
    transform.RescaleSlope = 1
    transform.RescaleIntercept = -1024
    shared.PixelValueTransformationSequence = Sequence([transform])
    ds = make_dataset(
        stored,
        frames=2,
        modality="CT",
        sop_class=EnhancedCTImageStorage,
        SharedFunctionalGroupsSequence=Sequence([shared]),
        # frame 0: shared rescale (-> HU -160, 0, 40), window 40/400
        # frame 1: own intercept -824 (-> 40, 200, 240), window 240/400
        PerFrameFunctionalGroupsSequence=Sequence([_lut_group(None, 40), _lut_group(-824, 240)]),
    )
    first, second = frames_from_bytes(to_bytes(ds))
    expected = [0.0, (0 - 39.5) / 399 + 0.5, (40 - 39.5) / 399 + 0.5]
    np.testing.assert_allclose(first.pixels, [expected], atol=1e-6)
    np.testing.assert_allclose(second.pixels, [expected], atol=1e-6)
    assert first.modality_lut == "rescale slope=1 intercept=-1024"
    assert second.modality_lut == "rescale slope=1 intercept=-824"
    assert second.voi == "window center=240 width=400 (file)"


# --- colour ---------------------------------------------------------------------------------


def test_rgb_to_bt601_luma() -> None:
    rgb = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [255, 255, 255]]], dtype=np.uint8)
    frame = frames_from_bytes(to_bytes(make_dataset(rgb, photometric="RGB")))[0]
    np.testing.assert_allclose(frame.pixels, [[0.299, 0.587, 0.114, 1.0]], atol=1e-6)
    assert frame.colour == "RGB -> BT.601 luma"


def test_rgb_scaled_by_bits_stored() -> None:
    rgb = np.array([[[4095, 0, 0], [4095, 4095, 4095]]], dtype=np.uint16)
    pixels = single_frame(make_dataset(rgb, photometric="RGB", bits_stored=12))
    np.testing.assert_allclose(pixels, [[0.299, 1.0]], atol=1e-6)


def test_ybr_full_converted_to_rgb_before_luma() -> None:
    # Y, Cb, Cr of pure red (~(254, 0, 0) after conversion) and of mid grey.
    ybr = np.array([[[76, 85, 255], [128, 128, 128]]], dtype=np.uint8)
    frame = frames_from_bytes(to_bytes(make_dataset(ybr, photometric="YBR_FULL")))[0]
    rgb = convert_color_space(ybr, "YBR_FULL", "RGB").astype(np.float64)
    np.testing.assert_allclose(frame.pixels, (rgb @ BT601_LUMA) / 255, atol=1e-6)
    np.testing.assert_allclose(frame.pixels, [[254 * 0.299 / 255, 128 / 255]], atol=1e-6)
    naive = (ybr[0, 0].astype(float) @ BT601_LUMA) / 255  # luma of YCbCr taken as RGB: 0.40
    assert abs(frame.pixels[0, 0] - naive) > 0.05
    assert frame.colour == "YBR_FULL -> RGB -> BT.601 luma"


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ExplicitVRBigEndian])
def test_palette_colour_to_luma(transfer_syntax: str) -> None:
    byte_order = ">" if transfer_syntax == ExplicitVRBigEndian else "<"

    def lut(values: list[int]) -> bytes:
        return np.array(values, dtype=f"{byte_order}u2").tobytes()

    ds = make_dataset(
        np.array([[0, 1], [2, 3]], dtype=np.uint8),
        photometric="PALETTE COLOR",
        transfer_syntax=transfer_syntax,
    )
    # Entries that change when byte-swapped (0xFF00 <-> 0x00FF), so byte order must be right.
    for colour, entries in (
        ("Red", [0, 0xFF00, 0, 0]),
        ("Green", [0, 0, 0x8000, 0]),
        ("Blue", [0, 0, 0, 0xFFFF]),
    ):
        ds.add_new(f"{colour}PaletteColorLookupTableDescriptor", "US", [4, 0, 16])
        ds.add_new(f"{colour}PaletteColorLookupTableData", "OW", lut(entries))
    frame = frames_from_bytes(to_bytes(ds))[0]
    # index 0 black, 1 red, 2 half green, 3 blue; 16-bit entries scale by 65535
    expected = [[0.0, 0.299 * 0xFF00 / 65535], [0.587 * 0x8000 / 65535, 0.114]]
    np.testing.assert_allclose(frame.pixels, expected, atol=1e-6)
    assert frame.colour == "PALETTE COLOR -> RGB (palette LUT) -> BT.601 luma"


# --- outcomes other than frames -------------------------------------------------------------


@pytest.mark.parametrize(
    ("sop_class", "modality", "name"),
    [
        (BasicTextSRStorage, "SR", "Basic Text SR Storage"),
        (RTStructureSetStorage, "RTSTRUCT", "RT Structure Set Storage"),
    ],
)
def test_instances_without_pixels_raise_no_pixel_data(
    sop_class: str, modality: str, name: str
) -> None:
    ds = make_dataset(None, sop_class=sop_class, modality=modality)
    with pytest.raises(NoPixelData, match=name) as caught:
        frames_from_bytes(to_bytes(ds))
    assert caught.value.sop_class_uid == sop_class
    assert name in caught.value.reason


def test_image_instance_without_pixels_is_undecodable_not_skipped() -> None:
    ds = make_dataset(None, sop_class=CTImageStorage, modality="CT")
    with pytest.raises(UndecodablePixelData, match="CT Image Storage"):
        frames_from_bytes(to_bytes(ds))


@pytest.mark.parametrize("transfer_syntax", [ExplicitVRLittleEndian, ImplicitVRLittleEndian, ExplicitVRBigEndian])
def test_an_empty_pixel_data_element_is_named_not_a_type_error(transfer_syntax: str) -> None:
    ds = make_dataset(np.zeros((4, 4), np.uint16), sop_class=CTImageStorage, modality="CT",
                      transfer_syntax=transfer_syntax)
    ds.PixelData = b""
    with pytest.raises(UndecodablePixelData) as caught:
        frames_from_bytes(to_bytes(ds))
    assert caught.value.reason.startswith("an empty PixelData element in an image instance: CT Image Storage")
    sr = make_dataset(np.zeros((4, 4), np.uint16), sop_class=BasicTextSRStorage, modality="SR")
    sr.PixelData = b""
    with pytest.raises(NoPixelData, match="an empty PixelData element: Basic Text SR Storage"):
        frames_from_bytes(to_bytes(sr))


def test_unknown_transfer_syntax_is_named() -> None:
    ds = make_dataset(np.zeros((2, 2), dtype=np.uint8))
    ds.file_meta.TransferSyntaxUID = UID("1.2.3.4.5.6")
    ds.PixelData = encapsulate([b"\x00" * 8])
    with pytest.raises(UndecodablePixelData) as caught:
        frames_from_bytes(ds)
    assert "1.2.3.4.5.6 (unknown transfer syntax)" in caught.value.reason
    assert caught.value.transfer_syntax_uid == "1.2.3.4.5.6"


def test_transfer_syntax_without_decoder_is_named() -> None:
    ds = make_dataset(np.zeros((2, 2), dtype=np.uint8), transfer_syntax=MPEG2MPML)
    ds.PixelData = encapsulate([b"\x00" * 8])
    with pytest.raises(UndecodablePixelData) as caught:
        frames_from_bytes(to_bytes(ds))
    assert f"{MPEG2MPML} ({MPEG2MPML.name})" in caught.value.reason
    assert "no decoder" in caught.value.reason


def j2k_dataset(codestream: bytes) -> Dataset:
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16), transfer_syntax=JPEG2000Lossless)
    ds.PixelData = encapsulate([codestream])
    return ds


def test_missing_codec_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Simulate a worker image without pylibjpeg-openjpeg, GDCM or Pillow's OpenJPEG."""
    decoder = get_decoder(JPEG2000Lossless)
    monkeypatch.setattr(decoder, "_available", {})
    monkeypatch.setattr(
        decoder,
        "_unavailable",
        {"pylibjpeg": pylibjpeg_plugin.DECODER_DEPENDENCIES[JPEG2000Lossless]},
    )
    with pytest.raises(UndecodablePixelData) as caught:
        frames_from_bytes(to_bytes(j2k_dataset(b"\xff\x4f\xff\x51")))
    reason = caught.value.reason
    assert f"{JPEG2000Lossless} (JPEG 2000 Image Compression (Lossless Only))" in reason
    assert (
        "codec missing: pylibjpeg - requires pylibjpeg>=2.0 and pylibjpeg-openjpeg>=2.0" in reason
    )


def test_codec_failure_names_syntax_and_plugins() -> None:
    with pytest.raises(UndecodablePixelData) as caught:
        frames_from_bytes(to_bytes(j2k_dataset(b"not a JPEG 2000 codestream")))
    reason = caught.value.reason
    assert str(JPEG2000Lossless) in reason
    for plugin in get_decoder(JPEG2000Lossless).available_plugins:
        assert plugin in reason


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, not DICOM at all",
        b"\x00" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff",  # meta element overruns
    ],
    ids=["empty", "text", "broken-meta"],
)
def test_garbage_bytes_are_undecodable(data: bytes) -> None:
    with pytest.raises(UndecodablePixelData):
        frames_from_bytes(data)


def test_short_pixel_data_is_undecodable() -> None:
    ds = make_dataset(np.zeros((4, 4), dtype=np.uint16))
    ds.PixelData = ds.PixelData[:10]
    with pytest.raises(UndecodablePixelData, match="Explicit VR Little Endian"):
        frames_from_bytes(to_bytes(ds))


def test_truncated_file_is_undecodable() -> None:
    data = to_bytes(make_dataset(np.arange(64, dtype=np.uint16).reshape(8, 8)))
    with pytest.raises(UndecodablePixelData):
        frames_from_bytes(data[: len(data) - 40])


def test_dataset_input_is_accepted_and_left_unchanged() -> None:
    ds = ct_dataset()
    before = to_bytes(ds)
    frames = list(iter_frames(ds))
    assert len(frames) == 1
    assert to_bytes(ds) == before


# --- resize ---------------------------------------------------------------------------------


def test_resize_wide_frame_is_centred_on_zero_padding() -> None:
    out = resize_keep_aspect(np.ones((2, 4), dtype=np.float32), 4)
    expected = np.zeros((4, 4), dtype=np.float32)
    expected[1:3, :] = 1.0
    np.testing.assert_array_equal(out, expected)


def test_resize_tall_frame_keeps_aspect() -> None:
    out = resize_keep_aspect(np.full((100, 50), 0.5, dtype=np.float32), 10)
    assert out.shape == (10, 10) and out.dtype == np.float32
    # 5 columns of content start at (10 - 5) // 2 = 2; the odd padding column goes right.
    np.testing.assert_allclose(out[:, 2:7], 0.5, atol=1e-6)
    np.testing.assert_array_equal(out[:, :2], 0.0)
    np.testing.assert_array_equal(out[:, 7:], 0.0)


def test_resize_is_deterministic_and_stays_in_unit_range() -> None:
    frame = np.random.default_rng(7).random((300, 217)).astype(np.float32)
    first = resize_keep_aspect(frame, 224)
    np.testing.assert_array_equal(first, resize_keep_aspect(frame, 224))
    assert first.min() >= 0.0 and first.max() <= 1.0


@pytest.mark.parametrize(("shape", "size"), [((2, 2, 3), 4), ((4, 4), 0)])
def test_resize_rejects_bad_input(shape: tuple[int, ...], size: int) -> None:
    with pytest.raises(ValueError):
        resize_keep_aspect(np.zeros(shape, dtype=np.float32), size)
