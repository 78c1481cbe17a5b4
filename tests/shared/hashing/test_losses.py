"""Losses against values worked out by hand (the arithmetic is in each test)."""
from __future__ import annotations

import math

import pytest
import torch

from shared.hashing.losses import (
    DAFHCriterion,
    SaliencyFusionCriterion,
    bit_balance_loss,
    dpn_loss,
    dpn_targets,
    dpsh_loss,
    dsh_loss,
    focal_loss,
    hashnet_loss,
    mined_triplet,
    quantization_loss,
    triplet_distances,
)
from shared.hashing.models import HashOutput

pytestmark = pytest.mark.unit


def test_focal_loss_hand_value() -> None:
    # softmax([0, ln 3]) = [1/4, 3/4]; target 1: p_t = 3/4 -> -(1/4)^1.5 * ln(3/4) = 0.125 * 0.287682
    logits = torch.tensor([[0.0, math.log(3.0)]])
    assert focal_loss(logits, torch.tensor([1]), gamma=1.5).item() == pytest.approx(0.125 * -math.log(0.75), rel=1e-5)
    # gamma = 0 is cross-entropy: -ln(1/4)
    assert focal_loss(logits, torch.tensor([0]), gamma=0.0).item() == pytest.approx(math.log(4.0), rel=1e-5)


def test_hard_triplet_hand_value() -> None:
    # 2-bit codes; normalised squared distance = 4 * hamming / bits = 2 * hamming.
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]])
    labels = torch.tensor([0, 0, 1, 1])
    loss, pos, neg, valid = mined_triplet(codes, labels, margin=0.5, mining="hard")
    # every anchor: farthest positive at distance 2, nearest negative at 2 -> relu(2 - 2 + 0.5) = 0.5
    assert loss.item() == pytest.approx(0.5, abs=1e-6)
    assert pos.tolist() == [1, 0, 3, 2]
    assert neg.tolist() == [3, 2, 1, 0]
    assert valid.all()
    separated = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    assert mined_triplet(separated, labels, 0.5, "hard")[0].item() == pytest.approx(0.0, abs=1e-6)


def test_semihard_triplet_hand_value() -> None:
    # same codes: anchor 0's positive 1 is at 2; negatives 3 (at 2, not farther) and 2 (at 4):
    # semi-hard picks 2 -> relu(2 - 4 + 0.5) = 0, for every anchor by symmetry
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]])
    loss, _, neg, _ = mined_triplet(codes, torch.tensor([0, 0, 1, 1]), margin=0.5, mining="semihard")
    assert neg.tolist() == [2, 3, 0, 1] and loss.item() == pytest.approx(0.0, abs=1e-6)
    # 3 bits: anchor [1,1,1], positive at hamming 1 (d = 4/3), negatives at hamming 2 (d = 8/3)
    # and hamming 1 (d = 4/3, not farther): semi-hard takes the first -> relu(4/3 - 8/3 + 2) = 2/3
    c3 = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, -1.0], [1.0, -1.0, -1.0], [-1.0, 1.0, 1.0]])
    loss, pos, neg, valid = mined_triplet(c3, torch.tensor([0, 0, 1, 1]), margin=2.0, mining="semihard")
    assert pos[0].item() == 1 and neg[0].item() == 2


def test_batch_all_triplet_hand_value() -> None:
    # the 2-bit square again (d = 2 * hamming): each anchor has one positive at d = 2 and
    # negatives at 2 and 4 -> triplet losses relu(2 - 2 + 0.5) = 0.5 and relu(2 - 4 + 0.5) = 0;
    # batch-all averages over the active (non-zero) triplets: 4 x 0.5 / 4 = 0.5
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]])
    loss, _, _, valid = mined_triplet(codes, torch.tensor([0, 0, 1, 1]), margin=0.5, mining="all")
    assert loss.item() == pytest.approx(0.5, abs=1e-6) and valid.all()
    # margin 2.5: both negatives active: relu(2 - 2 + 2.5) = 2.5 and relu(2 - 4 + 2.5) = 0.5 -> mean 1.5
    assert mined_triplet(codes, torch.tensor([0, 0, 1, 1]), 2.5, "all")[0].item() == pytest.approx(1.5, abs=1e-6)
    separated = torch.tensor([[1.0, 1.0], [1.0, 1.0], [-1.0, -1.0], [-1.0, -1.0]])
    zero = mined_triplet(separated, torch.tensor([0, 0, 1, 1]), 0.5, "all")[0]
    assert zero.item() == 0.0


def test_euclidean_triplet_hand_value() -> None:
    # Balntas et al.'s plain L2: for +-1 codes d = 2 * sqrt(hamming); the 2-bit square has
    # d = 2 at hamming 1 and 2 * sqrt(2) at hamming 2, on any scale (no normalisation)
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0]])
    d = triplet_distances(codes, "euclidean")
    assert d[0, 1].item() == pytest.approx(2.0, abs=1e-5) and d[0, 2].item() == pytest.approx(2 * math.sqrt(2), abs=1e-5)
    assert triplet_distances(codes * 0.5, "euclidean")[0, 1].item() == pytest.approx(1.0, abs=1e-5)
    assert triplet_distances(codes * 0.5)[0, 1].item() == pytest.approx(2.0, abs=1e-5)  # normalised: scale-free
    # hard mining: positive at 2, nearest negative at 2 -> relu(2 - 2 + 0.5) = 0.5; semi-hard takes the
    # negative at 2 sqrt 2 -> relu(2 - 2.828 + 1) = 0.172 with margin 1
    assert mined_triplet(codes, torch.tensor([0, 0, 1, 1]), 0.5, "hard", "euclidean")[0].item() == pytest.approx(0.5, abs=1e-5)
    semi = mined_triplet(codes, torch.tensor([0, 0, 1, 1]), 1.0, "semihard", "euclidean")[0]
    assert semi.item() == pytest.approx(3.0 - 2 * math.sqrt(2), abs=1e-5)
    # the diagonal's sqrt(0) must not poison the gradient
    x = codes.clone().requires_grad_(True)
    mined_triplet(x, torch.tensor([0, 0, 1, 1]), 0.5, "hard", "euclidean")[0].backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    with pytest.raises(ValueError, match="distance must be one of"):
        triplet_distances(codes, "cosine")


def test_random_triplets_pick_a_positive_and_a_negative() -> None:
    # 3 classes of 2: any same-class other sample is the positive, any other-class the negative;
    # the loss is the mean of relu(d(a, p) - d(a, n) + margin) over the picks (d = 2 * hamming)
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]])
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    torch.manual_seed(0)
    loss, pos, neg, valid = mined_triplet(codes, labels, margin=0.5, mining="random")
    assert valid.all()
    assert (labels[pos] == labels).all() and (pos != torch.arange(6)).all() and (labels[neg] != labels).all()
    d = triplet_distances(codes)
    expected = torch.relu(d[torch.arange(6), pos] - d[torch.arange(6), neg] + 0.5).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    picks = {tuple(mined_triplet(codes, labels, 0.5, "random")[2].tolist()) for _ in range(20)}
    assert len(picks) > 1  # drawn afresh each batch, not a fixed choice


def test_unknown_mining_is_refused() -> None:
    with pytest.raises(ValueError, match="mining must be one of"):
        mined_triplet(torch.ones(2, 2), torch.tensor([0, 1]), mining="nearest")


def test_triplet_ignores_anchors_without_positive() -> None:
    codes = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, -1.0]])
    loss, _, _, valid = mined_triplet(codes, torch.tensor([0, 0, 1]), margin=0.5, mining="hard")
    assert valid.tolist() == [True, True, False]
    # anchor 0: d(0,1) = 2, nearest negative d(0,2) = 4 -> 0; anchor 1: d(1,0) = 2, d(1,2) = 2 -> 0.5
    assert loss.item() == pytest.approx(0.25, abs=1e-6)


def test_hashnet_loss_hand_value() -> None:
    codes = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 0, 1])
    # similar pairs: ip = 1 -> ln(1 + e) - 1; dissimilar pairs: ip = 0 -> ln 2; average of the two means
    expected = ((math.log(1 + math.e) - 1.0) + math.log(2.0)) / 2
    assert hashnet_loss(codes, labels, alpha=1.0).item() == pytest.approx(expected, rel=1e-5)


def test_dsh_loss_hand_value() -> None:
    # similar pair, D = ||[1,0]-[0,0]||^2 = 1 -> 0.5; regulariser |||b|-1||_1 = 1 + 2 -> 0.01 * 3
    codes = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    assert dsh_loss(codes, torch.tensor([0, 0]), margin=4.0).item() == pytest.approx(0.53, rel=1e-5)
    # dissimilar pair at D = 4 = margin -> 0, codes at +-1 -> no regulariser
    far = torch.tensor([[1.0, 1.0], [1.0, -1.0]])
    assert dsh_loss(far, torch.tensor([0, 1]), margin=4.0).item() == pytest.approx(0.0, abs=1e-6)


def test_dpsh_loss_hand_value() -> None:
    # theta = 0.5 * <u1, u2> = 0.25 for both ordered pairs; likelihood ln(1 + e^0.25) - 0.25;
    # quantisation: each sample (1 - 0.5)^2 * 2 = 0.5, times eta = 0.1
    codes = torch.tensor([[0.5, 0.5], [0.5, 0.5]])
    expected = math.log(1 + math.exp(0.25)) - 0.25 + 0.1 * 0.5
    assert dpsh_loss(codes, torch.tensor([3, 3]), eta=0.1).item() == pytest.approx(expected, rel=1e-5)


def test_dpn_loss_and_targets() -> None:
    targets = torch.tensor([[1.0, -1.0]])
    # relu(1 - 0.5) = 0.5 and relu(1 + 0.5) = 1.5 -> mean 1.0
    assert dpn_loss(torch.tensor([[0.5, 0.5]]), torch.tensor([0]), targets).item() == pytest.approx(1.0)
    t = dpn_targets(5, 48, seed=3)
    assert t.shape == (5, 48) and set(t.unique().tolist()) == {-1.0, 1.0}
    assert torch.equal(t, dpn_targets(5, 48, seed=3))


def test_quantization_and_bit_balance() -> None:
    assert quantization_loss(torch.tensor([[0.5, -1.0]])).item() == pytest.approx(0.125)
    # bit means [0, 1] -> (0 + 1) / 2
    assert bit_balance_loss(torch.tensor([[1.0, 1.0], [-1.0, 1.0]])).item() == pytest.approx(0.5)


def test_dafh_criterion_combines_parts() -> None:
    torch.manual_seed(0)
    out = HashOutput(codes=torch.randn(6, 8).tanh(), logits=torch.randn(6, 3))
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    crit = DAFHCriterion(gamma=1.5, margin=0.5, lam=1 / 3, beta=2.0)
    torch.manual_seed(1)  # the same random triplets in both calls
    res = crit(out, labels)
    torch.manual_seed(1)
    _, pos, neg, _ = mined_triplet(out.codes, labels, 0.5)
    fa = focal_loss(out.logits, labels, 1.5)
    fp = focal_loss(out.logits[pos], labels, 1.5)
    fn = focal_loss(out.logits[neg], labels[neg], 1.5)
    expected = (fa + fp + fn) / 3 + 2.0 * res.parts["triplet"]
    assert res.total.item() == pytest.approx(expected.item(), rel=1e-5)


def test_saliency_criterion_combines_parts() -> None:
    torch.manual_seed(0)
    out = HashOutput(codes=torch.randn(4, 8).tanh(), logits=torch.randn(4, 2), aux={"global_logits": torch.randn(4, 2)})
    res = SaliencyFusionCriterion(quant_weight=0.5, balance_weight=0.25)(out, torch.tensor([0, 1, 0, 1]))
    p = res.parts
    assert res.total.item() == pytest.approx(p["cls"] + p["global"] + 0.5 * p["quant"] + 0.25 * p["balance"], rel=1e-5)
