"""The object store or the catalog down during a C-STORE: a retry status, nothing half-written."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import write_ct_series
from shared.pipeline.ingest import StoreStatus
from testbed.catalog_audit import all_instances
from testbed.servers import PostgresServer, S3Server
from tests.conftest import RunningListener

pytestmark = pytest.mark.integration

StartListener = Callable[[Settings], RunningListener]


def send(listener: RunningListener, files: list[Path]) -> list[int | None]:
    return [r.status for r in Sender("127.0.0.1", listener.port, "MEDHASH").send(files)]


def test_object_store_down(
    distributed_settings: Settings, listener_factory: StartListener, s3_server: S3Server, tmp_path: Path
) -> None:
    listener = listener_factory(distributed_settings)
    files = write_ct_series(tmp_path / "series", 3, rows=64, columns=64)
    with s3_server.stopped():
        assert send(listener, files) == [StoreStatus.OUT_OF_RESOURCES] * 3
        assert all_instances(listener.runtime.catalog) == []
    assert list(listener.runtime.store.list()) == []
    assert send(listener, files) == [StoreStatus.SUCCESS] * 3
    assert listener.runtime.catalog.counts_by_state()["received"] == 3
    assert len(list(listener.runtime.store.list("raw/"))) == 3


def test_catalog_down(
    distributed_settings: Settings,
    listener_factory: StartListener,
    postgres_server: PostgresServer,
    tmp_path: Path,
) -> None:
    listener = listener_factory(distributed_settings)
    first, *others = write_ct_series(tmp_path / "series", 3, rows=64, columns=64)
    assert send(listener, [first]) == [StoreStatus.SUCCESS]  # the pool holds a live connection
    with postgres_server.stopped():
        assert send(listener, others) == [StoreStatus.OUT_OF_RESOURCES] * 2
        # nothing half-written: no object without its row
        assert len(list(listener.runtime.store.list("raw/"))) == 1
    assert send(listener, others) == [StoreStatus.SUCCESS] * 2
    assert listener.runtime.catalog.counts_by_state()["received"] == 3
    keys = {row.object_key for row in all_instances(listener.runtime.catalog)}
    assert keys == set(listener.runtime.store.list("raw/"))
