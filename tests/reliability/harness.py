"""What the reliability tests share: the running deployment, resending senders, the audit.

Every test in this package runs against one distributed deployment (``deploy/local_stack.py``:
listener, search, indexer, reconciler, two preprocess workers, one encode worker, each its
own process) on the real PostgreSQL, Redis and S3 servers of ``testbed/servers.py``. Faults are
real too: ``kill -9`` of a process group, a Redis restart (it keeps nothing on disk), a
PostgreSQL or S3 server stopped. What the tests check is never "the call did not raise" but
the end state, by :func:`audit`: every instance a sender was told is stored is indexed, the
index holds each slice exactly once, and catalog and object store agree byte for byte.

Sizes are scaled for CI (2 cores, the whole folder in a few minutes);
``MEDHASH_RELIABILITY_SCALE`` multiplies every count (``=5`` gives the issue's 1,000-instance
mixed-fault ingest). See ``docs/reliability.md``.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import signal
import socket
import statistics
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import numpy as np
from pynetdicom import AE, _config
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from deploy.local_stack import LocalStack
from shared.background import Periodic
from shared.config import Settings
from shared.dicom.sender import Sender, SendResult
from shared.dicom.synthetic import StudyIds, make_secondary_capture, write
from shared.index import Searcher
from shared.pipeline.states import stage_for
from shared.storage.catalog import (
    Catalog,
    CatalogUnavailable,
    InstanceState,
    open_catalog,
)
from shared.storage.objectstore import ObjectStore, open_object_store
from testbed.catalog_audit import all_codes, all_instances, all_slices
from testbed.lsh_model import picture

T = TypeVar("T")

SCALE = float(os.environ.get("MEDHASH_RELIABILITY_SCALE", "1"))
"""Multiplies every instance/request count of the package (1 = the CI budget)."""

API_KEY = "reliability-key"
"""The one API key the deployment's search service accepts."""

ALLOWED_AE = "MEDHASH_SCU"
"""A calling AE title the listener accepts (``Sender``'s default); any other is refused."""

PICTURE_SIDE = 32
"""Side of every synthetic picture: small, so faults, not pixels, dominate the runtime."""


def scaled(count: int, minimum: int = 1) -> int:
    """``count`` times :data:`SCALE`, at least ``minimum``."""
    return max(minimum, round(count * SCALE))


def wait_until(condition: Callable[[], T], timeout_s: float, what: str, interval_s: float = 0.5) -> T:
    """Poll until ``condition()`` is truthy and return it; AssertionError naming ``what`` if not.

    A condition that raises a catalog/network error counts as "not yet": the tests poll
    through outages on purpose.
    """
    deadline = time.monotonic() + timeout_s
    last_error: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except (CatalogUnavailable, OSError, httpx.HTTPError) as exc:
            last_error = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not reached in {timeout_s:.0f} s (last error: {last_error})")
        time.sleep(interval_s)


def percentile(values: Sequence[float], fraction: float) -> float:
    """The ``fraction`` quantile (nearest rank) of ``values``; 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(np.ceil(fraction * len(ordered))) - 1))]


# --- the deployment -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Exit:
    """A service that exited without being told to, and why (the last error line it logged)."""

    name: str
    returncode: int | None
    reason: str


@dataclass
class Deployment:
    """The running local stack plus what the tests need to fault it and look inside it.

    A supervisor thread plays docker-compose's ``restart: unless-stopped``: a service that
    exits on its own is started again and recorded in :attr:`exits`, so a test can tell a
    planned ``kill -9`` from a crash it did not ask for and decide whether that is tolerable.
    """

    settings: Settings
    stack: LocalStack
    http_url: str
    work_dir: Path
    exits: list[Exit] = field(default_factory=list)
    _store: ObjectStore | None = None
    _catalog: Catalog | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _processes_lock: threading.RLock = field(default_factory=threading.RLock)
    _planned_down: set[str] = field(default_factory=set)
    _supervisor: Periodic | None = None

    @property
    def dicom_port(self) -> int:
        return self.settings.dicom_port

    # -- processes --------------------------------------------------------------------------

    def start(self) -> None:
        self.stack.start()
        self._supervisor = Periodic("supervisor", 0.5, self._relaunch_exited)
        self._supervisor.start()

    def stop(self) -> None:
        if self._supervisor is not None:
            self._supervisor.stop(timeout_s=30)
        with self._processes_lock:
            self.stack.stop()

    def _relaunch_exited(self) -> None:
        with self._processes_lock:
            for name, process in list(self.stack.processes.items()):
                if name not in self._planned_down and process.poll() is not None:
                    self.exits.append(Exit(name, process.returncode, self._last_error(name)))
                    self.stack.spawn(name, note="relaunched")

    def _last_error(self, name: str) -> str:
        lines = [line for line in self.stack.log_tail(name, 20_000).splitlines()
                 if "CRITICAL" in line or "Error" in line]
        return lines[-1][:300] if lines else "(no error logged)"

    def kill(self, name: str) -> None:
        """``kill -9`` the process group of one service (a prefork worker's children too)."""
        with self._processes_lock:
            self._planned_down.add(name)
            process = self.stack.processes[name]
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=30)

    def relaunch(self, name: str) -> None:
        """Start ``name`` again with the arguments and environment LocalStack gave it."""
        with self._processes_lock:
            assert self.stack.processes[name].poll() is not None, f"{name} still runs"
            self.stack.spawn(name, note="relaunched")
            self._planned_down.discard(name)

    def recover(self) -> None:
        """Relaunch whatever a test killed and did not relaunch (it failed mid-fault)."""
        with self._processes_lock:
            for name in list(self._planned_down):
                self.relaunch(name)

    def crash_and_relaunch(self, name: str, down_s: float = 0.0) -> float:
        """kill -9, stay down ``down_s``, start again; for the listener, wait until it answers
        C-ECHO and return the seconds from the kill until then (else the time to relaunch)."""
        killed = time.monotonic()
        self.kill(name)
        time.sleep(down_s)
        self.relaunch(name)
        if name == "listener":
            wait_until(lambda: echo(self.dicom_port), 60, "listener answers C-ECHO after relaunch",
                       interval_s=0.1)
        return time.monotonic() - killed

    def warm_up(self, folder: Path) -> None:
        """Send a few instances and wait until they are searchable: the encode worker and the
        indexer load the model on their first task (tens of seconds on a busy 2-core box),
        which must not count against the first test's fault."""
        batch = Batch.make(folder, 4, first_seed=1)
        run = ingest(self, batch, senders=1)
        assert run.stored_uids == set(batch.uids.values()), run.summary()
        self.wait_final(run.stored_uids, timeout_s=240)
        self.wait_loaded()

    def assert_no_exit_since(self, count: int, tolerated: Iterable[str] = ()) -> list[Exit]:
        """No service exited on its own since ``len(exits)`` was ``count``, except ``tolerated``
        ones; returns the exits seen (tolerated ones included)."""
        seen = self.exits[count:]
        unexpected = [exit for exit in seen if exit.name not in set(tolerated)]
        assert not unexpected, f"services exited on their own: {unexpected}"
        return seen

    # -- clients ------------------------------------------------------------------------------

    def http(self, api_key: str | None = API_KEY, timeout_s: float = 60.0) -> httpx.Client:
        """An HTTP client of the search service (with the API key unless told otherwise)."""
        headers = {"X-API-Key": api_key} if api_key is not None else {}
        return httpx.Client(base_url=self.http_url, headers=headers, timeout=timeout_s)

    def sender(self, calling_ae: str = ALLOWED_AE) -> Sender:
        return Sender("127.0.0.1", self.dicom_port, self.settings.ae_title, calling_ae, timeout_s=30)

    @property
    def store(self) -> ObjectStore:
        with self._lock:
            if self._store is None:
                self._store = open_object_store(self.settings)
            return self._store

    @property
    def catalog(self) -> Catalog:
        with self._lock:
            if self._catalog is None:
                self._catalog = open_catalog(self.settings)
            return self._catalog

    def close(self) -> None:
        if self._catalog is not None:
            self._catalog.close()

    def model_version(self) -> str:
        with self.http() as client:
            return str(client.get("/v1/stats").json()["model_version"])

    # -- waiting ------------------------------------------------------------------------------

    def wait_final(self, uids: Iterable[str], timeout_s: float = 180.0) -> dict[str, InstanceState]:
        """Until the current version of every UID is in a final state; their states."""
        wanted = set(uids)

        def states() -> dict[str, InstanceState] | None:
            current = {row.sop_instance_uid: row.state for row in all_instances(self.catalog)
                       if row.is_current and row.sop_instance_uid in wanted}
            done = len(current) == len(wanted) and all(stage_for(s) is None for s in current.values())
            return current if done else None

        def progress() -> str:
            counts = self.catalog.counts_by_state()
            return f"catalog states {counts}"

        try:
            return wait_until(states, timeout_s, f"{len(wanted)} instances final")
        except AssertionError as exc:
            raise AssertionError(f"{exc}; {progress()}") from None

    def wait_loaded(self, timeout_s: float = 60.0) -> dict[str, Any]:
        """Until the search service serves a generation holding every indexed slice."""
        def loaded() -> dict[str, Any] | None:
            indexed = {row.id for row in all_instances(self.catalog)
                       if row.state is InstanceState.INDEXED}
            slices = sum(1 for s in all_slices(self.catalog) if s.instance_id in indexed)
            with self.http() as client:
                stats: dict[str, Any] = client.get("/v1/stats").json()
            return stats if (stats["index"]["size"] or 0) >= slices else None
        return wait_until(loaded, timeout_s, "search service loaded the newest generation")


def echo(port: int, calling_ae: str = ALLOWED_AE, host: str = "127.0.0.1") -> bool:
    """True if the listener accepts an association from ``calling_ae`` and answers C-ECHO."""
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 10
    assoc = ae.associate(host, port, ae_title="MEDHASH")
    if not assoc.is_established:
        return False
    try:
        status = assoc.send_c_echo()
        return bool(status) and status.Status == 0x0000
    finally:
        assoc.release()


def stream_files_unchanged() -> None:
    """Make every ``Sender`` stream files from disk byte for byte, in every thread.

    ``Sender`` sets pynetdicom's module-global ``STORE_SEND_CHUNKED_DATASET`` for the
    duration of a send and restores the previous value afterwards; concurrent senders
    then race (one restores False while another is mid-send, which re-encodes that
    sender's datasets). Set once to True for the whole session, save/restore is a no-op.
    """
    _config.STORE_SEND_CHUNKED_DATASET = True


class Gate:
    """A TCP forwarder to a server; :meth:`stopped` makes the server look down to its clients.

    Used for the S3 outage. Stopping the moto server itself (``S3Server.stopped()``) is not
    faithful under live writers: moto rebuilds its state by replaying recorded requests
    *after* it starts answering, so for a while clients see an old bucket (the indexer then
    finds index generation 3 where it published 36), and requests made during the replay are
    recorded out of order. A real MinIO comes back with all its objects at once. Closing the
    gate gives the clients exactly what a stopped server gives them (connection refused,
    open connections reset) while the objects stay as they were.
    """

    def __init__(self, target_port: int) -> None:
        from testbed.servers import free_port

        self.target_port = target_port
        self.port = free_port()
        self._listener: socket.socket | None = None
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        with self._lock:
            if self._listener is not None:
                return
            listener = socket.socket()
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", self.port))
            listener.listen(128)
            listener.settimeout(0.2)
            self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), name="gate", daemon=True).start()

    def stop(self) -> None:
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
        if listener is not None:
            listener.close()
        for conn in connections:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()

    def _accept(self, listener: socket.socket) -> None:
        while self._listener is listener:
            try:
                client, _ = listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port), timeout=10)
            except OSError:
                client.close()
                continue
            with self._lock:
                if self._listener is not listener:
                    client.close()
                    upstream.close()
                    return
                self._connections |= {client, upstream}
            for source, target in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        source.settimeout(None)
        try:
            while data := source.recv(65536):
                target.sendall(data)
            target.shutdown(socket.SHUT_WR)
        except OSError:
            for conn in (source, target):
                with contextlib.suppress(OSError):
                    conn.shutdown(socket.SHUT_RDWR)
        finally:
            with self._lock:
                self._connections.discard(source)


# --- instances and resending senders --------------------------------------------------------


_SEEDS = itertools.count(100_000, 10_000)
"""Picture seeds of batches that did not ask for their own: distinct pictures, distinct codes."""


@dataclass(frozen=True)
class Batch:
    """Synthetic Secondary Captures written to disk, one distinct picture each."""

    paths: list[Path]
    uids: dict[Path, str]
    patient_id: str

    @classmethod
    def make(cls, folder: Path, count: int, first_seed: int | None = None,
             patient_id: str = "RELIABILITY") -> Batch:
        """``count`` pictures; seeds from ``first_seed`` or else never used before in this run."""
        if first_seed is None:
            first_seed = next(_SEEDS)
        ids = StudyIds.new(patient_id=patient_id)
        paths: list[Path] = []
        uids: dict[Path, str] = {}
        for number in range(count):
            ds = make_secondary_capture(ids, number + 1, picture(first_seed + number, PICTURE_SIDE),
                                        modality="OT")
            path = write(ds, folder / f"{first_seed + number}.dcm")
            paths.append(path)
            uids[path] = str(ds.SOPInstanceUID)
        return cls(paths, uids, patient_id)


@dataclass
class Delivery:
    """Everything one file's sender went through until it was stored (or gave up)."""

    uid: str
    statuses: list[str] = field(default_factory=list)
    stored_at: float | None = None

    @property
    def stored(self) -> bool:
        return self.stored_at is not None

    @property
    def failures(self) -> int:
        return len(self.statuses) - (1 if self.stored else 0)


@dataclass
class IngestRun:
    """Several senders, each resending what failed until it is stored: a PACS's behaviour."""

    deliveries: dict[str, Delivery]
    started: float
    finished: float = 0.0
    latencies: list[float] = field(default_factory=list)
    """Seconds per answered C-STORE (the first of an association includes associating)."""

    @property
    def stored_uids(self) -> set[str]:
        return {uid for uid, d in self.deliveries.items() if d.stored}

    @property
    def resent(self) -> int:
        """Files whose sender got a failure (or no answer) at least once and succeeded later."""
        return sum(1 for d in self.deliveries.values() if d.stored and d.failures)

    @property
    def rate(self) -> float:
        """Instances stored per second, first send to last Success."""
        return len(self.stored_uids) / max(1e-9, self.finished - self.started)

    def summary(self) -> str:
        failures: dict[str, int] = {}
        for delivery in self.deliveries.values():
            for status in delivery.statuses[:delivery.failures]:
                key = status.split(" by ")[0][:40]
                failures[key] = failures.get(key, 0) + 1
        return (f"{len(self.stored_uids)}/{len(self.deliveries)} stored in "
                f"{self.finished - self.started:.1f} s ({self.rate:.1f}/s), {self.resent} after a "
                f"failure; failures seen: {failures}")


def _send_until_stored(sender: Sender, batch: Batch, paths: Sequence[Path], run: IngestRun,
                       per_association: int, deadline: float) -> None:
    """One sender: associations of ``per_association`` files; failures go back in the queue."""
    pending = deque(paths)
    while pending and time.monotonic() < deadline:
        chunk = [pending.popleft() for _ in range(min(per_association, len(pending)))]
        last = time.monotonic()
        failed = False

        def record(result: SendResult) -> None:
            nonlocal last, failed
            now = time.monotonic()
            delivery = run.deliveries[batch.uids[result.path]]
            delivery.statuses.append(result.reason)
            if result.stored:
                delivery.stored_at = now
                run.latencies.append(now - last)
            else:
                pending.append(result.path)
                failed = True
            last = now

        sender.send(chunk, on_result=record)
        if failed:
            time.sleep(0.3)  # what a PACS router does: back off, then retry the failures


def ingest(deployment: Deployment, batch: Batch, senders: int, per_association: int = 8,
           timeout_s: float = 240.0, during: Callable[[IngestRun], None] | None = None) -> IngestRun:
    """Send ``batch`` over ``senders`` concurrent senders that resend every failure.

    ``during`` runs on this thread while the senders work (it applies the faults); the
    senders are joined afterwards. Returns what each file went through.
    """
    run = IngestRun({uid: Delivery(uid) for uid in batch.uids.values()}, time.monotonic())
    deadline = run.started + timeout_s
    shares = [batch.paths[i::senders] for i in range(senders)]
    threads = [threading.Thread(target=_send_until_stored, name=f"sender-{i}",
                                args=(deployment.sender(), batch, share, run, per_association, deadline))
               for i, share in enumerate(shares) if share]
    for thread in threads:
        thread.start()
    try:
        if during is not None:
            during(run)
    finally:
        for thread in threads:
            thread.join(timeout=timeout_s + 60)
    run.finished = max((d.stored_at for d in run.deliveries.values() if d.stored_at), default=run.started)
    return run


def wait_stored(run: IngestRun, fraction: float, timeout_s: float = 120.0) -> None:
    """Until ``fraction`` of the run's files got Success: a fault then hits a live ingest."""
    wanted = int(fraction * len(run.deliveries))
    wait_until(lambda: len(run.stored_uids) >= wanted, timeout_s, f"{wanted} instances stored",
               interval_s=0.05)


# --- the audit -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Audit:
    """The end state, as the tests check it."""

    instances: int
    slices: int
    index_size: int
    states: dict[str, int]


def audit(deployment: Deployment, stored: Iterable[str], verify_bytes: Iterable[str] = ()) -> Audit:
    """Check the whole deployment's invariants; ``stored``: UIDs a sender got Success for.

    1. Every stored UID's current version is ``indexed``, or ``failed``/``skipped`` with a reason.
    2. The newest index generation holds every indexed slice exactly once and nothing else,
       with the catalog's code: a top-k over the whole index returns each id once.
    3. Catalog and object store agree: every row's raw object exists (for ``verify_bytes``
       UIDs with the recorded sha256), every ``raw/`` object has a row, and the same for
       slices. Nothing half-written, nothing orphaned.
    """
    catalog, store = deployment.catalog, deployment.store
    rows = all_instances(catalog)
    by_uid = {row.sop_instance_uid: row for row in rows if row.is_current}
    stored = set(stored)
    missing = stored - set(by_uid)
    assert not missing, f"{len(missing)} instances answered Success have no catalog row: {sorted(missing)[:5]}"
    unfinished = {uid: (by_uid[uid].state.value, by_uid[uid].reason) for uid in stored
                  if by_uid[uid].state is not InstanceState.INDEXED
                  and not (by_uid[uid].state in (InstanceState.FAILED, InstanceState.SKIPPED)
                           and by_uid[uid].reason)}
    assert not unfinished, f"stored but not indexed (nor failed/skipped with a reason): {unfinished}"
    assert len({(row.sop_instance_uid, row.sha256) for row in rows}) == len(rows), "an instance recorded twice"

    # 2. index == indexed slices, each once, with the catalog's codes
    model_version = deployment.model_version()
    searcher = Searcher.open(store, model_version)
    assert searcher is not None, "no index generation published"
    indexed_ids = {row.id for row in rows if row.state is InstanceState.INDEXED}
    slices = all_slices(catalog)
    indexed_slices = {s.id for s in slices if s.instance_id in indexed_ids}
    codes = dict(all_codes(catalog, model_version))
    everything = searcher.search(np.zeros((1, searcher.bits // 8), np.uint8), len(searcher) + 10)[0]
    ids = [slice_id for slice_id, _ in everything]
    assert len(ids) == len(set(ids)), "a slice is in the index twice"
    assert len(searcher) == len(ids), f"index size {len(searcher)} but a full scan found {len(ids)}"
    assert indexed_slices <= set(ids), f"indexed but not in the index: {sorted(indexed_slices - set(ids))[:10]}"
    assert set(ids) <= set(codes), f"in the index without a code in the catalog: {sorted(set(ids) - set(codes))[:10]}"
    not_indexed_yet = set(ids) - indexed_slices
    assert not not_indexed_yet, f"in the index but their instance is not `indexed`: {sorted(not_indexed_yet)[:10]}"
    index_codes = searcher.codes_of(np.array(sorted(ids), dtype=np.int64))
    assert [bytes(code) for code in index_codes] == [codes[i] for i in sorted(ids)], "index codes differ from the catalog's"

    # 3. catalog <-> object store
    raw = set(store.list("raw/"))
    keys = {row.object_key for row in rows}
    assert keys == raw, (f"rows without object: {sorted(keys - raw)[:5]}; "
                         f"objects without row: {sorted(raw - keys)[:5]}")
    slice_objects = set(store.list("slices/"))
    slice_keys = {s.object_key for s in slices}
    assert slice_keys <= slice_objects, f"slice rows without object: {sorted(slice_keys - slice_objects)[:5]}"
    orphans = slice_objects - slice_keys
    assert not orphans, f"slice objects without a row: {sorted(orphans)[:5]}"
    for uid in set(verify_bytes):
        row = by_uid[uid]
        assert hashlib.sha256(store.get(row.object_key)).hexdigest() == row.sha256, f"{uid}: bytes differ"

    states = {k: v for k, v in catalog.counts_by_state().items() if v}
    return Audit(len(rows), len(indexed_slices), len(searcher), states)


@contextmanager
def timed(label: str, sink: dict[str, float]) -> Iterator[None]:
    """Record how long a block took under ``label`` (figures go to stdout and the docs)."""
    started = time.monotonic()
    try:
        yield
    finally:
        sink[label] = time.monotonic() - started


def describe_latencies(latencies: Sequence[float]) -> str:
    """``n, mean, p50, p99, max`` of latencies in seconds, printed in milliseconds."""
    if not latencies:
        return "no requests"
    return (f"n={len(latencies)} mean={1000 * statistics.fmean(latencies):.0f} ms "
            f"p50={1000 * percentile(latencies, 0.5):.0f} ms p99={1000 * percentile(latencies, 0.99):.0f} ms "
            f"max={1000 * max(latencies):.0f} ms")
