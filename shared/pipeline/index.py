"""The indexer: merges new codes into the sharded Hamming index of the active model version.

Messages on the ``index`` queue name encoded instances. Their codes are buffered in an
:class:`~shared.index.IndexWriter`; every ``MEDHASH_INDEX_FLUSH_S`` the buffer becomes a delta
segment and a new manifest generation, and only then do those instances move to
``indexed``: "indexed" always means "in a published generation". A crash before the flush
loses only the buffer; the instances are still ``encoded`` and the reconciler sends them
again (re-adding an id replaces its code, so nothing is indexed twice). Deltas are merged
into the shards in the background once there are more than ``MEDHASH_INDEX_COMPACT_DELTAS``.
There is one indexer per model version: the index has a single writer, which is why the
tombstones of forgotten slices are applied here too: each flush asks the catalog for forget
jobs this model version has not applied yet.
"""

from __future__ import annotations

import logging
import threading

import numpy as np

from shared.background import Periodic
from shared.index import IndexWriter
from shared.metrics import STAGE_OUTCOMES, STAGE_SECONDS
from shared.storage.catalog import Catalog, CatalogUnavailable, InstanceState
from shared.storage.objectstore import ObjectStore, ObjectStoreUnavailable

log = logging.getLogger("medhash.indexer")


class Indexer:
    def __init__(
        self,
        store: ObjectStore,
        catalog: Catalog,
        model_version: str,
        bits: int,
        *,
        shards: int = 8,
        flush_s: float = 1.0,
        compact_deltas: int = 32,
    ) -> None:
        self.catalog = catalog
        self.model_version = model_version
        self.writer = IndexWriter(store, model_version, bits, shards=shards)
        self.compact_deltas = compact_deltas
        self._pending: set[int] = set()
        self._deltas_since_compaction = 0
        self._lock = threading.Lock()
        self._loop = Periodic("indexer", flush_s, self.flush, logger=log,
                              expected=(CatalogUnavailable, ObjectStoreUnavailable),
                              extra={"stage": "indexer"})

    def run(self, instance_id: int) -> InstanceState | None:
        """Buffer an encoded instance's codes; they are published by the next flush.

        Returns None: the instance stays ``encoded`` until the flush that publishes it moves
        it to ``indexed`` (see :meth:`flush`).
        """
        rows = self.catalog.codes_of_instances([instance_id], self.model_version)
        if not rows:
            return None  # not encoded with this model version (yet): nothing to index
        ids = np.array([slice_id for slice_id, _, _ in rows], dtype=np.int64)
        codes = np.frombuffer(b"".join(code for _, _, code in rows), dtype=np.uint8)
        with self._lock:
            self.writer.add(ids, codes.reshape(len(rows), -1))
            self._pending.add(instance_id)
        return None

    def flush(self) -> int | None:
        """Publish buffered codes as a new generation, then mark their instances indexed."""
        with STAGE_SECONDS.labels(stage="index").time():
            return self._flush()

    def _flush(self) -> int | None:
        try:
            removals = self.catalog.pending_removals(self.model_version)
        except CatalogUnavailable:
            removals = {}  # an outage must not hold up publishing codes; tombstones next flush
        with self._lock:
            for slice_ids in removals.values():
                self.writer.remove(np.array(slice_ids, dtype=np.int64))
            generation = self.writer.flush()
            published, self._pending = sorted(self._pending), set()
            if generation is not None:
                self._deltas_since_compaction += 1
            if removals:
                # forgotten codes leave the shard files, and the generations that still
                # referenced those files leave the two that are kept (shared/pipeline/forget.py)
                self.writer.compact(force=True)
                generation = self.writer.compact(force=True) or generation
                self._deltas_since_compaction = 0
            elif self._deltas_since_compaction > self.compact_deltas:
                generation = self.writer.compact() or generation
                self._deltas_since_compaction = 0
        if removals:
            self.catalog.record_removals_applied(sorted(removals), self.model_version)
            log.info("generation %s: tombstones of %d forget job(s) applied and compacted",
                     generation, len(removals), extra={"stage": "indexer"})
        if published:
            moved = self.catalog.transition_many(published, InstanceState.ENCODED, InstanceState.INDEXED)
            STAGE_OUTCOMES.labels(stage="index", outcome="indexed").inc(len(moved))
            log.info("generation %s published: %d instances indexed", generation, len(moved),
                     extra={"stage": "indexer"})
        return generation

    def start(self) -> None:
        """Flush every ``flush_s`` on a background thread."""
        self._loop.start()

    def stop(self) -> None:
        """Stop flushing on the clock, then publish what is still buffered."""
        self._loop.stop(timeout_s=30)
        self.flush()
