"""The one picture the model sees: how a greyscale image becomes the model's input tensor.

Training, the encode workers and search queries all go through these functions, so a
model is served exactly the picture it was trained on.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from PIL import Image

__all__ = ["DEFAULT_NORMALIZATION", "to_uint8", "unit_to_uint8", "resize_image", "to_model_uint8", "to_model_input"]

DEFAULT_NORMALIZATION: dict[str, list[float]] = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def to_uint8(array: np.ndarray) -> np.ndarray:
    """Min-max scale any numeric 2-D array to uint8 (a constant image becomes all zeros)."""
    a = np.asarray(array, dtype=np.float64)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, dtype=np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def unit_to_uint8(slice_: np.ndarray) -> np.ndarray:
    """A stored [0, 1] slice as 8-bit grey at its own size: the fixed scale the model sees
    (never min-max, which would undo the windowing the preprocess stage applied)."""
    return np.round(np.clip(slice_, 0.0, 1.0) * 255.0).astype(np.uint8)


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """Greyscale uint8 (size, size); non-uint8 input is min-max scaled first (e.g. raw CT)."""
    img = Image.fromarray(image if image.dtype == np.uint8 else to_uint8(image))
    return np.asarray(img.convert("L").resize((size, size), Image.Resampling.BILINEAR), dtype=np.uint8)


def to_model_uint8(slice_: np.ndarray, size: int) -> np.ndarray:
    """A stored [0, 1] slice as the uint8 picture of the model's input size."""
    grey = unit_to_uint8(slice_)
    return grey if grey.shape == (size, size) else resize_image(grey, size)


def to_model_input(images: torch.Tensor, normalization: Mapping[str, Sequence[float]] = DEFAULT_NORMALIZATION
                   ) -> torch.Tensor:
    """uint8 (or [0, 1] float) greyscale (B, 1, H, W) -> normalised float (B, 3, H, W)."""
    x = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    x = x.expand(-1, 3, -1, -1)
    mean = torch.tensor(normalization["mean"], device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(normalization["std"], device=x.device).view(1, 3, 1, 1)
    return (x - mean) / std
