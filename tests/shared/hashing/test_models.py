"""Model structure, the alpha > 1 guarantee, saliency crops, and that every method can
overfit a tiny synthetic set (mAP -> 1 on its own training images)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.hashing.models import HashHead, create_model, list_models, resolve_name
from shared.hashing.transform import to_model_input
from shared.learning.evaluation import retrieval_metrics
from shared.learning.training import TrainConfig, fit
from tests.shared.learning.synthetic import synthetic_set

pytestmark = pytest.mark.unit


def test_registry_names_and_aliases() -> None:
    assert list_models() == ["dafh", "dpn", "dpsh", "dsh", "hashnet", "saliency_fusion"]
    assert resolve_name("SF") == "saliency_fusion"
    with pytest.raises(KeyError):
        resolve_name("nope")


def test_dafh_uses_penultimate_mbconv_stage_and_ablation_switches() -> None:
    m = create_model("dafh", backbone="efficientnet_b0", bits=16, num_classes=3, image_size=32)
    # EfficientNet-B0's penultimate MBConv stage (blocks[5]) has 192 channels
    assert m.backbone.penultimate_shape[0] == 192
    x = torch.randn(2, 3, 32, 32)
    out = m(x)
    assert out.codes.shape == (2, 16) and out.logits is not None and out.logits.shape == (2, 3)
    assert out.codes.abs().max() < 1
    plain = create_model("dafh", backbone="efficientnet_b0", bits=16, num_classes=3, image_size=32,
                         attention=False, fusion=False, ptanh=False)
    assert isinstance(plain.cbam, torch.nn.Identity) and plain.hash.activation == "tanh"
    assert plain.linear1.in_features == plain.backbone.num_features
    assert plain(x).codes.shape == (2, 16)


def test_dafh_classifier_reads_linear1_or_the_codes() -> None:
    x = torch.randn(2, 3, 32, 32)
    for where, width in (("linear1", 512), ("codes", 16)):
        m = create_model("dafh", backbone="efficientnet_b0", bits=16, num_classes=3, image_size=32,
                         classifier_input=where).eval()
        assert m.classifier.in_features == width
        features = m.forward_features(x)
        out = m.forward_head(features)
        if where == "codes":  # Algorithm 1: the classifier sees exactly the hash layer's output
            assert torch.allclose(out.logits, m.classifier(out.codes))
    with pytest.raises(ValueError, match="classifier_input must be one of"):
        create_model("dafh", backbone="efficientnet_b0", bits=16, num_classes=3, image_size=32, classifier_input="x")


@pytest.mark.parametrize("backbone", ["resnet18", "vit_tiny_patch16_224"])
def test_dafh_other_backbones(backbone: str) -> None:
    m = create_model("dafh", backbone=backbone, bits=8, num_classes=2, image_size=32)
    assert m(torch.randn(2, 3, 32, 32)).codes.shape == (2, 8)


def test_alpha_stays_above_one_under_pressure() -> None:
    head = HashHead(4, 8, "ptanh")
    opt = torch.optim.Adam(head.parameters(), lr=0.5)
    for _ in range(300):  # push alpha down as hard as possible
        opt.zero_grad()
        head.alpha.backward()
        opt.step()
        assert head.alpha.item() > 1.0
    for p in (-1e4, -50.0, 0.0, 50.0):
        head.alpha_param.data.fill_(p)
        assert head.alpha.item() > 1.0


def test_encode_packs_sign_bits() -> None:
    m = create_model("dsh", backbone="efficientnet_b0", bits=16, num_classes=2, image_size=32)
    x = torch.randn(3, 3, 32, 32)
    codes = m.encode(x)
    m.eval()
    expected = np.packbits((m(x).codes.detach().numpy() > 0).astype(np.uint8), axis=1)
    assert codes.dtype == np.uint8 and codes.shape == (3, 2)
    assert np.array_equal(codes, expected)


def test_saliency_box_follows_the_hot_spot() -> None:
    m = create_model("sf", backbone="efficientnet_b0", bits=8, num_classes=2, image_size=32)
    c = m.global_net.final_shape[0]
    with torch.no_grad():
        m.global_classifier.weight.zero_()
        m.global_classifier.weight[0] = 1.0
    fmap = torch.zeros(1, c, 4, 4)
    fmap[0, :, 0, 0] = 1.0  # all evidence in the top-left cell
    box = m.saliency_boxes(fmap, torch.tensor([[1.0, 0.0]]))[0].tolist()
    assert box[0] == 0 and box[1] == 0 and box[2] <= 16 and box[3] <= 16
    full = m.saliency_boxes(torch.zeros(1, c, 4, 4), torch.tensor([[1.0, 0.0]]))[0].tolist()
    assert full == [0, 0, 32, 32]  # no evidence -> whole image


def test_c2l_pretraining_runs_and_copies_into_local_net() -> None:
    m = create_model("saliency_fusion", backbone="efficientnet_b0", bits=8, num_classes=2, image_size=32)
    data = to_model_input(torch.rand(2, 8, 1, 32, 32).flatten(0, 1)).view(2, 8, 3, 32, 32)
    losses = m.pretrain_c2l(lambda: data, steps=2)
    assert len(losses) == 2 and all(np.isfinite(losses))
    for a, b in zip(m.global_net.state_dict().values(), m.local_net.state_dict().values()):
        assert torch.equal(a, b)


@pytest.mark.parametrize("method", ["dafh", "saliency_fusion", "hashnet", "dsh", "dpsh", "dpn"])
def test_every_method_overfits_a_tiny_set(method: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # The smallest timm CNN keeps this fast; the method (head + loss) is what is under test.
    # One batch holds the whole set, so 30 epochs are 30 optimiser steps. One thread: tiny
    # ops gain nothing from two, and spinning OpenMP threads crawl on a shared machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    data = synthetic_set(num_classes=4, per_class=8, size=32)
    config = TrainConfig(method=method, bits=16, epochs=30, image_size=32, backbone="mobilenetv3_small_050",
                         batch_size=32, lr=3e-3, augment=False, seed=0)
    result = fit(config, data, tmp_path / "m.pt", device="cpu", progress=False)
    codes = result.model.encode(to_model_input(data.images).contiguous(memory_format=torch.channels_last))
    metrics = retrieval_metrics(codes, data.labels.numpy(), codes, data.labels.numpy(), data.class_names,
                                tie_aware=False)
    assert metrics["map"] > 0.95, metrics["map"]
    if method == "dafh":
        assert result.model.hash.alpha.item() > 1.0
