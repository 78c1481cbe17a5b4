"""Losses of every hashing method medhash trains.

Each loss is a plain function (so tests can check it against hand-computed numbers) and each
method has a small criterion object that combines them and reports the parts it logs. All
criteria share one call signature, ``criterion(output, labels) -> LossOutput``, so the one
training loop in ``shared.learning.training`` drives every method.

Reductions are means (over samples, pairs or bits) rather than the sums some papers write,
so the loss scale does not depend on the batch size and one learning rate suits all methods.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, NamedTuple, Protocol

import torch
import torch.nn.functional as F

if TYPE_CHECKING:  # the models import their criteria from here; avoid the import cycle
    from shared.hashing.models.base import HashOutput

__all__ = [
    "LossOutput", "Criterion", "focal_loss", "mined_triplet", "triplet_distances", "similarity_matrix",
    "hashnet_loss", "dsh_loss", "dpsh_loss", "dpn_loss", "dpn_targets", "quantization_loss",
    "bit_balance_loss", "DAFHCriterion", "SaliencyFusionCriterion", "HashNetCriterion",
    "DSHCriterion", "DPSHCriterion", "DPNCriterion",
]


class LossOutput(NamedTuple):
    """The scalar to minimise and its named parts (detached floats, for logs)."""

    total: torch.Tensor
    parts: dict[str, float]


class Criterion(Protocol):
    def __call__(self, output: HashOutput, labels: torch.Tensor) -> LossOutput: ...


# --------------------------------------------------------------------------- primitives


def focal_loss(logits: torch.Tensor, target: torch.Tensor, gamma: float = 1.5) -> torch.Tensor:
    """Multi-class focal loss (Lin et al. 2017), mean over samples.

    FL = -(1 - p_t)^gamma * log p_t with p_t the softmax probability of the true class.
    No alpha class weight: DAFH's formula (sec. 3.3.4) has none. Computed from log-softmax
    so tiny probabilities stay finite.
    """
    logp_t = F.log_softmax(logits.float(), dim=1).gather(1, target[:, None]).squeeze(1)
    p_t = logp_t.exp()
    return (-(1.0 - p_t).pow(gamma) * logp_t).mean()


TRIPLET_MINING = ("semihard", "hard", "all", "random")
TRIPLET_DISTANCES = ("normalized_sq", "euclidean")


def triplet_distances(codes: torch.Tensor, distance: str = "normalized_sq") -> torch.Tensor:
    """Pairwise distances between rows for the triplet loss.

    ``normalized_sq``: FaceNet's squared Euclidean distance between L2-normalised rows, in
    [0, 4]; for codes at +-1 it is 4 * Hamming / bits. ``euclidean``: the plain L2 distance
    of Balntas et al. 2016, the triplet loss DAFH cites ([40]); for codes at +-1 it is
    2 * sqrt(Hamming), so a fixed margin asks for fewer extra bits the longer the code.
    """
    if distance not in TRIPLET_DISTANCES:
        raise ValueError(f"distance must be one of {TRIPLET_DISTANCES}, not {distance!r}")
    if distance == "euclidean":
        z = codes.float()
        sq = (z * z).sum(1)
        # the epsilon keeps sqrt's gradient finite on the (masked-out) zero diagonal
        return (sq[:, None] + sq[None, :] - 2.0 * z @ z.T).clamp_min(0.0).add(1e-12).sqrt()
    z = F.normalize(codes.float(), dim=1)
    return (2.0 - 2.0 * z @ z.T).clamp_min(0.0)


def mined_triplet(
    codes: torch.Tensor, labels: torch.Tensor, margin: float = 0.5, mining: str = "random",
    distance: str = "normalized_sq",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Triplet loss on hash codes with triplets drawn inside the batch, every sample an anchor.

    ``mining`` chooses each anchor's positive and negative:
      * ``random`` (default): any same-class sample and any other-class sample, drawn afresh
        every batch. This is the paper's triplet (anchor, positive and negative fed side by
        side through shared weights; no mining is named), and on a held-out part of the
        brain-tumour training set it beat the mined variants below (docs/results.md).
      * ``semihard``: batch-hard positive (the farthest, Hermans et al. 2017) and FaceNet's
        semi-hard negative (Schroff et al. 2015): the closest other-class sample farther than
        the positive, or the farthest negative when none is (as TensorFlow's loss does).
      * ``hard``: batch-hard positive and the closest negative. FaceNet reports that the
        hardest negatives collapse the embedding early in training, and so they did here from
        scratch (loss stuck at the margin with all codes equal).
      * ``all``: the mean over every active (anchor, positive, negative) of the batch.

    The distance (``triplet_distances``) is by default FaceNet's: squared Euclidean between
    L2-normalised codes. For codes at +-1 it equals 4 * Hamming / bits, so DAFH's margin of
    0.5 asks the negative to differ in 1/8 more bits than the positive, whatever the code
    length; ``distance="euclidean"`` is Balntas et al.'s plain L2.

    Returns (mean loss over anchors that have a positive and a negative, positive index,
    negative index, mask of such anchors); the indices let DAFH apply focal loss to the
    mined positives and negatives as its objective prescribes.
    """
    if mining not in TRIPLET_MINING:
        raise ValueError(f"mining must be one of {TRIPLET_MINING}, not {mining!r}")
    dist = triplet_distances(codes, distance)
    same = labels[:, None] == labels[None, :]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    pos_mask = same & ~eye
    neg_mask = ~same
    valid = pos_mask.any(1) & neg_mask.any(1)
    rows = torch.arange(len(labels), device=labels.device)
    if mining == "random":  # the paper's plain triplets: any positive, any negative, no mining
        unusable = ~valid[:, None]  # anchors without a triplet draw from every sample; masked below
        pos_idx = torch.multinomial((pos_mask | unusable).float(), 1).squeeze(1)
        neg_idx = torch.multinomial((neg_mask | unusable).float(), 1).squeeze(1)
    else:
        pos_idx = dist.masked_fill(~pos_mask, -1.0).argmax(1)
        neg_idx = dist.masked_fill(~neg_mask, float("inf")).argmin(1)
    if mining == "all":
        per_triplet = F.relu(dist[:, :, None] - dist[:, None, :] + margin)
        per_triplet = per_triplet * (pos_mask[:, :, None] & neg_mask[:, None, :])
        active = per_triplet > 0
        loss = per_triplet.sum() / active.sum() if active.any() else codes.sum() * 0.0
        return loss, pos_idx, neg_idx, valid
    d_ap = dist[rows, pos_idx]
    if mining == "semihard":
        farther = neg_mask & (dist > d_ap[:, None])
        semi = dist.masked_fill(~farther, float("inf")).argmin(1)
        easiest = dist.masked_fill(~neg_mask, -1.0).argmax(1)
        neg_idx = torch.where(farther.any(1), semi, easiest)
    losses = F.relu(d_ap - dist[rows, neg_idx] + margin)
    loss = losses[valid].mean() if valid.any() else codes.sum() * 0.0
    return loss, pos_idx, neg_idx, valid


def similarity_matrix(labels: torch.Tensor) -> torch.Tensor:
    """s_ij = 1 when samples i and j share the class label, else 0 (float)."""
    return (labels[:, None] == labels[None, :]).float()


def _off_diagonal(matrix: torch.Tensor) -> torch.Tensor:
    n = matrix.shape[0]
    return matrix[~torch.eye(n, dtype=torch.bool, device=matrix.device)]


def hashnet_loss(codes: torch.Tensor, labels: torch.Tensor, alpha: float) -> torch.Tensor:
    """HashNet's weighted pairwise maximum likelihood (Cao et al. 2017, eq. 4).

    Per pair: log(1 + exp(a * <h_i, h_j>)) - s_ij * a * <h_i, h_j>, with the paper's
    weights w = |S|/|S1| for similar and |S|/|S0| for dissimilar pairs against imbalance.
    The weighted mean of that equals the average of the mean over similar pairs and the
    mean over dissimilar pairs, which is what is computed. ``alpha`` is the sigmoid's
    scale; the original code uses 10 / bits.
    """
    ip = alpha * _off_diagonal(codes.float() @ codes.float().T)
    s = _off_diagonal(similarity_matrix(labels))
    per_pair = F.softplus(ip) - s * ip
    terms = [per_pair[s == v].mean() for v in (1.0, 0.0) if (s == v).any()]
    return torch.stack(terms).mean()


def dsh_loss(codes: torch.Tensor, labels: torch.Tensor, margin: float, alpha: float = 0.01) -> torch.Tensor:
    """DSH (Liu et al. 2016): contrastive loss on real outputs plus a pull toward +-1.

    Per pair (i < j): 1/2 s D + 1/2 (1 - s) max(m - D, 0) + alpha (|||b_i|-1||_1 + |||b_j|-1||_1)
    with D = ||b_i - b_j||^2; the paper sets m = 2 * bits and alpha = 0.01. Mean over pairs.
    """
    b = codes.float()
    n = b.shape[0]
    iu = torch.triu_indices(n, n, offset=1, device=b.device)
    d = torch.cdist(b, b).pow(2)[iu[0], iu[1]]
    s = similarity_matrix(labels)[iu[0], iu[1]]
    reg = (b.abs() - 1.0).abs().sum(1)
    per_pair = 0.5 * s * d + 0.5 * (1.0 - s) * F.relu(margin - d) + alpha * (reg[iu[0]] + reg[iu[1]])
    return per_pair.mean()


def dpsh_loss(codes: torch.Tensor, labels: torch.Tensor, eta: float = 0.1) -> torch.Tensor:
    """DPSH (Li et al. 2016): pairwise likelihood with theta = <u_i, u_j>/2, plus
    eta * ||sign(u) - u||^2 quantisation. Means over ordered pairs i != j and over samples.
    """
    u = codes.float()
    theta = 0.5 * _off_diagonal(u @ u.T)
    s = _off_diagonal(similarity_matrix(labels))
    likelihood = (F.softplus(theta) - s * theta).mean()
    quant = (torch.sign(u).detach() - u).pow(2).sum(1).mean()
    return likelihood + eta * quant


def dpn_targets(num_classes: int, bits: int, seed: int = 0) -> torch.Tensor:
    """DPN's class target codes: independent fair +-1 bits per class (Fan et al. 2020,
    random assignment), drawn from a seeded generator so training is reproducible."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 2, (num_classes, bits), generator=gen).float() * 2.0 - 1.0


def dpn_loss(codes: torch.Tensor, labels: torch.Tensor, targets: torch.Tensor, margin: float = 1.0) -> torch.Tensor:
    """DPN's bit-wise hinge-like polarization loss: mean_k max(m - v_k * t_k, 0), m = 1."""
    t = targets.to(codes.device)[labels]
    return F.relu(margin - codes.float() * t).mean()


def quantization_loss(codes: torch.Tensor) -> torch.Tensor:
    """Mean squared distance of relaxed codes from +-1: mean((|h| - 1)^2)."""
    return (codes.float().abs() - 1.0).pow(2).mean()


def bit_balance_loss(codes: torch.Tensor) -> torch.Tensor:
    """Each bit should be +1 for half the batch: mean over bits of (batch mean)^2."""
    return codes.float().mean(0).pow(2).mean()


# --------------------------------------------------------------------------- criteria


class DAFHCriterion:
    """L = lambda (FL(anchor) + FL(positive) + FL(negative)) + beta * triplet (DAFH eq. 8).

    Triplets are drawn in the batch (``mined_triplet``, random by default), every sample
    being an anchor; FL(positive) and FL(negative) are the focal losses of the drawn
    positives' and negatives' logits, over anchors that have both. lambda = 1/3, gamma = 1.5,
    margin = 0.5 as in the paper; beta (unspecified there) defaults to 1.
    """

    def __init__(self, gamma: float = 1.5, margin: float = 0.5, lam: float = 1.0 / 3.0, beta: float = 1.0,
                 mining: str = "random", distance: str = "normalized_sq") -> None:
        self.gamma, self.margin, self.lam, self.beta = gamma, margin, lam, beta
        self.mining, self.distance = mining, distance

    def __call__(self, output: HashOutput, labels: torch.Tensor) -> LossOutput:
        assert output.logits is not None, "DAFH needs classifier logits"
        triplet, pos, neg, valid = mined_triplet(output.codes, labels, self.margin, self.mining, self.distance)
        fa = focal_loss(output.logits, labels, self.gamma)
        if valid.any():
            fp = focal_loss(output.logits[pos[valid]], labels[valid], self.gamma)
            fn = focal_loss(output.logits[neg[valid]], labels[neg[valid]], self.gamma)
        else:
            fp = fn = fa * 0.0
        total = self.lam * (fa + fp + fn) + self.beta * triplet
        parts = {"focal_a": fa.item(), "focal_p": fp.item(), "focal_n": fn.item(), "triplet": triplet.item()}
        return LossOutput(total, parts)


class SaliencyFusionCriterion:
    """Classification (on the hash-layer classifier and on the global branch, whose
    classifier drives the Grad-CAM crop) + quantization + bit balance.

    The abstract names the three loss kinds but not their weights; 0.1 for both regularisers
    follows common practice in classification-based hashing (e.g. DPN/CSQ-style quantisation
    weights) and keeps the classification term dominant.
    """

    def __init__(self, quant_weight: float = 0.1, balance_weight: float = 0.1, global_weight: float = 1.0) -> None:
        self.quant_weight, self.balance_weight, self.global_weight = quant_weight, balance_weight, global_weight

    def __call__(self, output: HashOutput, labels: torch.Tensor) -> LossOutput:
        assert output.logits is not None, "saliency fusion needs classifier logits"
        cls = F.cross_entropy(output.logits.float(), labels)
        glob = F.cross_entropy(output.aux["global_logits"].float(), labels)
        quant = quantization_loss(output.codes)
        bal = bit_balance_loss(output.codes)
        total = cls + self.global_weight * glob + self.quant_weight * quant + self.balance_weight * bal
        return LossOutput(total, {"cls": cls.item(), "global": glob.item(), "quant": quant.item(), "balance": bal.item()})


class HashNetCriterion:
    """HashNet with the original sigmoid scale 10 / bits."""

    def __init__(self, bits: int) -> None:
        self.alpha = 10.0 / bits

    def __call__(self, output: HashOutput, labels: torch.Tensor) -> LossOutput:
        loss = hashnet_loss(output.codes, labels, self.alpha)
        return LossOutput(loss, {"pairwise": loss.item()})


class DSHCriterion:
    """DSH with m = 2 * bits and alpha = 0.01 as in the paper."""

    def __init__(self, bits: int, alpha: float = 0.01) -> None:
        self.margin, self.alpha = 2.0 * bits, alpha

    def __call__(self, output: HashOutput, labels: torch.Tensor) -> LossOutput:
        loss = dsh_loss(output.codes, labels, self.margin, self.alpha)
        return LossOutput(loss, {"contrastive": loss.item()})


class DPSHCriterion:
    """DPSH with eta = 0.1 (the mean-reduced setting of common re-implementations)."""

    def __init__(self, eta: float = 0.1) -> None:
        self.eta = eta

    def __call__(self, output: HashOutput, labels: torch.Tensor) -> LossOutput:
        loss = dpsh_loss(output.codes, labels, self.eta)
        return LossOutput(loss, {"likelihood+quant": loss.item()})


class DPNCriterion:
    """DPN polarization toward seeded random class targets, margin 1."""

    def __init__(self, bits: int, num_classes: int, margin: float = 1.0, seed: int = 0) -> None:
        self.targets = dpn_targets(num_classes, bits, seed)
        self.margin = margin

    def __call__(self, output: HashOutput, labels: torch.Tensor) -> LossOutput:
        loss = dpn_loss(output.codes, labels, self.targets, self.margin)
        return LossOutput(loss, {"polarization": loss.item()})
