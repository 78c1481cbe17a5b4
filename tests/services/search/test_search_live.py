"""The search service while the index changes under it: new generations swapped in during a
stream of queries, superseded instance versions, and the time before any index exists."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from services.search import create_app
from shared.dicom.synthetic import StudyIds, make_secondary_capture
from shared.hashing.inference import BatchEncoder
from shared.pipeline.wiring import Runtime
from tests.services.search.conftest import (
    picture,
    pipeline_in,
    png_bytes,
    search_settings,
    served,
)

pytestmark = pytest.mark.unit


def wait_for(condition: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_generation_switches_during_concurrent_queries_fail_none(
        tmp_path: Path, encoder: BatchEncoder) -> None:
    ids = StudyIds.new()
    with pipeline_in(tmp_path, encoder, compact_deltas=2) as pipeline:
        first = make_secondary_capture(ids, 1, picture(0))
        pipeline.add(first)
        pipeline.publish()
        app = create_app(pipeline.runtime, encoder=encoder, refresh_interval_s=0.02)
        with served(app) as base_url:
            writing = threading.Event()
            writing.set()
            seen: list[list[tuple[int, int, str]]] = [[] for _ in range(3)]
            """(status, generation, first result's UID) of each client's answers, in order."""

            def query(number: int) -> None:
                with httpx.Client(base_url=base_url, timeout=30) as client:
                    while writing.is_set() or len(seen[number]) < 5:
                        if number % 2:
                            response = client.post("/v1/search", json={
                                "sop_instance_uid": first.SOPInstanceUID, "k": 50})
                        else:
                            response = client.post("/v1/search", files={
                                "file": ("q.png", png_bytes(picture(0)), "image/png")})
                        body = response.json() if response.status_code == 200 else {}
                        seen[number].append((response.status_code, body.get("generation", -1),
                                             body.get("results", [{}])[0].get("sop_instance_uid")))

            threads = [threading.Thread(target=query, args=(n,)) for n in range(3)]
            for thread in threads:
                thread.start()
            last = None
            for number in range(2, 14):  # twelve generations, compactions among them
                last = make_secondary_capture(ids, number, picture(number))
                pipeline.add(last)
                pipeline.publish()
            writing.clear()
            for thread in threads:
                thread.join(timeout=60)
            assert last is not None

            answers = [answer for client_answers in seen for answer in client_answers]
            assert {(status, uid) for status, _, uid in answers} == {(200, first.SOPInstanceUID)}
            for client_answers in seen:  # each client only moves forward through generations
                generations = [generation for _, generation, _ in client_answers]
                assert generations == sorted(generations)
            assert len({generation for _, generation, _ in answers}) > 2

            final = pipeline.indexer.writer.generation
            assert final is not None
            with httpx.Client(base_url=base_url) as client:
                wait_for(lambda: client.get("/v1/stats").json()["index"]["generation"] == final)
                answer = client.post("/v1/search", json={"sop_instance_uid": last.SOPInstanceUID}).json()
                assert answer["generation"] == final
                assert answer["results"][0]["sop_instance_uid"] == last.SOPInstanceUID
                assert client.get("/v1/stats").json()["index"]["size"] == 13
                metrics = client.get("/metrics").text
            assert f"medhash_index_generation {float(final)}" in metrics


def test_superseded_versions_are_never_returned(tmp_path: Path, encoder: BatchEncoder) -> None:
    ids = StudyIds.new()
    with pipeline_in(tmp_path, encoder) as pipeline:
        original = make_secondary_capture(ids, 1, picture(0))
        pipeline.add(original)
        for number in range(1, 4):
            pipeline.add(make_secondary_capture(ids, number + 1, picture(number)))
        pipeline.publish()
        resent = make_secondary_capture(ids, 1, picture(9), sop_instance_uid=original.SOPInstanceUID)
        pipeline.add(resent)
        pipeline.publish()

        with TestClient(create_app(pipeline.runtime, encoder=encoder)) as client:
            uid = original.SOPInstanceUID
            assert client.get(f"/v1/instances/{uid}").json()["versions"] == 2
            old_pixels = client.post("/v1/search", params={"k": 100}, files={
                "file": ("old.png", png_bytes(picture(0)), "image/png")}).json()
            matches = [hit for hit in old_pixels["results"] if hit["sop_instance_uid"] == uid]
            assert len(matches) == 1 and matches[0]["distance"] > 0  # the new pixels' code
            assert len(old_pixels["results"]) == 4
            new_pixels = client.post("/v1/search", files={
                "file": ("new.png", png_bytes(picture(9)), "image/png")}).json()
            assert new_pixels["results"][0]["sop_instance_uid"] == uid
            assert new_pixels["results"][0]["distance"] == 0
            by_uid = client.post("/v1/search", json={"sop_instance_uid": uid}).json()
            assert by_uid["results"][0] == new_pixels["results"][0]


def test_without_model_or_index_searches_answer_503_until_one_is_published(
        tmp_path: Path, encoder: BatchEncoder, checkpoint: Path) -> None:
    runtime = Runtime.from_settings(search_settings(tmp_path / "no-model"))
    try:
        with TestClient(create_app(runtime)) as client:
            refused = client.post("/v1/search", json={"sop_instance_uid": "1.2.3"})
            assert refused.status_code == 503 and "MEDHASH_MODEL" in refused.json()["detail"]
            health = client.get("/healthz")
            assert health.status_code == 503 and health.json()["status"] == "degraded"
            assert health.json()["checks"]["catalog"]["ok"] and health.json()["checks"]["store"]["ok"]
            assert "no model" in health.json()["checks"]["index"]["detail"]
            stats = client.get("/v1/stats").json()
            assert stats["model_version"] is None and stats["index"] == {"generation": None, "size": 0}
            assert client.get("/").status_code == 200
    finally:
        runtime.close()

    with pipeline_in(tmp_path / "later", encoder) as pipeline:
        # the service opens MEDHASH_MODEL itself, before anything is indexed
        settings = pipeline.runtime.settings.model_copy(update={"model": checkpoint})
        runtime = Runtime.from_settings(settings)  # a second process's view of the same data
        try:
            with TestClient(create_app(runtime, refresh_interval_s=0.05)) as client:
                def query() -> tuple[int, dict[str, Any]]:
                    response = client.post(
                        "/v1/search", files={"file": ("q.png", png_bytes(picture(5)), "image/png")})
                    return response.status_code, response.json()

                status, body = query()
                assert status == 503 and "no index" in body["detail"]
                assert client.get("/healthz").status_code == 503

                pipeline.add(make_secondary_capture(StudyIds.new(), 1, picture(5)))
                pipeline.publish()
                wait_for(lambda: query()[0] == 200)
                _, answer = query()
                assert answer["results"][0]["distance"] == 0
                assert answer["model_version"] == encoder.model_version
                assert client.get("/healthz").json()["status"] == "ok"
        finally:
            runtime.close()
