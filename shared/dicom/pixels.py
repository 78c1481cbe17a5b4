"""From a DICOM instance to greyscale float32 frames in [0, 1], and to a fixed square size.

This is the pure part of the CPU preprocess worker: no server, no settings import, no I/O but
the bytes handed in. Every instance ends in exactly one of three outcomes, which map onto the
catalog's states:

* a list of :class:`Frame` (one per frame of the instance) -> ``preprocessed``;
* :class:`NoPixelData` (SR, RTSTRUCT, KO, PR, waveforms... carry no image) -> ``skipped``;
* :class:`UndecodablePixelData` (unsupported or broken transfer syntax, missing codec,
  malformed file) -> ``failed``.

Any other exception raised while reading a malformed file is wrapped into
:class:`UndecodablePixelData`, so the worker never has to guess whether an error is the file's
fault or its own.

The display pipeline follows DICOM PS3.3 C.11 / PS3.4 N.2 for greyscale images:
stored values -> Modality LUT (rescale slope/intercept or Modality LUT Sequence) -> VOI
(VOI LUT Sequence, else the first window centre/width, else a per-modality default window,
else the frame's min/max) -> MONOCHROME1 inversion -> [0, 1]. Enhanced multi-frame instances
take the rescale and window of each frame from its functional groups. Colour images (RGB,
YBR_*, PALETTE COLOR) have no Modality or VOI LUT in DICOM: they are brought to RGB first
(YBR by the codec or pydicom, palettes through their LUTs), then reduced to ITU-R BT.601 luma.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from io import BytesIO
from typing import Literal

import numpy as np
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.multival import MultiValue
from pydicom.pixels.decoders.base import Decoder, get_decoder
from pydicom.pixels.processing import apply_color_lut, apply_modality_lut, apply_voi
from pydicom.uid import (
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

from shared.dicom import codecs

codecs.register()  # 12-bit JPEG Extended, which pydicom's own plugins leave undecoded

__all__ = [
    "BT601_LUMA",
    "CT_BRAIN",
    "CT_SOFT_TISSUE",
    "Frame",
    "NoPixelData",
    "PixelPipelineError",
    "UndecodablePixelData",
    "VoiFunction",
    "Window",
    "WindowPolicy",
    "frames_from_bytes",
    "iter_frames",
    "read_dataset",
    "resize_keep_aspect",
]

BT601_LUMA: tuple[float, float, float] = (0.299, 0.587, 0.114)
"""ITU-R BT.601 luma weights for R, G, B: the weights JPEG/YCbCr use, so a YBR image and its
RGB twin give the same grey."""

_GREYSCALE = ("MONOCHROME1", "MONOCHROME2")
_COLOUR = ("RGB", "PALETTE COLOR")
_PALETTE_DATA = tuple(
    f"{colour}PaletteColorLookupTableData" for colour in ("Red", "Green", "Blue", "Alpha")
)
_PIXEL_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")
# Top-level attributes the Modality and VOI stages read; functional groups may override them.
_LUT_KEYWORDS = (
    "RescaleSlope",
    "RescaleIntercept",
    "ModalityLUTSequence",
    "VOILUTSequence",
    "WindowCenter",
    "WindowWidth",
    "VOILUTFunction",
)
# Functional group macros (PS3.3 C.7.6.16.2) that carry per-frame rescale and window values.
_FRAME_LUT_MACROS = ("PixelValueTransformationSequence", "FrameVOILUTSequence")


class PixelPipelineError(Exception):
    """An instance yields no frames; :attr:`reason` is the text stored in the catalog."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NoPixelData(PixelPipelineError):
    """The instance is valid but carries no image (SR, RTSTRUCT, KO, PR, waveform...).

    The worker marks it ``skipped``: there is nothing to hash, and retrying will not help.
    """

    def __init__(self, reason: str, sop_class_uid: str) -> None:
        super().__init__(reason)
        self.sop_class_uid = sop_class_uid


class UndecodablePixelData(PixelPipelineError):
    """The instance has (or should have) pixels that cannot be turned into frames.

    The worker marks it ``failed``. :attr:`transfer_syntax_uid` is ``None`` when the file was
    too broken to tell.
    """

    def __init__(self, reason: str, transfer_syntax_uid: str | None = None) -> None:
        super().__init__(reason)
        self.transfer_syntax_uid = transfer_syntax_uid


VoiFunction = Literal["LINEAR", "LINEAR_EXACT", "SIGMOID"]
"""The VOI LUT Function values of PS3.3 C.11.2.1.3; anything else in a file means LINEAR."""
_VOI_FUNCTIONS: tuple[VoiFunction, ...] = ("LINEAR", "LINEAR_EXACT", "SIGMOID")


@dataclass(frozen=True)
class Window:
    """A VOI window (PS3.3 C.11.2.1.2): centre and width in Modality LUT output units."""

    center: float
    width: float
    function: VoiFunction = "LINEAR"

    @property
    def is_valid(self) -> bool:
        """Whether the standard allows this width for this function (LINEAR needs >= 1)."""
        if not (math.isfinite(self.center) and math.isfinite(self.width)):
            return False
        return self.width >= 1 if self.function == "LINEAR" else self.width > 0


CT_SOFT_TISSUE = Window(center=40.0, width=400.0)
"""Abdomen/soft-tissue CT window in HU: the broadest window that still shows organ contrast."""
CT_BRAIN = Window(center=40.0, width=80.0)
"""Brain CT window in HU, for deployments that mostly see head CT."""


def _default_modality_windows() -> dict[str, Window]:
    return {"CT": CT_SOFT_TISSUE}


@dataclass(frozen=True)
class WindowPolicy:
    """How greyscale values are mapped to [0, 1]; passed in by the caller, never global.

    Order of precedence: :attr:`override`, then the file's VOI (if :attr:`use_file_voi`), then
    :attr:`modality_windows` for the instance's Modality, then the frame's own min/max.
    A CT default window matters because CT values span ~4000 HU and min/max would squash the
    soft tissue that carries most of the content into a few grey levels.
    """

    override: Window | None = None
    """Apply this window to every greyscale frame, ignoring the file (e.g. a lung study set)."""
    use_file_voi: bool = True
    """Honour the file's VOI LUT Sequence / Window Center & Width."""
    modality_windows: Mapping[str, Window] = field(default_factory=_default_modality_windows)
    """Default window per Modality (0008,0060) when the file gives none."""

    def __post_init__(self) -> None:
        """Reject unusable windows when the policy is built, not on the first CT of the day."""
        windows = [*self.modality_windows.values(), self.override]
        if invalid := [w for w in windows if w is not None and not w.is_valid]:
            raise ValueError(f"invalid window(s) in WindowPolicy: {invalid}")


@dataclass(frozen=True)
class Frame:
    """One greyscale frame and the record of what was done to it.

    The descriptive fields go to the catalog next to the slice, so an operator can tell why
    two slices of the same study look different.
    """

    index: int
    """0-based frame number inside the instance."""
    pixels: np.ndarray
    """float32, shape (rows, columns), values in [0, 1], 0 = black as displayed."""
    photometric_interpretation: str
    """As stored in the file (before any colour conversion)."""
    modality_lut: str
    """``"none"``, ``"rescale slope=.. intercept=.."`` or ``"modality LUT sequence"``."""
    voi: str
    """Which VOI stage produced [0, 1], e.g. ``"window center=40 width=400 (file)"``."""
    inverted: bool
    """True for MONOCHROME1, inverted after the VOI stage."""
    colour: str | None
    """How colour became grey (e.g. ``"YBR_FULL_422 -> RGB -> BT.601 luma"``); None if grey."""


def read_dataset(data: bytes) -> Dataset:
    """Parse DICOM bytes, with or without the 128-byte preamble and file meta.

    ``force=True`` accepts bare datasets as some senders write them; a file that is not DICOM
    at all then parses into a dataset with neither SOP class nor pixels, which
    :func:`iter_frames` reports as undecodable.
    """
    try:
        return dcmread(BytesIO(data), force=True)
    except Exception as exc:
        raise UndecodablePixelData(f"unreadable DICOM: {type(exc).__name__}: {exc}") from exc


def frames_from_bytes(source: bytes | Dataset, policy: WindowPolicy | None = None) -> list[Frame]:
    """Decode every frame of an instance (raw bytes, or a Dataset the caller already parsed).

    Raises :class:`NoPixelData` or :class:`UndecodablePixelData`, never anything else for a
    malformed file. Use :func:`iter_frames` to hold one frame at a time for long cine loops.
    """
    return list(iter_frames(source, policy))


def iter_frames(source: bytes | Dataset, policy: WindowPolicy | None = None) -> Iterator[Frame]:
    """Yield the instance's frames one by one, decoding lazily.

    Errors surface on iteration (the first ``next()`` for a file without pixels).
    A Dataset passed in is not modified.
    """
    ds = source if isinstance(source, Dataset) else read_dataset(source)
    tsyntax = _transfer_syntax(ds)
    try:
        yield from _frames(ds, tsyntax, policy or WindowPolicy())
    except PixelPipelineError:
        raise
    except Exception as exc:
        raise UndecodablePixelData(
            f"malformed instance ({_describe_syntax(tsyntax)}): {type(exc).__name__}: {exc}",
            tsyntax,
        ) from exc


def resize_keep_aspect(frame: np.ndarray, size: int) -> np.ndarray:
    """Fit a 2-D frame into ``size`` x ``size``, keeping its aspect, centred on zero padding.

    Uses Pillow's bilinear filter on a 32-bit float ("F") image rather than torch: the CPU
    worker then needs no torch, Pillow's resampling is single-threaded C code and so bit-for-bit
    deterministic, and when shrinking it widens the filter support (antialiasing) instead of
    sampling every n-th pixel. Bilinear weights are non-negative, so [0, 1] stays [0, 1] with
    no ringing (unlike bicubic or Lanczos).
    """
    if frame.ndim != 2:
        raise ValueError(f"expected a 2-D frame, got shape {frame.shape}")
    if size < 1:
        raise ValueError(f"size must be >= 1, got {size}")
    rows, cols = frame.shape
    scale = size / max(rows, cols)
    new_rows = min(size, max(1, round(rows * scale)))
    new_cols = min(size, max(1, round(cols * scale)))
    image = Image.fromarray(np.ascontiguousarray(frame, dtype=np.float32))
    resized = np.asarray(
        image.resize((new_cols, new_rows), Image.Resampling.BILINEAR), dtype=np.float32
    )
    out = np.zeros((size, size), dtype=np.float32)
    top, left = (size - new_rows) // 2, (size - new_cols) // 2
    out[top : top + new_rows, left : left + new_cols] = resized
    return out


# --- instance level -------------------------------------------------------------------------


def _transfer_syntax(ds: Dataset) -> UID | None:
    """The file meta's transfer syntax, else the one the reader detected for bare datasets."""
    file_meta = getattr(ds, "file_meta", None)
    tsyntax = file_meta.get("TransferSyntaxUID") if file_meta is not None else None
    if tsyntax:
        return UID(tsyntax)
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None or little is None:
        return None
    if implicit:
        return ImplicitVRLittleEndian
    return ExplicitVRLittleEndian if little else ExplicitVRBigEndian


def _describe_syntax(tsyntax: UID | None) -> str:
    """'transfer syntax <uid> (<name>)', naming unknown UIDs as such."""
    if tsyntax is None:
        return "transfer syntax unknown"
    name = tsyntax.name if tsyntax.name != str(tsyntax) else "unknown transfer syntax"
    return f"transfer syntax {tsyntax} ({name})"


def _sop_class(ds: Dataset) -> UID | None:
    file_meta = getattr(ds, "file_meta", None) or Dataset()
    uid = ds.get("SOPClassUID") or file_meta.get("MediaStorageSOPClassUID")
    return UID(uid) if uid else None


def _frames(ds: Dataset, tsyntax: UID | None, policy: WindowPolicy) -> Iterator[Frame]:
    present = [keyword for keyword in _PIXEL_KEYWORDS if keyword in ds]
    # an element with no value (length 0) holds no pixels either, whatever its tag says
    if not any(ds[keyword].value for keyword in present):
        sop_class = _sop_class(ds)
        if sop_class is None:
            raise UndecodablePixelData(
                "not a DICOM instance: neither pixel data nor a SOP Class UID", tsyntax
            )
        what = f"an empty {present[0]} element" if present else "no pixel data"
        if "Image Storage" in sop_class.name:
            raise UndecodablePixelData(
                f"{what} in an image instance: {sop_class.name} ({sop_class}); "
                "the sender stored no pixels (truncated or stripped file, or pixels by reference)",
                tsyntax,
            )
        raise NoPixelData(f"{what}: {sop_class.name} ({sop_class})", str(sop_class))
    if tsyntax is None:
        raise UndecodablePixelData("pixel data present but the transfer syntax is unknown", None)
    stored_pi = str(ds.get("PhotometricInterpretation", ""))
    for index, (values, decoded_pi) in enumerate(_decoded(ds, tsyntax)):
        if decoded_pi in _GREYSCALE:
            yield _greyscale_frame(ds, tsyntax, index, values, decoded_pi, policy)
        elif decoded_pi in _COLOUR:
            yield Frame(
                index=index,
                pixels=_unit(_luma(ds, tsyntax, values, decoded_pi)),
                photometric_interpretation=stored_pi,
                modality_lut="none",
                voi="none (colour)",
                inverted=False,
                colour=_colour_route(stored_pi, decoded_pi),
            )
        else:
            raise UndecodablePixelData(
                f"photometric interpretation {decoded_pi} is not supported "
                f"({_describe_syntax(tsyntax)})",
                tsyntax,
            )


def _decoder(tsyntax: UID) -> Decoder:
    """pydicom's decoder for the syntax, failing with the missing plugins named."""
    try:
        decoder = get_decoder(tsyntax)
    except NotImplementedError as exc:
        raise UndecodablePixelData(
            f"cannot decode {_describe_syntax(tsyntax)}: pydicom has no decoder for it", tsyntax
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies) or "no plugin registered"
        raise UndecodablePixelData(
            f"cannot decode {_describe_syntax(tsyntax)}: codec missing: {missing}", tsyntax
        )
    return decoder


def _decoded(ds: Dataset, tsyntax: UID) -> Iterator[tuple[np.ndarray, str]]:
    """Decoded frames with the photometric interpretation they ended up in.

    pydicom converts YBR_FULL/YBR_FULL_422 to RGB itself, and the JPEG 2000 codecs undo
    YBR_ICT/YBR_RCT, so the returned interpretation is what the array really holds.
    """
    decoder = _decoder(tsyntax)
    plugins = ", ".join(decoder.available_plugins) or "pydicom native"
    # Explicit indices: pydicom 3.0's all-frames path sign-corrects JPEG 2000 frames in a
    # read-only buffer and fails (J2K_pixelrep_mismatch.dcm); the indexed path copies first.
    plugin = codecs.preferred_plugin(tsyntax, int(ds.get("BitsStored") or 8))
    options = {"decoding_plugin": plugin} if plugin else {}
    try:
        frame_count = int(ds.get("NumberOfFrames") or 1)
        for values, properties in decoder.iter_array(ds, indices=range(frame_count), **options):
            yield values, str(properties["photometric_interpretation"])
    except Exception as exc:
        raise UndecodablePixelData(
            f"cannot decode {_describe_syntax(tsyntax)} with {plugins}: "
            f"{type(exc).__name__}: {exc}",
            tsyntax,
        ) from exc


# --- greyscale ------------------------------------------------------------------------------


def _greyscale_frame(
    ds: Dataset,
    tsyntax: UID,
    index: int,
    stored: np.ndarray,
    photometric: str,
    policy: WindowPolicy,
) -> Frame:
    attrs = _frame_lut_attributes(ds, tsyntax, index)
    values, modality_desc = _modality(stored, attrs)
    unit, voi_desc = _voi(values, attrs, str(ds.get("Modality", "")), policy,
                          _full_scale(ds) if modality_desc == "none" else None)
    inverted = photometric == "MONOCHROME1"
    if inverted:
        unit = 1.0 - unit
    return Frame(
        index=index,
        pixels=_unit(unit),
        photometric_interpretation=photometric,
        modality_lut=modality_desc,
        voi=voi_desc,
        inverted=inverted,
        colour=None,
    )


def _frame_lut_attributes(ds: Dataset, tsyntax: UID, index: int) -> Dataset:
    """The rescale/LUT/window attributes in force for one frame, as a small Dataset.

    Starts from the top level and lets the shared, then the frame's own functional groups
    override it, which is how enhanced multi-frame objects (PS3.3 C.7.6.16) vary rescale and
    window per frame. Empty elements are left out so that "present but empty" means absent.
    The transfer syntax goes along because LUT data in OW must be read with its endianness.
    """
    attrs = Dataset()
    attrs.file_meta = FileMetaDataset()
    attrs.file_meta.TransferSyntaxUID = tsyntax
    for source in (ds, *_functional_group_lut_items(ds, index)):
        for keyword in _LUT_KEYWORDS:
            if keyword in source and source[keyword].VM > 0:
                attrs.add(source[keyword])
    return attrs


def _functional_group_lut_items(ds: Dataset, index: int) -> list[Dataset]:
    """Rescale and window items of the shared, then the frame's own functional groups."""
    groups: list[Dataset] = []
    if shared := ds.get("SharedFunctionalGroupsSequence"):
        groups.append(shared[0])
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and index < len(per_frame):
        groups.append(per_frame[index])
    return [group[macro][0] for group in groups for macro in _FRAME_LUT_MACROS if group.get(macro)]


def _modality(stored: np.ndarray, attrs: Dataset) -> tuple[np.ndarray, str]:
    """Modality LUT via pydicom (LUT Sequence wins over rescale, as pydicom and PS3.3 say)."""
    if "ModalityLUTSequence" in attrs:
        description = "modality LUT sequence"
    elif "RescaleSlope" in attrs and "RescaleIntercept" in attrs:
        description = (
            f"rescale slope={float(attrs.RescaleSlope):g} "
            f"intercept={float(attrs.RescaleIntercept):g}"
        )
    else:
        return stored.astype(np.float64), "none"
    return apply_modality_lut(stored, attrs).astype(np.float64, copy=False), description


def _full_scale(attrs: Dataset) -> float | None:
    """2**BitsStored - 1 for unsigned data of at most 8 bits, else None.

    Such pixels (secondary captures, converted pictures) are already display values: shown
    on their full scale they look as they did to whoever made them, and as the same picture
    does as PNG/JPEG (see :func:`frame_from_image`), which min-max scaling would not keep.
    """
    bits = int(attrs.get("BitsStored", 16) or 16)
    return float(2**bits - 1) if bits <= 8 and int(attrs.get("PixelRepresentation", 0) or 0) == 0 else None


def _voi(
    values: np.ndarray, attrs: Dataset, modality: str, policy: WindowPolicy,
    full_scale: float | None = None,
) -> tuple[np.ndarray, str]:
    """Map Modality LUT output to [0, 1] by the first VOI source that applies."""
    if policy.override is not None:
        return _apply_window(values, policy.override), _window_text(policy.override, "override")
    if policy.use_file_voi:
        if "VOILUTSequence" in attrs:
            return _apply_voi_lut(values, attrs), "VOI LUT sequence (file)"
        window = _file_window(attrs)
        if window is not None:
            return _apply_window(values, window), _window_text(window, "file")
    default = policy.modality_windows.get(modality)
    if default is not None:
        return _apply_window(values, default), _window_text(default, f"default {modality}")
    if full_scale is not None:
        return values / full_scale, f"full scale 0-{full_scale:g} (no window)"
    return _min_max(values)


def _window_text(window: Window, origin: str) -> str:
    function = "" if window.function == "LINEAR" else f" {window.function}"
    return f"window center={window.center:g} width={window.width:g}{function} ({origin})"


def _first(value: object) -> float:
    """The first of a multi-valued DS: files may offer several windows, the first is primary."""
    return float(value[0] if isinstance(value, MultiValue) else value)  # type: ignore[arg-type]


def _file_window(attrs: Dataset) -> Window | None:
    if "WindowCenter" not in attrs or "WindowWidth" not in attrs:
        return None
    function = str(attrs.get("VOILUTFunction", "")).upper()
    window = Window(
        center=_first(attrs.WindowCenter),
        width=_first(attrs.WindowWidth),
        function=next((f for f in _VOI_FUNCTIONS if f == function), "LINEAR"),
    )
    return window if window.is_valid else None


def _apply_window(values: np.ndarray, window: Window) -> np.ndarray:
    """PS3.3 C.11.2.1.2-3 with output range [0, 1].

    Written out rather than via pydicom's ``apply_windowing`` because that one scales into a
    range derived from Bits Stored and the rescale, which we would only have to undo.
    """
    c, w = window.center, window.width
    if window.function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - c) / w))
    if window.function == "LINEAR_EXACT":
        return np.clip((values - c) / w + 0.5, 0.0, 1.0)
    if w == 1:  # LINEAR with width 1 is a threshold at c - 0.5
        return (values > c - 0.5).astype(np.float64)
    out = np.subtract(values, c - 0.5)  # in place from here: same operations, same order
    out /= w - 1
    out += 0.5
    return np.clip(out, 0.0, 1.0, out=out)


def _apply_voi_lut(values: np.ndarray, attrs: Dataset) -> np.ndarray:
    """The first VOI LUT via pydicom, normalised by the LUT's own output range.

    The LUT's nominal bit depth is often wrong in practice (16 declared, 12 used); its actual
    lowest and highest entries are what the modality meant as black and white.
    Indices are rounded because a LUT is indexed by integers.
    """
    indices = np.rint(values).astype(np.int64)
    entries, first_mapped = (int(v) for v in attrs.VOILUTSequence[0].LUTDescriptor[:2])
    table = apply_voi(np.arange(first_mapped, first_mapped + (entries or 2**16)), attrs)
    low, high = float(table.min()), float(table.max())
    looked_up = apply_voi(indices, attrs).astype(np.float64)
    if high == low:
        return np.zeros_like(looked_up)
    return (looked_up - low) / (high - low)


def _min_max(values: np.ndarray) -> tuple[np.ndarray, str]:
    finite = values[np.isfinite(values)]
    if finite.size == 0:
        return np.zeros_like(values), "min/max (no finite values)"
    low, high = float(finite.min()), float(finite.max())
    description = f"min/max [{low:g}, {high:g}]"
    if high == low:
        return np.zeros_like(values), description
    return (values - low) / (high - low), description


# --- colour ---------------------------------------------------------------------------------


def _luma(ds: Dataset, tsyntax: UID, values: np.ndarray, photometric: str) -> np.ndarray:
    """RGB (or palette indices) -> BT.601 luma in [0, 1] of the colour's full scale."""
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(values, _little_endian_palette(ds, tsyntax))[..., :3]
        full_scale = float(np.iinfo(rgb.dtype).max)
    else:
        rgb = values
        full_scale = float(2 ** int(ds.BitsStored) - 1)
    return np.asarray(rgb.astype(np.float64) @ np.asarray(BT601_LUMA) / full_scale)


def _little_endian_palette(ds: Dataset, tsyntax: UID) -> Dataset:
    """The palette module with its OW LUT data in little-endian byte order.

    pydicom 3.0's ``apply_color_lut`` reads (non-segmented) palette data as little endian
    whatever the transfer syntax, so a big-endian file (OBXXXX1A_expb.dcm) gets byte-swapped
    colours; swapping the 16-bit words back first gives the bytes it expects.
    """
    if tsyntax.is_little_endian or not any(k in ds for k in _PALETTE_DATA):
        return ds
    palette = ds.group_dataset(0x0028)
    for keyword in _PALETTE_DATA:
        if keyword in ds:
            words = np.frombuffer(ds[keyword].value, dtype=">u2")
            setattr(palette, keyword, words.astype("<u2").tobytes())
    return palette


def _colour_route(stored: str, decoded: str) -> str:
    """E.g. 'YBR_FULL_422 -> RGB -> BT.601 luma': what the stored colour went through."""
    steps = [stored]
    if decoded == "PALETTE COLOR":
        steps.append("RGB (palette LUT)")
    elif stored != "RGB":
        steps.append("RGB")
    return " -> ".join([*steps, "BT.601 luma"])


def _unit(values: np.ndarray) -> np.ndarray:
    """Final float32 in [0, 1]: NaN (float pixel data) becomes black, rounding error is clipped.

    Cast first, then clean in place: rounding to float32 is monotone and 0 and 1 are exact,
    so this equals cleaning in float64 and casting, on half the bytes and without temporaries.
    """
    out = np.array(values, dtype=np.float32)
    if out.dtype.kind == "f" and not np.isfinite(out).all():
        np.nan_to_num(out, copy=False, nan=0.0, posinf=1.0, neginf=0.0)
    return np.clip(out, 0.0, 1.0, out=out)


def frame_from_image(grey: np.ndarray) -> np.ndarray:
    """A greyscale picture (PNG/JPEG pixels) normalised exactly as an unwindowed DICOM frame.

    8-bit pictures go on their full scale, as an unwindowed 8-bit DICOM does (and as the
    training images do); deeper ones are min-max scaled, as unwindowed deep DICOM is. A
    query that is a PNG of a stored image's pixels must land on the same values.
    """
    values = np.asarray(grey, dtype=np.float64)
    if np.asarray(grey).dtype == np.uint8:
        return _unit(values / 255.0)
    return _unit(_min_max(values)[0])
