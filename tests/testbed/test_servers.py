"""The test servers are real: clients connect, outages are outages, nothing is left running.

Each test owns its servers (rather than using the session fixtures) because it stops,
pauses and restarts them.
"""

from __future__ import annotations

import io
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import psycopg
import pytest
import redis
import urllib3
from minio import Minio
from pydicom.data import get_testdata_file

from testbed.servers import (
    MissingBinaryError,
    OrthancServer,
    PostgresServer,
    RedisServer,
    S3Server,
    free_port,
    require_binary,
)

REPO = Path(__file__).resolve().parents[2]


def _process_exists(pid: int) -> bool:
    """True for a live process; a zombie (dead, not yet reaped by its new parent) is dead."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _minio(server: S3Server, timeout: float = 10.0) -> Minio:
    """A MinIO client that gives up fast, so that a paused server fails the call quickly."""
    http = urllib3.PoolManager(timeout=urllib3.Timeout(connect=timeout, read=timeout), retries=False)
    return Minio(
        server.endpoint,
        access_key=server.access_key,
        secret_key=server.secret_key,
        secure=False,
        region=server.region,
        http_client=http,
    )


@pytest.mark.unit
def test_free_port_can_be_bound() -> None:
    port = free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


@pytest.mark.unit
def test_require_binary_finds_skips_or_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Path(require_binary("sh")).name == "sh"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get install dcmtk orthanc"):
        require_binary("storescu-that-does-not-exist")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(MissingBinaryError, match="not installed"):
        require_binary("storescu-that-does-not-exist")


@pytest.mark.integration
def test_postgres_serves_goes_down_and_comes_back_with_its_data() -> None:
    with PostgresServer() as pg:
        port = pg.port
        assert pg.url == f"postgresql://postgres@127.0.0.1:{port}/medhash"
        with psycopg.connect(pg.url, autocommit=True) as conn:
            assert conn.execute("select 1").fetchone() == (1,)
            conn.execute("create table t (x int)")
            conn.execute("insert into t values (42)")

        with pg.paused(), pytest.raises(psycopg.OperationalError):
            psycopg.connect(pg.url, connect_timeout=2)
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("select 1").fetchone() == (1,)

        with pg.stopped():
            assert pg.pid is None
            with pytest.raises(psycopg.OperationalError):
                psycopg.connect(pg.url, connect_timeout=2)
        assert pg.port == port
        with psycopg.connect(pg.url) as conn:
            assert conn.execute("select x from t").fetchall() == [(42,)]
        pid = pg.pid
        assert pid is not None
    assert not _process_exists(pid)
    assert not pg.root.exists()


@pytest.mark.integration
def test_redis_restart_loses_data_pause_keeps_it() -> None:
    with RedisServer() as server:
        client = redis.Redis.from_url(server.url, socket_timeout=0.5, socket_connect_timeout=0.5)
        assert client.ping()
        client.set("k", "v")

        with server.paused(), pytest.raises(redis.TimeoutError):
            client.ping()
        assert client.get("k") == b"v"

        port, pid = server.port, server.pid
        server.restart()
        assert (server.port, server.pid != pid) == (port, True)
        assert client.ping()
        assert client.get("k") is None


@pytest.mark.integration
def test_first_start_moves_to_another_port_when_its_port_was_taken() -> None:
    server = RedisServer()
    taken = server.port
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", taken))  # bound, not listening: redis's bind fails at once
        with server:
            assert server.port != taken
            assert redis.Redis.from_url(server.url).ping()
            assert "Address already in use" in server.log_path.read_text()


@pytest.mark.integration
def test_s3_keeps_objects_across_restart_and_pause() -> None:
    with S3Server() as s3:
        client = _minio(s3)
        client.make_bucket(s3.bucket)
        client.put_object(s3.bucket, "a/b.dcm", io.BytesIO(b"payload"), length=7)
        assert client.get_object(s3.bucket, "a/b.dcm").read() == b"payload"

        s3.restart()
        assert client.get_object(s3.bucket, "a/b.dcm").read() == b"payload"

        with s3.paused(), pytest.raises(urllib3.exceptions.HTTPError):
            _minio(s3, timeout=0.5).stat_object(s3.bucket, "a/b.dcm")
        assert client.stat_object(s3.bucket, "a/b.dcm").size == 7


@pytest.mark.integration
def test_s3_keeps_concurrent_uploads_across_restart() -> None:
    # moto's recorder alone interleaved concurrent uploads in its file and the replay failed
    from concurrent.futures import ThreadPoolExecutor

    payloads = {f"k/{i}": bytes([i]) * 100_000 for i in range(48)}
    with S3Server() as s3:
        client = _minio(s3)
        client.make_bucket(s3.bucket)
        with ThreadPoolExecutor(12) as pool:
            list(pool.map(lambda kv: client.put_object(s3.bucket, kv[0], io.BytesIO(kv[1]), len(kv[1])),
                          payloads.items()))
        s3.restart()
        for key, data in payloads.items():
            assert client.get_object(s3.bucket, key).read() == data


@pytest.mark.integration
def test_s3_without_persistence_forgets_on_restart() -> None:
    with S3Server(persistent=False) as s3:
        client = _minio(s3)
        client.make_bucket(s3.bucket)
        s3.restart()
        assert not client.bucket_exists(s3.bucket)


@pytest.mark.integration
def test_orthanc_stores_and_sends_dicom(tmp_path: Path) -> None:
    ct_small_path = get_testdata_file("CT_small.dcm")
    assert isinstance(ct_small_path, str)
    ct_small = Path(ct_small_path).read_bytes()
    lua = tmp_path / "announce.lua"
    lua.write_text('function OnStoredInstance(id, tags, metadata) print("stored " .. id) end\n')
    with OrthancServer(aet="RECEIVER", lua_scripts=[lua]) as receiver:
        modalities: dict[str, list[str | int]] = {"receiver": ["RECEIVER", "127.0.0.1", receiver.dicom_port]}
        with OrthancServer(aet="SENDER", modalities=modalities) as sender:
            system = sender.get("/system")
            assert (system["DicomAet"], system["HttpPort"], system["DicomPort"]) == (
                "SENDER",
                sender.http_port,
                sender.dicom_port,
            )
            assert sender.get("/modalities") == ["receiver"]

            instance = sender.upload(ct_small)
            assert sender.get("/instances") == [instance]
            started = time.monotonic()
            job = sender.store_to_modality("receiver", [instance])
            assert time.monotonic() - started < 2, "C-STORE crawled: is TCP_NODELAY set?"
            assert (job["InstancesCount"], job["FailedInstancesCount"]) == (1, 0)
        assert receiver.get("/instances") == [instance]  # same DICOM UIDs -> same Orthanc id
        assert f"stored {instance}" in receiver.log_tail()


@pytest.mark.integration
def test_restart_from_a_short_lived_thread_survives_the_thread() -> None:
    with RedisServer() as server:
        restarter = threading.Thread(target=server.restart)
        restarter.start()
        restarter.join()
        time.sleep(0.2)  # a parent-death SIGKILL would have arrived by now
        assert server.running
        assert redis.Redis.from_url(server.url).ping()


@pytest.mark.integration
@pytest.mark.parametrize("ending", ["exit", "sigkill"])
def test_no_server_outlives_the_test_process(ending: str) -> None:
    """A normal exit without teardown runs the atexit backstop; SIGKILL skips it, the kernel kills."""
    end = {"exit": "raise SystemExit(3)", "sigkill": "os.kill(os.getpid(), signal.SIGKILL)"}[ending]
    script = textwrap.dedent(
        f"""
        import os, signal
        from testbed.servers import RedisServer
        server = RedisServer()
        server.start()
        print(server.pid, server.root, flush=True)
        {end}
        """
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == {"exit": 3, "sigkill": -signal.SIGKILL}[ending], result.stderr
    pid_text, root = result.stdout.split()
    try:
        deadline = time.monotonic() + 5
        while _process_exists(int(pid_text)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _process_exists(int(pid_text))
        assert Path(root).exists() == (ending == "sigkill")  # only atexit can clean up
    finally:
        subprocess.run(["rm", "-rf", root], check=True)
