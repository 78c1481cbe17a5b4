"""The index against a brute-force model: exact top-k with (distance, id) order, through every
way a generation can come about, and readers that survive writers."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np
import pytest

from shared.index import (
    ConcurrentWriterError,
    IndexWriter,
    LiveSearcher,
    Searcher,
    latest_generation,
    list_model_versions,
)
from shared.storage.objectstore import InvalidKey, LocalObjectStore, ObjectNotFound

pytestmark = pytest.mark.unit

Model = dict[int, np.ndarray]


def brute_force(model: Model, queries: np.ndarray, k: int) -> list[list[tuple[int, int]]]:
    """Popcount of XOR over every live code, sorted by (distance, id)."""
    if not model:
        return [[] for _ in queries]
    ids = np.array(sorted(model), dtype=np.int64)
    codes = np.stack([model[i] for i in ids.tolist()])
    distances = np.bitwise_count(queries[:, None, :] ^ codes[None, :, :]).sum(axis=2)
    results = []
    for row in distances:
        order = np.lexsort((ids, row))[:k]
        results.append([(int(ids[i]), int(row[i])) for i in order])
    return results


def tie_heavy_codes(rng: np.random.Generator, n: int, nbytes: int) -> np.ndarray:
    """Codes drawn from a few distinct values, so equal distances are everywhere."""
    pool = rng.integers(0, 256, size=(12, nbytes), dtype=np.uint8)
    return pool[rng.integers(0, len(pool), size=n)]


@pytest.fixture
def store(tmp_path: Path) -> LocalObjectStore:
    return LocalObjectStore(tmp_path / "objects")


def check_exact(searcher: Searcher, model: Model, queries: np.ndarray) -> None:
    assert len(searcher) == len(model)
    for k in (1, 7, 40, len(model) + 5):
        assert searcher.search(queries, k) == brute_force(model, queries, k)


@pytest.mark.parametrize("bits", [16, 64])
def test_results_equal_brute_force_across_flush_compact_remove_readd(
    store: LocalObjectStore, bits: int
) -> None:
    rng = np.random.default_rng(bits)
    nbytes = bits // 8
    writer = IndexWriter(store, "m1", bits, shards=3)
    model: Model = {}
    next_id = 0
    for step in range(14):
        # new ids, re-added ids (new code), removed ids, and an add + remove of the same id
        fresh = np.arange(next_id, next_id + int(rng.integers(20, 120)), dtype=np.int64)
        next_id += len(fresh)
        codes = tie_heavy_codes(rng, len(fresh), nbytes)
        writer.add(fresh, codes)
        model.update(zip(fresh.tolist(), codes))
        if model:
            known = np.array(sorted(model), dtype=np.int64)
            readd = rng.choice(known, size=min(15, len(known)), replace=False)
            new_codes = tie_heavy_codes(rng, len(readd), nbytes)
            writer.add(readd, new_codes)
            model.update(zip(readd.tolist(), new_codes))
            gone = rng.choice(known, size=min(10, len(known)), replace=False)
            writer.remove(gone)
            for i in gone.tolist():
                model.pop(i, None)
            back = gone[:3]
            back_codes = tie_heavy_codes(rng, len(back), nbytes)
            writer.add(back, back_codes)
            model.update(zip(back.tolist(), back_codes))
        writer.remove(np.array([10**9], dtype=np.int64))  # removing an unknown id is harmless
        generation = writer.compact() if step % 5 == 4 else writer.flush()
        assert generation == writer.generation == step + 1
        searcher = Searcher.open(store, "m1")
        assert searcher is not None and searcher.generation == generation
        queries = np.concatenate([tie_heavy_codes(rng, 6, nbytes),
                                  rng.integers(0, 256, (6, nbytes), dtype=np.uint8)])
        check_exact(searcher, model, queries)
    some = np.array(sorted(model)[:5], dtype=np.int64)
    assert np.array_equal(searcher.codes_of(some), np.stack([model[i] for i in some.tolist()]))
    with pytest.raises(KeyError):
        searcher.codes_of([10**9])


def test_duplicate_ids_in_one_add_keep_the_last_code(store: LocalObjectStore) -> None:
    writer = IndexWriter(store, "m1", 8)
    writer.add(np.array([5, 5, 6]), np.array([[1], [255], [0]], dtype=np.uint8))
    writer.flush()
    searcher = Searcher.open(store, "m1")
    assert searcher is not None and len(searcher) == 2
    assert searcher.search(np.array([[255]], dtype=np.uint8), 5) == [[(5, 0), (6, 8)]]


def test_format_is_what_the_docstring_says(store: LocalObjectStore) -> None:
    writer = IndexWriter(store, "dafh-64.v1", 64, shards=4)
    ids = np.arange(0, 200, 3, dtype=np.int64)
    writer.add(ids, np.random.default_rng(0).integers(0, 256, (len(ids), 8), dtype=np.uint8))
    assert writer.compact() == 1
    writer.remove(ids[:2])
    assert writer.flush() == 2
    manifest = json.loads(store.get("index/dafh-64.v1/manifests/0000000002.json"))
    assert manifest["format"] == 1 and manifest["bits"] == 64 and manifest["generation"] == 2
    assert manifest["shard_count"] == 4 and manifest["created_at"].endswith("+00:00")
    assert [s["key"] for s in manifest["shards"]] == [
        f"index/dafh-64.v1/gen-1/shard-{k}.faissidx" for k in range(4)
    ]
    assert sum(s["count"] for s in manifest["shards"]) == len(ids)
    assert manifest["deltas"] == [
        {"key": "index/dafh-64.v1/delta/0000000002.npz", "adds": 0, "removes": 2}
    ]
    for k, shard in enumerate(manifest["shards"]):
        index = faiss.deserialize_index_binary(np.frombuffer(store.get(shard["key"]), np.uint8))
        assert isinstance(index, faiss.IndexBinaryIDMap) and index.ntotal == shard["count"]
        stored_ids = faiss.vector_to_array(index.id_map)
        assert np.all(stored_ids % 4 == k) and np.all(np.diff(stored_ids) > 0)


def test_old_reader_keeps_working_after_newer_generations_and_gc(store: LocalObjectStore) -> None:
    rng = np.random.default_rng(1)
    writer = IndexWriter(store, "m1", 32, shards=2)
    codes = rng.integers(0, 256, (300, 4), dtype=np.uint8)
    writer.add(np.arange(300), codes)
    writer.compact()
    old_model = dict(zip(range(300), codes))
    old = Searcher.open(store, "m1")
    assert old is not None
    old_keys = old.manifest.data_keys
    for round_ in range(3):
        writer.remove(np.arange(round_ * 50, round_ * 50 + 50))
        writer.compact()
    assert not any(store.exists(key) for key in old_keys)  # garbage-collected
    assert latest_generation(store, "m1") == 4
    assert [k for k in store.list("index/m1/manifests/")] == [
        "index/m1/manifests/0000000003.json", "index/m1/manifests/0000000004.json"
    ]
    queries = rng.integers(0, 256, (5, 4), dtype=np.uint8)
    check_exact(old, old_model, queries)
    with pytest.raises(ObjectNotFound):
        Searcher.open(store, "m1", generation=1)


def test_writer_resumes_from_the_latest_manifest(store: LocalObjectStore) -> None:
    rng = np.random.default_rng(2)
    first = IndexWriter(store, "m1", 16, shards=2)
    codes = tie_heavy_codes(rng, 100, 2)
    first.add(np.arange(100), codes)
    first.compact()
    first.remove(np.arange(10))
    first.flush()
    model = dict(zip(range(10, 100), codes[10:]))

    resumed = IndexWriter(store, "m1", 16, shards=5)
    assert resumed.generation == 2
    more = tie_heavy_codes(rng, 30, 2)
    resumed.add(np.arange(90, 120), more)
    model.update(zip(range(90, 120), more))
    assert resumed.flush() == 3
    searcher = Searcher.open(store, "m1")
    assert searcher is not None
    check_exact(searcher, model, tie_heavy_codes(rng, 8, 2))
    assert resumed.compact() == 4  # re-shards to the new shard count
    searcher = Searcher.open(store, "m1")
    assert searcher is not None and searcher.manifest.shard_count == 5
    check_exact(searcher, model, tie_heavy_codes(rng, 8, 2))
    assert resumed.compact() is None and resumed.flush() is None  # nothing to do
    with pytest.raises(ValueError, match="16-bit"):
        IndexWriter(store, "m1", 32)


def test_a_second_writer_is_refused(store: LocalObjectStore) -> None:
    one, two = IndexWriter(store, "m1", 8), IndexWriter(store, "m1", 8)
    one.add(np.array([1]), np.array([[1]], dtype=np.uint8))
    one.flush()
    two.add(np.array([2]), np.array([[2]], dtype=np.uint8))
    with pytest.raises(ConcurrentWriterError):
        two.flush()


def test_no_index_yet_and_model_versions(store: LocalObjectStore) -> None:
    assert Searcher.open(store, "m1") is None
    assert latest_generation(store, "m1") is None
    live = LiveSearcher(store, "m1")
    assert live.generation is None and live.size == 0 and live.refresh() is False
    assert live.search(np.zeros((2, 1), dtype=np.uint8), 3) == [[], []]
    for version in ("m2", "m1"):
        writer = IndexWriter(store, version, 8)
        writer.add(np.array([1, 2]), np.array([[1], [2]], dtype=np.uint8))
        writer.flush()
    assert list_model_versions(store) == ["m1", "m2"]
    assert live.refresh() is True and live.generation == 1 and live.size == 2
    assert live.search(np.array([[3]], dtype=np.uint8), 1) == [[(1, 1)]]


@pytest.mark.parametrize("bad", ["", "a/b", "..", "-x", "m v", "x/../y"])
def test_model_version_must_be_one_key_segment(store: LocalObjectStore, bad: str) -> None:
    with pytest.raises(InvalidKey, match="model version"):
        IndexWriter(store, bad, 64)
    with pytest.raises(ValueError):
        Searcher.open(store, bad)


def test_inputs_are_validated(store: LocalObjectStore) -> None:
    with pytest.raises(ValueError, match="multiple of 8"):
        IndexWriter(store, "m1", 12)
    writer = IndexWriter(store, "m1", 16)
    with pytest.raises(ValueError, match="shape"):
        writer.add(np.array([1]), np.zeros((1, 3), dtype=np.uint8))
    with pytest.raises(ValueError, match="uint8"):
        writer.add(np.array([1]), np.zeros((1, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="non-negative"):
        writer.add(np.array([-1]), np.zeros((1, 2), dtype=np.uint8))
    with pytest.raises(ValueError, match="2 ids but 1 codes"):
        writer.add(np.array([1, 2]), np.zeros((1, 2), dtype=np.uint8))
    writer.add(np.array([1]), np.zeros((1, 2), dtype=np.uint8))
    writer.flush()
    searcher = Searcher.open(store, "m1")
    assert searcher is not None
    with pytest.raises(ValueError, match="k must be"):
        searcher.search(np.zeros((1, 2), dtype=np.uint8), 0)
    with pytest.raises(ValueError, match="queries"):
        searcher.search(np.zeros((1, 8), dtype=np.uint8), 3)


class CountingStore(LocalObjectStore):
    """Counts reads of data objects, and can make the next ones look garbage-collected."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.data_reads = 0
        self.vanish = 0

    def get(self, key: str) -> bytes:
        if "/manifests/" not in key:
            self.data_reads += 1
            if self.vanish:
                self.vanish -= 1
                raise ObjectNotFound(key)
        return super().get(key)


def test_refresh_reuses_loaded_segments_and_retries_a_vanished_generation(tmp_path: Path) -> None:
    store = CountingStore(tmp_path)
    writer = IndexWriter(store, "m1", 8, shards=4)
    writer.add(np.arange(40), np.arange(40, dtype=np.uint8)[:, None])
    writer.compact()
    live = LiveSearcher(store, "m1")
    assert store.data_reads == 4
    writer.add(np.array([100]), np.array([[7]], dtype=np.uint8))
    writer.flush()
    store.data_reads = 0
    assert live.refresh() is True
    assert store.data_reads == 1  # only the new delta; the four base shards were reused
    writer.remove(np.array([100]))
    writer.flush()
    store.vanish = 1
    assert live.refresh() is True and live.generation == 3
    writer.add(np.array([101]), np.array([[7]], dtype=np.uint8))
    writer.flush()
    store.vanish = 3
    with pytest.raises(ObjectNotFound):
        live.refresh()
    assert live.generation == 3 and live.search(np.array([[7]], dtype=np.uint8), 1) == [[(7, 0)]]


def query_stream(live: LiveSearcher, stop: threading.Event, rng: np.random.Generator,
                 errors: list[BaseException], snapshots: dict[int, Model]) -> Iterator[int]:
    """Yields once per query batch; pinned every other batch to check exactness."""
    while not stop.is_set():
        queries = rng.integers(0, 256, (int(rng.integers(1, 8)), 2), dtype=np.uint8)
        k = int(rng.integers(1, 30))
        try:
            results = live.search(queries, k)
            assert len(results) == len(queries)
            for row in results:
                assert len(row) <= k and len({i for i, _ in row}) == len(row)
                assert all(isinstance(i, int) and isinstance(d, int) and 0 <= d <= 16
                           for i, d in row)
                assert row == sorted(row, key=lambda hit: (hit[1], hit[0]))
            pinned = live.current
            if pinned is not None:
                assert pinned.search(queries, k) == brute_force(
                    snapshots[pinned.generation], queries, k)
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)
            return
        yield 1


def test_live_refresh_during_concurrent_queries_fails_none(store: LocalObjectStore) -> None:
    rng = np.random.default_rng(3)
    writer = IndexWriter(store, "m1", 16, shards=4)
    model: Model = {}
    codes = tie_heavy_codes(rng, 500, 2)
    writer.add(np.arange(500), codes)
    model.update(zip(range(500), codes))
    snapshots: dict[int, Model] = {writer.compact() or 0: dict(model)}
    live = LiveSearcher(store, "m1")
    first = live.generation
    stop = threading.Event()
    errors: list[BaseException] = []
    counts = [0] * 4

    def client(slot: int) -> None:
        for _ in query_stream(live, stop, np.random.default_rng(slot), errors, snapshots):
            counts[slot] += 1

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(4)]
    for thread in threads:
        thread.start()
    try:
        for step in range(12):
            fresh = np.arange(1000 + 40 * step, 1040 + 40 * step)
            new_codes = tie_heavy_codes(rng, 40, 2)
            writer.add(fresh, new_codes)
            model.update(zip(fresh.tolist(), new_codes))
            gone = rng.choice(np.array(sorted(model)), 10, replace=False)
            writer.remove(gone)
            for i in gone.tolist():
                del model[i]
            generation = writer.compact() if step % 4 == 3 else writer.flush()
            assert generation is not None
            snapshots[generation] = dict(model)
            assert live.refresh() is True
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
    assert not errors, errors[0]
    assert all(count > 0 for count in counts)
    assert first is not None and live.generation == writer.generation == first + 12
