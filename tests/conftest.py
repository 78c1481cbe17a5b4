"""Fixtures shared by every test: settings for both configurations and the real servers.

Servers (PostgreSQL, Redis, an S3 API, Orthanc) are started by the tests themselves on free
loopback ports (see ``testbed/servers.py``); each test gets a fresh database and bucket so
tests never see each other's rows or objects.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
import redis

from services.listener import Listener
from shared.config import Settings
from shared.pipeline.wiring import Runtime
from testbed.servers import (
    OrthancServer,
    PostgresServer,
    RedisServer,
    S3Server,
    require_binary,
)

_names = itertools.count(1)


def dcmtk(tool: str) -> str:
    """Path of a dcmtk tool; never pynetdicom's same-named script in the venv."""
    return require_binary(tool, Path("/usr/bin"))


def dcmtk_env() -> dict[str, str]:
    """dcmtk leaves Nagle's algorithm on unless told otherwise, and then crawls."""
    return {**os.environ, "TCP_NODELAY": "1"}


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    # Its own temp dir: pytest's is private to root, and postgres runs as user postgres.
    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with RedisServer(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    with S3Server(tmp_path_factory.mktemp("s3")) as server:
        yield server


@pytest.fixture
def embedded_settings(tmp_path: Path) -> Settings:
    """The embedded default: SQLite and a folder under the test's tmp_path."""
    return Settings(
        data_dir=tmp_path / "data",
        dicom_host="127.0.0.1",
        dicom_port=0,
        metrics_port=0,
        database_url=None,
        broker_url=None,
        s3_endpoint=None,
    )


@pytest.fixture
def distributed_settings(
    tmp_path: Path, postgres_server: PostgresServer, redis_server: RedisServer, s3_server: S3Server
) -> Settings:
    """PostgreSQL + Redis + S3, with a database and a bucket of the test's own."""
    name = f"t{os.getpid()}_{next(_names)}"
    # queues are shared by name: start each test without messages meant for another's rows
    redis.Redis.from_url(redis_server.url).flushall()
    with psycopg.connect(postgres_server.url_for("postgres"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return Settings(
        data_dir=tmp_path / "data",
        dicom_host="127.0.0.1",
        dicom_port=0,
        metrics_port=0,
        database_url=postgres_server.url_for(name),
        broker_url=redis_server.url,
        s3_endpoint=s3_server.endpoint,
        s3_access_key=s3_server.access_key,
        s3_secret_key=s3_server.secret_key,
        s3_bucket=name.replace("_", "-"),
    )


@pytest.fixture(params=["embedded", pytest.param("distributed", marks=pytest.mark.integration)])
def any_settings(request: pytest.FixtureRequest) -> Settings:
    """Both configurations, one after the other."""
    fixture = "embedded_settings" if request.param == "embedded" else "distributed_settings"
    return request.getfixturevalue(fixture)


@dataclass
class RunningListener:
    host: str
    port: int
    runtime: Runtime
    settings: Settings


@contextmanager
def running_listener(settings: Settings) -> Iterator[RunningListener]:
    """A listener in this process on a free port, with the runtime the settings describe."""
    runtime = Runtime.from_settings(settings)
    scp = Listener(settings, runtime.ingestor)
    address = scp.start()
    try:
        yield RunningListener(address.host, address.port, runtime, settings)
    finally:
        scp.stop()
        runtime.close()


@pytest.fixture
def listener_factory() -> Iterator[Callable[[Settings], RunningListener]]:
    """Start listeners that are stopped when the test ends."""
    with ExitStack() as stack:
        yield lambda settings: stack.enter_context(running_listener(settings))


@pytest.fixture
def orthanc_factory() -> Iterator[Callable[..., OrthancServer]]:
    """make(aet=..., modalities={"medhash": ["MEDHASH", "127.0.0.1", port]}, lua_scripts=[...])"""
    with ExitStack() as stack:
        yield lambda **kwargs: stack.enter_context(OrthancServer(**kwargs))
