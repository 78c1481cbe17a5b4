"""Faults during an ingest: nothing a sender was told is stored is ever lost or doubled.

Each test sends a batch of Secondary Captures over several concurrent associations, with
senders that behave like a PACS router (a failure or a broken association: back off, resend),
and hits the deployment with real faults while they send: ``kill -9`` of the listener, a
CPU worker, the encode worker or the indexer (each relaunched), a Redis restart that loses
every queued message, PostgreSQL stopped for a while, S3 unreachable (connection refused)
for as long. Each fault alone, then all of them in one ingest. Afterwards :func:`~tests.reliability.harness.audit` checks the end
state: every instance answered Success is indexed, exactly once, with catalog and object
store in agreement, and every file whose sender saw a failure was stored on a resend.

Sizes (CI): 40 instances per single fault, 200 for the mixed run, outages of 10 s; times
``MEDHASH_RELIABILITY_SCALE`` (the issue's 1,000 instances and 30 s outages: scale 5 and
``MEDHASH_RELIABILITY_OUTAGE_S=30``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from shared.storage.catalog import InstanceState
from testbed.catalog_audit import all_instances
from testbed.servers import PostgresServer, RedisServer
from tests.reliability.harness import (
    Batch,
    Deployment,
    Gate,
    IngestRun,
    audit,
    ingest,
    scaled,
    wait_stored,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

OUTAGE_S = float(os.environ.get("MEDHASH_RELIABILITY_OUTAGE_S", "10"))
"""How long PostgreSQL and the S3 server stay down (the issue: 30 s)."""

SINGLE_FAULT_INSTANCES = scaled(40, minimum=8)
MIXED_INSTANCES = scaled(200, minimum=20)
SENDERS = 4



@dataclass
class Servers:
    postgres: PostgresServer
    redis: RedisServer
    s3: Gate
    """S3 goes down by closing the gate in front of it (see :class:`Gate` for why)."""


Fault = Callable[[Deployment, Servers, IngestRun, list[str]], None]
"""Applies one fault while the senders run and returns once it is over (relaunched, up);
appends what it measured (e.g. how long the listener was unreachable) to the notes."""


def crash(name: str, at: float, down_s: float = 1.0) -> Fault:
    """kill -9 of service ``name`` once a fraction ``at`` of the batch is stored; relaunched."""
    def apply(deployment: Deployment, servers: Servers, run: IngestRun, notes: list[str]) -> None:
        wait_stored(run, at)
        seconds = deployment.crash_and_relaunch(name, down_s)
        notes.append(f"{name} {'answering' if name == 'listener' else 'relaunched'} {seconds:.1f} s after kill -9")
    return apply


def redis_restart(at: float) -> Fault:
    """Redis restarted (it keeps nothing on disk): every queued and unacked message is gone."""
    def apply(deployment: Deployment, servers: Servers, run: IngestRun, notes: list[str]) -> None:
        wait_stored(run, at)
        servers.redis.restart()
        notes.append("redis restarted empty")
    return apply


def outage(server: str, at: float, seconds: float = OUTAGE_S) -> Fault:
    """PostgreSQL or the S3 server stopped for ``seconds``, then started on the same port."""
    def apply(deployment: Deployment, servers: Servers, run: IngestRun, notes: list[str]) -> None:
        wait_stored(run, at)
        with getattr(servers, server).stopped():
            time.sleep(seconds)
        notes.append(f"{server} down {seconds:.0f} s")
    return apply


def in_sequence(*faults: Fault) -> Fault:
    def apply(deployment: Deployment, servers: Servers, run: IngestRun, notes: list[str]) -> None:
        for fault in faults:
            fault(deployment, servers, run, notes)
    return apply


CELERY_WORKERS = ("preprocess-1", "preprocess-2", "encode-1", "indexer")
"""Processes that may exit by themselves on a Redis restart, for the supervisor to restart:
kombu's Redis transport can raise ``AttributeError: 'NoneType' object has no attribute
'hostname'`` while restoring unacknowledged messages on a lost connection, which Celery
treats as unrecoverable (seen with the encode worker's thread pool; see docs/reliability.md)."""

SINGLE_FAULTS: dict[str, tuple[Fault, bool, tuple[str, ...]]] = {
    # name: (fault, whether senders must have seen failures and resent, exits tolerated)
    "listener-kill-9": (crash("listener", 0.3), True, ()),
    "cpu-worker-kill-9": (crash("preprocess-1", 0.4), False, ()),
    "encode-worker-kill-9": (crash("encode-1", 0.5), False, ()),
    "indexer-kill-9": (crash("indexer", 0.6), False, ()),
    "redis-restart": (redis_restart(0.5), False, CELERY_WORKERS),
    "postgres-stopped": (outage("postgres", 0.3), True, ()),
    "s3-stopped": (outage("s3", 0.3), True, ()),
}

MIXED = in_sequence(
    crash("listener", 0.1), crash("preprocess-1", 0.2), redis_restart(0.3), crash("encode-1", 0.4),
    outage("postgres", 0.5), crash("indexer", 0.6), crash("preprocess-2", 0.7), outage("s3", 0.8),
)

FIGURES: dict[str, str] = {}
"""Measured per fault, printed at the end of the module (and copied to docs/reliability.md)."""


@pytest.fixture
def servers(postgres_server: PostgresServer, redis_server: RedisServer, s3_gate: Gate) -> Servers:
    return Servers(postgres_server, redis_server, s3_gate)


def run_with_fault(deployment: Deployment, servers: Servers, batch: Batch, fault: Fault,
                   label: str, tolerated_exits: tuple[str, ...] = ()) -> IngestRun:
    """Ingest ``batch`` under ``fault``; audit; record the figures under ``label``."""
    exits_before = len(deployment.exits)
    notes: list[str] = []
    run = ingest(deployment, batch, SENDERS, per_association=8, timeout_s=300,
                 during=lambda running: fault(deployment, servers, running, notes))
    unsent = [uid for uid, d in run.deliveries.items() if not d.stored]
    assert not unsent, f"{len(unsent)} files never stored despite resending: " + "; ".join(
        f"{uid}: {run.deliveries[uid].statuses[-3:]}" for uid in unsent[:3])
    states = deployment.wait_final(run.stored_uids, timeout_s=240)
    settled = time.monotonic()
    deployment.wait_loaded()
    result = audit(deployment, run.stored_uids, verify_bytes=run.stored_uids)
    assert all(state is InstanceState.INDEXED for state in states.values()), states
    exits = deployment.assert_no_exit_since(exits_before, tolerated_exits)
    notes += [f"{exit.name} exited by itself and was restarted ({exit.reason[-120:]})" for exit in exits]
    FIGURES[label] = (f"{'; '.join(notes)}; {run.summary()}; all indexed {settled - run.finished:.1f} s after the last "
                      f"Success; audit: {result}")
    print(f"\n[{label}] {FIGURES[label]}")
    return run


@pytest.mark.parametrize("name", list(SINGLE_FAULTS))
def test_single_fault_during_ingest(healthy: Deployment, servers: Servers, tmp_path: Path, name: str) -> None:
    fault, senders_notice, tolerated = SINGLE_FAULTS[name]
    batch = Batch.make(tmp_path, SINGLE_FAULT_INSTANCES)
    run = run_with_fault(healthy, servers, batch, fault, name, tolerated)
    if senders_notice:
        # the fault really hit the senders, and each file that failed was stored on a resend
        assert run.resent > 0, f"{name}: no sender saw a failure; the fault missed the ingest"


def test_every_fault_in_one_ingest(healthy: Deployment, servers: Servers, tmp_path: Path) -> None:
    batch = Batch.make(tmp_path, MIXED_INSTANCES)
    run = run_with_fault(healthy, servers, batch, MIXED, "mixed", CELERY_WORKERS)
    assert run.resent > 0
    # the whole study sent again, as a PACS does when unsure: Success at once, nothing new
    rows = len(all_instances(healthy.catalog))
    again = ingest(healthy, batch, SENDERS, per_association=64)
    assert again.stored_uids == run.stored_uids and again.resent == 0
    after = audit(healthy, run.stored_uids)
    assert after.instances == rows
