"""The Hamming index: sharded, exact, versioned files in the object store.

One indexer process writes (:class:`IndexWriter`), any number of search processes read
(:class:`Searcher`, :class:`LiveSearcher`). They share nothing but the object store, so the
format below is the whole contract between them, and an operator can inspect an index with
nothing but a listing of the store.

Layout
------
Everything of one model version lives under ``index/<model_version>/`` (codes of different
models are never mixed; a new model gets a new index beside the old one)::

    index/<mv>/manifests/<N:010d>.json     one manifest per generation N = 1, 2, 3, ...
    index/<mv>/gen-<N>/shard-<k>.faissidx  base shard k (k = 0..S-1), written by compaction N
    index/<mv>/delta/<N:010d>.npz          delta segment written by flush N

*Manifest* (JSON, ``"format": 1``): ``model_version``, ``bits``, ``generation``,
``created_at`` (ISO 8601 UTC), ``shard_count`` S, ``shards`` (``[{"key", "count"}]``, the
base shards; empty before the first compaction) and ``deltas`` (``[{"key", "adds",
"removes"}]``, oldest first). The newest generation is the highest N listed under
``manifests/``. A generation is exactly the segments its manifest lists; nothing else under
the prefix matters to a reader.

*Base shard*: a faiss ``IndexBinaryIDMap`` over an exact ``IndexBinaryFlat``
(``faiss.serialize_index_binary``). Slice ``id`` lives in shard ``id % S``; within a shard the
codes are stored in ascending id order, which is what makes tie order deterministic (faiss's
flat scan keeps equal distances in storage order).

The sub-linear search structure is *not* part of the format: a reader merges the base shards
into one segment (ascending ids) and builds an exact multi-index hash over it when it opens a
generation with new base shards (:mod:`shared.index.mih`; ~1 s per million codes here, see
``docs/benchmarks.md``, Search), and keeps it for later generations with the same base. So
compaction stays a plain write, format 1 needs no new version, and every index ever written
stays readable. Every result is exact and identical to a flat scan's, ties included: ascending
distance, then ascending id.

*Delta segment*: a NumPy ``.npz`` (no pickle) with ``ids`` (int64, ascending, unique),
``codes`` (uint8, ``(len(ids), bits // 8)``, packed bits as faiss expects) and ``removed``
(int64, ascending): the net effect of the adds and removes buffered before one flush. The
tombstones are the ``removed`` arrays; there is no separate tombstone object, so a flush is
one data object plus one manifest.

Semantics: the segments are applied oldest first (base shards, then deltas in list order); a
later segment that adds or removes an id hides that id in every earlier segment. Ids are
non-negative (faiss reserves -1 for "no result"). Compaction folds all of it into S fresh base
shards and an empty delta list.

Writing and reading safely
--------------------------
* Data objects are written first, the manifest last, so a listed manifest never points at
  missing data. A crash in between leaves unreferenced objects that the next generation's
  garbage collection deletes.
* After publishing a generation the writer keeps the two newest manifests and every object
  they reference, and deletes the rest. A :class:`Searcher` loads all its segments into
  memory when it opens, so a reader of an older generation keeps working after its objects
  are deleted; only an open that races the deletion can fail, and :class:`LiveSearcher` then
  retries with the newest generation.
* One writer per model version. The writer refuses to publish if another generation appeared
  in the store since it last looked (:class:`ConcurrentWriterError`).
"""

from __future__ import annotations

from shared.index.format import (
    ConcurrentWriterError,
    IndexFormatError,
    check_model_version,
    latest_generation,
    list_model_versions,
)
from shared.index.searcher import LiveSearcher, Searcher, configure_search_threads
from shared.index.writer import IndexWriter

__all__ = [
    "ConcurrentWriterError",
    "IndexFormatError",
    "IndexWriter",
    "configure_search_threads",
    "LiveSearcher",
    "Searcher",
    "check_model_version",
    "latest_generation",
    "list_model_versions",
]
