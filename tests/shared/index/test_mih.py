"""The multi-index hash against a brute-force model: the same top k as a flat scan, ids,
distances and tie order (distance, then id), for random and clustered codes, every k, with
hidden ids and several segments; and the paths a search can take (exact look-ups, MIH rounds,
the fallback to the scan) each return exactly that."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.index import IndexWriter, Searcher
from shared.index.mih import MultiIndexHash
from shared.storage.objectstore import LocalObjectStore
from tests.shared.index.test_index_search import Model, brute_force

pytestmark = pytest.mark.unit

WIDTHS = [1, 2, 3, 4, 5, 8, 9]  # bytes: 8..72 bits, incl. odd byte counts and two-word codes


def make_codes(rng: np.random.Generator, n: int, nbytes: int, kind: str) -> np.ndarray:
    """``random``: uniform; ``clustered``: a few centres with sparse bit flips, many exact
    duplicates (what trained hash codes look like); ``ties``: a dozen distinct codes."""
    if kind == "random":
        return rng.integers(0, 256, (n, nbytes), dtype=np.uint8)
    centres = rng.integers(0, 256, (3 if kind == "clustered" else 12, nbytes), dtype=np.uint8)
    codes = centres[rng.integers(0, len(centres), n)]
    if kind == "clustered":
        flips = np.packbits(rng.random((n, nbytes * 8)) < rng.choice([0.0, 0.02, 0.1]), axis=1)
        codes = codes ^ flips
    return codes


def flat_top_k(ids: np.ndarray, codes: np.ndarray, dead: np.ndarray, query: np.ndarray,
               k: int) -> tuple[list[int], list[int]]:
    """(distances, ids) of the exact top k of the live codes by (distance, id)."""
    live = np.ones(len(ids), dtype=bool)
    live[dead] = False
    distances = np.bitwise_count(codes[live] ^ query).sum(axis=1)
    order = np.lexsort((ids[live], distances))[:k]
    return distances[order].tolist(), ids[live][order].tolist()


@settings(max_examples=100, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    n=st.integers(0, 400),
    nbytes=st.sampled_from(WIDTHS),
    kind=st.sampled_from(["random", "clustered", "ties"]),
    substring_bits=st.sampled_from([None, 8, 16]),
    hidden_fraction=st.sampled_from([0.0, 0.1, 0.7, 1.0]),
)
def test_multi_index_hash_equals_the_flat_scan(seed: int, n: int, nbytes: int, kind: str,
                                               substring_bits: int | None,
                                               hidden_fraction: float) -> None:
    rng = np.random.default_rng(seed)
    if substring_bits == 16 and nbytes < 2:
        substring_bits = 8
    codes = make_codes(rng, n, nbytes, kind)
    ids = rng.permutation(3 * n + 1)[:n].astype(np.int64)  # unique, not in position order
    index = MultiIndexHash(ids, codes, substring_bits)
    dead = rng.choice(n, int(n * hidden_fraction), replace=False) if n else np.empty(0, int)
    live = index.liveness(dead.astype(np.int64))
    assert live.live == n - len(dead)
    queries = np.concatenate([make_codes(rng, 4, nbytes, kind), codes[:2]])
    for query in queries:
        for k in (1, 2, 10, n - len(dead), n + 5):
            if k < 1:
                continue
            stats: dict[str, int] = {}
            found = index.search(query, k, live, stats=stats)
            assert found is not None and stats["queries"] == 1
            distances, got = found
            assert (distances.tolist(), got.tolist()) == flat_top_k(ids, codes, dead, query, k)


def test_each_search_path_is_taken_and_exact() -> None:
    """Dense clusters are answered by exact look-ups, spread codes by MIH rounds, and a budget
    the search cannot meet makes it return None (the caller's cue to scan)."""
    rng = np.random.default_rng(7)
    ids = np.arange(20_000, dtype=np.int64)
    empty = np.empty(0, dtype=np.int64)
    # a class code held by 5,000 slices, every code within 2 bits of it, the rest spread
    centre = rng.integers(0, 256, 8, dtype=np.uint8)
    bits = np.unpackbits(centre)
    near = [np.packbits(np.where(np.isin(np.arange(64), flip), 1 - bits, bits))
            for flip in [[i] for i in range(64)] + [[i, j] for i in range(64)
                                                    for j in range(i + 1, 64)]]
    dense = np.concatenate([np.tile(centre, (5000, 1)), np.stack(near),
                            make_codes(rng, len(ids) - 5000 - len(near), 8, "random")])
    spread = make_codes(rng, len(ids), 4, "random")
    for codes, path in ((dense, "lookups"), (spread, "candidates")):
        index = MultiIndexHash(ids, codes)
        live = index.liveness(empty)
        for query in (codes[:5] if path == "candidates" else np.stack([centre, *near[:4]])):
            stats: dict[str, int] = {}
            found = index.search(query, 10, live, stats=stats)
            assert found is not None and stats.get(path, 0) > 0
            assert (found[0].tolist(), found[1].tolist()) == flat_top_k(ids, codes, empty,
                                                                        query, 10)
            stats = {}
            assert index.search(query, 10, live, budget_ns=1.0, stats=stats) is None
            assert stats["abandoned"] == 1


def test_tables_follow_the_distinct_codes() -> None:
    """16-bit substrings once there are enough distinct codes, 8-bit below; members of one
    distinct code are stored once with their ids in ascending order."""
    rng = np.random.default_rng(3)
    few = MultiIndexHash(np.arange(1000), make_codes(rng, 1000, 8, "ties"))
    assert few.distinct <= 12 and few.widths == [8] * 8
    many = MultiIndexHash(np.arange(50_000), make_codes(rng, 50_000, 5, "random"))
    assert many.widths == [16, 16, 8] and many.distinct > 40_000
    for start, stop in zip(few.member_offsets[:-1], few.member_offsets[1:]):
        assert np.all(np.diff(few.member_ids[start:stop]) > 0)
    assert few.memory_bytes() < many.memory_bytes()


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), bits=st.sampled_from([8, 24, 32, 64, 72]),
       kind=st.sampled_from(["random", "clustered", "ties"]))
def test_searcher_paths_equal_brute_force_across_segments(tmp_path_factory: pytest.TempPathFactory,
                                                          seed: int, bits: int, kind: str) -> None:
    """Base shards + deltas that re-add and remove ids: ``mih``, ``auto`` (which on sets this
    small scans, the fallback path) and ``flat`` all return the brute-force top k."""
    rng = np.random.default_rng(seed)
    nbytes = bits // 8
    store = LocalObjectStore(Path(tmp_path_factory.mktemp("index")) / "objects")
    writer = IndexWriter(store, "m1", bits, shards=3)
    model: Model = {}
    ids = np.arange(int(rng.integers(50, 400)), dtype=np.int64)
    codes = make_codes(rng, len(ids), nbytes, kind)
    writer.add(ids, codes)
    model.update(zip(ids.tolist(), codes))
    writer.compact()
    for _ in range(2):  # deltas: removals, re-added ids with new codes, fresh ids
        gone = rng.choice(ids, 20, replace=False)
        writer.remove(gone)
        for i in gone.tolist():
            model.pop(i, None)
        changed = np.concatenate([rng.choice(ids, 10, replace=False),
                                  np.arange(1000, 1000 + int(rng.integers(0, 30)))])
        new_codes = make_codes(rng, len(changed), nbytes, kind)
        writer.add(changed, new_codes)
        model.update(zip(changed.tolist(), new_codes))
        writer.flush()
    searcher = Searcher.open(store, "m1")
    assert searcher is not None and len(searcher) == len(model)
    queries = np.concatenate([make_codes(rng, 5, nbytes, kind), codes[:3]])
    for k in (1, 3, 10, len(model), len(model) + 7):
        expected = brute_force(model, queries, k)
        for strategy in ("mih", "auto", "flat"):
            stats: dict[str, int] = {}
            assert searcher.search(queries, k, strategy=strategy, stats=stats) == expected
            if strategy == "mih":
                assert stats["queries"] == len(queries) and "scanned" not in stats
            else:
                assert stats["scanned"] == len(queries)


def test_a_refresh_reuses_the_hash_and_sees_new_deletions(tmp_path: Path) -> None:
    rng = np.random.default_rng(11)
    store = LocalObjectStore(tmp_path / "objects")
    writer = IndexWriter(store, "m1", 32, shards=4)
    codes = make_codes(rng, 5000, 4, "clustered")
    writer.add(np.arange(5000), codes)
    writer.compact()
    first = Searcher.open(store, "m1")
    assert first is not None
    writer.remove(np.arange(0, 5000, 2))
    writer.flush()
    second = Searcher.open(store, "m1", previous=first)
    assert second is not None and second.multi_index is first.multi_index
    model = {i: codes[i] for i in range(1, 5000, 2)}
    queries = codes[:6]
    for k in (1, 10, 3000):
        assert second.search(queries, k, strategy="mih") == brute_force(model, queries, k)
    memory = second.memory_bytes()
    assert memory["segments"] == 5000 * (4 + 8) and memory["mih"] > 0


def test_unknown_strategy_is_refused(tmp_path: Path) -> None:
    store = LocalObjectStore(tmp_path / "objects")
    writer = IndexWriter(store, "m1", 8)
    writer.add(np.array([1]), np.array([[1]], dtype=np.uint8))
    writer.compact()
    searcher = Searcher.open(store, "m1")
    assert searcher is not None
    with pytest.raises(ValueError, match="strategy must be one of auto, mih, flat"):
        searcher.search(np.zeros((1, 1), dtype=np.uint8), 1, strategy="fast")
