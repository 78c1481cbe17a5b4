"""The paper's baselines: HashNet, DSH, DPSH and DPN on a shared timm backbone.

They differ only in their loss and in how the hash layer relaxes sign(), so one model class
(backbone -> pooled features -> ``HashHead``) serves all four and each registration names
its activation and criterion. The originals used AlexNet/VGG; here they sit on the same
backbone and budget as DAFH so the comparison isolates the method.
"""
from __future__ import annotations

import torch

from shared.hashing.losses import (
    DPNCriterion,
    DPSHCriterion,
    DSHCriterion,
    HashNetCriterion,
)
from shared.hashing.models.base import HashHead, HashModel, HashOutput, TimmBackbone
from shared.hashing.models.registry import register_method


class BackboneHash(HashModel):
    """Backbone, its global pooling, then a linear hash layer with the method's activation."""

    def __init__(self, backbone: str, bits: int, num_classes: int, image_size: int, pretrained: bool,
                 activation: str) -> None:
        super().__init__()
        self.bits, self.num_classes = bits, num_classes
        self.backbone = TimmBackbone(backbone, image_size, pretrained)
        self.hash = HashHead(self.backbone.num_features, bits, activation)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.pool(self.backbone.final_map(x))

    def forward_head(self, features: torch.Tensor) -> HashOutput:
        return HashOutput(codes=self.hash(features))


def _register(name: str, activation: str, criterion: object, doc: str) -> None:
    def build(backbone: str, bits: int, num_classes: int, image_size: int, pretrained: bool = False) -> BackboneHash:
        return BackboneHash(backbone, bits, num_classes, image_size, pretrained, activation)

    build.__doc__ = doc
    register_method(name, criterion=criterion, default_backbone="efficientnet_b6")(build)


_register("hashnet", "tanh_continuation", lambda bits, num_classes: HashNetCriterion(bits),
          "HashNet (Cao et al. 2017): tanh with continuation, weighted pairwise likelihood.")
_register("dsh", "linear", lambda bits, num_classes: DSHCriterion(bits),
          "DSH (Liu et al. 2016): real-valued outputs, contrastive loss + |b| -> 1 regulariser.")
_register("dpsh", "linear", lambda bits, num_classes: DPSHCriterion(),
          "DPSH (Li et al. 2016): real-valued outputs, pairwise likelihood + quantisation.")
_register("dpn", "linear", lambda bits, num_classes: DPNCriterion(bits, num_classes),
          "DPN (Fan et al. 2020): bit-wise polarization toward random per-class target codes.")
