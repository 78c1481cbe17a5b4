"""Building blocks every hashing method shares: the timm backbone wrapper, the hash head,
the typed model output and the ``HashModel`` base class with ``encode``.

Why one base: the training loop, the evaluator, the checkpoint format and the GPU encode
worker must treat DAFH, saliency fusion and the baselines identically, so every method
exposes the same timm-style surface (``forward_features`` -> ``forward_head`` ->
``HashOutput``) and the same ``encode`` (packed sign bits, 1 = positive).
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["HashOutput", "HashModel", "TimmBackbone", "HashHead", "pack_codes", "ALPHA_MARGIN"]

ALPHA_MARGIN = 1e-3


@dataclass
class HashOutput:
    """What every model returns.

    ``codes`` are the continuous (relaxed) hash codes whose sign is the binary code;
    ``logits`` are class scores for methods with a classifier (None for pure hashing
    baselines); ``aux`` carries extra tensors a method's loss needs (e.g. the global
    branch logits of saliency fusion) without widening the common interface.
    """

    codes: torch.Tensor
    logits: torch.Tensor | None = None
    aux: dict[str, torch.Tensor] = field(default_factory=dict)


def pack_codes(codes: torch.Tensor) -> np.ndarray:
    """Binarise by sign (code > 0 -> bit 1) and pack 8 bits per byte, MSB first.

    Packed uint8 rows are what faiss binary indexes and the catalog store, so this is the
    single definition of a binary code in medhash.
    """
    bits = (codes.detach().float().cpu().numpy() > 0).astype(np.uint8)
    return np.packbits(bits, axis=1)


class TimmBackbone(nn.Module):
    """A timm model without classifier, exposing the penultimate stage and the final map.

    The penultimate stage is taken with timm's ``forward_intermediates(indices=[-2])``.
    For EfficientNet we pass ``extra_blocks=True`` so the index counts MBConv stages
    (``blocks``), which makes ``[-2]`` the output of the penultimate MBConv stage as the
    DAFH paper specifies (b0: 192 channels at stride 32); for other families (ResNet: layer3,
    ViT: block n-2 as an NCHW map) it is the second-to-last feature level timm reports.
    Channel counts and spatial sizes are measured once with a dummy forward at
    ``image_size`` because the flattened CBAM map size depends on the input size.
    """

    def __init__(self, name: str, image_size: int, pretrained: bool = False, in_chans: int = 3) -> None:
        super().__init__()
        kwargs: dict[str, object] = {"pretrained": pretrained, "num_classes": 0, "in_chans": in_chans}
        if "vit" in name or "deit" in name:
            kwargs["img_size"] = image_size  # ViTs fix their position embedding to one size
        self.name = name
        self.model = timm.create_model(name, **kwargs)
        params = inspect.signature(self.model.forward_intermediates).parameters
        self._intermediate_kwargs: dict[str, object] = {"indices": [-2]}
        if "extra_blocks" in params:
            self._intermediate_kwargs["extra_blocks"] = True
        was_training = self.model.training
        self.model.eval()
        with torch.no_grad():
            pen, final = self.forward(torch.zeros(1, in_chans, image_size, image_size))
            pooled = self.pool(final)
        self.model.train(was_training)
        self.penultimate_shape: tuple[int, ...] = tuple(pen.shape[1:])
        self.final_shape: tuple[int, ...] = tuple(final.shape[1:])
        # measured, not model.num_features: some heads (MobileNetV3) add a conv after pooling
        self.num_features: int = int(pooled.shape[1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (penultimate-stage map NCHW, final backbone output before pooling)."""
        final, inter = self.model.forward_intermediates(x, **self._intermediate_kwargs)
        return inter[0], final

    def final_map(self, x: torch.Tensor) -> torch.Tensor:
        """Final feature map only; cheaper than ``forward`` when no intermediate is needed."""
        return self.model.forward_features(x)

    def pool(self, final: torch.Tensor) -> torch.Tensor:
        """The backbone's own pooling (global average for CNNs, token pooling for ViTs)."""
        return self.model.forward_head(final, pre_logits=True)


class HashHead(nn.Module):
    """Linear projection to ``bits`` followed by the method's relaxation of sign().

    activations:
      * ``ptanh``  — tanh(alpha * z) with alpha = 1 + 1e-3 + softplus(p), so alpha > 1 always
        (DAFH sec. 3.3.3 requires alpha > 1; softplus keeps it there without clamping, which
        would zero the gradient, and the 1e-3 keeps it strictly above 1 in float32, where
        1 + softplus(p) rounds to 1 once p < -17). p starts at 0, i.e. alpha ~ 1.694.
      * ``tanh``   — plain tanh (DAFH ablation without Ptanh; saliency fusion).
      * ``tanh_continuation`` — tanh(beta_t * z) with beta_t = (1 + 0.005 t)^0.5, the
        continuation schedule of HashNet (Cao et al. 2017), advanced by ``on_train_step``.
      * ``linear`` — no squashing (DSH, DPSH, DPN train real-valued outputs).
    """

    ACTIVATIONS = ("ptanh", "tanh", "tanh_continuation", "linear")

    def __init__(self, in_features: int, bits: int, activation: str = "tanh") -> None:
        super().__init__()
        if activation not in self.ACTIVATIONS:
            raise ValueError(f"unknown hash activation {activation!r}; choose from {self.ACTIVATIONS}")
        self.activation = activation
        self.linear = nn.Linear(in_features, bits)
        if activation == "ptanh":
            self.alpha_param = nn.Parameter(torch.zeros(()))
        self.register_buffer("scale", torch.ones(()), persistent=True)

    @property
    def alpha(self) -> torch.Tensor:
        """The slope of Ptanh (> 1); 1 for the other activations."""
        if self.activation == "ptanh":
            return 1.0 + ALPHA_MARGIN + F.softplus(self.alpha_param)
        return torch.ones((), device=self.linear.weight.device)

    def on_train_step(self, step: int) -> None:
        """Advance HashNet's continuation: the tanh sharpens toward sign() as training goes."""
        if self.activation == "tanh_continuation":
            self.scale.fill_(math.sqrt(1.0 + 0.005 * step))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.linear(x)
        if self.activation == "ptanh":
            return torch.tanh(self.alpha * z)
        if self.activation == "tanh":
            return torch.tanh(z)
        if self.activation == "tanh_continuation":
            return torch.tanh(self.scale * z)
        return z


class HashModel(nn.Module):
    """Base class: timm-style ``forward_features``/``forward_head`` plus ``encode``.

    Subclasses set ``bits`` and ``num_classes`` and implement the two forward halves.
    """

    method: str = ""
    bits: int
    num_classes: int
    config: dict[str, Any]  # set by ``create_model``: the arguments that rebuild this model

    def forward_features(self, x: torch.Tensor) -> object:
        raise NotImplementedError

    def forward_head(self, features: object) -> HashOutput:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> HashOutput:
        return self.forward_head(self.forward_features(x))

    def on_train_step(self, step: int) -> None:
        """Hook the training loop calls after every optimiser step (schedules inside heads)."""
        for module in self.modules():
            if isinstance(module, HashHead):
                module.on_train_step(step)

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> np.ndarray:
        """Packed binary codes (uint8, ``ceil(bits/8)`` bytes per row) in eval mode."""
        was_training = self.training
        self.eval()
        try:
            return pack_codes(self.forward(x).codes)
        finally:
            self.train(was_training)
