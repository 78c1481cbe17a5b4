"""Running medhash for end-to-end tests: `medhash serve`, or the distributed local stack."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from deploy.local_stack import LocalStack
from shared.config import Settings
from testbed.servers import free_port


@dataclass(frozen=True)
class Topology:
    settings: Settings
    dicom_port: int
    http_url: str


def _env(settings: Settings) -> dict[str, str]:
    """The settings as the MEDHASH_* environment of child processes (nothing inherited)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDHASH_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[f"MEDHASH_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    return env


def _settings(base: Settings, tmp_path: Path, checkpoint: Path) -> Settings:
    return base.model_copy(update={
        "data_dir": tmp_path / "data", "model": checkpoint, "image_size": 48,
        "dicom_host": "127.0.0.1", "dicom_port": free_port(), "http_host": "127.0.0.1",
        "http_port": free_port(), "metrics_port": 0, "index_flush_s": 0.3,
        "reconcile_after_s": 20.0, "reconcile_interval_s": 2.0,
    })


@contextmanager
def embedded_topology(tmp_path: Path, checkpoint: Path) -> Iterator[Topology]:
    """One `medhash serve` process on the embedded default."""
    settings = _settings(Settings(database_url=None, broker_url=None, s3_endpoint=None), tmp_path, checkpoint)
    env = _env(settings)
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    with (log_dir / "serve.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "medhash.cli", "serve"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    stack = LocalStack(env, log_dir, {"serve": process})
    try:
        stack.wait_for_search(120)
        yield Topology(settings, settings.dicom_port, f"http://127.0.0.1:{settings.http_port}")
    finally:
        stack.stop()


@contextmanager
def distributed_topology(tmp_path: Path, checkpoint: Path, base: Settings) -> Iterator[Topology]:
    """Every service and worker as its own process on PostgreSQL, Redis and S3."""
    settings = _settings(base, tmp_path, checkpoint)
    stack = LocalStack(_env(settings), tmp_path / "logs")
    try:
        stack.start()
        yield Topology(settings, settings.dicom_port, f"http://127.0.0.1:{settings.http_port}")
    finally:
        stack.stop()
