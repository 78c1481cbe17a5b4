"""A model for pipeline tests: untrained, yet its codes tell pictures apart, built in seconds.

An untrained EfficientNet-B0 HashNet whose hash layer is set to random projections of its
features' principal directions (locality-sensitive hashing): different pictures get codes
tens of bits apart, so a self-match at distance 0 is never a tie with another image, while
an untrained hash layer would give almost one code for all. Tests check plumbing with it,
not retrieval quality (that is ``medhash evaluate``'s job).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from shared.hashing.checkpoint import save_checkpoint
from shared.hashing.models import create_model
from shared.hashing.transform import DEFAULT_NORMALIZATION, resize_image, to_model_input


def picture(seed: int, size: int = 64) -> np.ndarray:
    """An 8-bit greyscale picture unlike the others: a tilted gradient and a few discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    angle = rng.uniform(0, 2 * np.pi)
    image = 60 + 80 * (np.cos(angle) * xx + np.sin(angle) * yy)
    for _ in range(3):
        cy, cx, radius = rng.uniform(0.1, 0.9), rng.uniform(0.1, 0.9), rng.uniform(0.05, 0.3)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = rng.uniform(0, 255)
    return np.clip(image + rng.normal(0, 4, image.shape), 0, 255).astype(np.uint8)


def build_lsh_checkpoint(path: Path, bits: int = 64, image_size: int = 32) -> Path:
    """Write the locality-sensitive test checkpoint to ``path``."""
    torch.manual_seed(0)
    model = create_model("hashnet", backbone="efficientnet_b0", bits=bits, num_classes=2,
                         image_size=image_size).eval()
    samples = np.stack([resize_image(picture(seed), image_size) for seed in range(100, 164)])
    with torch.no_grad():
        inputs = to_model_input(torch.from_numpy(samples)[:, None], DEFAULT_NORMALIZATION)
        features = model.forward_features(inputs)
        assert isinstance(features, torch.Tensor)
        features = features.double()
        mean = features.mean(dim=0)
        _, scales, directions = torch.linalg.svd(features - mean, full_matrices=False)
        weight = torch.randn(bits, 16, dtype=torch.float64) @ (directions[:16] / scales[:16, None])
        linear = model.get_submodule("hash.linear")
        assert isinstance(linear, torch.nn.Linear)
        linear.weight.copy_(weight)
        linear.bias.copy_(-weight @ mean)
    save_checkpoint(path, model, ["a", "b"], DEFAULT_NORMALIZATION, {})
    return path
