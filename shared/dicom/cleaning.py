"""Slice cleaning after DAFH section 3.1: per-slice statistics, an IQR rule over a series,
and absolute rules for blank and saturated slices.

The paper computes "mean, variance, and quartiles" of every slice and uses the interquartile
range (IQR) to "identify and exclude outliers". Here a statistic of one slice is an outlier
when it lies below ``Q1 - k*IQR`` or above ``Q3 + k*IQR`` of that statistic over the series'
slices (Tukey's fences). Two absolute rules catch what a relative rule misses when a whole
series is bad: blank slices (almost no variance) and saturated slices (mostly white).

Flagged slices are kept and marked excluded with human-readable reasons, never dropped: the
catalog keeps the record of why, an operator can review it, and changing a threshold later
needs no re-decoding. Statistics are computed per slice as frames stream by
(:func:`slice_stats`), and the series rule runs on the statistics alone
(:func:`flag_outliers`), so the caller can gather a series across instances and tasks.

Inputs are frames from :mod:`shared.dicom.pixels`: float arrays in [0, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = [
    "CleaningThresholds",
    "SliceStats",
    "SliceVerdict",
    "Statistic",
    "clean_series",
    "flag_outliers",
    "slice_stats",
]

Statistic = Literal["mean", "variance", "q1", "median", "q3", "near_zero", "near_one"]
"""Names of :class:`SliceStats` fields the IQR rule may test."""


@dataclass(frozen=True)
class CleaningThresholds:
    """Every knob of the cleaning rules, with the defaults used when none are given."""

    iqr_k: float = 1.5
    """Fence multiplier k: 1.5 is Tukey's classic "outlier" fence, as in the paper."""
    iqr_statistics: tuple[Statistic, ...] = ("mean", "variance")
    """Statistics the IQR rule tests; mean and variance are the ones the paper names."""
    min_series_slices: int = 5
    """Below this many slices the IQR rule is skipped: quartiles of 2-4 values say nothing."""
    blank_variance: float = 1e-4
    """A slice whose variance is below this is blank (std < 0.01 of the full scale)."""
    near_zero: float = 0.01
    """A pixel at or below this value counts as near zero (black)."""
    near_one: float = 0.99
    """A pixel at or above this value counts as near one (white)."""
    saturated_fraction: float = 0.5
    """A slice with more than this fraction of near-one pixels is saturated: windowed CT shows
    bone and contrast as white, but never half the slice."""


@dataclass(frozen=True)
class SliceStats:
    """Statistics of one slice; plain floats so they serialise straight into the catalog."""

    mean: float
    variance: float
    q1: float
    median: float
    q3: float
    near_zero: float
    """Fraction of pixels <= ``CleaningThresholds.near_zero``."""
    near_one: float
    """Fraction of pixels >= ``CleaningThresholds.near_one``."""


@dataclass(frozen=True)
class SliceVerdict:
    """The cleaning outcome for one slice, in the order the slices were given."""

    index: int
    stats: SliceStats
    reasons: tuple[str, ...]
    """Why the slice is excluded, e.g. ``"blank: variance 0 < 0.0001"``; empty if kept."""

    @property
    def excluded(self) -> bool:
        """True when any rule fired; the slice stays stored, marked excluded."""
        return bool(self.reasons)


_DEFAULT_THRESHOLDS = CleaningThresholds()


def slice_stats(
    frame: np.ndarray, thresholds: CleaningThresholds = _DEFAULT_THRESHOLDS
) -> SliceStats:
    """Mean, variance, quartiles and near-black/near-white fractions of one frame.

    Quartiles use numpy's default linear interpolation. Computed in float64 so that a
    variance near the blank threshold is not lost to float32 rounding.
    """
    flat = np.asarray(frame).ravel()
    if flat.size == 0:
        raise ValueError("cannot compute statistics of an empty frame")
    values = flat.astype(np.float64)
    q1, median, q3 = _quartiles(flat)
    size = values.size
    return SliceStats(
        mean=float(values.mean()),
        variance=float(values.var()),
        q1=q1,
        median=median,
        q3=q3,
        near_zero=np.count_nonzero(values <= thresholds.near_zero) / size,
        near_one=np.count_nonzero(values >= thresholds.near_one) / size,
    )


def _quartiles(flat: np.ndarray) -> tuple[float, float, float]:
    """numpy's default (linear) 25/50/75th percentiles, selecting in the frame's own dtype.

    Selecting order statistics in float32 picks the same elements as in float64 (the cast is
    exact and monotone) while moving half the bytes, and one partition serves all three
    quartiles; the interpolation then runs in float64 exactly like ``np.percentile``'s
    ``_lerp``, so the result is bit-identical (tests/dicom checks it against np.percentile).
    """
    n = flat.size
    virtual = np.clip((n - 1) * np.array([0.25, 0.5, 0.75]), 0, n - 1)
    lower = np.floor(virtual).astype(np.intp)
    upper = np.minimum(lower + 1, n - 1)
    picked = np.partition(flat, np.unique(np.concatenate([lower, upper])))
    a = picked[lower].astype(np.float64)
    b = picked[upper].astype(np.float64)
    t = virtual - lower
    diff = b - a
    out = a + diff * t
    np.subtract(b, diff * (1 - t), out=out, where=t >= 0.5)
    return float(out[0]), float(out[1]), float(out[2])


def flag_outliers(
    stats: Sequence[SliceStats], thresholds: CleaningThresholds = _DEFAULT_THRESHOLDS
) -> list[SliceVerdict]:
    """Apply the absolute rules to each slice and the IQR rule across the series."""
    fences = (
        {
            name: _fences([getattr(s, name) for s in stats], thresholds.iqr_k)
            for name in thresholds.iqr_statistics
        }
        if len(stats) >= thresholds.min_series_slices
        else {}
    )
    verdicts = []
    for index, slice_ in enumerate(stats):
        reasons = _absolute_reasons(slice_, thresholds)
        for name, (low, high) in fences.items():
            value = getattr(slice_, name)
            if value < low:
                reasons.append(
                    f"iqr: {name} {value:.3g} below Q1-{thresholds.iqr_k:g}*IQR={low:.3g}"
                )
            elif value > high:
                reasons.append(
                    f"iqr: {name} {value:.3g} above Q3+{thresholds.iqr_k:g}*IQR={high:.3g}"
                )
        verdicts.append(SliceVerdict(index=index, stats=slice_, reasons=tuple(reasons)))
    return verdicts


def clean_series(
    frames: Sequence[np.ndarray], thresholds: CleaningThresholds = _DEFAULT_THRESHOLDS
) -> list[SliceVerdict]:
    """:func:`slice_stats` of every frame, then :func:`flag_outliers` over them."""
    return flag_outliers([slice_stats(frame, thresholds) for frame in frames], thresholds)


def _fences(values: Sequence[float], k: float) -> tuple[float, float]:
    """Tukey's fences ``(Q1 - k*IQR, Q3 + k*IQR)`` of one statistic over the series."""
    q1, q3 = np.percentile(np.asarray(values, dtype=np.float64), [25.0, 75.0])
    iqr = q3 - q1
    return float(q1 - k * iqr), float(q3 + k * iqr)


def _absolute_reasons(stats: SliceStats, thresholds: CleaningThresholds) -> list[str]:
    reasons = []
    if stats.variance < thresholds.blank_variance:
        reasons.append(f"blank: variance {stats.variance:.3g} < {thresholds.blank_variance:g}")
    if stats.near_one > thresholds.saturated_fraction:
        reasons.append(
            f"saturated: {stats.near_one:.0%} of pixels >= {thresholds.near_one:g}"
            f" > {thresholds.saturated_fraction:.0%}"
        )
    return reasons
