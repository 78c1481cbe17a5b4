"""Keys, manifests and segment encodings of the index (the format the package docstring
describes), shared by the writer and the readers so the two cannot disagree."""

from __future__ import annotations

import io
import json
import re
from dataclasses import asdict, dataclass
from typing import Any

import faiss
import numpy as np

from shared.storage.objectstore import InvalidKey, ObjectStore, check_key

FORMAT_VERSION = 1
ROOT = "index/"
_MANIFEST_NAME = re.compile(r"(\d{10})\.json")


class IndexFormatError(ValueError):
    """An object in the index does not have the shape the format promises."""


class ConcurrentWriterError(RuntimeError):
    """Another writer published a generation of the same model version."""


def check_model_version(model_version: str) -> str:
    """Return ``model_version`` if it can be one key segment; it names a folder of the store."""
    if not isinstance(model_version, str) or "/" in model_version:
        raise InvalidKey(f"model version {model_version!r} must be a single key segment")
    try:
        check_key(model_version)
    except InvalidKey:
        raise InvalidKey(
            f"model version {model_version[:80]!r} must match [A-Za-z0-9][A-Za-z0-9._-]*"
        ) from None
    return model_version


def check_bits(bits: int) -> int:
    """Code length in bits: positive and whole bytes, as faiss binary indexes require."""
    if isinstance(bits, bool) or not isinstance(bits, int) or bits <= 0 or bits % 8:
        raise ValueError(f"bits must be a positive multiple of 8, not {bits!r}")
    return bits


def check_codes(codes: np.ndarray, bits: int, what: str = "codes") -> np.ndarray:
    """``codes`` as a C-contiguous ``(n, bits // 8)`` uint8 array (a 1-D array is one code)."""
    array = np.asarray(codes)
    if array.dtype != np.uint8:
        raise ValueError(f"{what} must be packed uint8 bits, not {array.dtype}")
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2 or array.shape[1] != bits // 8:
        raise ValueError(
            f"{what} must have shape (n, {bits // 8}) for {bits} bits, not {array.shape}"
        )
    return np.ascontiguousarray(array)


def check_ids(ids: np.ndarray) -> np.ndarray:
    """``ids`` as a 1-D int64 array of non-negative integers (faiss uses -1 for "no result")."""
    array = np.asarray(ids)
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise ValueError(f"ids must be a 1-D integer array, not {array.dtype} {array.shape}")
    array = array.astype(np.int64, copy=False)
    if array.size and array.min() < 0:
        raise ValueError("ids must be non-negative")
    return array


def prefix(model_version: str) -> str:
    return f"{ROOT}{model_version}/"


def manifest_prefix(model_version: str) -> str:
    return f"{prefix(model_version)}manifests/"


def manifest_key(model_version: str, generation: int) -> str:
    return f"{manifest_prefix(model_version)}{generation:010d}.json"


def shard_key(model_version: str, generation: int, shard: int) -> str:
    return f"{prefix(model_version)}gen-{generation}/shard-{shard}.faissidx"


def delta_key(model_version: str, generation: int) -> str:
    return f"{prefix(model_version)}delta/{generation:010d}.npz"


def generations(store: ObjectStore, model_version: str) -> list[int]:
    """Every generation with a manifest in the store, ascending."""
    start = manifest_prefix(check_model_version(model_version))
    found = []
    for key in store.list(start):
        match = _MANIFEST_NAME.fullmatch(key[len(start):])
        if match:
            found.append(int(match.group(1)))
    return sorted(found)


def latest_generation(store: ObjectStore, model_version: str) -> int | None:
    """The newest published generation of ``model_version``, or None if it has no index."""
    found = generations(store, model_version)
    return found[-1] if found else None


def list_model_versions(store: ObjectStore) -> list[str]:
    """Model versions that have at least one published manifest, sorted."""
    versions = set()
    for key in store.list(ROOT):
        parts = key[len(ROOT):].split("/")
        if len(parts) == 3 and parts[1] == "manifests" and _MANIFEST_NAME.fullmatch(parts[2]):
            versions.add(parts[0])
    return sorted(versions)


@dataclass(frozen=True)
class ShardEntry:
    key: str
    count: int


@dataclass(frozen=True)
class DeltaEntry:
    key: str
    adds: int
    removes: int


@dataclass(frozen=True)
class Manifest:
    """One generation: the segments a reader searches, oldest first."""

    model_version: str
    bits: int
    generation: int
    created_at: str
    shard_count: int
    shards: tuple[ShardEntry, ...]
    deltas: tuple[DeltaEntry, ...]

    @property
    def data_keys(self) -> set[str]:
        return {entry.key for entry in (*self.shards, *self.deltas)}

    def to_json(self) -> bytes:
        body: dict[str, Any] = {"format": FORMAT_VERSION, **asdict(self)}
        return json.dumps(body, indent=1).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Manifest:
        try:
            body = json.loads(data)
            if body.pop("format") != FORMAT_VERSION:
                raise IndexFormatError(f"unknown index format {data[:200]!r}")
            body["shards"] = tuple(ShardEntry(**entry) for entry in body["shards"])
            body["deltas"] = tuple(DeltaEntry(**entry) for entry in body["deltas"])
            return cls(**body)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, IndexFormatError):
                raise
            raise IndexFormatError(f"malformed manifest: {exc}") from exc


def read_manifest(store: ObjectStore, model_version: str, generation: int) -> Manifest:
    """The manifest of one generation; :class:`ObjectNotFound` if it is not (or no longer)
    in the store."""
    manifest = Manifest.from_json(store.get(manifest_key(model_version, generation)))
    if manifest.model_version != model_version or manifest.generation != generation:
        raise IndexFormatError(
            f"manifest {manifest_key(model_version, generation)} describes "
            f"{manifest.model_version} generation {manifest.generation}"
        )
    return manifest


def encode_shard(ids: np.ndarray, codes: np.ndarray, bits: int) -> bytes:
    """A base shard file: ``ids`` must be ascending so storage order is id order."""
    index = faiss.IndexBinaryIDMap(faiss.IndexBinaryFlat(bits))
    if len(ids):
        index.add_with_ids(codes, ids)
    return faiss.serialize_index_binary(index).tobytes()


@dataclass
class ShardContents:
    """A deserialized base shard. ``codes`` is a view into faiss's memory: keep ``owner``."""

    owner: faiss.IndexBinaryIDMap
    flat: faiss.IndexBinaryFlat
    ids: np.ndarray
    codes: np.ndarray


def decode_shard(data: bytes, bits: int, key: str) -> ShardContents:
    owner = faiss.deserialize_index_binary(np.frombuffer(data, dtype=np.uint8))
    if not isinstance(owner, faiss.IndexBinaryIDMap) or owner.d != bits:
        raise IndexFormatError(f"{key} is not an IndexBinaryIDMap of {bits} bits")
    flat = faiss.downcast_IndexBinary(owner.index)
    if not isinstance(flat, faiss.IndexBinaryFlat):
        raise IndexFormatError(f"{key} does not wrap an IndexBinaryFlat")
    ids = _ascending(faiss.vector_to_array(owner.id_map).astype(np.int64, copy=False), key)
    nbytes = bits // 8
    if ids.size:
        codes = faiss.rev_swig_ptr(flat.xb.data(), ids.size * nbytes).reshape(ids.size, nbytes)
    else:
        codes = np.empty((0, nbytes), dtype=np.uint8)
    return ShardContents(owner, flat, ids, codes)


def encode_delta(ids: np.ndarray, codes: np.ndarray, removed: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, ids=ids, codes=codes, removed=removed)
    return buffer.getvalue()


def decode_delta(data: bytes, bits: int, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(ids, codes, removed) of a delta segment, checked against the format."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            ids, codes, removed = npz["ids"], npz["codes"], npz["removed"]
    except (OSError, KeyError, ValueError) as exc:
        raise IndexFormatError(f"{key} is not a delta segment: {exc}") from exc
    if (
        ids.dtype != np.int64 or removed.dtype != np.int64 or ids.ndim != 1
        or codes.shape != (ids.size, bits // 8) or codes.dtype != np.uint8
    ):
        raise IndexFormatError(f"{key}: arrays do not match the format for {bits} bits")
    return _ascending(ids, key), np.ascontiguousarray(codes), removed


def _ascending(ids: np.ndarray, key: str) -> np.ndarray:
    """Segments store codes in strictly ascending id order: tie order depends on it."""
    if ids.size > 1 and not np.all(ids[1:] > ids[:-1]):
        raise IndexFormatError(f"{key}: ids are not stored in strictly ascending order")
    return ids
