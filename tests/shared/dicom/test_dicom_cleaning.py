"""DAFH 3.1 cleaning: statistics per slice, Tukey fences over a series, absolute rules."""

from __future__ import annotations

import numpy as np
import pytest

from shared.dicom.cleaning import (
    CleaningThresholds,
    SliceStats,
    clean_series,
    flag_outliers,
    slice_stats,
)

pytestmark = pytest.mark.unit


def textured(mean: float, seed: int, spread: float = 0.1) -> np.ndarray:
    """A 32x32 slice with the given mean and a variance well above the blank threshold."""
    noise = np.random.default_rng(seed).uniform(-spread, spread, (32, 32))
    return (mean + noise).astype(np.float32)


def stats(mean: float, variance: float = 0.01, near_one: float = 0.0) -> SliceStats:
    return SliceStats(
        mean=mean, variance=variance, q1=0.0, median=0.0, q3=0.0, near_zero=0.0, near_one=near_one
    )


def test_slice_stats_by_hand() -> None:
    frame = np.array([[0.0, 0.25], [0.5, 1.0]], dtype=np.float32)
    result = slice_stats(frame)
    assert result.mean == pytest.approx(0.4375)
    # squared deviations 0.19140625 + 0.03515625 + 0.00390625 + 0.31640625 = 0.546875, / 4
    assert result.variance == pytest.approx(0.13671875)
    # numpy linear quartiles: position 0.75 -> 0.1875, 1.5 -> 0.375, 2.25 -> 0.625
    assert (result.q1, result.median, result.q3) == pytest.approx((0.1875, 0.375, 0.625))
    assert result.near_zero == pytest.approx(0.25)
    assert result.near_one == pytest.approx(0.25)


def test_iqr_flags_high_and_low_means_with_readable_reasons() -> None:
    series = [stats(m) for m in (0.40, 0.42, 0.44, 0.46, 0.48)] + [stats(0.93), stats(0.05)]
    # numpy linear quartiles of the 7 means: Q1 0.41, Q3 0.47, IQR 0.06 -> fences 0.32, 0.56
    verdicts = flag_outliers(series)
    assert [v.excluded for v in verdicts] == [False] * 5 + [True, True]
    assert verdicts[5].reasons == ("iqr: mean 0.93 above Q3+1.5*IQR=0.56",)
    assert verdicts[6].reasons == ("iqr: mean 0.05 below Q1-1.5*IQR=0.32",)
    assert [v.index for v in verdicts] == list(range(7))


def test_iqr_k_is_a_parameter() -> None:
    series = [stats(m) for m in (0.40, 0.42, 0.44, 0.46, 0.48, 0.60)]
    # Q1 0.425, Q3 0.475, IQR 0.05: upper fence 0.55 for k=1.5, 0.625 for k=3
    assert flag_outliers(series)[5].excluded
    assert not flag_outliers(series, CleaningThresholds(iqr_k=3.0))[5].excluded


def test_iqr_tests_variance_too() -> None:
    series = [stats(0.5, variance=v) for v in (0.010, 0.011, 0.012, 0.013, 0.014, 0.2)]
    assert flag_outliers(series)[5].reasons[0].startswith("iqr: variance 0.2 above Q3+1.5*IQR=")


def test_iqr_skipped_for_short_series() -> None:
    series = [stats(0.1), stats(0.5), stats(0.9)]
    assert not any(v.excluded for v in flag_outliers(series))


def test_blank_and_saturated_slices_are_flagged_but_kept() -> None:
    frames = [textured(0.5, seed) for seed in range(6)]
    frames.append(np.zeros((32, 32), dtype=np.float32))
    saturated = textured(0.5, 99)
    saturated[:24] = 1.0  # 75% white
    frames.append(saturated)
    verdicts = clean_series(frames, CleaningThresholds(iqr_statistics=()))
    assert len(verdicts) == len(frames)
    assert [v.excluded for v in verdicts] == [False] * 6 + [True, True]
    assert verdicts[6].reasons == ("blank: variance 0 < 0.0001",)
    assert verdicts[7].reasons == ("saturated: 75% of pixels >= 0.99 > 50%",)


def test_a_slice_can_carry_several_reasons() -> None:
    frames = [textured(0.5, seed) for seed in range(6)] + [np.ones((32, 32), dtype=np.float32)]
    reasons = clean_series(frames)[6].reasons
    assert reasons[0] == "blank: variance 0 < 0.0001"
    assert reasons[1] == "saturated: 100% of pixels >= 0.99 > 50%"
    assert any(r.startswith("iqr: mean 1 above Q3+1.5*IQR=") for r in reasons)


def test_uniform_series_flags_nothing() -> None:
    assert not any(v.excluded for v in clean_series([textured(0.5, 1)] * 8))


@pytest.mark.unit
@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 7, 64 * 64, 513])
def test_quartiles_equal_numpy_percentile_bit_for_bit(size: int) -> None:
    from shared.dicom.cleaning import _quartiles  # noqa: PLC0415 - the private fast path under test

    rng = np.random.default_rng(size)
    frame = rng.random(size).astype(np.float32)
    frame[rng.random(size) < 0.3] = 0.0  # ties, as in padded or blank regions
    expected = np.percentile(frame.astype(np.float64), [25.0, 50.0, 75.0])
    assert _quartiles(frame) == tuple(float(v) for v in expected)
