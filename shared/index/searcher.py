"""Readers of the index: an immutable generation (:class:`Searcher`) and the hot-swapping
holder the search service keeps (:class:`LiveSearcher`)."""

from __future__ import annotations

import itertools
import os
import threading
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faiss
import numpy as np

from shared.index.format import (
    Manifest,
    check_codes,
    check_ids,
    check_model_version,
    decode_delta,
    decode_shard,
    latest_generation,
    read_manifest,
)
from shared.index.mih import (
    MIH_NS_QUERY,
    MIH_NS_ROUND,
    Liveness,
    MultiIndexHash,
    flat_cost_ns,
)
from shared.storage.objectstore import ObjectNotFound, ObjectStore

Results = list[list[tuple[int, int]]]
STRATEGIES = ("auto", "mih", "flat")
"""How :meth:`Searcher.search` answers: ``auto`` (the multi-index hash over the base shards,
falling back to the flat scan per query when that is estimated cheaper), ``mih`` (never fall
back) or ``flat`` (scan every segment). All three return identical results."""
_OPEN_ATTEMPTS = 3

_WORKERS = os.cpu_count() or 1
_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None


def configure_search_threads(threads: int) -> None:
    """Threads that scan one query's segments (0: one per core; ``MEDHASH_SEARCH_THREADS``).

    One thread is the better choice on a machine whose cores are busy with other work: a
    helper thread that has to wait for a core costs more than it saves (docs/benchmarks.md).
    """
    global _WORKERS, _pool
    with _pool_lock:
        _WORKERS = threads or os.cpu_count() or 1
        if _pool is not None:
            _pool.shutdown(wait=False)
            _pool = None


def _search_pool() -> ThreadPoolExecutor:
    """The helper threads of every search, one per core, shared by all searchers."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="medhash-index")
        return _pool


@contextmanager
def _one_openmp_thread() -> Iterator[None]:
    """Run faiss single-threaded in this thread, then restore its setting (OpenMP keeps the
    thread count per thread, so no other thread is affected).

    Our threads already provide the parallelism. faiss's flat scan opens an OpenMP region per
    64k-code block even for one query, so extra OpenMP threads only add barriers, and on a
    loaded box a barrier waits for a parked thread: one 1M-code query measured 2 ms with one
    OpenMP thread and 13-200 ms with two.
    """
    previous = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(1)
    try:
        yield
    finally:
        faiss.omp_set_num_threads(previous)


@dataclass(frozen=True)
class _Segment:
    """One segment's codes in an exact flat index, in ascending id order. Immutable, so
    consecutive generations share the segments they have in common."""

    key: str
    ids: np.ndarray
    codes: np.ndarray
    flat: faiss.IndexBinaryFlat
    owner: Any  # what keeps ``flat`` and ``codes`` alive
    removed: np.ndarray  # a delta's tombstones (empty for base shards)

    @classmethod
    def load(cls, store: ObjectStore, key: str, bits: int, is_delta: bool) -> _Segment:
        data = store.get(key)
        if not is_delta:
            shard = decode_shard(data, bits, key)
            return cls(key, shard.ids, shard.codes, shard.flat, shard.owner,
                       np.empty(0, dtype=np.int64))
        ids, codes, removed = decode_delta(data, bits, key)
        flat = faiss.IndexBinaryFlat(bits)
        if len(ids):
            flat.add(codes)
        return cls(key, ids, codes, flat, flat, removed)

    @classmethod
    def merge(cls, shards: list[_Segment], bits: int) -> _Segment:
        """The base shards as one segment in ascending id order (shards are disjoint).

        One flat index over every base code is what a single query's scan wants (no per-shard
        calls and merge; faiss keeps ties in storage order, which is id order here), and its
        storage is also the codes the multi-index hash verifies against.
        """
        if len(shards) == 1:
            return shards[0]
        ids = np.concatenate([shard.ids for shard in shards])
        order = np.argsort(ids, kind="stable")
        flat = faiss.IndexBinaryFlat(bits)
        if len(ids):
            flat.add(np.concatenate([shard.codes for shard in shards])[order])
        nbytes = bits // 8
        codes = (faiss.rev_swig_ptr(flat.xb.data(), len(ids) * nbytes).reshape(len(ids), nbytes)
                 if len(ids) else np.empty((0, nbytes), dtype=np.uint8))
        key = "+".join(shard.key for shard in shards)
        return cls(key, ids[order], codes, flat, flat, np.empty(0, dtype=np.int64))

    def find(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(positions, found) of ``ids``: binary search, since segments are sorted by id."""
        if not len(self.ids):
            return np.zeros(len(ids), dtype=np.int64), np.zeros(len(ids), dtype=bool)
        positions = np.minimum(np.searchsorted(self.ids, ids), len(self.ids) - 1)
        return positions, self.ids[positions] == ids


@dataclass(frozen=True)
class _View:
    """A segment as one generation sees it: which of its ids newer segments hide."""

    segment: _Segment
    dead: np.ndarray | None  # bool per position, None when nothing is hidden
    live: int
    params: faiss.SearchParameters | None
    selector_memory: tuple[Any, ...]  # bitmap and selector that ``params`` points into

    @classmethod
    def of(cls, segment: _Segment, hidden: np.ndarray) -> _View:
        positions, found = segment.find(hidden)
        if not found.any():
            return cls(segment, None, len(segment.ids), None, ())
        dead = np.zeros(len(segment.ids), dtype=bool)
        dead[positions[found]] = True
        # Hidden codes are skipped inside the scan, so the top k stays exact without
        # over-fetching; the selector makes that shard's scan ~2x slower until compaction.
        bitmap = np.packbits(~dead, bitorder="little")
        selector = faiss.IDSelectorBitmap(len(dead), faiss.swig_ptr(bitmap))
        params = faiss.SearchParameters()
        params.sel = selector
        return cls(segment, dead, int((~dead).sum()), params, (bitmap, selector))

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(distances, ids) of the exact top ``min(k, live)`` by (distance, id). Asking for at
        most ``live`` results means faiss never pads with -1."""
        distances, positions = self.segment.flat.search(queries, min(k, self.live),
                                                        params=self.params)
        return distances, self.segment.ids[positions]


@dataclass(frozen=True)
class _Base:
    """The base shards as one segment (ascending ids) and a :class:`MultiIndexHash` over it.

    Built when a generation with new base shards is opened, not stored: compaction stays a
    plain write, format 1 files stay what they are, and the build (one sort of the codes,
    one per table) is measured in docs/benchmarks.md. Consecutive generations with the same
    base shards share it; only their :class:`Liveness` (which codes newer deltas hide)
    differs. Positions in the index are rows of ``segment``.
    """

    keys: tuple[str, ...]
    segment: _Segment
    index: MultiIndexHash

    @classmethod
    def build(cls, shards: list[_Segment], bits: int) -> _Base:
        segment = _Segment.merge(shards, bits)
        return cls(tuple(shard.key for shard in shards), segment,
                   MultiIndexHash(segment.ids, segment.codes))


class Searcher:
    """An immutable view of one manifest generation, fully loaded in memory.

    Loading everything at open is what lets a reader outlive its generation's objects in the
    store (the writer deletes them two generations later).
    """

    def __init__(self, manifest: Manifest, base: _Base | None, deltas: list[_Segment]) -> None:
        """``base``: the manifest's base shards (None if it lists none); ``deltas`` in
        manifest order."""
        self.manifest = manifest
        self.model_version: str = manifest.model_version
        self.bits: int = manifest.bits
        self.generation: int = manifest.generation
        # A delta hides, in every older segment, the ids it adds or removes. Base shards are
        # older than every delta and disjoint from each other.
        delta_views: list[_View] = []
        hidden = np.empty(0, dtype=np.int64)
        for delta in reversed(deltas):
            delta_views.append(_View.of(delta, hidden))
            hidden = np.union1d(hidden, np.concatenate([delta.ids, delta.removed]))
        # largest first, so the small deltas fill the gaps at the end of a parallel scan
        self._delta_views = sorted((view for view in delta_views if view.live),
                                   key=lambda v: -v.live)
        self._base = base
        self._base_view: _View | None = None
        self._liveness: Liveness | None = None
        if base is not None:
            view = _View.of(base.segment, hidden)
            if view.live:
                positions, found = base.segment.find(hidden)
                self._base_view = view
                self._liveness = base.index.liveness(positions[found])
        self._views = sorted(self._delta_views + ([self._base_view] if self._base_view else []),
                             key=lambda v: -v.live)
        self._size = sum(view.live for view in self._views)
        base_live = 0 if self._base_view is None else self._base_view.live
        self._flat_cost_ns = flat_cost_ns(base_live, self.bits // 8)

    @classmethod
    def open(
        cls,
        store: ObjectStore,
        model_version: str,
        generation: int | None = None,
        *,
        previous: Searcher | None = None,
    ) -> Searcher | None:
        """Load a generation (None: the newest); None if the model version has no index yet.

        What ``previous`` already holds is reused: its base (shards and multi-index hash) if
        the base shards are the same, and its deltas; so a new generation that only added a
        delta costs the delta's download, not the base shards' or the hash's build. Raises
        :class:`ObjectNotFound` if the generation was garbage-collected meanwhile.
        """
        check_model_version(model_version)
        if generation is None:
            generation = latest_generation(store, model_version)
            if generation is None:
                return None
        manifest = read_manifest(store, model_version, generation)
        same_bits = previous is not None and previous.bits == manifest.bits
        shard_keys = tuple(entry.key for entry in manifest.shards)
        base = previous._base if same_bits and previous is not None else None
        if base is None or base.keys != shard_keys:
            shards = [_Segment.load(store, key, manifest.bits, False) for key in shard_keys]
            base = _Base.build(shards, manifest.bits) if shards else None
        reusable = {} if not same_bits or previous is None else {
            view.segment.key: view.segment for view in previous._delta_views
        }
        deltas = [reusable.get(entry.key) or _Segment.load(store, entry.key, manifest.bits, True)
                  for entry in manifest.deltas]
        return cls(manifest, base, deltas)

    def __len__(self) -> int:
        """Live codes in this generation."""
        return self._size

    def __repr__(self) -> str:
        return (f"Searcher({self.model_version!r}, generation={self.generation}, "
                f"codes={self._size}, segments={len(self._views)})")

    @property
    def multi_index(self) -> MultiIndexHash | None:
        """The multi-index hash over the base shards (None before the first compaction)."""
        return None if self._base is None else self._base.index

    def memory_bytes(self) -> dict[str, int]:
        """Bytes held per structure: the segments' codes and ids (what the flat scan reads)
        and the multi-index hash over the base shards (built at open)."""
        segments = sum(view.segment.codes.nbytes + view.segment.ids.nbytes
                       for view in self._views)
        mih = 0 if self._base is None else self._base.index.memory_bytes()
        return {"segments": segments, "mih": mih}

    def search(self, queries: np.ndarray, k: int, *, strategy: str = "auto",
               stats: dict[str, int] | None = None) -> Results:
        """Exact top ``k`` per query: ``[(id, hamming distance)]`` by ascending distance, ties
        by ascending id.

        The base shards are searched with their multi-index hash, query by query; a query
        for which the flat scan is estimated cheaper (uniform random codes, a query far from
        every cluster) is scanned instead, batched with the others that were; a base whose
        whole scan costs less than one hash query with one round (~40k codes) is always
        scanned. Deltas (small until the next compaction) are always scanned. ``strategy`` forces one path (see
        :data:`STRATEGIES`); ``stats`` (optional) accumulates what the searches did.
        """
        queries = check_codes(queries, self.bits, "queries")
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, not {k!r}")
        if strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {', '.join(STRATEGIES)}, not {strategy!r}")
        if not self._views or not len(queries):
            return [[] for _ in range(len(queries))]
        k = int(k)
        small = strategy == "auto" and self._flat_cost_ns <= MIH_NS_QUERY + MIH_NS_ROUND
        if self._base_view is None or strategy == "flat" or small:
            distances, ids = _scan(self._views, queries, k)
            _add(stats, "scanned", len(queries))
        else:
            distances, ids = self._search_base(queries, k, strategy == "auto", stats)
            if self._delta_views:
                more = _scan(self._delta_views, queries, k)
                distances, ids = _best(np.concatenate([distances, more[0]], axis=1),
                                       np.concatenate([ids, more[1]], axis=1), k)
        return [list(zip(row_ids, row_distances))
                for row_ids, row_distances in zip(ids.tolist(), distances.tolist())]

    def _search_base(self, queries: np.ndarray, k: int, fall_back: bool,
                     stats: dict[str, int] | None) -> tuple[np.ndarray, np.ndarray]:
        """The base's exact top ``k`` for each query, ``(nq, min(k, live))`` arrays."""
        assert self._base is not None and self._base_view is not None
        live = self._liveness
        assert live is not None
        width = min(k, live.live)
        distances = np.empty((len(queries), width), dtype=np.int32)
        ids = np.empty((len(queries), width), dtype=np.int64)
        budget = self._flat_cost_ns if fall_back else None
        scan = []
        for row, query in enumerate(queries):
            found = self._base.index.search(query, k, live, budget, stats)
            if found is None:
                scan.append(row)
            else:
                distances[row], ids[row] = found
        if scan:
            with _one_openmp_thread():
                distances[scan], ids[scan] = self._base_view.search(queries[scan], k)
            _add(stats, "scanned", len(scan))
        return distances, ids

    def codes_of(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        """The stored codes of ``ids``, ``(n, bits // 8)`` uint8; KeyError names missing ids."""
        wanted = check_ids(np.fromiter(ids, dtype=np.int64) if not isinstance(ids, np.ndarray)
                           else ids)
        out = np.zeros((len(wanted), self.bits // 8), dtype=np.uint8)
        found = np.zeros(len(wanted), dtype=bool)
        for view in self._views:
            positions, hit = view.segment.find(wanted)
            if view.dead is not None:
                hit &= ~view.dead[positions]
            out[hit] = view.segment.codes[positions[hit]]
            found |= hit
        if not found.all():
            raise KeyError(f"not in generation {self.generation}: {wanted[~found][:20].tolist()}")
        return out


def _add(stats: dict[str, int] | None, key: str, value: int) -> None:
    if stats is not None:
        stats[key] = stats.get(key, 0) + value


def _best(distances: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The first ``k`` columns by (distance, id) of per-query candidate rows: the merge that
    defines the tie order every path must reproduce."""
    order = np.lexsort((ids, distances), axis=1)[:, :k]
    return np.take_along_axis(distances, order, axis=1), np.take_along_axis(ids, order, axis=1)


def _scan(views: list[_View], queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top ``k`` over ``views`` by flat scans, ``(nq, min(k, live))`` arrays: the
    views are scanned in parallel and their top ``k`` merged."""
    parts: dict[int, tuple[np.ndarray, np.ndarray]] = {}
    claims = itertools.count()  # C-level next(): atomic under the GIL, so each view once

    def scan() -> None:
        while (slot := next(claims)) < len(views):
            parts[slot] = views[slot].search(queries, k)

    def helper() -> None:
        with _one_openmp_thread():
            scan()

    # This thread scans too, and never waits for a helper: helpers that have not started
    # when it runs out of views are cancelled, and a view a helper is still scanning is
    # scanned again here. A helper the scheduler parked mid-view (on a busy machine, for
    # milliseconds) thus costs at most one view's scan, and concurrent queries degrade
    # to one thread each instead of queueing for the pool.
    pool = _search_pool()
    helpers = [pool.submit(helper) for _ in range(min(_WORKERS, len(views)) - 1)]
    with _one_openmp_thread():
        scan()
        for helper_future in helpers:
            helper_future.cancel()
        for slot in range(len(views)):
            if slot not in parts:
                parts[slot] = views[slot].search(queries, k)
    done = [parts[slot] for slot in range(len(views))]
    return _best(np.concatenate([part[0] for part in done], axis=1),
                 np.concatenate([part[1] for part in done], axis=1), k)


class LiveSearcher:
    """What the search service holds: swaps to a newer generation without failing a query.

    A query reads the current :class:`Searcher` reference once and finishes on it, so a swap
    (one reference assignment) never disturbs it; the old generation is freed when its last
    query returns.
    """

    def __init__(self, store: ObjectStore, model_version: str) -> None:
        """Loads the newest generation, if there is one."""
        self.store = store
        self.model_version = check_model_version(model_version)
        self._current: Searcher | None = None
        self._refresh_lock = threading.Lock()
        self.refresh()

    @property
    def current(self) -> Searcher | None:
        """The generation queries run on now; hold it to run several queries on one."""
        return self._current

    @property
    def generation(self) -> int | None:
        current = self._current
        return None if current is None else current.generation

    @property
    def size(self) -> int:
        """Live codes in the current generation (0 before the first)."""
        current = self._current
        return 0 if current is None else len(current)

    def refresh(self) -> bool:
        """Load the newest generation if it is newer than the current one and swap to it;
        True if it swapped.

        If the writer garbage-collects the generation while it loads, the newest is tried
        again: that can only happen because an even newer one was published.
        """
        with self._refresh_lock:
            failures = 0
            while True:
                current = self._current
                newest = latest_generation(self.store, self.model_version)
                if newest is None or (current is not None and newest <= current.generation):
                    return False
                try:
                    searcher = Searcher.open(self.store, self.model_version, newest,
                                             previous=current)
                except ObjectNotFound:
                    failures += 1
                    if failures == _OPEN_ATTEMPTS:
                        raise
                    continue
                self._current = searcher
                return True

    def search(self, queries: np.ndarray, k: int, *, strategy: str = "auto") -> Results:
        """:meth:`Searcher.search` on the current generation; empty results before the first."""
        current = self._current
        if current is None:
            return [[] for _ in range(len(np.atleast_2d(queries)))]
        return current.search(queries, k, strategy=strategy)
