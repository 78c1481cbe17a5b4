"""One distributed deployment for the whole reliability package.

Starting the seven medhash processes costs tens of seconds on two cores, more than most
tests here; so they share one deployment, and every test leaves it as it found it: every
process running, every server up, every instance final. Tests never assume an empty catalog;
they check their own instances and the invariants that must hold over everything
(:func:`tests.reliability.harness.audit`).

The deployment is configured for the checks of every module at once: a small reconcile
delay (recovery in seconds, not minutes), an allow-list of calling AE titles, an API key,
patient data not exposed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
import redis

from deploy.local_stack import LocalStack
from shared.config import Settings
from testbed.lsh_model import build_lsh_checkpoint
from testbed.servers import PostgresServer, RedisServer, S3Server, free_port
from tests.e2e.topology import _env
from tests.reliability.harness import (
    ALLOWED_AE,
    API_KEY,
    Deployment,
    Gate,
    stream_files_unchanged,
)

RECONCILE_AFTER_S = 5.0
"""An instance this long without progress is re-enqueued (production default: 300 s)."""


@pytest.fixture(scope="session")
def reliability_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lsh_checkpoint(tmp_path_factory.mktemp("reliability-model") / "model.pt")


def deployment_settings(work_dir: Path, checkpoint: Path, postgres: PostgresServer,
                        broker: RedisServer, s3: S3Server, s3_endpoint: str) -> Settings:
    """Distributed settings with a database and bucket of their own (``distributed_settings``,
    session-wide) and the reliability configuration."""
    name = f"reliability_{os.getpid()}"
    redis.Redis.from_url(broker.url).flushall()  # no message meant for another test's rows
    with psycopg.connect(postgres.url_for("postgres"), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    return Settings(
        data_dir=work_dir / "data", model=checkpoint, image_size=32,
        database_url=postgres.url_for(name), broker_url=broker.url,
        s3_endpoint=s3_endpoint, s3_access_key=s3.access_key, s3_secret_key=s3.secret_key,
        s3_bucket=name.replace("_", "-"),
        dicom_host="127.0.0.1", dicom_port=free_port(), http_host="127.0.0.1", http_port=free_port(),
        metrics_port=0, index_flush_s=0.3, reconcile_after_s=RECONCILE_AFTER_S,
        reconcile_interval_s=1.0, max_associations=64,
        allowed_calling_aes=[ALLOWED_AE, "RELIABILITY"], api_keys=[API_KEY],
        expose_patient_data=False, search_max_upload_bytes=2_000_000,
        series_stable_s=5.0, search_threads=1,
    )


@pytest.fixture(scope="session")
def s3_gate(s3_server: S3Server) -> Iterator[Gate]:
    """The deployment reaches S3 through this gate; closing it is the S3 outage."""
    gate = Gate(s3_server.port)
    gate.start()
    yield gate
    gate.stop()


@pytest.fixture(scope="package")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, reliability_checkpoint: Path,
    postgres_server: PostgresServer, redis_server: RedisServer, s3_server: S3Server, s3_gate: Gate,
) -> Iterator[Deployment]:
    """The distributed deployment of this package, stopped when its last test ends: its
    workers consume the session's Redis queues, which later tests of other packages use."""
    work_dir = tmp_path_factory.mktemp("reliability")
    settings = deployment_settings(work_dir, reliability_checkpoint, postgres_server, redis_server,
                                   s3_server, s3_gate.endpoint)
    stream_files_unchanged()
    stack = LocalStack(_env(settings), work_dir / "logs")
    running = Deployment(settings, stack, f"http://127.0.0.1:{settings.http_port}", work_dir)
    try:
        running.start()
        running.warm_up(work_dir / "warm-up")
        yield running
    finally:
        running.close()
        running.stop()
        print(f"\nreliability deployment logs: {stack.log_dir}")


@pytest.fixture
def healthy(deployment: Deployment, postgres_server: PostgresServer, redis_server: RedisServer,
            s3_gate: Gate) -> Iterator[Deployment]:
    """The deployment with every server up before and after the test (a test that failed
    inside an outage may have left one down; the supervisor restarts killed processes)."""
    for server in (postgres_server, redis_server, s3_gate):
        server.start()  # a no-op when it runs
    deployment.recover()
    yield deployment
    for server in (postgres_server, redis_server, s3_gate):
        server.start()
