"""DAFH: Deep Attention Fusion Hashing (Wu et al., Bioengineering 2024, sec. 3.3).

    penultimate MBConv stage --CBAM--> A ------------------------------.
    backbone output F ---pool--.                                        | flatten
    GAP(A) --------------------+-concat-> Linear1 -> classifier (focal) |
                                            '------------concat---------+-> Linear2 -> Ptanh -> codes

Choices where the paper is silent, and why:
  * "Concat(F_CBAM, F_EfficientNet)" joins maps of different sizes, so both are globally
    average-pooled first (the backbone's own pooling for F); the hash branch uses the
    flattened map as written.
  * Linear1 is purely linear (eq. 2 has no activation); its width is ``hidden`` (512).
  * The ablation switches of Table 5 are ``attention`` (AT), ``fusion`` (LF) and ``ptanh``.
    Without LF the intermediate stage is not used at all: the hash branch sees Linear1
    only, and AT (if on) applies CBAM to the final backbone map instead, so "EfficientNet+AT"
    still means "EfficientNet with CBAM". Without Ptanh the hash layer is a plain tanh.
  * Where the classifier reads from: section 3.3.2 and eq. 2 feed it Linear1, while the
    paper's Algorithm 1 computes ``classification_output = ClassifierLayer(hash_codes)``.
    ``classifier_input`` takes either ("linear1", the default, or "codes"); with "codes"
    the focal loss reaches the hash layer directly instead of only through the triplet term.
  * Loss (``DAFHCriterion``): triplets drawn at random inside the batch (one per anchor),
    FaceNet's distance on L2-normalised codes; mined variants are options
    (``shared.hashing.losses.mined_triplet`` says how they fared).
  * Other timm backbones (resnet50, a ViT, Table 4) work by name: the penultimate stage is
    what ``TimmBackbone`` reports.
"""
from __future__ import annotations

import torch
from torch import nn

from shared.hashing.losses import DAFHCriterion
from shared.hashing.models.base import HashHead, HashModel, HashOutput, TimmBackbone
from shared.hashing.models.cbam import CBAM
from shared.hashing.models.registry import register_method

CLASSIFIER_INPUTS = ("linear1", "codes")


class DAFH(HashModel):
    def __init__(
        self,
        backbone: str,
        bits: int,
        num_classes: int,
        image_size: int,
        pretrained: bool = False,
        attention: bool = True,
        fusion: bool = True,
        ptanh: bool = True,
        hidden: int = 512,
        cbam_reduction: int = 16,
        classifier_input: str = "linear1",
    ) -> None:
        super().__init__()
        if classifier_input not in CLASSIFIER_INPUTS:
            raise ValueError(f"classifier_input must be one of {CLASSIFIER_INPUTS}, not {classifier_input!r}")
        self.bits, self.num_classes = bits, num_classes
        self.attention, self.fusion, self.classifier_input = attention, fusion, classifier_input
        self.backbone = TimmBackbone(backbone, image_size, pretrained)
        attended_shape = self.backbone.penultimate_shape if fusion else self.backbone.final_shape
        if attention and len(attended_shape) != 3:
            raise ValueError(f"CBAM needs a feature map; {backbone} gives shape {attended_shape} there")
        self.cbam: nn.Module = CBAM(attended_shape[0], cbam_reduction) if attention else nn.Identity()
        fused = self.backbone.num_features + (attended_shape[0] if fusion else 0)
        self.linear1 = nn.Linear(fused, hidden)
        self.classifier = nn.Linear(hidden if classifier_input == "linear1" else bits, num_classes)
        flat = int(torch.tensor(attended_shape).prod()) if fusion else 0
        self.hash = HashHead(hidden + flat, bits, "ptanh" if ptanh else "tanh")

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(CBAM-attended penultimate map, or None without layer fusion; final backbone map)."""
        pen, final = self.backbone(x)
        if self.fusion:
            return self.cbam(pen), final
        return None, self.cbam(final)

    def forward_head(self, features: tuple[torch.Tensor | None, torch.Tensor]) -> HashOutput:
        attended, final = features
        pooled = self.backbone.pool(final)
        if attended is not None:
            l1 = self.linear1(torch.cat([attended.mean(dim=(2, 3)), pooled], dim=1))
            hash_in = torch.cat([l1, attended.flatten(1)], dim=1)
        else:
            l1 = self.linear1(pooled)
            hash_in = l1
        codes = self.hash(hash_in)
        return HashOutput(codes=codes, logits=self.classifier(l1 if self.classifier_input == "linear1" else codes))


def _dafh_criterion(bits: int, num_classes: int, **kwargs: float) -> DAFHCriterion:
    return DAFHCriterion(**kwargs)


@register_method("dafh", criterion=_dafh_criterion, default_backbone="efficientnet_b6")
def build_dafh(backbone: str, bits: int, num_classes: int, image_size: int, pretrained: bool = False,
               **kwargs: object) -> DAFH:
    """DAFH; ``attention``/``fusion``/``ptanh`` switch the Table 5 components."""
    return DAFH(backbone, bits, num_classes, image_size, pretrained, **kwargs)  # type: ignore[arg-type]
