"""Celery CPU workers as separate processes on real Redis, PostgreSQL and S3: killed workers
and a Redis that forgets every message still leave every instance final, exactly once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import write_ct_series
from shared.pipeline.reconcile import Reconciler
from shared.pipeline.states import Stage
from shared.storage.catalog import InstanceState
from testbed.catalog_audit import all_instances, all_slices
from testbed.servers import RedisServer
from tests.conftest import RunningListener

pytestmark = [pytest.mark.integration, pytest.mark.slow]

FINAL = {InstanceState.PREPROCESSED, InstanceState.SKIPPED, InstanceState.FAILED}


def worker_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDHASH_")}
    env.update({
        "MEDHASH_DATA_DIR": str(settings.data_dir),
        "MEDHASH_DATABASE_URL": str(settings.database_url),
        "MEDHASH_BROKER_URL": str(settings.broker_url),
        "MEDHASH_S3_ENDPOINT": str(settings.s3_endpoint),
        "MEDHASH_S3_ACCESS_KEY": settings.s3_access_key,
        "MEDHASH_S3_SECRET_KEY": settings.s3_secret_key,
        "MEDHASH_S3_BUCKET": settings.s3_bucket,
        "MEDHASH_IMAGE_SIZE": str(settings.image_size),
        "MEDHASH_METRICS_PORT": "0",
    })
    return env


@contextmanager
def worker(settings: Settings, log: Path) -> Iterator[subprocess.Popen[bytes]]:
    """`medhash worker --queues preprocess` in its own process group (killed as a whole)."""
    with log.open("ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "medhash.cli", "worker", "--queues", "preprocess", "--concurrency", "1"],
            env=worker_env(settings), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)


def states(listener: RunningListener) -> dict[str, int]:
    return {k: v for k, v in listener.runtime.catalog.counts_by_state().items() if v}


def wait_until(condition: Callable[[], bool], timeout_s: float, tick: Callable[[], object] = lambda: None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        tick()
        if condition():
            return
        time.sleep(0.5)
    raise AssertionError("condition not reached in time")


def assert_each_effect_once(listener: RunningListener, count: int) -> None:
    catalog = listener.runtime.catalog
    rows = all_instances(catalog)
    assert len(rows) == count and {row.state for row in rows} == {InstanceState.PREPROCESSED}
    slices = all_slices(catalog)
    assert len(slices) == count  # single-frame instances: one slice each, never two
    assert len({(s.instance_id, s.frame_index) for s in slices}) == count
    assert sorted(listener.runtime.store.list("slices/")) == sorted(s.object_key for s in slices)


@pytest.fixture
def settings(distributed_settings: Settings) -> Settings:
    return distributed_settings.model_copy(update={"image_size": 64, "reconcile_after_s": 3.0})


def test_worker_killed_mid_task(
    settings: Settings, listener_factory: Callable[[Settings], RunningListener], tmp_path: Path
) -> None:
    listener = listener_factory(settings)
    files = write_ct_series(tmp_path / "study", 30, rows=256, columns=256)
    assert all(r.stored for r in Sender("127.0.0.1", listener.port, "MEDHASH").send(files))

    with worker(settings, tmp_path / "worker1.log") as first:
        wait_until(lambda: states(listener).get("preprocessed", 0) >= 3, 90)
        os.killpg(first.pid, signal.SIGKILL)  # kill -9, mid-stream
        first.wait(timeout=30)
    left = states(listener).get("received", 0)
    assert left > 0, "the worker finished everything before it was killed; nothing was tested"

    reconciler = Reconciler(listener.runtime.catalog, listener.runtime.host, settings,
                            listener.runtime.forgetter)
    with worker(settings, tmp_path / "worker2.log"):
        wait_until(lambda: states(listener) == {"preprocessed": 30}, 120, tick=reconciler.run_once)
    assert_each_effect_once(listener, 30)


def test_redis_restart_loses_every_message(
    settings: Settings,
    listener_factory: Callable[[Settings], RunningListener],
    redis_server: RedisServer,
    tmp_path: Path,
) -> None:
    listener = listener_factory(settings)
    files = write_ct_series(tmp_path / "study", 12, rows=128, columns=128)
    assert all(r.stored for r in Sender("127.0.0.1", listener.port, "MEDHASH").send(files))
    host = listener.runtime.host
    assert host.pending(Stage.PREPROCESS) == 12
    redis_server.restart()  # it keeps nothing on disk: every queued message is gone
    assert host.pending(Stage.PREPROCESS) == 0

    reconciler = Reconciler(listener.runtime.catalog, host, settings, listener.runtime.forgetter)
    with worker(settings, tmp_path / "worker.log"):
        time.sleep(3)
        assert states(listener) == {"received": 12}  # no message, no progress...
        wait_until(lambda: states(listener) == {"preprocessed": 12}, 120, tick=reconciler.run_once)
    assert_each_effect_once(listener, 12)
