"""The object-store contract every backend keeps.

``put`` returns only once the bytes are durable: the listener answers C-STORE Success on
that promise. Failures are split into :class:`ObjectStoreUnavailable` (transient: the caller
answers "retry later") and everything else, so a sender is never told to retry forever for
a request that can never succeed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Protocol, runtime_checkable

_KEY_SEGMENT = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MAX_KEY_LENGTH = 1024


class ObjectStoreError(Exception):
    """Base class of object-store errors."""


class ObjectStoreUnavailable(ObjectStoreError):
    """The store cannot be reached or refused the operation for now; retrying may succeed."""


class ObjectNotFound(ObjectStoreError, KeyError):
    """No object under that key."""


class InvalidKey(ObjectStoreError, ValueError):
    """A key that could escape the bucket or folder, or that no backend can hold."""


def check_key(key: str) -> str:
    """Return ``key`` unchanged if every ``/``-separated segment is plain; raise otherwise.

    Segments start with a letter or digit and hold only ``[A-Za-z0-9._-]``, so ``..``,
    absolute paths, backslashes and control characters can never form a key.
    """
    if not key or len(key) > MAX_KEY_LENGTH:
        raise InvalidKey(f"object key must have 1 to {MAX_KEY_LENGTH} characters")
    for segment in key.split("/"):
        if not _KEY_SEGMENT.fullmatch(segment):
            raise InvalidKey(f"unsafe object key segment {segment[:80]!r} in {key[:200]!r}")
    return key


@runtime_checkable
class ObjectStore(Protocol):
    """Bytes under readable keys such as ``raw/<StudyUID>/<SeriesUID>/<SOPUID>.<sha>.dcm``."""

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        durable: bool = True,
    ) -> None:
        """Store ``data`` under ``key``; durable when this returns.

        ``durable=False`` is for derived objects (slices, thumbnails) that the pipeline can
        make again from the raw bytes: the write is atomic but may be lost on power failure,
        which spares a backend the flushes that dominate small writes.
        """
        ...

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; :class:`ObjectNotFound` when there are none."""
        ...

    def exists(self, key: str) -> bool: ...

    def delete(self, key: str) -> None:
        """Remove ``key``; no error when it is already gone."""
        ...

    def list(self, prefix: str = "") -> Iterator[str]:
        """Every key that starts with ``prefix``, in lexical order."""
        ...

    def check(self) -> None:
        """Raise :class:`ObjectStoreUnavailable` unless the store answers now."""
        ...
