"""Load: 16 concurrent senders and 50 concurrent search clients at once, without an error.

The figures printed (stores per second, searches per second, p50/p99 latencies) are what this
machine held; ``docs/reliability.md`` records a run. The test does not assert a rate (CI boxes
differ too much); it asserts that under this load nothing fails, nothing is refused, every
answer is right, and the end state passes the audit.

Sizes (CI): 192 instances over 16 senders (12 each, 4 per association), 50 search clients
for the whole ingest; times ``MEDHASH_RELIABILITY_SCALE``.
"""

from __future__ import annotations

import io
import random
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from testbed.lsh_model import picture
from tests.reliability.harness import (
    PICTURE_SIDE,
    Batch,
    Deployment,
    audit,
    describe_latencies,
    ingest,
    scaled,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

SENDERS = 16
SEARCH_CLIENTS = 50
INSTANCES = scaled(192, minimum=SENDERS)
REFERENCE_SEEDS = range(500, 508)
"""Pictures stored before the load: every query is one of them, so each answer is checkable."""


@dataclass
class SearchLoad:
    """What the search clients saw: latencies of correct answers, and every error."""

    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, latency: float, error: str | None) -> None:
        with self.lock:
            if error is None:
                self.latencies.append(latency)
            else:
                self.errors.append(error)


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def search_client(deployment: Deployment, queries: list[tuple[str, bytes]], stop: threading.Event,
                  load: SearchLoad, seed: int) -> None:
    """Alternate PNG uploads and by-UID queries of stored pictures until ``stop``; each answer
    must name the queried instance first, at distance 0."""
    rng = random.Random(seed)
    with deployment.http(timeout_s=120) as client:
        while not stop.is_set():
            uid, data = rng.choice(queries)
            by_uid = rng.random() < 0.5
            started = time.monotonic()
            try:
                # include_excluded: the series' IQR cleaning may exclude a reference picture
                if by_uid:
                    response = client.post("/v1/search", json={"sop_instance_uid": uid, "k": 3,
                                                               "include_excluded": True})
                else:
                    response = client.post("/v1/search", files={"file": ("q.png", data, "image/png")},
                                           data={"k": "3", "include_excluded": "true"})
            except httpx.HTTPError as exc:
                load.record(0.0, f"{type(exc).__name__}: {exc}")
                continue
            latency = time.monotonic() - started
            if response.status_code != 200:
                load.record(latency, f"{response.status_code} {response.text[:200]}")
                continue
            hits = [(hit["sop_instance_uid"], hit["distance"], hit["excluded"])
                    for hit in response.json()["results"]]
            wrong = hits[0][:2] != (uid, 0)
            load.record(latency, f"{'UID' if by_uid else 'PNG'} query for {uid}: got {hits}" if wrong else None)


def test_16_senders_and_50_search_clients(healthy: Deployment, tmp_path: Path) -> None:
    reference = Batch.make(tmp_path / "reference", len(REFERENCE_SEEDS), first_seed=REFERENCE_SEEDS[0])
    stored = ingest(healthy, reference, senders=2)
    healthy.wait_final(stored.stored_uids)
    healthy.wait_loaded()
    queries = [(reference.uids[path], png(picture(seed, PICTURE_SIDE)))
               for path, seed in zip(reference.paths, REFERENCE_SEEDS, strict=True)]

    batch = Batch.make(tmp_path / "load", INSTANCES)
    load = SearchLoad()
    stop = threading.Event()
    clients = [threading.Thread(target=search_client, args=(healthy, queries, stop, load, n), daemon=True)
               for n in range(SEARCH_CLIENTS)]
    for client in clients:
        client.start()
    search_started = time.monotonic()
    try:
        run = ingest(healthy, batch, SENDERS, per_association=4)
    finally:
        stop.set()
        for client in clients:
            client.join(timeout=150)
    search_seconds = time.monotonic() - search_started

    states = healthy.wait_final(run.stored_uids)
    settled = time.monotonic()
    healthy.wait_loaded()
    result = audit(healthy, run.stored_uids)

    print(f"\n[load] C-STORE, {SENDERS} senders: {run.summary()}; per instance {describe_latencies(run.latencies)}")
    print(f"[load] search, {SEARCH_CLIENTS} clients during the ingest: {len(load.latencies)} answers in "
          f"{search_seconds:.1f} s ({len(load.latencies) / search_seconds:.1f}/s), "
          f"{describe_latencies(load.latencies)}, errors {len(load.errors)}")
    print(f"[load] every instance indexed {settled - run.finished:.1f} s after the last Success; {result}")

    assert load.errors == [], load.errors[:5]
    assert len(load.latencies) >= SEARCH_CLIENTS, "the search clients barely ran"
    assert run.stored_uids == set(batch.uids.values()) and run.resent == 0, run.summary()
    assert {state.value for state in states.values()} == {"indexed"}
