"""The embedded default's object store: a folder, one file per key.

Writes go to a temporary file in the target folder, are fsync'ed, renamed over the key and
the folder is fsync'ed, so a crash leaves either the old object or the new one, never a torn
file, and a returned ``put`` survives power loss. Derived objects (``durable=False``) skip
the two flushes and keep the atomic rename.

A process killed in the middle of a ``put`` leaves its ``.tmp-*`` file behind (never an
object: ``list`` skips them). Opening the store removes those older than
:data:`STALE_TEMPORARY_S`, on a background thread so a large tree does not delay a start;
younger ones may belong to a ``put`` in flight in another process sharing the folder.
"""

from __future__ import annotations

import logging
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from shared.storage.objectstore.base import (
    ObjectNotFound,
    ObjectStoreUnavailable,
    check_key,
)


TEMPORARY_PREFIX = ".tmp-"
STALE_TEMPORARY_S = 3600.0
"""A temporary file this old is from a killed writer: no put takes an hour."""

log = logging.getLogger("medhash.objectstore")


class LocalObjectStore:
    """Objects as files below ``root``; keys map to relative paths."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.sweeper = threading.Thread(
            target=self.remove_stale_temporaries, name="medhash-tmp-sweep", daemon=True
        )
        self.sweeper.start()

    def remove_stale_temporaries(self, older_than_s: float = STALE_TEMPORARY_S) -> int:
        """Delete ``.tmp-*`` files left by killed writers; returns how many."""
        cutoff = time.time() - older_than_s
        removed = 0
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if not name.startswith(TEMPORARY_PREFIX):
                    continue
                path = Path(dirpath) / name
                try:
                    if path.stat().st_mtime < cutoff:
                        path.unlink()
                        removed += 1
                except FileNotFoundError:  # renamed into place or removed meanwhile
                    continue
                except OSError as exc:
                    log.warning("cannot remove stale temporary file %s: %s", path, exc)
        if removed:
            log.info("removed %d temporary file(s) left by interrupted writes under %s", removed, self.root)
        return removed

    def _path(self, key: str) -> Path:
        path = self.root.joinpath(*check_key(key).split("/"))
        # check_key already forbids "..", this guards against symlinks planted in the tree.
        if not path.resolve().is_relative_to(self.root.resolve()):
            raise ObjectNotFound(key)
        return path

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        durable: bool = True,
    ) -> None:
        path = self._path(key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=TEMPORARY_PREFIX)
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    if durable:
                        handle.flush()
                        os.fsync(handle.fileno())
                os.replace(tmp_name, path)
            except BaseException:
                Path(tmp_name).unlink(missing_ok=True)
                raise
            if durable:
                _fsync_dir(path.parent)
        except OSError as exc:
            raise ObjectStoreUnavailable(f"cannot write {path}: {exc}") from exc

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            return path.read_bytes()
        except FileNotFoundError:
            raise ObjectNotFound(key) from None
        except OSError as exc:
            raise ObjectStoreUnavailable(f"cannot read {path}: {exc}") from exc

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def delete(self, key: str) -> None:
        path = self._path(key)
        try:
            path.unlink(missing_ok=True)
        except OSError as exc:
            raise ObjectStoreUnavailable(f"cannot delete {path}: {exc}") from exc

    def list(self, prefix: str = "") -> Iterator[str]:
        keys = []
        for dirpath, _dirnames, filenames in os.walk(self.root):
            for name in filenames:
                if name.startswith(TEMPORARY_PREFIX):
                    continue
                key = (Path(dirpath) / name).relative_to(self.root).as_posix()
                if key.startswith(prefix):
                    keys.append(key)
        return iter(sorted(keys))

    def check(self) -> None:
        if not os.access(self.root, os.W_OK):
            raise ObjectStoreUnavailable(f"object folder {self.root} is not writable")


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
