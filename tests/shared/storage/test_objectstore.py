"""Both object-store backends keep the same contract."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from shared.config import Settings
from shared.storage.objectstore import (
    InvalidKey,
    LocalObjectStore,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreUnavailable,
    open_object_store,
)
from shared.storage.objectstore.local import STALE_TEMPORARY_S
from shared.storage.objectstore.s3 import S3ObjectStore
from testbed.servers import S3Server


@pytest.fixture
def store(any_settings: Settings) -> ObjectStore:
    return open_object_store(any_settings)


def test_put_get_list_delete(store: ObjectStore) -> None:
    store.put("raw/1.2/1.2.3/a.dcm", b"first")
    store.put("raw/1.2/1.2.3/b.dcm", b"second")
    store.put("slices/x.png", b"other")
    assert store.get("raw/1.2/1.2.3/a.dcm") == b"first"
    assert store.exists("raw/1.2/1.2.3/b.dcm")
    assert list(store.list("raw/")) == ["raw/1.2/1.2.3/a.dcm", "raw/1.2/1.2.3/b.dcm"]
    store.put("raw/1.2/1.2.3/a.dcm", b"replaced")
    assert store.get("raw/1.2/1.2.3/a.dcm") == b"replaced"
    store.delete("raw/1.2/1.2.3/a.dcm")
    store.delete("raw/1.2/1.2.3/a.dcm")  # deleting twice is fine
    assert not store.exists("raw/1.2/1.2.3/a.dcm")
    with pytest.raises(ObjectNotFound):
        store.get("raw/1.2/1.2.3/a.dcm")


@pytest.mark.parametrize("key", ["../escape", "raw/../../escape", "/etc/passwd"])
def test_unsafe_keys_are_refused(store: ObjectStore, key: str) -> None:
    with pytest.raises(InvalidKey):
        store.put(key, b"x")
    with pytest.raises(InvalidKey):
        store.get(key)


@pytest.mark.unit
def test_local_put_leaves_no_temporary_files(embedded_settings: Settings) -> None:
    store = open_object_store(embedded_settings)
    for n in range(5):
        store.put(f"raw/1/2/{n}.dcm", bytes(1000))
    files = [p.name for p in Path(embedded_settings.object_dir).rglob("*") if p.is_file()]
    assert sorted(files) == [f"{n}.dcm" for n in range(5)]


@pytest.mark.integration
def test_s3_down_is_unavailable_then_recovers(s3_server: S3Server) -> None:
    store = S3ObjectStore(
        endpoint=s3_server.endpoint,
        access_key=s3_server.access_key,
        secret_key=s3_server.secret_key,
        bucket="outage",
        timeout_s=2.0,
    )
    store.put("a/b", b"kept")
    with s3_server.stopped():
        with pytest.raises(ObjectStoreUnavailable):
            store.put("a/c", b"lost?")
        with pytest.raises(ObjectStoreUnavailable):
            store.get("a/b")
    assert store.get("a/b") == b"kept"
    store.put("a/c", b"now")
    assert store.get("a/c") == b"now"


KILLED_WRITER = """
import sys
from pathlib import Path
from shared.storage.objectstore import LocalObjectStore

store = LocalObjectStore(Path(sys.argv[1]))
for n in range(1000):
    store.put(f"raw/1.2/1.2.3/{n}.dcm", b"x" * 20_000_000)
"""


@pytest.mark.integration
def test_a_killed_writers_temporary_file_is_removed_when_the_folder_store_opens(tmp_path: Path) -> None:
    root = tmp_path / "objects"
    writer = subprocess.Popen([sys.executable, "-c", KILLED_WRITER, str(root)])
    try:
        deadline = time.monotonic() + 60
        while not list(root.rglob(".tmp-*")):
            assert time.monotonic() < deadline and writer.poll() is None, "the writer never started a put"
            time.sleep(0.001)
    finally:
        writer.kill()
        writer.wait()
    left = list(root.rglob(".tmp-*"))
    assert left, "the kill came between two puts: no temporary file to clean"
    fresh = left[0].with_name(".tmp-in-flight-elsewhere")
    fresh.write_bytes(b"another process's put")
    old = time.time() - 2 * STALE_TEMPORARY_S
    for path in left:
        os.utime(path, (old, old))
    objects = sorted(LocalObjectStore(root).list())
    store = LocalObjectStore(root)
    store.sweeper.join(timeout=60)
    assert not any(path.exists() for path in left)
    assert fresh.exists()  # too young: may be a put in flight in another process
    assert sorted(store.list()) == objects  # never an object
