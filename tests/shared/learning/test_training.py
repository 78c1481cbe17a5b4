"""The training loop's learning-rate schedule, against hand values."""
from __future__ import annotations

import math
from pathlib import Path

import pytest

from shared.learning.training import TrainConfig, fit, learning_rate
from tests.shared.learning.synthetic import synthetic_set

pytestmark = pytest.mark.unit


def test_cosine_schedule_hand_values() -> None:
    config = TrainConfig(method="dsh", bits=16, epochs=1, image_size=32, lr=1e-3, lr_schedule="cosine")
    # lr/2 * (1 + cos(pi t / T)) with T = 100: full rate, half at the middle, lr/2 (1 + cos(3pi/4)), 0 at the end
    assert learning_rate(config, 0, 100) == pytest.approx(1e-3)
    assert learning_rate(config, 50, 100) == pytest.approx(5e-4)
    assert learning_rate(config, 75, 100) == pytest.approx(5e-4 * (1 - math.sqrt(0.5)))
    assert learning_rate(config, 100, 100) == pytest.approx(0.0, abs=1e-12)
    constant = TrainConfig(method="dsh", bits=16, epochs=1, image_size=32, lr=1e-3)
    assert {learning_rate(constant, t, 100) for t in (0, 50, 100)} == {1e-3}


def test_unknown_schedule_is_refused_before_training(tmp_path: Path) -> None:
    config = TrainConfig(method="dsh", bits=16, epochs=1, image_size=32, backbone="mobilenetv3_small_050",
                         lr_schedule="step")
    with pytest.raises(ValueError, match="lr_schedule must be one of"):
        fit(config, synthetic_set(num_classes=2, per_class=4, size=32), tmp_path / "m.pt", device="cpu",
            progress=False)
    assert not (tmp_path / "m.pt").exists()
