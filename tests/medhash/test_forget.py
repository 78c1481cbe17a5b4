"""``medhash forget --patient-id``: afterwards no object, slice, row or index entry of that
patient remains (checked by listing the store and the catalog), searches that used to return
it do not (a searcher on the old generation included), and a ``kill -9`` mid-forget followed
by a second run completes it. In both configurations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import pytest
from fastapi.testclient import TestClient

from services.search import create_app
from shared.config import Settings
from shared.dicom.synthetic import StudyIds, make_ct, make_secondary_capture
from shared.hashing.inference import BatchEncoder
from shared.index import Searcher, list_model_versions
from shared.index.format import decode_delta, decode_shard, generations, read_manifest
from shared.pipeline.wiring import Runtime
from testbed.catalog_audit import all_codes, all_instances, all_slices
from tests.services.search.conftest import IMAGE_SIZE, Pipeline, picture, png_bytes

MEDHASH = [sys.executable, "-m", "medhash.cli"]
FORGOTTEN, KEPT = "PAT-FORGET", "PAT-KEEP"


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a ``medhash`` process these settings."""
    env = {**os.environ, "MEDHASH_DATA_DIR": str(settings.data_dir)}
    for name in ("database_url", "broker_url", "s3_endpoint", "s3_access_key", "s3_secret_key",
                 "s3_bucket"):
        value = getattr(settings, name)
        env.pop(f"MEDHASH_{name.upper()}", None)
        if value:
            env[f"MEDHASH_{name.upper()}"] = str(value)
    return env


@dataclass
class Archive:
    pipeline: Pipeline
    forgotten_keys: set[str]
    """Every object key of the forgotten patient's instances and slices, before the forget."""
    forgotten_slices: set[int]
    forgotten_uids: set[str]
    query: bytes
    """A PNG of one of the forgotten patient's pictures."""

    @property
    def runtime(self) -> Runtime:
        return self.pipeline.runtime


@contextmanager
def archive(settings: Settings, encoder: BatchEncoder) -> Iterator[Archive]:
    """Two patients, each with a study of pictures and a small CT series, indexed."""
    runtime = Runtime.from_settings(settings.model_copy(update={"image_size": IMAGE_SIZE}))
    try:
        pipeline = Pipeline(runtime, encoder, compact_deltas=1000)
        for patient, offset in ((FORGOTTEN, 0), (KEPT, 50)):
            ids = StudyIds.new(patient_id=patient)
            for number in range(6):
                pipeline.add(make_secondary_capture(ids, number + 1, picture(offset + number)))
            for number in range(3):
                pipeline.add(make_ct(ids, 10 + number, rows=48, columns=48, seed=offset + number))
        pipeline.publish()
        catalog = runtime.catalog
        rows = [row for row in all_instances(catalog) if row.patient_id == FORGOTTEN]
        slices = [item for item in all_slices(catalog) if item.instance_id in {r.id for r in rows}]
        yield Archive(pipeline, {row.object_key for row in rows} | {s.object_key for s in slices},
                      {item.id for item in slices}, {row.sop_instance_uid for row in rows},
                      png_bytes(picture(2)))
    finally:
        runtime.close()


def index_ids(runtime: Runtime) -> set[int]:
    """Every slice id whose code any kept generation of any index stores."""
    found: set[int] = set()
    for version in list_model_versions(runtime.store):
        for generation in generations(runtime.store, version):
            manifest = read_manifest(runtime.store, version, generation)
            for shard in manifest.shards:
                found |= set(decode_shard(runtime.store.get(shard.key), manifest.bits,
                                          shard.key).ids.tolist())
            for delta in manifest.deltas:
                found |= set(decode_delta(runtime.store.get(delta.key), manifest.bits,
                                          delta.key)[0].tolist())
    return found


def searched_uids(client: TestClient, png: bytes) -> set[str]:
    answer = client.post("/v1/search", params={"k": 100},
                         files={"file": ("q.png", png, "image/png")})
    assert answer.status_code == 200, answer.text
    return {hit["sop_instance_uid"] for hit in answer.json()["results"]}


def assert_nothing_remains(stand: Archive) -> None:
    runtime = stand.runtime
    catalog = runtime.catalog
    stored = set(runtime.store.list(""))
    assert not stored & stand.forgotten_keys
    assert not any(key.startswith("raw/") and key not in {row.object_key for row in
                                                           all_instances(catalog)}
                   for key in stored)  # every raw object left is a catalog row's
    assert {row.patient_id for row in all_instances(catalog)} == {KEPT}
    live_slices = {item.id for item in all_slices(catalog)}
    assert not live_slices & stand.forgotten_slices
    assert not {slice_id for slice_id, _ in all_codes(catalog, stand.pipeline.encoder.model_version)
                } & stand.forgotten_slices
    assert not index_ids(runtime) & stand.forgotten_slices
    assert index_ids(runtime) == live_slices  # ... and nothing of the other patient was lost


@pytest.mark.integration
@pytest.mark.slow
def test_forget_a_patient_then_nothing_of_it_remains(
        any_settings: Settings, encoder: BatchEncoder) -> None:
    with archive(any_settings, encoder) as stand:
        app = create_app(stand.runtime, encoder=encoder, refresh_interval_s=3600)
        with TestClient(app) as client:
            before = searched_uids(client, stand.query)
            assert before & stand.forgotten_uids
            generation = client.get("/v1/stats").json()["index"]["generation"]
            stand.pipeline.indexer.start()  # the indexer flushes (and applies tombstones)
            try:
                done = subprocess.run([*MEDHASH, "forget", "--patient-id", FORGOTTEN, "--json",
                                       "--wait", "60"], env=settings_env(stand.runtime.settings),
                                      capture_output=True, text=True, timeout=180)
            finally:
                stand.pipeline.indexer.stop()
            assert done.returncode == 0, done.stderr
            [job] = json.loads(done.stdout)
            assert job["state"] == "done" and job["instances"] == 9
            assert FORGOTTEN not in done.stdout and job["target"].startswith("patient:")
            # this service never refreshed: it still searches the generation from before
            assert client.get("/v1/stats").json()["index"]["generation"] == generation
            after = searched_uids(client, stand.query)
            assert after and not after & stand.forgotten_uids
            for uid in stand.forgotten_uids:
                assert client.get(f"/v1/instances/{uid}").status_code == 404
        assert_nothing_remains(stand)
        newest = Searcher.open(stand.runtime.store, encoder.model_version)
        assert newest is not None and newest.generation > generation
        with pytest.raises(KeyError):
            newest.codes_of(np.array(sorted(stand.forgotten_slices)))
        audit = stand.runtime.catalog.audit_entries(action="forget")[0]
        assert audit[0].actor.startswith("cli:") and audit[0].result_count == 9
        assert FORGOTTEN not in str(audit)


@pytest.mark.integration
@pytest.mark.slow
def test_a_forget_killed_mid_way_completes_when_run_again(
        any_settings: Settings, encoder: BatchEncoder) -> None:
    with archive(any_settings, encoder) as stand:
        env = settings_env(stand.runtime.settings)
        # no indexer runs yet: the first run can get no further than the index step
        first = subprocess.Popen([*MEDHASH, "forget", "--patient-id", FORGOTTEN, "--wait", "600"],
                                 env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 start_new_session=True)
        catalog = stand.runtime.catalog
        deadline = time.monotonic() + 120
        while not catalog.forget_jobs():
            assert first.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)
        os.killpg(first.pid, signal.SIGKILL)  # kill -9, as soon as the job exists
        first.wait(timeout=30)
        [job] = catalog.forget_jobs()
        assert job.state.value != "done"
        # even now, searches do not return the patient (its rows went with the job's start)
        with TestClient(create_app(stand.runtime, encoder=encoder)) as client:
            assert not searched_uids(client, stand.query) & stand.forgotten_uids

        stand.pipeline.indexer.start()
        try:
            again = subprocess.run([*MEDHASH, "forget", "--patient-id", FORGOTTEN, "--wait", "60",
                                    "--json"], env=env, capture_output=True, text=True, timeout=180)
        finally:
            stand.pipeline.indexer.stop()
        assert again.returncode == 0, again.stderr
        jobs = json.loads(again.stdout)
        assert [item["state"] for item in jobs] == ["done", "done"]
        assert jobs[0]["id"] == job.id and jobs[0]["instances"] == 9  # the killed one, finished
        assert jobs[1]["instances"] == 0  # nothing left for the new request to find
        assert_nothing_remains(stand)


@pytest.mark.unit
def test_forget_waits_for_the_indexer_and_says_which(
        embedded_settings: Settings, encoder: BatchEncoder) -> None:
    with archive(embedded_settings, encoder) as stand:
        env = settings_env(stand.runtime.settings)
        waiting = subprocess.run([*MEDHASH, "forget", "--study-uid",
                                  next(iter(all_instances(stand.runtime.catalog))).study_instance_uid
                                  or "", "--wait", "0"], env=env, capture_output=True, text=True,
                                 timeout=120)
        assert waiting.returncode == 1
        assert "medhash indexer" in waiting.stderr and encoder.model_version[:12] in waiting.stderr
        stand.pipeline.indexer.flush()  # what a running indexer does every second
        resumed = subprocess.run([*MEDHASH, "forget", "--resume", "--wait", "5"], env=env,
                                 capture_output=True, text=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        refused = subprocess.run([*MEDHASH, "forget"], env=env, capture_output=True, text=True,
                                 timeout=60)
        assert refused.returncode != 0 and "exactly one" in refused.stderr
