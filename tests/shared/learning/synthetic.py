"""Tiny synthetic image sets the model tests train on (no files shipped, no downloads)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from shared.learning.datasets import ImageSet


def pattern(label: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """A bright square in the quadrant named by the label (mod 4) on a noisy dark background,
    with the square's brightness also coding the label so >4 classes stay separable."""
    img = rng.normal(40, 10, (size, size))
    half = size // 2
    y, x = divmod(label % 4, 2)
    img[y * half + 2:(y + 1) * half - 2, x * half + 2:(x + 1) * half - 2] = 160 + 40 * (label // 4)
    return np.clip(img, 0, 255).astype(np.uint8)


def synthetic_set(num_classes: int = 4, per_class: int = 8, size: int = 32, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), per_class)
    images = np.stack([pattern(int(c), size, rng) for c in labels])
    return ImageSet(torch.from_numpy(images)[:, None], torch.from_numpy(labels), [f"c{i}" for i in range(num_classes)],
                    [f"img{i}" for i in range(len(labels))])


def write_png_folder(root: Path, num_classes: int = 3, per_class: int = 10, size: int = 40, seed: int = 0) -> Path:
    """A class-per-folder tree of PNGs, like `medhash train` expects."""
    rng = np.random.default_rng(seed)
    for c in range(num_classes):
        (root / f"class{c}").mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(pattern(c, size, rng)).save(root / f"class{c}" / f"{i:03d}.png")
    return root
