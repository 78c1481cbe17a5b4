"""What the search service does, free of HTTP: query -> codes -> index -> described results.

A query is either an upload (DICOM, PNG or JPEG), turned into slices exactly as the pipeline
would have stored them (:func:`shared.pipeline.query.query_slices`) and encoded with the same model,
or a stored instance, whose codes are read from the catalog. A multi-frame query searches
with every frame (evenly spaced ones above ``max_query_frames``) and merges: a result's
distance is its smallest distance to any query frame, so a slice of a stored volume finds
that volume whichever frame was uploaded.

The index holds codes, not policy, so results are filtered here against the catalog
(:class:`~shared.storage.catalog.SliceFilter`): slices the cleaning excluded (unless asked
for), slices of superseded versions, of forgotten instances (their rows are gone, so a
searcher still on a generation from before the forget never returns them), and whatever the
caller's filters rule out (modality, body part, study date, calling AE, the query's own
patient or study). Filtering after the fact needs over-fetching: :meth:`SearchEngine._nearest`
asks the index for more than ``k`` and asks again for more while the exactly-ranked prefix
holds too few eligible slices; a filter so selective that even :data:`MAX_FETCH` neighbours
hold fewer than ``k`` is answered by scanning the codes of the slices it admits in the
catalog instead, so the top ``k`` is exact under any filter.

The index is a :class:`shared.index.LiveSearcher` that a background thread refreshes every
``refresh_interval_s``: a new generation is swapped in atomically, and each query takes the
current generation once and runs (over-fetching included) on it, so queries in flight finish
on the old one and none fails or mixes two.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Literal

import numpy as np

from services.search.metrics import INDEX_GENERATION, INDEX_REFRESH_FAILURES, INDEX_SIZE
from shared.background import Periodic
from shared.hashing.inference import BatchEncoder
from shared.index import LiveSearcher, Searcher
from shared.pipeline.preprocess import PreprocessOptions
from shared.pipeline.query import query_slices
from shared.pipeline.wiring import Runtime
from shared.storage.catalog import Instance, SliceDetail, SliceFilter
from shared.storage.slice_format import decode_slice, thumbnail_png

log = logging.getLogger("medhash.search")

MAX_FETCH = 10_000
"""Most neighbours asked from the index per query frame while over-fetching past filtered
slices; a query whose ``k`` eligible neighbours lie deeper is answered by a catalog scan of
the slices the filter admits (fewer than ``k`` per ``MAX_FETCH`` of the index)."""

NO_FILTER = SliceFilter()
"""The default: current versions, slices the cleaning kept."""

POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.int32)


class SearchUnavailable(RuntimeError):
    """No model configured, or no index generation published for it yet (HTTP 503)."""


class UnknownInstance(LookupError):
    """No instance with this SOP Instance UID was ever received (HTTP 404)."""


class InstanceNotReady(RuntimeError):
    """The instance exists but lacks what was asked for: codes, or a frame (HTTP 409)."""


@dataclass(frozen=True)
class Hit:
    detail: SliceDetail
    distance: int


@dataclass(frozen=True)
class SearchOutcome:
    source: Literal["upload", "instance"]
    sop_instance_uid: str | None
    slices: int
    frames: list[int]
    first_slice: np.ndarray | None
    """The first searched slice of an upload, for the page to show what the model saw."""
    model_version: str
    generation: int
    hits: list[Hit]


def spread(count: int, cap: int) -> list[int]:
    """``range(count)``, or ``cap`` evenly spaced indices of it (first and last included)."""
    if count <= cap:
        return list(range(count))
    return sorted({int(i) for i in np.linspace(0, count - 1, cap).round()})


def merge_hits(per_query: list[list[tuple[int, int]]]) -> list[tuple[int, int]]:
    """One list of (slice id, distance) from one list per query frame: the smallest distance
    of each slice, sorted by (distance, slice id) like the index sorts."""
    best: dict[int, int] = {}
    for hits in per_query:
        for slice_id, distance in hits:
            if distance < best.get(slice_id, distance + 1):
                best[slice_id] = int(distance)
    return sorted(best.items(), key=lambda item: (item[1], item[0]))


class SearchEngine:
    """Answers queries against the newest published index of the encoder's model version."""

    def __init__(
        self,
        runtime: Runtime,
        encoder: BatchEncoder | None,
        *,
        max_query_frames: int = 16,
        refresh_interval_s: float = 1.0,
    ) -> None:
        self.runtime = runtime
        self.encoder = encoder
        self.options = PreprocessOptions.from_settings(runtime.settings)
        self.max_query_frames = max_query_frames
        self._live: LiveSearcher | None = None
        self._live_lock = threading.Lock()
        self._refresher = Periodic("search-refresh", refresh_interval_s, self._refresh_logged,
                                   logger=log)

    @property
    def model_version(self) -> str | None:
        return self.encoder.model_version if self.encoder is not None else None

    # --- the index and its background refresh -------------------------------------------------

    def refresh(self) -> bool:
        """Load the newest published generation if it is newer; True when it swapped."""
        if self.encoder is None:
            return False
        before = self.index_status()[0]
        with self._live_lock:
            if self._live is None:
                self._live = LiveSearcher(self.runtime.store, self.encoder.model_version)
            else:
                self._live.refresh()
        generation, size = self.index_status()
        if generation == before:
            return False
        INDEX_GENERATION.set(-1 if generation is None else generation)
        INDEX_SIZE.set(size)
        log.info("index generation %s loaded (%d codes)", generation, size,
                 extra={"stage": "search"})
        return True

    def index_status(self) -> tuple[int | None, int]:
        """(loaded generation or None, codes in it)."""
        searcher = self._live.current if self._live is not None else None
        return (None, 0) if searcher is None else (searcher.generation, len(searcher))

    def start(self) -> None:
        """Load what is published now, then keep refreshing in a background thread."""
        self._refresh_logged()
        self._refresher.start()

    def stop(self) -> None:
        self._refresher.stop()

    def _refresh_logged(self) -> None:
        """A failed refresh (object store down, a half-written manifest) keeps the old
        generation serving; it is logged, counted and tried again next tick."""
        try:
            self.refresh()
        except Exception:
            INDEX_REFRESH_FAILURES.inc()
            log.exception("index refresh failed; still serving generation %s",
                          self.index_status()[0], extra={"stage": "search"})

    # --- queries ------------------------------------------------------------------------------

    def _ready(self) -> tuple[BatchEncoder, Searcher]:
        """The encoder and the generation this query runs on from start to end."""
        if self.encoder is None:
            raise SearchUnavailable(
                "no model is configured: set MEDHASH_MODEL to a checkpoint (`medhash train ... "
                "--out model.pt`) and restart the search service")
        searcher = self._live.current if self._live is not None else None
        if searcher is None:
            raise SearchUnavailable(
                f"no index has been published yet for model {self.encoder.model_version[:12]}: "
                "send images and run the indexer (`medhash serve` or `medhash indexer`), then "
                "retry in a few seconds")
        return self.encoder, searcher

    def search_upload(self, data: bytes, k: int,
                      filters: SliceFilter = NO_FILTER) -> SearchOutcome:
        """Search with an uploaded DICOM file or picture.

        Raises :class:`shared.pipeline.query.UnreadableQuery` or a
        :class:`shared.dicom.pixels.PixelPipelineError` for files that yield no slice.
        """
        encoder, searcher = self._ready()
        slices = query_slices(data, self.options)
        frames = spread(len(slices), self.max_query_frames)
        codes = encoder.encode([slices[i] for i in frames])
        generation, hits = self._nearest(searcher, codes, k, filters)
        return SearchOutcome("upload", None, len(slices), frames, slices[frames[0]],
                             encoder.model_version, generation, hits)

    def search_instance(self, sop_instance_uid: str, k: int,
                        filters: SliceFilter = NO_FILTER) -> SearchOutcome:
        """Search with the stored codes of an instance's current version (nothing re-encoded)."""
        encoder, searcher = self._ready()
        rows = self.runtime.catalog.codes_of_sop(sop_instance_uid, encoder.model_version)
        if not rows:
            instance = self.current(sop_instance_uid)
            raise InstanceNotReady(
                f"instance {sop_instance_uid} has no codes for model "
                f"{encoder.model_version[:12]} (state {instance.state.value}"
                f"{': ' + instance.reason if instance.reason else ''}); an instance can be "
                "searched with once it is encoded")
        frames = spread(len(rows), self.max_query_frames)
        codes = np.stack([np.frombuffer(rows[i][1], dtype=np.uint8) for i in frames])
        details = self.runtime.catalog.slice_details([rows[i][0] for i in frames])
        frame_numbers = [details[rows[i][0]].frame_index for i in frames]
        generation, hits = self._nearest(searcher, codes, k, filters)
        return SearchOutcome("instance", sop_instance_uid, len(rows), frame_numbers, None,
                             encoder.model_version, generation, hits)

    def _nearest(self, searcher: Searcher, codes: np.ndarray, k: int,
                 filters: SliceFilter) -> tuple[int, list[Hit]]:
        """The ``k`` nearest eligible slices, exactly: over-fetch until enough survive, or
        scan what the filter admits when even :data:`MAX_FETCH` is not enough.

        Each frame's top ``fetch`` is exact, so the first ``fetch`` entries of the merge are
        the exact top ``fetch`` of the merged ranking; only that prefix is trusted.
        """
        fetch = min(max(2 * k, 32), MAX_FETCH)
        while True:
            per_query = searcher.search(codes, fetch)
            exhausted = all(len(hits) < fetch for hits in per_query)
            merged = merge_hits(per_query)
            if not exhausted:
                merged = merged[:fetch]
            details = self.runtime.catalog.slice_details([slice_id for slice_id, _ in merged])
            hits = [
                Hit(detail, distance)
                for slice_id, distance in merged
                if (detail := details.get(slice_id)) is not None and filters.admits(detail)
            ]
            if len(hits) >= k or exhausted:
                return searcher.generation, hits[:k]
            if fetch >= MAX_FETCH:
                return searcher.generation, self._scan(codes, k, filters)
            fetch = min(fetch * 4, MAX_FETCH)

    def _scan(self, queries: np.ndarray, k: int, filters: SliceFilter) -> list[Hit]:
        """The exact top ``k`` over the indexed codes the filter admits, read from the
        catalog: by (smallest distance to any query frame, slice id), as the index ranks."""
        assert self.encoder is not None
        rows = self.runtime.catalog.indexed_codes(self.encoder.model_version, filters)
        log.debug("filter admits too few of the index's nearest %d: scanned its %d codes in "
                  "the catalog", MAX_FETCH, len(rows), extra={"stage": "search"})
        if not rows:
            return []
        ids = np.array([slice_id for slice_id, _ in rows], dtype=np.int64)
        codes = np.frombuffer(b"".join(code for _, code in rows), dtype=np.uint8)
        codes = codes.reshape(len(rows), -1)
        distances = np.min([POPCOUNT[np.bitwise_xor(codes, query)].sum(axis=1)
                            for query in queries], axis=0)
        order = np.lexsort((ids, distances))[:k]
        details = self.runtime.catalog.slice_details(ids[order].tolist())
        return [Hit(detail, int(distances[position])) for position in order
                if (detail := details.get(int(ids[position]))) is not None
                and filters.admits(detail)]

    # --- stored instances ---------------------------------------------------------------------

    def current(self, sop_instance_uid: str) -> Instance:
        instance = self.runtime.catalog.current(sop_instance_uid)
        if instance is None:
            raise UnknownInstance(
                f"no instance with SOP Instance UID {sop_instance_uid!r} has been received; "
                "check the UID (GET /v1/stats shows what is stored)")
        return instance

    def thumbnail(self, sop_instance_uid: str, frame: int, size: int) -> tuple[str, bytes]:
        """(ETag, PNG) of a frame of the instance's current version, as the model saw it."""
        instance = self.current(sop_instance_uid)
        slices = self.runtime.catalog.slices(instance.id)
        if not slices:
            raise InstanceNotReady(
                f"instance {sop_instance_uid} has no slices yet (state {instance.state.value}"
                f"{': ' + instance.reason if instance.reason else ''})")
        match = next((item for item in slices if item.frame_index == frame), None)
        if match is None:
            raise UnknownInstance(
                f"instance {sop_instance_uid} has no frame {frame}: its frames are "
                f"0 to {slices[-1].frame_index}")
        png = thumbnail_png(decode_slice(self.runtime.store.get(match.object_key)), size)
        # a slice key names the raw bytes' hash and the frame: same key and size, same PNG
        tag = hashlib.sha256(f"{match.object_key}:{size}".encode()).hexdigest()[:20]
        return f'"{tag}"', png


__all__ = [
    "Hit",
    "InstanceNotReady",
    "SearchEngine",
    "SearchOutcome",
    "SearchUnavailable",
    "UnknownInstance",
    "merge_hits",
    "spread",
]
