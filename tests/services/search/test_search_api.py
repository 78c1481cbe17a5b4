"""The HTTP contract of the search service over a real embedded runtime and index.

Every query here goes through the same code the service runs in production: uploads are
decoded by ``shared.pipeline.query.query_slices`` and encoded by the checkpoint's model, the index is
``shared.index`` as the indexer publishes it, and results are checked against a brute-force
Hamming ranking of every code in the catalog.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import BasicTextSRStorage

from services.search import create_app
from shared.dicom.synthetic import StudyIds, make_secondary_capture
from shared.hashing.inference import BatchEncoder
from testbed.catalog_audit import all_codes
from tests.services.search.conftest import World, part10, picture, png_bytes

pytestmark = pytest.mark.unit

POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.int64)


@pytest.fixture(scope="module")
def client(world: World, encoder: BatchEncoder) -> Iterator[TestClient]:
    app = create_app(world.pipeline.runtime, encoder=encoder, refresh_interval_s=0.1)
    with TestClient(app) as test_client:
        yield test_client


def brute_force(world: World, encoder: BatchEncoder, query: np.ndarray, k: int,
                include_excluded: bool = False) -> list[tuple[str, int, int]]:
    """(SOP UID, frame, distance) of the k nearest eligible slices, by (distance, slice id)."""
    catalog = world.pipeline.runtime.catalog
    rows = all_codes(catalog, encoder.model_version)
    ids = np.array([slice_id for slice_id, _ in rows])
    codes = np.stack([np.frombuffer(code, np.uint8) for _, code in rows])
    distances = POPCOUNT[np.bitwise_xor(codes, query)].sum(axis=1)
    details = catalog.slice_details(ids.tolist())
    ranked = []
    for position in np.lexsort((ids, distances)):
        detail = details[int(ids[position])]
        if detail.is_current and (include_excluded or not detail.excluded):
            ranked.append((detail.sop_instance_uid, detail.frame_index, int(distances[position])))
    return ranked[:k]


def triples(answer: dict[str, Any]) -> list[tuple[str, int, int]]:
    return [(hit["sop_instance_uid"], hit["frame"], hit["distance"]) for hit in answer["results"]]


def stored_dataset(world: World, uid: str) -> Dataset:
    """The stored DICOM of an instance, read back from the object store."""
    instance = world.pipeline.runtime.catalog.current(uid)
    assert instance is not None
    return dcmread(io.BytesIO(world.pipeline.runtime.store.get(instance.object_key)))


def upload(client: TestClient, data: bytes, name: str = "query.png", media_type: str = "image/png",
           **params: str | int) -> dict[str, Any]:
    response = client.post("/v1/search", files={"file": (name, data, media_type)}, params=params)
    assert response.status_code == 200, response.text
    answer: dict[str, Any] = response.json()
    return answer


def test_stored_picture_uploaded_as_png_finds_its_dicom_first(client: TestClient, world: World) -> None:
    uid, pixels = next(iter(world.pictures.items()))
    response = client.post("/v1/search", files={"file": ("query.png", png_bytes(pixels), "image/png")},
                           data={"k": "5"})
    assert response.status_code == 200, response.text
    answer = response.json()
    first = answer["results"][0]
    assert (first["sop_instance_uid"], first["frame"], first["distance"]) == (uid, 0, 0)
    assert len(answer["results"]) == 5 and answer["k"] == 5
    assert answer["query"]["source"] == "upload" and answer["query"]["frames"] == [0]
    assert answer["query"]["thumbnail"].startswith("data:image/png;base64,")
    assert answer["model_version"] == world.pipeline.encoder.model_version
    assert answer["generation"] >= 1
    assert first["modality"] == "XC" and first["body_part"] == "SKIN"
    assert first["thumbnail_url"] == f"/v1/instances/{uid}/thumbnail?frame=0"
    distances = [hit["distance"] for hit in answer["results"]]
    assert distances == sorted(distances)


def test_dicom_upload_and_uid_query_match_brute_force(client: TestClient, world: World,
                                                      encoder: BatchEncoder) -> None:
    catalog = world.pipeline.runtime.catalog
    for uid in (world.ct_uid, *list(world.pictures)[:3]):
        (_, code), = catalog.codes_of_sop(uid, encoder.model_version)
        expected = brute_force(world, encoder, np.frombuffer(code, np.uint8), 7)
        by_uid = client.post("/v1/search", json={"sop_instance_uid": uid, "k": 7})
        assert by_uid.status_code == 200, by_uid.text
        assert triples(by_uid.json()) == expected
        assert expected[0] == (uid, 0, 0)
        assert by_uid.json()["query"] == {
            "source": "instance", "sop_instance_uid": uid, "slices": 1, "frames": [0],
            "thumbnail": None, "thumbnail_url": f"/v1/instances/{uid}/thumbnail?frame=0"}

    ct_file = part10(stored_dataset(world, world.ct_uid))
    uploaded = client.post("/v1/search?k=7", files={"file": ("ct.dcm", ct_file, "application/dicom")})
    assert uploaded.status_code == 200, uploaded.text
    (_, code), = catalog.codes_of_sop(world.ct_uid, encoder.model_version)
    assert triples(uploaded.json()) == brute_force(world, encoder, np.frombuffer(code, np.uint8), 7)




def test_multiframe_query_searches_every_frame_and_merges(client: TestClient, world: World,
                                                          encoder: BatchEncoder) -> None:
    single = upload(client, png_bytes(world.frames[1]), k=3)
    assert triples(single)[0] == (world.multiframe_uid, 1, 0)

    volume = part10(stored_dataset(world, world.multiframe_uid))
    answer = upload(client, volume, "volume.dcm", "application/dicom", k=3)
    assert answer["query"]["slices"] == 3 and answer["query"]["frames"] == [0, 1, 2]
    assert sorted(triples(answer)) == [(world.multiframe_uid, frame, 0) for frame in range(3)]

    capped = create_app(world.pipeline.runtime, encoder=encoder, max_query_frames=2)
    with TestClient(capped) as capped_client:
        by_uid = capped_client.post("/v1/search", json={"sop_instance_uid": world.multiframe_uid})
    assert by_uid.json()["query"]["frames"] == [0, 2]
    exact = {(uid, frame) for uid, frame, distance in triples(by_uid.json()) if distance == 0}
    assert exact == {(world.multiframe_uid, 0), (world.multiframe_uid, 2)}


def test_excluded_slices_are_filtered_unless_asked_for(client: TestClient, world: World) -> None:
    blank = png_bytes(np.zeros((64, 64), np.uint8))
    default = upload(client, blank, k=100)
    assert world.blank_uid not in {hit["sop_instance_uid"] for hit in default["results"]}
    assert not any(hit["excluded"] for hit in default["results"])
    eligible = len(world.pictures) + 1 + len(world.frames)  # pictures, CT, three frames
    assert len(default["results"]) == eligible

    included = upload(client, blank, k=100, include_excluded="true")
    first = included["results"][0]
    assert (first["sop_instance_uid"], first["distance"], first["excluded"]) == (world.blank_uid, 0, True)
    assert len(included["results"]) == eligible + 1
    by_json = client.post("/v1/search", json={"sop_instance_uid": world.blank_uid,
                                              "include_excluded": True, "k": 1})
    assert triples(by_json.json()) == [(world.blank_uid, 0, 0)]


def test_patient_data_only_when_exposed(client: TestClient, world: World, encoder: BatchEncoder) -> None:
    uid = next(iter(world.pictures))
    queries = [("post", "/v1/search", {"json": {"sop_instance_uid": uid, "k": 100,
                                                "include_excluded": True}}),
               ("get", f"/v1/instances/{uid}", {})]
    for method, url, kwargs in queries:
        text = getattr(client, method)(url, **kwargs).text
        assert "PAT-SECRET-42" not in text and "patient" not in text.lower()

    exposing = create_app(world.pipeline.runtime, encoder=encoder, expose_patient_data=True)
    with TestClient(exposing) as exposing_client:
        for method, url, kwargs in queries:
            body = getattr(exposing_client, method)(url, **kwargs).json()
            for item in body.get("results", [body]):
                assert item["patient_id"] == "PAT-SECRET-42"


def test_instance_details_and_thumbnails(client: TestClient, world: World) -> None:
    info = client.get(f"/v1/instances/{world.multiframe_uid}").json()
    assert info["state"] == "indexed" and info["reason"] is None and info["versions"] == 1
    assert info["number_of_frames"] == 3 and [f["frame"] for f in info["frames"]] == [0, 1, 2]
    assert info["frames"][2]["thumbnail_url"] == f"/v1/instances/{world.multiframe_uid}/thumbnail?frame=2"
    blank = client.get(f"/v1/instances/{world.blank_uid}").json()
    assert blank["frames"][0]["excluded"] and "blank" in blank["frames"][0]["exclusion_reason"]

    response = client.get(info["frames"][2]["thumbnail_url"])
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.size == (128, 128) and image.mode == "L"
    again = client.get(info["frames"][2]["thumbnail_url"],
                       headers={"If-None-Match": response.headers["etag"]})
    assert again.status_code == 304
    other_frame = client.get(f"/v1/instances/{world.multiframe_uid}/thumbnail?frame=1&size=64")
    assert other_frame.headers["etag"] != response.headers["etag"]
    with Image.open(io.BytesIO(other_frame.content)) as image:
        assert image.size == (64, 64)

    missing_frame = client.get(f"/v1/instances/{world.multiframe_uid}/thumbnail?frame=3")
    assert missing_frame.status_code == 404 and "frames are 0 to 2" in missing_frame.json()["detail"]
    for url in ("/v1/instances/1.2.3.4", "/v1/instances/1.2.3.4/thumbnail"):
        unknown = client.get(url)
        assert unknown.status_code == 404 and "1.2.3.4" in unknown.json()["detail"]


def test_bad_requests_get_clear_errors_and_the_service_keeps_serving(
        world: World, encoder: BatchEncoder) -> None:
    good = png_bytes(picture(0))
    sr = make_secondary_capture(StudyIds.new(), 1, picture(1))
    sr.SOPClassUID = sr.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    del sr.PixelData
    truncated = part10(stored_dataset(world, world.ct_uid))[:2000]
    corrupt_png = good[:40] + bytes(200)
    # a real PNG whose header claims 9000 x 9000 pixels: refused before any decoding
    small = png_bytes(np.zeros((8, 8), np.uint8))
    header = b"IHDR" + struct.pack(">II", 9000, 9000) + small[24:29]
    bomb = small[:12] + header + struct.pack(">I", zlib.crc32(header)) + small[33:]

    app = create_app(world.pipeline.runtime, encoder=encoder, max_upload_bytes=100_000)
    with TestClient(app) as client:
        def file(data: bytes, media_type: str = "application/octet-stream") -> dict[str, Any]:
            return {"files": {"file": ("upload", data, media_type)}}

        cases: list[tuple[str, dict[str, Any], int, str]] = [
            ("garbage", file(b"hello, not an image" * 10), 400, "not a DICOM Part 10 file"),
            ("empty", file(b""), 400, "empty"),
            ("truncated DICOM", file(truncated, "application/dicom"), 400, "yields no image"),
            ("DICOM without pixels", file(part10(sr), "application/dicom"), 400, "yields no image"),
            ("corrupt PNG", file(corrupt_png, "image/png"), 400, "PNG"),
            ("decompression bomb", file(bomb, "image/png"), 400, "larger than"),
            ("wrong part type", file(good, "text/plain"), 415, "upload a DICOM file"),
            ("wrong body type", {"content": b"x", "headers": {"content-type": "text/plain"}}, 415,
             "multipart/form-data"),
            ("no body type", {"content": b"x"}, 415, "multipart/form-data"),
            ("too large", file(bytes(200_000)), 413, "0.1 MB"),
            ("too large, chunked", {"content": iter([b"{" * 50_000] * 3),
                                    "headers": {"content-type": "application/json"}}, 413, "limit"),
            ("not JSON", {"content": b"{nope", "headers": {"content-type": "application/json"}},
             422, "not valid JSON"),
            ("no UID", {"json": {"k": 3}}, 422, "sop_instance_uid"),
            ("unknown field", {"json": {"sop_instance_uid": "1.2.3", "kk": 3}}, 422, "kk"),
            ("k too big", {"json": {"sop_instance_uid": "1.2.3", "k": 101}}, 422, "k:"),
            ("k zero in query", {"json": {"sop_instance_uid": "1.2.3"}, "params": {"k": 0}}, 422, "k"),
            ("form k not a number", {**file(good, "image/png"), "data": {"k": "ten"}}, 422, "k:"),
            ("no file part", {"data": {"k": "3"}, "files": {"other": ("x", b"x")}}, 422, "`file`"),
            ("unknown UID", {"json": {"sop_instance_uid": "1.2.3.999"}}, 404, "1.2.3.999"),
        ]
        for name, kwargs, status, message in cases:
            response = client.post("/v1/search", **kwargs)
            assert response.status_code == status, (name, response.text)
            assert message in response.json()["detail"], (name, response.json())
        assert upload(client, good)["results"][0]["distance"] == 0
        metrics = client.get("/metrics").text
    for outcome in ("ok", "unreadable", "too_large", "unsupported_type", "invalid", "not_found"):
        assert f'medhash_search_requests_total{{outcome="{outcome}"}}' in metrics


def test_api_keys_guard_every_v1_route(world: World, encoder: BatchEncoder) -> None:
    uid = next(iter(world.pictures))
    app = create_app(world.pipeline.runtime, encoder=encoder, api_keys=["alpha-key", "beta-key"])
    with TestClient(app) as client:
        requests = [("get", "/v1/stats", {}), ("get", f"/v1/instances/{uid}", {}),
                    ("get", f"/v1/instances/{uid}/thumbnail", {}),
                    ("post", "/v1/search", {"json": {"sop_instance_uid": uid}})]
        for method, url, kwargs in requests:
            for headers in ({}, {"X-API-Key": "wrong"}, {"X-API-Key": ""}):
                refused = getattr(client, method)(url, headers=headers, **kwargs)
                assert refused.status_code == 401, (url, headers)
                assert "X-API-Key" in refused.json()["detail"]
            for key in ("alpha-key", "beta-key"):
                assert getattr(client, method)(url, headers={"X-API-Key": key}, **kwargs).status_code == 200
        for open_url in ("/healthz", "/metrics", "/", "/openapi.json", "/static/app.js"):
            assert client.get(open_url).status_code == 200, open_url
        assert "X-API-Key" in client.get("/openapi.json").text


def test_stats_health_metrics_openapi_and_page(client: TestClient, world: World,
                                               encoder: BatchEncoder) -> None:
    stats = client.get("/v1/stats").json()
    instances = len(world.pictures) + 3
    assert stats["states"]["indexed"] == instances and stats["total"] == instances
    assert stats["model_version"] == encoder.model_version
    assert stats["index"]["generation"] >= 1 and stats["index"]["size"] == instances + 2

    health = client.get("/healthz")
    assert health.status_code == 200 and health.json()["status"] == "ok"
    assert set(health.json()["checks"]) == {"catalog", "store", "index"}

    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    assert "medhash_index_generation" in metrics.text and "medhash_search_seconds" in metrics.text

    spec = client.get("/openapi.json").json()
    assert {"/v1/search", "/v1/instances/{sop_uid}", "/v1/instances/{sop_uid}/thumbnail",
            "/v1/stats", "/healthz", "/metrics"} <= set(spec["paths"])
    assert set(spec["paths"]["/v1/search"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data", "application/json"}

    page = client.get("/")
    assert page.status_code == 200 and 'type="file"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    assert "http://" not in page.text and "https://" not in page.text
