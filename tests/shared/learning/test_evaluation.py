"""Retrieval metrics against hand-worked examples and brute force over tie orderings."""
from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from shared.learning.evaluation import (
    average_precision,
    hamming_distances,
    retrieval_metrics,
    save_report,
    tie_aware_ap,
)

pytestmark = pytest.mark.unit


def test_hamming_distances_on_packed_codes() -> None:
    q = np.array([[0b10110000]], dtype=np.uint8)
    db = np.array([[0b10110000], [0b00000000], [0b01001111]], dtype=np.uint8)
    assert hamming_distances(q, db).tolist() == [[0, 3, 8]]


def test_average_precision_hand_values() -> None:
    rel = np.array([[1, 0, 1, 0], [0, 1, 1, 0]], dtype=bool)
    # row 0: (1/1 + 2/3) / 2 = 5/6 ; row 1: (1/2 + 2/3) / 2 = 7/12
    assert average_precision(rel).tolist() == pytest.approx([5 / 6, 7 / 12])
    # AP@1: row 0 hit -> 1; row 1 no relevant in top 1 -> 0
    assert average_precision(rel, 1).tolist() == pytest.approx([1.0, 0.0])
    # AP@2: row 0 one hit at rank 1 -> 1; row 1 one hit at rank 2 -> (1/2) / 1
    assert average_precision(rel, 2).tolist() == pytest.approx([1.0, 0.5])


def test_tie_aware_ap_hand_value() -> None:
    # distances [0, 1, 1, 2], relevance [1, 0, 1, 0]. The tie {1, 2} has two orders:
    # (rel, not) -> (1 + 2/2)/2 = 1 ; (not, rel) -> (1 + 2/3)/2 = 5/6 ; expectation 11/12.
    dist = np.array([0, 1, 1, 2])
    rel = np.array([1, 0, 1, 0], dtype=bool)
    assert tie_aware_ap(dist, rel) == pytest.approx(11 / 12)
    # database order would say 5/6 (the irrelevant item comes first)
    assert average_precision(rel[None])[0] == pytest.approx(5 / 6)
    # all four tied, 2 relevant: AP@1 = P(first relevant) = 1/2
    assert tie_aware_ap(np.zeros(4), rel, k=1) == pytest.approx(0.5)


def _brute_force(dist: np.ndarray, rel: np.ndarray, k: int | None) -> float:
    """Mean AP@k over every ordering of tied items (each group permuted independently)."""
    groups = [np.flatnonzero(dist == v) for v in np.unique(dist)]
    values = []
    for perms in itertools.product(*[list(itertools.permutations(g)) for g in groups]):
        order = np.concatenate([np.array(p, dtype=int) for p in perms])
        values.append(average_precision(rel[order][None], k)[0])
    return float(np.mean(values))


@pytest.mark.parametrize("seed", range(12))
def test_tie_aware_ap_equals_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 7
    dist = rng.integers(0, 3, n)
    rel = rng.random(n) < 0.5
    for k in (1, 2, 3, 5, None):
        assert tie_aware_ap(dist, rel, k) == pytest.approx(_brute_force(dist, rel, k), abs=1e-12)


def test_retrieval_metrics_small_case(tmp_path: Path) -> None:
    db = np.array([[0b00000000], [0b00000001], [0b11111111], [0b11111110]], dtype=np.uint8)
    db_labels = np.array([0, 0, 1, 1])
    q = np.array([[0b00000011], [0b11111111]], dtype=np.uint8)
    q_labels = np.array([0, 1])
    m = retrieval_metrics(q, q_labels, db, db_labels, ["a", "b"])
    # query 0: distances [2, 1, 6, 5] -> ranking rel [1, 1, 0, 0]; query 1: [8, 7, 0, 1] -> [1, 1, 0, 0]
    assert m["map@1"] == pytest.approx(1.0) and m["map"] == pytest.approx(1.0)
    assert m["precision@10"] == pytest.approx(0.5)  # top-10 of 4 items: 2 of 4 relevant
    assert m["confusion_top1"]["matrix"] == [[1, 0], [0, 1]]
    assert m["tie_aware_map"] == pytest.approx(1.0)
    assert len(m["pr_curve"]["precision"]) == 9 and m["pr_curve"]["recall"][-1] == pytest.approx(1.0)
    save_report(m, tmp_path / "out.json", tmp_path / "plots")
    assert json.loads((tmp_path / "out.json").read_text())["map@10"] == pytest.approx(1.0)
    assert (tmp_path / "out.md").read_text().startswith("| metric")
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == ["confusion_top1.png", "per_class_ap.png",
                                                                      "pr_curve.png"]
