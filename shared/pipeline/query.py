"""Search queries take the pipeline's road: an upload becomes the slices the pipeline would
have stored, so a stored image queried by its own pixels finds itself at distance 0.
"""

from __future__ import annotations

import io

import numpy as np
import pydicom
from PIL import Image

from shared.dicom.pixels import frame_from_image, iter_frames, resize_keep_aspect
from shared.pipeline.preprocess import PreprocessOptions
from shared.storage.slice_format import decode_slice, encode_slice

__all__ = ["MAX_QUERY_PIXELS", "UnreadableQuery", "query_slices"]

MAX_QUERY_PIXELS = 64_000_000
"""A query picture above this many pixels is refused (decompression-bomb guard)."""


class UnreadableQuery(ValueError):
    """An upload that is neither a DICOM instance with pixels nor a PNG/JPEG picture."""


def _stored_round_trip(pixels: np.ndarray) -> np.ndarray:
    """The slice exactly as the pipeline stores it (16-bit PNG quantisation included)."""
    return decode_slice(encode_slice(pixels))


def _check_dicom_size(data: bytes) -> None:
    """Refuse a DICOM query whose pixels would exceed the picture limit, before decoding.

    A deflated or compressed upload of a few KB can declare gigabytes of pixels; the header
    says how many before any of them is inflated.
    """
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                 specific_tags=["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"])
        pixels = (int(header.get("Rows") or 0) * int(header.get("Columns") or 0)
                  * int(header.get("NumberOfFrames") or 1) * int(header.get("SamplesPerPixel") or 1))
    except Exception as exc:
        raise UnreadableQuery(f"the DICOM header does not parse ({type(exc).__name__}: {exc})") from exc
    if pixels > MAX_QUERY_PIXELS:
        raise UnreadableQuery(
            f"DICOM query declares {pixels} pixels, more than the {MAX_QUERY_PIXELS} allowed; "
            "send one frame or a smaller image"
        )


def query_slices(data: bytes, options: PreprocessOptions) -> list[np.ndarray]:
    """The slices the pipeline would store for an upload: a DICOM instance or a picture."""
    if len(data) > 132 and data[128:132] == b"DICM":
        _check_dicom_size(data)
        frames = [frame.pixels for frame in iter_frames(data, options.window)]
    else:
        try:
            with Image.open(io.BytesIO(data)) as picture:
                if picture.width * picture.height > MAX_QUERY_PIXELS:
                    raise UnreadableQuery(
                        f"picture of {picture.width}x{picture.height} pixels is larger than the "
                        f"{MAX_QUERY_PIXELS} allowed"
                    )
                grey = np.asarray(picture.convert("I;16") if picture.mode.startswith("I") else picture.convert("L"))
        except UnreadableQuery:
            raise
        except Exception as exc:
            raise UnreadableQuery(
                "not a DICOM Part 10 file nor a PNG/JPEG picture "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        frames = [frame_from_image(grey)]
    return [_stored_round_trip(resize_keep_aspect(frame, options.image_size)) for frame in frames]
