"""Saliency-guided global/local feature fusion hashing (after "Precision medical image hash
retrieval by interpretability and feature fusion", CMPB 222, 2022; abstract only).

    image -> global net -> pooled g -> global classifier -> Grad-CAM -> crop box
    crop  -> local net  -> pooled l
    concat(g, l) -> FC+ReLU -> hash layer (tanh, bits) -> classifier

The abstract fixes the parts; the details follow the works it builds on:
  * Grad-CAM (Selvaraju et al. 2017) of the *predicted* class on the global net's last
    feature map, so training and encoding crop the same way. With global average pooling
    and a linear classifier the Grad-CAM channel weights are exactly the classifier row
    divided by H*W, so the map is computed in closed form (ReLU(sum_k w_ck A_k)) without a
    backward pass — identical result, and it works under ``torch.no_grad`` at encode time.
  * Crop as in AG-CNN (Guan et al. 2018): upsample the map to the image, normalise by its
    maximum, keep pixels >= 0.7, take the bounding box (of all kept pixels, rather than of the
    largest connected component, to stay vectorised), crop and resize to the input size with
    ``roi_align``. The box is not differentiated through, as in AG-CNN. At 64 px input an
    EfficientNet map is 2x2, so crops are coarse there; at 224 px it is 7x7.
  * Both branches pool by global average over their last feature map (not by a timm head
    that may add layers after pooling, as MobileNetV3's does), which is what makes the
    closed-form Grad-CAM above exact.
  * Separate global and local networks of the same architecture (AG-CNN); DenseNet-121 by
    default as in the paper.
  * Optional C2L pre-training (Zhou et al. 2020) of the global net on unlabelled images,
    copied into the local net: see ``c2l_pretrain``.
"""
from __future__ import annotations

from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import roi_align

from shared.hashing.losses import SaliencyFusionCriterion
from shared.hashing.models.base import HashHead, HashModel, HashOutput, TimmBackbone
from shared.hashing.models.registry import register_method


class SaliencyFeatures(NamedTuple):
    global_pooled: torch.Tensor
    local_pooled: torch.Tensor
    global_logits: torch.Tensor


class SaliencyFusion(HashModel):
    def __init__(
        self,
        backbone: str,
        bits: int,
        num_classes: int,
        image_size: int,
        pretrained: bool = False,
        hidden: int = 512,
        threshold: float = 0.7,
    ) -> None:
        super().__init__()
        self.bits, self.num_classes = bits, num_classes
        self.image_size, self.threshold = image_size, threshold
        self.global_net = TimmBackbone(backbone, image_size, pretrained)
        self.local_net = TimmBackbone(backbone, image_size, pretrained)
        if len(self.global_net.final_shape) != 3:
            raise ValueError(f"Grad-CAM needs a CNN feature map; {backbone} gives {self.global_net.final_shape}")
        channels = self.global_net.final_shape[0]
        self.global_classifier = nn.Linear(channels, num_classes)
        self.fc = nn.Sequential(nn.Linear(2 * channels, hidden), nn.ReLU(inplace=True))
        self.hash = HashHead(hidden, bits, "tanh")
        self.classifier = nn.Linear(bits, num_classes)

    @torch.no_grad()
    def saliency_boxes(self, feature_map: torch.Tensor, logits: torch.Tensor) -> torch.Tensor:
        """Grad-CAM of the predicted class -> AG-CNN box, as (x0, y0, x1, y1) pixels, (B, 4)."""
        weights = self.global_classifier.weight[logits.argmax(1)]  # (B, C)
        cam = F.relu(torch.einsum("bc,bchw->bhw", weights.float(), feature_map.float()))
        cam = F.interpolate(cam[:, None], size=(self.image_size, self.image_size), mode="bilinear",
                            align_corners=False)[:, 0]
        mask = cam >= self.threshold * cam.amax(dim=(1, 2), keepdim=True)  # all-zero map -> whole image
        idx = torch.arange(self.image_size, device=cam.device)
        rows, cols = mask.any(2), mask.any(1)
        y0 = torch.where(rows, idx, self.image_size).amin(1)
        y1 = torch.where(rows, idx, -1).amax(1) + 1
        x0 = torch.where(cols, idx, self.image_size).amin(1)
        x1 = torch.where(cols, idx, -1).amax(1) + 1
        return torch.stack([x0, y0, x1, y1], dim=1).float()

    def forward_features(self, x: torch.Tensor) -> SaliencyFeatures:
        gmap = self.global_net.final_map(x)
        g = gmap.mean(dim=(2, 3))
        glogits = self.global_classifier(g)
        boxes = self.saliency_boxes(gmap, glogits)
        rois = torch.cat([torch.arange(len(x), device=x.device, dtype=boxes.dtype)[:, None], boxes], dim=1)
        crops = roi_align(x.float(), rois.to(torch.float32), output_size=(self.image_size, self.image_size),
                          aligned=True).to(x.dtype)
        crops = crops.contiguous(memory_format=torch.channels_last) if x.is_contiguous(
            memory_format=torch.channels_last) else crops
        l = self.local_net.final_map(crops).mean(dim=(2, 3))
        return SaliencyFeatures(g, l, glogits)

    def forward_head(self, features: SaliencyFeatures) -> HashOutput:
        codes = self.hash(self.fc(torch.cat([features.global_pooled, features.local_pooled], dim=1)))
        return HashOutput(codes=codes, logits=self.classifier(codes), aux={"global_logits": features.global_logits})

    def pretrain_c2l(self, batches: Callable[[], torch.Tensor], steps: int, lr: float = 1e-4,
                     temperature: float = 0.2) -> list[float]:
        """C2L-pretrain the global net, then copy it into the local net; returns the losses."""
        losses = c2l_pretrain(self.global_net, batches, steps, lr, temperature)
        self.local_net.load_state_dict(self.global_net.state_dict())
        return losses


def c2l_pretrain(backbone: TimmBackbone, batches: Callable[[], torch.Tensor], steps: int, lr: float = 1e-4,
                 temperature: float = 0.2) -> list[float]:
    """Contrastive "comparing to learn" pre-training without labels (Zhou et al. 2020), short form.

    ``batches()`` returns a pair of differently augmented views stacked as (2, B, C, H, W).
    C2L's key ingredient, image mixup inside a contrastive task, is kept: the query view is
    mixed with a shuffled copy (lambda ~ Beta(1, 1)) and must match both sources' keys in
    proportion. Simplification: negatives are the other keys in the batch (SimCLR-style)
    and keys are the same encoder under stop-gradient instead of a momentum encoder with a
    queue, which is enough for a few epochs on one machine.
    """
    head = nn.Linear(backbone.num_features, 128).to(next(backbone.parameters()).device)
    params = list(backbone.parameters()) + list(head.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    backbone.train()
    losses: list[float] = []
    for _ in range(steps):
        views = batches()
        q_in, k_in = views[0], views[1]
        lam = float(torch.distributions.Beta(1.0, 1.0).sample())
        perm = torch.randperm(len(q_in), device=q_in.device)
        q = F.normalize(head(backbone.pool(backbone.final_map(lam * q_in + (1 - lam) * q_in[perm]))), dim=1)
        with torch.no_grad():
            k = F.normalize(head(backbone.pool(backbone.final_map(k_in))), dim=1)
        sim = q @ k.T / temperature
        target = torch.arange(len(q), device=q.device)
        loss = lam * F.cross_entropy(sim, target) + (1 - lam) * F.cross_entropy(sim, perm)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def _sf_criterion(bits: int, num_classes: int, **kwargs: float) -> SaliencyFusionCriterion:
    return SaliencyFusionCriterion(**kwargs)


@register_method("saliency_fusion", criterion=_sf_criterion, default_backbone="densenet121",
                 aliases=("sf", "saliency"))
def build_saliency_fusion(backbone: str, bits: int, num_classes: int, image_size: int, pretrained: bool = False,
                          **kwargs: object) -> SaliencyFusion:
    """Global/local saliency-fusion hashing; DenseNet-121 by default as in the paper."""
    return SaliencyFusion(backbone, bits, num_classes, image_size, pretrained, **kwargs)  # type: ignore[arg-type]
