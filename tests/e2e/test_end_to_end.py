"""C-STORE in, searchable out: the real `medhash` commands as separate processes.

Embedded: one `medhash serve` process (SQLite, a folder, threads). Distributed: listener,
two preprocess workers, an encode worker, the indexer, the search service and the
reconciler, each its own process, on PostgreSQL, Redis and an S3 server.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image

from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import StudyIds, make_secondary_capture, write
from shared.storage.catalog import open_catalog
from testbed.catalog_audit import all_codes
from testbed.lsh_model import build_lsh_checkpoint, picture
from tests.e2e.topology import Topology, distributed_topology, embedded_topology

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lsh_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(params=["embedded", "distributed"])
def topology(request: pytest.FixtureRequest, tmp_path: Path, checkpoint: Path) -> Iterator[Topology]:
    if request.param == "embedded":
        with embedded_topology(tmp_path, checkpoint) as running:
            yield running
    else:
        settings: Settings = request.getfixturevalue("distributed_settings")
        with distributed_topology(tmp_path, checkpoint, settings) as running:
            yield running


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def send(topology: Topology, folder: Path, pictures: dict[int, np.ndarray], ids: StudyIds) -> dict[str, int]:
    """Secondary Captures of ``pictures`` over C-STORE; returns SOP UID -> picture seed."""
    uids = {}
    paths = []
    for seed, pixels in pictures.items():
        ds = make_secondary_capture(ids, seed + 1, pixels, modality="OT")
        paths.append(write(ds, folder / f"{seed}.dcm"))
        uids[str(ds.SOPInstanceUID)] = seed
    results = Sender("127.0.0.1", topology.dicom_port, "MEDHASH").send(paths)
    assert all(r.stored for r in results), [r.reason for r in results if not r.stored]
    return uids


def wait_indexed(client: httpx.Client, total: int, timeout_s: float = 240.0) -> dict[str, Any]:
    """Until the catalog says every instance is indexed and the service has loaded them."""
    deadline = time.monotonic() + timeout_s
    stats: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = client.get("/v1/stats")
        if response.status_code == 200:
            stats = response.json()
            if stats["states"]["indexed"] >= total and (stats["index"]["size"] or 0) >= total:
                return stats
        time.sleep(0.5)
    raise AssertionError(f"not all {total} instances indexed and loaded in time: {stats}")


def search_png(client: httpx.Client, pixels: np.ndarray, k: int = 5) -> list[dict[str, object]]:
    response = client.post("/v1/search", files={"file": ("q.png", png(pixels), "image/png")},
                           data={"k": str(k)})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert isinstance(results, list)
    return results


def brute_force(settings: Settings, model_version: str, query_code: bytes, k: int) -> list[tuple[int, int]]:
    """Hamming top-k over every code in the catalog, ties by slice id."""
    catalog = open_catalog(settings)
    try:
        rows = all_codes(catalog, model_version)
    finally:
        catalog.close()
    ids = np.array([slice_id for slice_id, _ in rows])
    codes = np.frombuffer(b"".join(code for _, code in rows), np.uint8).reshape(len(rows), -1)
    query = np.frombuffer(query_code, np.uint8)
    distances = np.unpackbits(codes ^ query, axis=1).sum(axis=1)
    order = np.lexsort((ids, distances))[:k]
    return [(int(ids[i]), int(distances[i])) for i in order]


def test_cstore_in_searchable_out(topology: Topology, tmp_path: Path) -> None:
    ids = StudyIds.new()
    first = {seed: picture(seed) for seed in range(8)}
    uids = send(topology, tmp_path / "first", first, ids)
    with httpx.Client(base_url=topology.http_url, timeout=60) as client:
        stats = wait_indexed(client, len(first))

        # a PNG of the same pixels as a stored 8-bit DICOM finds that instance first, at 0
        for seed in (0, 5):
            top = search_png(client, first[seed])[0]
            assert (uids[str(top["sop_instance_uid"])], top["distance"]) == (seed, 0)
        # so does the stored instance queried by its UID
        by_uid = next(uid for uid, seed in uids.items() if seed == 3)
        response = client.post("/v1/search", json={"sop_instance_uid": by_uid, "k": 8})
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["results"][0]["sop_instance_uid"] == by_uid and body["results"][0]["distance"] == 0

        # the service's ranking equals a brute-force Hamming top-k over the catalog's codes
        catalog = open_catalog(topology.settings)
        try:
            (query_slice, query_code), = catalog.codes_of_sop(by_uid, str(body["model_version"]))
            details = catalog.slice_details([s for s, _ in brute_force(
                topology.settings, str(body["model_version"]), query_code, 8)])
        finally:
            catalog.close()
        expected = brute_force(topology.settings, str(body["model_version"]), query_code, 8)
        assert [(details[s].sop_instance_uid, d) for s, d in expected] == [
            (r["sop_instance_uid"], r["distance"]) for r in body["results"]]
        assert query_slice == expected[0][0]

        # a new C-STORE becomes searchable, while a stream of queries runs: none fails
        failures: list[str] = []
        stop = threading.Event()

        def query_stream() -> None:
            with httpx.Client(base_url=topology.http_url, timeout=60) as stream:
                while not stop.is_set():
                    answer = stream.post("/v1/search", files={"file": ("q.png", png(first[1]), "image/png")})
                    if answer.status_code != 200:
                        failures.append(f"{answer.status_code} {answer.text[:200]}")

        streams = [threading.Thread(target=query_stream) for _ in range(3)]
        for thread in streams:
            thread.start()
        try:
            later = {seed: picture(seed) for seed in range(100, 104)}
            uids.update(send(topology, tmp_path / "later", later, ids))
            wait_indexed(client, len(first) + len(later))
            top = search_png(client, later[102])[0]
            assert (uids[str(top["sop_instance_uid"])], top["distance"]) == (102, 0)
        finally:
            stop.set()
            for thread in streams:
                thread.join(timeout=60)
        assert failures == []
        generation = client.get("/v1/stats").json()["index"]["generation"]
        assert generation > stats["index"]["generation"]
