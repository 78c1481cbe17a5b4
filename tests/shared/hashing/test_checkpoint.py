"""A checkpoint is one self-describing file; loading it offline reproduces the codes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from shared.hashing.checkpoint import load_checkpoint, save_checkpoint, update_metrics
from shared.hashing.models import create_model
from shared.hashing.transform import DEFAULT_NORMALIZATION
from tests.shared.learning.synthetic import synthetic_set

pytestmark = pytest.mark.unit


def test_round_trip_gives_identical_codes(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("dafh", backbone="efficientnet_b0", bits=32, num_classes=4, image_size=32, attention=True)
    model.train()
    model(torch.randn(8, 3, 32, 32))  # move BatchNorm running stats off their defaults
    path = tmp_path / "m.pt"
    version = save_checkpoint(path, model, ["a", "b", "c", "d"], DEFAULT_NORMALIZATION, {"epochs": 1})
    data = synthetic_set(num_classes=4, per_class=3, size=32)

    first = load_checkpoint(path)
    assert first.version == version and len(version) == 64
    assert first.class_names == ["a", "b", "c", "d"] and first.image_size == 32
    assert first.meta["method"] == "dafh" and first.meta["bits"] == 32
    codes = first.encode(data.images)
    assert codes.shape == (12, 4) and codes.dtype == np.uint8
    model.eval().to(memory_format=torch.channels_last)  # the saved model, not a reload: same codes
    assert np.array_equal(codes, model.encode(torch.cat(list(first._inputs(data.images, 12)))))

    update_metrics(path, {"map@10": 0.5})  # metrics do not change the version
    second = load_checkpoint(path)
    assert second.version == version and second.meta["metrics"]["map@10"] == 0.5
    assert np.array_equal(codes, second.encode(data.images))
    arrays = [img[0].numpy().astype(np.float32) * 3.0 for img in data.images]  # any dtype: min-max scaled
    assert np.array_equal(codes, second.encode_arrays(arrays))


def test_tampered_weights_are_rejected(tmp_path: Path) -> None:
    model = create_model("dpn", backbone="efficientnet_b0", bits=16, num_classes=2, image_size=32)
    path = tmp_path / "m.pt"
    save_checkpoint(path, model, ["a", "b"], DEFAULT_NORMALIZATION, {})
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["hash.linear.bias"] += 1.0
    torch.save(payload, path)
    with pytest.raises(ValueError, match="version"):
        load_checkpoint(path)


def test_encode_and_predict_uses_the_models_own_classifier(tmp_path: Path) -> None:
    data = synthetic_set(num_classes=4, per_class=3, size=32)
    for method, has_classifier in (("dafh", True), ("dsh", False)):
        torch.manual_seed(0)
        model = create_model(method, backbone="efficientnet_b0", bits=16, num_classes=4, image_size=32)
        path = tmp_path / f"{method}.pt"
        save_checkpoint(path, model, ["a", "b", "c", "d"], DEFAULT_NORMALIZATION, {"epochs": 1})
        loaded = load_checkpoint(path)
        codes, predicted = loaded.encode_and_predict(data.images, batch_size=5)  # batches of 5, 5, 2
        batch = torch.cat(list(loaded._inputs(data.images, 12)))
        assert np.array_equal(codes, loaded.model.encode(batch))  # the model's own binarisation
        if not has_classifier:
            assert predicted is None
            continue
        assert predicted is not None and predicted.shape == (12,)
        with torch.no_grad():
            expected = loaded.model(batch).logits.argmax(1).numpy()
        assert np.array_equal(predicted, expected)
