"""A pydicom decoder plugin for 12-bit JPEG Extended (1.2.840.10008.1.2.4.51), through GDCM.

pydicom's own plugins leave a gap: its GDCM plugin refuses 12-bit samples outright, Pillow
cannot do them, and pylibjpeg's libjpeg rejects the many real streams whose SOS marker
carries spectral selection values other than 0/63 ("scan start must be zero and scan stop
must be 63 for the sequential operating modes"; pydicom's own ``JPEG-lossy.dcm`` is one).
dcmtk decodes such streams, and so does GDCM's 12-bit IJG codec when asked directly, which
is what this plugin does, one frame at a time, for greyscale 12-bit data only. The tests
compare its output with dcmtk's ``dcmdjpeg`` pixel for pixel.

``shared.dicom.pixels`` registers it on import (:func:`register`, idempotent) and asks for it
by name for 12-bit JPEG Extended (:func:`preferred_plugin`).
"""

from __future__ import annotations

from typing import cast

from pydicom.pixels.decoders.base import DecodeRunner, get_decoder
from pydicom.uid import JPEGExtended12Bit

try:
    import gdcm

    HAVE_GDCM = True
except ImportError:  # python-gdcm is a dependency; without it the plugin is reported missing
    HAVE_GDCM = False

PLUGIN = "gdcm-12bit"
DECODER_DEPENDENCIES = {JPEGExtended12Bit: ("python-gdcm>=3.0.10",)}


def is_available(uid: str) -> bool:
    """Required by pydicom's plugin interface."""
    return HAVE_GDCM and uid in DECODER_DEPENDENCIES


def _decode_frame(src: bytes, runner: DecodeRunner) -> bytes:
    """One encoded frame -> native little-endian samples (pydicom's decoder plugin contract)."""
    if runner.samples_per_pixel != 1 or not 8 < runner.bits_stored <= 12:
        raise NotImplementedError("only greyscale 12-bit JPEG Extended is decoded by this plugin")
    fragment = gdcm.Fragment()
    fragment.SetByteStringValue(src)
    fragments = gdcm.SequenceOfFragments.New()
    fragments.AddFragment(fragment)
    element = gdcm.DataElement(gdcm.Tag(0x7FE0, 0x0010))
    element.SetValue(fragments.__ref__())
    image = gdcm.Image()
    image.SetNumberOfDimensions(2)
    image.SetDimensions((runner.columns, runner.rows, 1))
    image.SetDataElement(element)
    kind = gdcm.PhotometricInterpretation.GetPIType(runner.photometric_interpretation)
    image.SetPhotometricInterpretation(gdcm.PhotometricInterpretation(kind))
    image.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(JPEGExtended12Bit))))
    bits = runner.bits_stored
    image.SetPixelFormat(gdcm.PixelFormat(1, 16, bits, bits - 1, runner.pixel_representation))
    runner.set_option("bits_allocated", 16)
    frame = image.GetBuffer().encode("utf-8", "surrogateescape")  # GDCM returns char* as str
    expected = runner.rows * runner.columns * 2
    if len(frame) < expected:
        raise ValueError(f"GDCM returned {len(frame)} bytes for a {runner.rows}x{runner.columns} frame")
    return cast(bytes, frame[:expected])


def preferred_plugin(transfer_syntax: str, bits_stored: int) -> str | None:
    """This plugin for 12-bit JPEG Extended, else None (pydicom picks).

    For 12-bit streams pylibjpeg, when it decodes them at all, differs from dcmtk by one grey
    level on some pixels (another IDCT); GDCM uses the same IJG code as dcmtk and matches it
    exactly, so every worker gives the same slices as the reference tools.
    """
    if transfer_syntax == JPEGExtended12Bit and bits_stored > 8 and is_available(transfer_syntax):
        return PLUGIN
    return None


def register() -> None:
    """Add the plugin to pydicom's JPEG Extended decoder, once per process."""
    decoder = get_decoder(JPEGExtended12Bit)
    added = [*decoder.available_plugins, *(m.split(" - ")[0] for m in decoder.missing_dependencies)]
    if PLUGIN not in added:
        decoder.add_plugin(PLUGIN, ("shared.dicom.codecs", "_decode_frame"))
    if HAVE_GDCM:
        # GDCM tries 8-bit first and prints why that failed, on stderr, for every 12-bit frame
        gdcm.Trace.WarningOff()
