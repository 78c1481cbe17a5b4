"""Slice storage format (16-bit PNG) and search-page thumbnails."""

from __future__ import annotations

from io import BytesIO

import numpy as np
import pytest
from PIL import Image

from shared.storage.slice_format import decode_slice, encode_slice, thumbnail_png

pytestmark = pytest.mark.unit


def test_round_trip_is_within_half_a_16_bit_step() -> None:
    frame = np.random.default_rng(3).random((224, 224)).astype(np.float32)
    frame[0, :3] = (0.0, 1.0, 0.5)
    decoded = decode_slice(encode_slice(frame))
    assert decoded.dtype == np.float32 and decoded.shape == frame.shape
    assert float(np.abs(decoded - frame).max()) <= 0.5 / 65535 + 1e-7
    assert decoded[0, 0] == 0.0 and decoded[0, 1] == 1.0


def test_round_trip_is_exact_on_the_16_bit_grid() -> None:
    grid = (np.arange(65536, dtype=np.float64).reshape(256, 256) / 65535).astype(np.float32)
    decoded = decode_slice(encode_slice(grid))
    np.testing.assert_array_equal(np.rint(decoded * 65535.0), np.arange(65536).reshape(256, 256))


def test_encoding_is_deterministic_and_viewable() -> None:
    frame = np.linspace(0, 1, 64 * 48, dtype=np.float32).reshape(64, 48)
    data = encode_slice(frame)
    assert data == encode_slice(frame)
    with Image.open(BytesIO(data)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "I;16", (48, 64))


@pytest.mark.parametrize(
    "bad",
    [np.full((4, 4), 1.5), np.full((4, 4), -0.1), np.full((4, 4), np.nan), np.zeros((2, 2, 3))],
    ids=["above-one", "below-zero", "nan", "colour"],
)
def test_encode_rejects_what_the_pipeline_never_produces(bad: np.ndarray) -> None:
    with pytest.raises(ValueError):
        encode_slice(bad)


def test_decode_rejects_other_images() -> None:
    buffer = BytesIO()
    Image.new("L", (4, 4)).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="16-bit"):
        decode_slice(buffer.getvalue())


def test_thumbnail_is_a_square_8_bit_png() -> None:
    frame = np.ones((50, 100), dtype=np.float32)
    with Image.open(BytesIO(thumbnail_png(frame, 64))) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (64, 64))
        pixels = np.asarray(image)
    assert pixels[32, 32] == 255 and pixels[0, 32] == 0  # content centred, padding black
