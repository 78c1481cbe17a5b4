"""Real servers for integration tests: PostgreSQL, Redis, an S3 API (moto) and Orthanc.

Integration tests run medhash against the same kinds of servers it meets in production,
not against mocks, because the failures that matter (a dropped connection, a broker that
forgot its queue, an object store that times out, a PACS that sends over a real
association) only show up there. Every class here starts its server as a child process on
a free loopback port, in a private temporary directory, waits until the server really
answers, and stops it by PID. None of them touches servers the machine may already run
(a system PostgreSQL on 5432, a Redis on 6379).

Servers can be stopped and started again on the *same* port, and paused (SIGSTOP) and
resumed (SIGCONT): that is how tests simulate outages. ``paused()`` and ``stopped()`` are
context managers that bring the server back even when the test fails inside them.

No process is left behind: fixtures stop servers, an ``atexit`` hook stops whatever is
still running, and every server asks the kernel to SIGKILL it when the test process dies
without running ``atexit`` (SIGKILL, ``os._exit`` as used by pytest-timeout's thread
method).
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import json
import os
import pwd
import queue
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, ClassVar, Self

import psycopg
import pytest

PG_BIN_DIR = Path("/usr/lib/postgresql/15/bin")
"""Debian's PostgreSQL 15 binaries; they are not on PATH."""

_INSTALL_HINTS: dict[str, str] = {
    "postgres": "apt-get install postgresql-15",
    "initdb": "apt-get install postgresql-15",
    "redis-server": "apt-get install redis-server",
    "moto_server": 'pip install "moto[server]"',
    "Orthanc": "apt-get install dcmtk orthanc",
    "storescu": "apt-get install dcmtk orthanc",
    "echoscu": "apt-get install dcmtk orthanc",
    "chromium": "apt-get install chromium",
}

# Lines of a failed server's log that go into the exception (the log file keeps it all).
_LOG_TAIL_CHARS = 4000
# How a server that could not bind its port says so in its log; on the first start the
# port is then replaced by another free one (someone took it between free_port() and bind).
_PORT_IN_USE = re.compile(r"already in use|is in use|cannot bind|could not bind", re.IGNORECASE)
_FIRST_START_ATTEMPTS = 3
# urllib must not route loopback requests through an HTTP(S)_PROXY from the environment.
_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class ServerStartError(RuntimeError):
    """A server did not come up; the message carries the tail of its log."""


class MissingBinaryError(RuntimeError):
    """A server binary is not installed and the run is on CI, where skipping would hide it."""


def free_port() -> int:
    """Return a TCP port that is free on every local address at this moment.

    Binds the wildcard address (not only 127.0.0.1) because Orthanc always listens on
    0.0.0.0. Another process may still take the port before the server binds it; the
    servers' first start() notices that in the log and retries on a new port.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        port: int = sock.getsockname()[1]
        return port


def require_binary(name: str, *extra_dirs: Path) -> str:
    """Return the absolute path of executable ``name``, looked up in ``extra_dirs`` then PATH.

    When it is missing, a developer's run skips the test with the command that installs
    it, but a CI run (``CI=true``) fails: a CI image without the binary would otherwise
    report green while testing nothing.
    """
    search_path = os.pathsep.join([*(str(d) for d in extra_dirs), os.environ.get("PATH", "")])
    found = shutil.which(name, path=search_path)
    if found is not None:
        return found
    hint = _INSTALL_HINTS.get(name, "apt-get install dcmtk orthanc")
    message = f"{name} is not installed (looked in {search_path}); install it with: {hint}"
    if os.environ.get("CI", "").lower() == "true":
        raise MissingBinaryError(message)
    pytest.skip(message)


def _http(
    method: str,
    url: str,
    body: bytes | None = None,
    headers: Mapping[str, str] | None = None,
    timeout: float = 30.0,
) -> tuple[int, bytes]:
    """Send one HTTP request and return (status, body); error statuses are returned, not raised."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with _HTTP.open(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


class _Spawner:
    """Forks every server from one daemon thread that lives as long as the interpreter.

    Servers ask for SIGKILL when their parent goes away (``PR_SET_PDEATHSIG``), but Linux
    ties that to the *thread* that forked them: a server started from a short-lived thread
    (a ``threading.Timer`` that brings a server back in the middle of an outage test) would
    die with that thread. A daemon thread ends only when the process does, after ``atexit``
    has stopped the servers cleanly.
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[tuple[Callable[[], Any], Future[Any]]] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def popen(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        """Run ``subprocess.Popen(argv, **kwargs)`` on the spawner thread and return the result."""
        with self._lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._serve, name="medhash-test-spawner", daemon=True)
                self._thread.start()
        future: Future[subprocess.Popen[bytes]] = Future()
        self._jobs.put((lambda: subprocess.Popen(argv, preexec_fn=_die_with_parent, **kwargs), future))
        return future.result()

    def _serve(self) -> None:
        while True:
            job, future = self._jobs.get()
            try:
                future.set_result(job())
            except BaseException as error:  # handed to the caller, who re-raises it
                future.set_exception(error)


_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the forked child: ask the kernel to SIGKILL this process when its parent dies."""
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


_SPAWNER = _Spawner()
_LIVE: set[_ServerProcess] = set()


@atexit.register
def _close_all() -> None:
    """Backstop for fixtures that never ran their teardown (e.g. KeyboardInterrupt in setup)."""
    for server in list(_LIVE):
        server.close()


class _ServerProcess:
    """One server process: start, wait until it answers, pause, stop by PID, start again.

    Subclasses say how to run the server (``_command``, ``_env``), how to tell that it
    answers (``_is_ready``) and which ports to use (``_pick_ports``). The process runs in a
    session of its own so that pause()/resume() can signal its whole process group
    (PostgreSQL's backends too) and so that Ctrl-C in the terminal reaches pytest only,
    which then stops the servers in order.
    """

    kind: ClassVar[str]
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    startup_timeout: ClassVar[float] = 30.0
    stop_timeout: ClassVar[float] = 15.0

    def __init__(self, root: Path | None) -> None:
        """Use ``root`` as the server's directory, or a new temporary one removed by close()."""
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix=f"medhash-{self.kind}-")) if root is None else root
        self.root.mkdir(parents=True, exist_ok=True)
        self.log_path = self.root / f"{self.kind}.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0
        self._started_once = False
        self._paused = False
        self._run_as: str | None = None
        self._pick_ports()
        _LIVE.add(self)

    # -- subclass hooks -------------------------------------------------------------------

    def _pick_ports(self) -> None:
        raise NotImplementedError

    def _command(self) -> list[str]:
        raise NotImplementedError

    def _env(self) -> dict[str, str]:
        return dict(os.environ)

    def _is_ready(self) -> bool:
        raise NotImplementedError

    # -- lifecycle ------------------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """PID of the running server process, None when stopped."""
        return self._proc.pid if self.running and self._proc is not None else None

    @property
    def running(self) -> bool:
        """True while the process exists (also while paused)."""
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start the server and return once it answers; no-op when it already runs.

        The first start retries on new ports if its port was taken meanwhile; later starts
        keep the port, because clients hold URLs that name it.
        """
        if self.running:
            return
        attempts = 1 if self._started_once else _FIRST_START_ATTEMPTS
        for attempt in range(1, attempts + 1):
            try:
                self._spawn_and_wait()
                break
            except ServerStartError as error:
                if attempt == attempts or not _PORT_IN_USE.search(str(error)):
                    raise
                self._pick_ports()
        self._started_once = True

    def stop(self) -> None:
        """Stop the server gracefully (SIGKILL after ``stop_timeout``); keeps its data directory."""
        self._end(graceful=True)

    def restart(self) -> None:
        """Stop and start again on the same port."""
        self.stop()
        self.start()

    def pause(self) -> None:
        """Freeze the server's whole process group (SIGSTOP): it stops answering, keeps all state.

        The kernel still completes TCP handshakes for a paused listener, so clients do not
        get "connection refused" but hang until their own timeout, like with a server
        that is overloaded or behind a broken network: set client timeouts in such tests.
        """
        if self._proc is None or not self.running:
            raise RuntimeError(f"{self.kind} is not running")
        os.killpg(self._proc.pid, signal.SIGSTOP)
        self._paused = True

    def resume(self) -> None:
        """Continue a paused server (SIGCONT)."""
        if self._proc is not None and self._paused:
            os.killpg(self._proc.pid, signal.SIGCONT)
        self._paused = False

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Keep the server paused inside the block; resumed on exit, also when the block raises."""
        self.pause()
        try:
            yield
        finally:
            self.resume()

    @contextlib.contextmanager
    def stopped(self) -> Iterator[None]:
        """Keep the server stopped inside the block; started on exit, also when the block raises."""
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        """Stop the server and delete its directory if this object created it.

        A server whose directory is thrown away is killed (its whole process group, with
        SIGKILL) instead of shut down: nothing it would save is kept, and Orthanc alone
        spends 2-4 s in a graceful shutdown while its internal threads finish their polls.
        """
        self._end(graceful=not self._owns_root)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)
        _LIVE.discard(self)

    def _end(self, graceful: bool) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        if graceful and proc.poll() is None:
            proc.send_signal(self.stop_signal)
            if self._paused:  # a stopped process sees the signal only once continued
                os.killpg(proc.pid, signal.SIGCONT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=self.stop_timeout)
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group is still ours: its leader is not reaped yet
            proc.wait()
        self._paused = False

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def log_tail(self) -> str:
        """The end of what the server wrote to its log since its latest start."""
        try:
            with self.log_path.open("rb") as log:
                log.seek(self._log_offset)
                text = log.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return ""
        return text[-_LOG_TAIL_CHARS:]

    def _spawn(self, argv: Sequence[str], env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        """Start ``argv`` with output appended to the log, as ``_run_as`` when set."""
        with self.log_path.open("ab") as log:
            log.write(f"\n--- {time.strftime('%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            identity: dict[str, Any] = {}
            if self._run_as is not None:
                identity = {"user": self._run_as, "group": self._run_as, "extra_groups": []}
            return _SPAWNER.popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.root,
                env=dict(env),
                start_new_session=True,
                **identity,
            )

    def _spawn_and_wait(self) -> None:
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        self._proc = self._spawn(self._command(), self._env())
        started = time.monotonic()
        while True:
            code = self._proc.poll()
            if code is not None:
                self._proc = None
                raise ServerStartError(
                    f"{self.kind} exited with status {code} while starting; log {self.log_path}:\n{self.log_tail()}"
                )
            if self._is_ready():
                return
            if time.monotonic() - started > self.startup_timeout:
                self._end(graceful=False)
                raise ServerStartError(
                    f"{self.kind} did not answer within {self.startup_timeout:.0f} s; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            time.sleep(0.05)


class PostgresServer(_ServerProcess):
    """PostgreSQL 15 with trust auth on 127.0.0.1 and a database named ``database``.

    Durability is switched off (fsync, synchronous_commit, full_page_writes) because the
    cluster lives only for one test run; a clean stop() still keeps every committed row,
    so data survives restart(). As root, initdb and postgres run as user ``postgres``
    (PostgreSQL refuses to run as root); the switch is done by ``subprocess`` itself rather
    than ``runuser``, so that the PID we hold, pause and signal is the postmaster's.
    """

    kind = "postgres"
    stop_signal = signal.SIGINT  # "fast" shutdown: disconnects clients instead of waiting for them

    def __init__(self, root: Path | None = None, database: str = "medhash", bin_dir: Path = PG_BIN_DIR) -> None:
        self._postgres = require_binary("postgres", bin_dir)
        self._initdb = require_binary("initdb", bin_dir)
        super().__init__(root)
        self.database = database
        self.data_dir = self.root / "data"
        self.socket_dir = self.root / "socket"  # not /var/run/postgresql: the system server's
        if os.geteuid() == 0:
            self._run_as = "postgres"
            account = pwd.getpwnam(self._run_as)
            os.chown(self.root, account.pw_uid, account.pw_gid)
        self._database_created = False

    @property
    def url(self) -> str:
        """libpq/psycopg URL of the test database."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        """URL of another database on this server (``postgres`` is always there)."""
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def start(self) -> None:
        """Create the cluster on the first start, start the server, create the database."""
        if not self.data_dir.exists():
            self._run_initdb()
        super().start()
        if not self._database_created:
            with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{self.database}"')
            self._database_created = True

    def _run_initdb(self) -> None:
        self.socket_dir.mkdir()
        if self._run_as is not None:
            account = pwd.getpwnam(self._run_as)
            os.chown(self.socket_dir, account.pw_uid, account.pw_gid)
        argv = [
            self._initdb, "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
            "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions",
        ]  # fmt: skip
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        proc = self._spawn(argv, os.environ)
        try:
            status = proc.wait(timeout=self.startup_timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            status = proc.wait()
        if status != 0:
            raise ServerStartError(f"initdb failed with status {status}; log {self.log_path}:\n{self.log_tail()}")

    def _pick_ports(self) -> None:
        self.port = free_port()

    def _command(self) -> list[str]:
        settings = {
            "listen_addresses": "127.0.0.1",
            "port": str(self.port),
            "unix_socket_directories": str(self.socket_dir),
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
            "max_connections": "200",  # several services with pools share one test server
        }
        argv = [self._postgres, "-D", str(self.data_dir)]
        for name, value in settings.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _is_ready(self) -> bool:
        try:
            with psycopg.connect(self.url_for("postgres"), connect_timeout=2):
                return True
        except psycopg.OperationalError:
            return False


class RedisServer(_ServerProcess):
    """Redis on 127.0.0.1 that keeps nothing on disk, as medhash's broker is configured.

    A restart therefore loses every key and queued message: exactly the broker failure
    the reconciler must survive.
    """

    kind = "redis"

    def __init__(self, root: Path | None = None) -> None:
        self._binary = require_binary("redis-server")
        super().__init__(root)

    @property
    def url(self) -> str:
        """redis-py / Celery broker URL (database 0)."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _pick_ports(self) -> None:
        self.port = free_port()

    def _command(self) -> list[str]:
        return [
            self._binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(self.root), "--daemonize", "no", "--logfile", "",
        ]  # fmt: skip

    def _is_ready(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(64).startswith(b"+PONG")
        except OSError:
            return False


class S3Server(_ServerProcess):
    """An S3 API on 127.0.0.1, served by moto, for medhash's MinIO client.

    moto keeps objects in memory only. With ``persistent=True`` (the default) a restart
    still keeps them, like a real MinIO: moto's request recorder appends every request to
    a file in the server's directory, and start() replays that file into the new process
    (``/moto-api/recorder/replay-recording``). Replay costs time proportional to all
    requests made so far, which is negligible at test sizes. moto's recorder interleaves
    the entries of concurrent requests, so the server runs through
    ``testbed/moto_recording_server.py``, which serialises them. With ``persistent=False`` a
    restart empties the store. pause()/resume() never lose anything.

    moto accepts any credentials; ``access_key``/``secret_key`` are what the client is
    given. The bucket is not created: that is the job of the code under test.
    """

    kind = "s3"

    def __init__(
        self,
        root: Path | None = None,
        *,
        bucket: str = "medhash",
        access_key: str = "medhash-test-access",
        secret_key: str = "medhash-test-secret",
        region: str = "us-east-1",
        persistent: bool = True,
    ) -> None:
        require_binary("moto_server", Path(sys.executable).parent)  # moto[server] is installed
        super().__init__(root)
        self.bucket = bucket
        self.access_key = access_key
        self.secret_key = secret_key
        self.region = region
        self.persistent = persistent
        self.recording_path = self.root / "requests.jsonl"

    @property
    def endpoint(self) -> str:
        """host:port as MinIO's client wants it (``secure=False``)."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """http:// URL of the endpoint, for boto3-style clients."""
        return f"http://{self.endpoint}"

    def start(self) -> None:
        """Start moto and, when persistent, replay what earlier processes were asked to store."""
        if self.running:
            return
        super().start()
        if self.persistent and self.recording_path.exists() and self.recording_path.stat().st_size:
            status, body = _http("POST", f"{self.url}/moto-api/recorder/replay-recording", b"", timeout=600)
            if status != 200:
                raise ServerStartError(f"moto replay failed ({status}): {body[:500]!r}\n{self.log_tail()}")

    def _pick_ports(self) -> None:
        self.port = free_port()

    def _command(self) -> list[str]:
        # moto's own server, with its recorder made safe for concurrent requests (see there)
        return [sys.executable, str(Path(__file__).with_name("moto_recording_server.py")),
                "-H", "127.0.0.1", "-p", str(self.port)]

    def _env(self) -> dict[str, str]:
        env = super()._env()
        if self.persistent:
            env["MOTO_ENABLE_RECORDING"] = "true"
            env["MOTO_RECORDER_FILEPATH"] = str(self.recording_path)
        return env

    def _is_ready(self) -> bool:
        try:
            status, _ = _http("GET", f"{self.url}/", timeout=1)  # ListBuckets: also loads moto's S3
        except OSError:
            return False
        return status == 200


class OrthancServer(_ServerProcess):
    """Orthanc (Debian's 1.10) as the PACS that sends studies to medhash and receives them.

    Orthanc 1.10 has no option to choose its bind address: both its HTTP and DICOM servers
    listen on 0.0.0.0. The ports are random free ones, and ``RemoteAccessAllowed: false``
    makes the HTTP server refuse every client that is not on this machine, which is why
    authentication can be off. The DICOM port accepts C-STORE from anyone who can reach it.

    ``modalities`` is Orthanc's ``DicomModalities``, e.g.
    ``{"medhash": ["MEDHASH", "127.0.0.1", 11112]}``; ``extra_config`` overrides or adds any
    other configuration option (e.g. ``{"StableAge": 1}`` for Lua ``OnStableStudy`` tests).
    Orthanc runs with ``TCP_NODELAY=1``: DCMTK leaves Nagle's algorithm on otherwise, and
    small PDUs then wait for delayed ACKs, which makes every association crawl.
    """

    kind = "orthanc"

    def __init__(
        self,
        root: Path | None = None,
        *,
        aet: str = "ORTHANC",
        modalities: Mapping[str, Sequence[str | int]] | None = None,
        lua_scripts: Sequence[Path] = (),
        extra_config: Mapping[str, Any] | None = None,
    ) -> None:
        self._binary = require_binary("Orthanc")
        super().__init__(root)
        self.aet = aet
        self.modalities = dict(modalities or {})
        self.lua_scripts = [Path(script).resolve() for script in lua_scripts]
        self.extra_config = dict(extra_config or {})
        self.config_path = self.root / "orthanc.json"

    @property
    def url(self) -> str:
        """Base URL of the REST API."""
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> Any:
        """GET a REST resource (e.g. ``/system``, ``/modalities``) and return its JSON."""
        return self._request("GET", path)

    def post(self, path: str, body: Any) -> Any:
        """POST a JSON body to a REST resource (e.g. ``/modalities/x/storage-commitment``), return its JSON."""
        return self._request("POST", path, json.dumps(body).encode(), "application/json")

    def upload(self, dicom: bytes) -> str:
        """Store one DICOM file in Orthanc (``POST /instances``) and return its Orthanc instance id."""
        answer = self._request("POST", "/instances", dicom, "application/dicom")
        instance_id: str = answer["ID"]
        return instance_id

    def store_to_modality(self, modality: str, resources: Sequence[str], *, synchronous: bool = True) -> Any:
        """C-STORE resources (Orthanc ids of instances/series/studies/patients) to a configured modality.

        Synchronous by default, so the call returns after the remote side answered; the
        response JSON reports ``FailedInstancesCount`` and ``InstancesCount``.
        """
        body = json.dumps({"Resources": list(resources), "Synchronous": synchronous}).encode()
        return self._request("POST", f"/modalities/{modality}/store", body, "application/json")

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> Any:
        headers = {"Content-Type": content_type} if content_type else {}
        status, answer = _http(method, f"{self.url}{path}", body, headers, timeout=120)
        if status != 200:
            raise RuntimeError(f"Orthanc {method} {path} -> HTTP {status}: {answer[:1000]!r}")
        return json.loads(answer)

    def _pick_ports(self) -> None:
        self.http_port = free_port()
        self.dicom_port = free_port()
        while self.dicom_port == self.http_port:
            self.dicom_port = free_port()

    def _command(self) -> list[str]:
        """Write the configuration (ports may have changed since the last start) and run Orthanc."""
        storage = self.root / "storage"
        config: dict[str, Any] = {
            "Name": "medhash-test",
            "StorageDirectory": str(storage),
            "IndexDirectory": str(storage),
            "HttpPort": self.http_port,
            "DicomPort": self.dicom_port,
            "DicomAet": self.aet,
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": False,
            "DicomModalities": self.modalities,
            "LuaScripts": [str(script) for script in self.lua_scripts],
            "Plugins": [],  # Debian's plugin folder would load the system's plugins
        }
        config.update(self.extra_config)
        self.config_path.write_text(json.dumps(config, indent=2))
        return [self._binary, str(self.config_path)]

    def _env(self) -> dict[str, str]:
        return {**super()._env(), "TCP_NODELAY": "1"}

    def _is_ready(self) -> bool:
        try:
            status, _ = _http("GET", f"{self.url}/system", timeout=1)
            with socket.create_connection(("127.0.0.1", self.dicom_port), timeout=1):
                pass
        except OSError:
            return False
        return status == 200
