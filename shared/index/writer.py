"""The single writer of one model version's index: buffers changes, publishes generations."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Sequence

import numpy as np

from shared.index.format import (
    ConcurrentWriterError,
    DeltaEntry,
    Manifest,
    ShardEntry,
    check_bits,
    check_codes,
    check_ids,
    check_model_version,
    decode_delta,
    decode_shard,
    delta_key,
    encode_delta,
    encode_shard,
    generations,
    latest_generation,
    manifest_key,
    prefix,
    read_manifest,
    shard_key,
)
from shared.storage.objectstore import ObjectStore, ObjectStoreError

log = logging.getLogger("medhash.index")

KEEP_GENERATIONS = 2
"""Manifests (and the objects they reference) kept after publishing: the grace period in
which a reader that just listed the previous generation can still load it."""

# One change: codes for ``ids`` (an add/replace), or None (a removal).
_Change = tuple[np.ndarray, np.ndarray | None]


class IndexWriter:
    """Used by the indexer service: one per model version.

    Adds and removes are buffered in memory and become visible to readers only when
    :meth:`flush` (a small delta segment) or :meth:`compact` (fresh base shards) publishes a
    new generation. Thread-safe; but only one writer per model version may exist at a time.
    """

    def __init__(self, store: ObjectStore, model_version: str, bits: int, shards: int = 8) -> None:
        """Resume from the newest manifest in ``store`` if there is one.

        ``shards`` is the base shard count the next compaction writes; a manifest written with
        another count stays readable (readers fan out over whatever shards it lists).
        """
        self.store = store
        self.model_version = check_model_version(model_version)
        self.bits = check_bits(bits)
        if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
            raise ValueError(f"shards must be a positive integer, not {shards!r}")
        self.shards = shards
        self._lock = threading.Lock()
        self._changes: list[_Change] = []
        latest = latest_generation(store, model_version)
        self._manifest = None if latest is None else read_manifest(store, model_version, latest)
        if self._manifest is not None and self._manifest.bits != bits:
            raise ValueError(
                f"index of {model_version} holds {self._manifest.bits}-bit codes, not {bits}"
            )

    @property
    def generation(self) -> int | None:
        """The last generation published (or found on start), None before the first."""
        manifest = self._manifest
        return None if manifest is None else manifest.generation

    def add(self, ids: np.ndarray, codes: np.ndarray) -> None:
        """Buffer codes for ``ids`` (int64 slice ids, ``(n, bits // 8)`` packed uint8).

        Re-adding an id replaces its code; within one call a repeated id keeps its last code.
        """
        ids = check_ids(ids)
        codes = check_codes(codes, self.bits)
        if len(ids) != len(codes):
            raise ValueError(f"{len(ids)} ids but {len(codes)} codes")
        with self._lock:
            self._changes.append((ids.copy(), codes.copy()))

    def remove(self, ids: np.ndarray) -> None:
        """Buffer removals; readers stop returning these ids once a generation is published."""
        ids = check_ids(ids)
        with self._lock:
            self._changes.append((ids.copy(), None))

    def flush(self) -> int | None:
        """Publish the buffered changes as a delta segment; the new generation, or None if
        there was nothing to publish."""
        with self._lock:
            if not self._changes:
                return None
            ids, codes, removed = _net_effect(self._changes, self.bits)
            generation = self._next_generation()
            delta = DeltaEntry(delta_key(self.model_version, generation), len(ids), len(removed))
            self.store.put(delta.key, encode_delta(ids, codes, removed))
            current = self._manifest
            self._publish(
                generation,
                current.shard_count if current else self.shards,
                current.shards if current else (),
                (*(current.deltas if current else ()), delta),
            )
            return generation

    def compact(self, *, force: bool = False) -> int | None:
        """Merge the base shards, every delta and the buffered changes into ``shards`` fresh
        base shards; the new generation, or None if the index is already compact.

        ``force`` writes fresh shards even then: after removals (a forget), two forced
        compactions leave no kept generation that references a segment holding their codes.
        """
        with self._lock:
            current = self._manifest
            compact_already = current is not None and not current.deltas and (
                current.shard_count == self.shards
            )
            if not self._changes and (current is None or (compact_already and not force)):
                return None
            ids, codes, _ = _net_effect(self._load_segments(current) + self._changes, self.bits)
            generation = self._next_generation()
            owners = ids % self.shards
            entries = []
            for shard in range(self.shards):
                mine = owners == shard
                key = shard_key(self.model_version, generation, shard)
                entry = ShardEntry(key, int(mine.sum()))
                self.store.put(entry.key, encode_shard(ids[mine], codes[mine], self.bits))
                entries.append(entry)
            self._publish(generation, self.shards, tuple(entries), ())
            return generation

    # --- internals (called with the lock held) -----------------------------------------------

    def _next_generation(self) -> int:
        return 1 if self._manifest is None else self._manifest.generation + 1

    def _load_segments(self, manifest: Manifest | None) -> list[_Change]:
        """The published generation as a change list, oldest first (what compaction merges)."""
        if manifest is None:
            return []
        changes: list[_Change] = []
        for shard in manifest.shards:
            contents = decode_shard(self.store.get(shard.key), self.bits, shard.key)
            changes.append((contents.ids, contents.codes.copy()))  # the view dies with contents
        for delta in manifest.deltas:
            ids, codes, removed = decode_delta(self.store.get(delta.key), self.bits, delta.key)
            changes += [(ids, codes), (removed, None)]
        return changes

    def _publish(
        self,
        generation: int,
        shard_count: int,
        shards: tuple[ShardEntry, ...],
        deltas: tuple[DeltaEntry, ...],
    ) -> None:
        """Write the manifest (its data is already written), adopt it, drop the buffered
        changes it now holds, then collect garbage."""
        found = latest_generation(self.store, self.model_version)
        if found != self.generation:
            raise ConcurrentWriterError(
                f"index {self.model_version} is at generation {found} in the store, but this "
                f"writer last published {self.generation}: is another indexer running?"
            )
        manifest = Manifest(
            model_version=self.model_version,
            bits=self.bits,
            generation=generation,
            created_at=dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"),
            shard_count=shard_count,
            shards=shards,
            deltas=deltas,
        )
        self.store.put(manifest_key(self.model_version, generation), manifest.to_json(),
                       content_type="application/json")
        self._manifest = manifest
        self._changes.clear()
        self._collect_garbage()

    def _collect_garbage(self) -> None:
        """Keep the newest :data:`KEEP_GENERATIONS` manifests and what they reference.

        Old manifests go first, so at no moment does a listed manifest point at deleted data.
        Best effort: the generation is already published, and the next one collects again.
        """
        try:
            self._delete_unreferenced()
        except ObjectStoreError as exc:
            log.warning("index %s: garbage collection postponed: %s", self.model_version, exc)

    def _delete_unreferenced(self) -> None:
        published = generations(self.store, self.model_version)
        kept, dropped = published[-KEEP_GENERATIONS:], published[:-KEEP_GENERATIONS]
        for generation in dropped:
            self.store.delete(manifest_key(self.model_version, generation))
        referenced = {manifest_key(self.model_version, generation) for generation in kept}
        for generation in kept:
            referenced |= read_manifest(self.store, self.model_version, generation).data_keys
        for key in self.store.list(prefix(self.model_version)):
            if key not in referenced:
                self.store.delete(key)


def _net_effect(changes: Sequence[_Change], bits: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The final state of every id a change list touches: the last change of an id wins.

    Returns ``(ids, codes, removed)``: ids present afterwards (ascending) with their codes,
    and ids whose last change was a removal (ascending).
    """
    width = bits // 8
    all_ids = np.concatenate([ids for ids, _ in changes])
    present = np.concatenate([np.full(len(ids), codes is not None) for ids, codes in changes])
    rows = np.concatenate([
        codes if codes is not None else np.zeros((len(ids), width), dtype=np.uint8)
        for ids, codes in changes
    ])
    # np.unique reports the first occurrence; on the reversed array that is the last change.
    unique, first_reversed = np.unique(all_ids[::-1], return_index=True)
    last = len(all_ids) - 1 - first_reversed
    keep = present[last]
    return unique[keep], rows[last[keep]], unique[~keep]
