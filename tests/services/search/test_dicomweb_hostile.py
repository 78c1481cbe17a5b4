"""Hostile input to DICOMweb: malformed multipart, wrong content types, huge parts and bodies,
QIDO-RS injection attempts, identifiers with a ``/``. Each gets a clear 4xx, nothing is
stored half (an instance is either stored whole or not at all), nothing leaks."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pydicom
import pytest
from fastapi.testclient import TestClient
from pydicom.data import get_testdata_file

from services.search import create_app
from shared.config import Settings
from shared.dicom.synthetic import StudyIds, make_secondary_capture
from shared.hashing.inference import BatchEncoder
from shared.pipeline.wiring import Runtime
from testbed.catalog_audit import all_instances
from tests.services.search.conftest import IMAGE_SIZE, Pipeline, part10, picture

pytestmark = pytest.mark.unit

KEY = {"X-API-Key": "secret"}
BOUNDARY = "test-boundary-1"
RELATED = f'multipart/related; type="application/dicom"; boundary={BOUNDARY}'


def body(*parts: tuple[str, bytes], close: bool = True) -> bytes:
    out = b"".join(f"--{BOUNDARY}\r\nContent-Type: {kind}\r\n\r\n".encode() + data + b"\r\n"
                   for kind, data in parts)
    return out + (f"--{BOUNDARY}--\r\n".encode() if close else b"")


def instance(patient_id: str = "PAT-H", number: int = 1, **changes: str) -> bytes:
    ds = make_secondary_capture(StudyIds.new(patient_id=patient_id), number, picture(number))
    for name, value in changes.items():
        setattr(ds, name, value)
    return part10(ds)


@pytest.fixture
def stand(tmp_path: Path, encoder: BatchEncoder) -> Iterator[tuple[TestClient, Runtime]]:
    settings = Settings(data_dir=tmp_path / "data", dicom_port=0, metrics_port=0, database_url=None,
                        broker_url=None, s3_endpoint=None, image_size=IMAGE_SIZE,
                        stow_max_bytes=300_000, stow_max_part_bytes=100_000)
    runtime = Runtime.from_settings(settings)
    try:
        app = create_app(runtime, encoder=encoder, api_keys=["secret"], expose_patient_data=True)
        with TestClient(app) as client:
            yield client, runtime
    finally:
        runtime.close()


def stow(client: TestClient, data: bytes, content_type: str = RELATED, path: str = "studies"):  # type: ignore[no-untyped-def]
    return client.post(f"/dicomweb/{path}", content=data,
                       headers={**KEY, "Content-Type": content_type})


def test_wrong_content_types_are_415_and_store_nothing(stand: tuple[TestClient, Runtime]) -> None:
    client, runtime = stand
    good = body(("application/dicom", instance()))
    for content_type in ("application/dicom", "application/json", "",
                         f'multipart/related; type="application/dicom+json"; boundary={BOUNDARY}',
                         f"multipart/form-data; boundary={BOUNDARY}"):
        answer = stow(client, good, content_type)
        assert answer.status_code == 415, content_type
        assert "multipart/related" in answer.json()["detail"]
    assert stow(client, good, 'multipart/related; type="application/dicom"').status_code == 400
    assert all_instances(runtime.catalog) == []


def test_malformed_or_cut_off_bodies_are_400_and_store_nothing(
        stand: tuple[TestClient, Runtime]) -> None:
    client, runtime = stand
    first, second = instance(number=1), instance(number=2)
    cut = body(("application/dicom", first), ("application/dicom", second), close=False)
    for data in (cut, cut[:-40], b"not multipart at all", body(), b"--" + BOUNDARY.encode()):
        answer = stow(client, data)
        assert answer.status_code == 400, data[:60]
        assert "nothing" in answer.json()["detail"] or "malformed" in answer.json()["detail"] \
            or "no parts" in answer.json()["detail"]
    assert all_instances(runtime.catalog) == []
    assert list(runtime.store.list("raw/")) == []


def test_bad_parts_fail_in_failed_sop_sequence_while_good_ones_are_kept(
        stand: tuple[TestClient, Runtime]) -> None:
    client, runtime = stand
    good = instance(number=1)
    huge = instance(number=2) + b"\x00" * 100_001
    answer = stow(client, body(("application/dicom", good), ("text/plain", b"hello"),
                               ("application/dicom", b"\x00" * 200 + b"garbage"),
                               ("application/dicom", huge)))
    assert answer.status_code == 202
    dataset = answer.json()
    assert len(dataset["00081199"]["Value"]) == 1
    assert [item["00081197"]["Value"] for item in dataset["00081198"]["Value"]] == [[0xC000]] * 3
    warning = answer.headers["warning"]
    assert "part 2" in warning and "part 3: not a DICOM Part 10" in warning and "part 4" in warning
    rows = all_instances(runtime.catalog)
    assert len(rows) == 1 and runtime.store.get(rows[0].object_key) == good

    only_bad = stow(client, body(("application/dicom", huge)))
    assert only_bad.status_code == 409
    other_study = stow(client, body(("application/dicom", instance(number=3))),
                       path="studies/1.2.3.4")
    assert other_study.status_code == 409
    assert other_study.json()["00081198"]["Value"][0]["00081197"]["Value"] == [0xA900]
    assert len(all_instances(runtime.catalog)) == 1


def test_a_body_over_the_limit_is_413_whether_declared_or_streamed(
        stand: tuple[TestClient, Runtime]) -> None:
    client, runtime = stand
    parts = [("application/dicom", instance(number=n)) for n in range(1, 80)]
    data = body(*parts)
    assert len(data) > 300_000
    assert stow(client, data).status_code == 413

    def chunks() -> Iterator[bytes]:  # no Content-Length: the limit applies while reading
        for start in range(0, len(data), 16_384):
            yield data[start:start + 16_384]

    answer = client.post("/dicomweb/studies", content=chunks(),
                         headers={**KEY, "Content-Type": RELATED})
    assert answer.status_code == 413 and "MEDHASH_STOW_MAX_BYTES" in answer.json()["detail"]
    assert all_instances(runtime.catalog) == []


def test_qido_injection_attempts_match_only_literally(stand: tuple[TestClient, Runtime]) -> None:
    client, runtime = stand
    for number, patient in enumerate(("P_1", "PX1", "P%1", "O'Brien"), start=1):
        assert stow(client, body(("application/dicom", instance(patient, number)))).status_code == 200

    def patients(**params: str) -> list[str]:
        answer = client.get("/dicomweb/studies", params=params, headers=KEY)
        assert answer.status_code == 200, answer.text
        return sorted(study["00100020"]["Value"][0] for study in answer.json())

    assert patients(PatientID="*") == ["O'Brien", "P%1", "PX1", "P_1"]
    assert patients(PatientID="P_1") == ["P_1"]  # '_' is no LIKE wildcard here
    assert patients(PatientID="P?1") == ["P%1", "PX1", "P_1"]
    assert patients(PatientID="%") == []
    assert patients(PatientID="P%1") == ["P%1"]
    assert patients(PatientID="O'Brien") == ["O'Brien"]
    for attack in ("' OR '1'='1", "x' OR 1=1 --", "1; DROP TABLE instances; --", "\\", "*' --"):
        assert patients(PatientID=attack) == []
        assert patients(AccessionNumber=attack) == []
        if attack != "\\":  # no UID in it at all: a 400 (below)
            assert patients(StudyInstanceUID=attack) == []
    assert len(all_instances(runtime.catalog)) == 4  # the table is still there, whole
    for params in ({"StudyDate": "2024' OR 1=1"}, {"Modality": "CT' --"}, {"limit": "-1"},
                   {"offset": "1 OR 1"}, {"PatientID'": "x"}, {"includefield": "'; --"},
                   {"PatientID": "x" * 2000}, {"StudyInstanceUID": "\\"}):
        answer = client.get("/dicomweb/studies", params=params, headers=KEY)
        assert answer.status_code == 400, params
        assert "P_1" not in answer.text
    ignored = client.get("/dicomweb/studies", params={"PatientName": "Smith*"}, headers=KEY)
    assert ignored.status_code == 200 and "PatientName" in ignored.headers["warning"]
    assert patients(limit="2") == ["P%1", "P_1"] or len(patients(limit="2")) == 2
    page = [client.get("/dicomweb/studies", params={"limit": "1", "offset": str(n)},
                       headers=KEY).json()[0]["0020000D"]["Value"][0] for n in range(4)]
    assert len(set(page)) == 4


@pytest.mark.parametrize("uid", ["1.2.3/evil/x", "1.2.3/../x"])
def test_an_identifier_with_a_slash_is_addressable_everywhere(
        tmp_path: Path, encoder: BatchEncoder, uid: str) -> None:
    settings = Settings(data_dir=tmp_path / "data", dicom_port=0, metrics_port=0, database_url=None,
                        broker_url=None, s3_endpoint=None, image_size=IMAGE_SIZE)
    runtime = Runtime.from_settings(settings)
    try:
        pipeline = Pipeline(runtime, encoder)
        ds = make_secondary_capture(StudyIds.new(), 1, picture(7), sop_instance_uid=uid)
        pipeline.add(ds)
        pipeline.publish()
        stored = runtime.catalog.current(uid)
        assert stored is not None and stored.object_key.startswith("raw/invalid-uid/")
        study, series = ds.StudyInstanceUID, ds.SeriesInstanceUID
        # percent-encoded always; plain too unless it holds a '..' segment (which HTTP
        # clients resolve before sending)
        forms = [quote(uid, safe="")] + ([] if "/../" in uid else [uid])
        app = create_app(runtime, encoder=encoder, expose_patient_data=True)
        with TestClient(app) as client:
            for form in forms:
                answer = client.get(f"/v1/instances/{form}")
                assert answer.status_code == 200, form
                assert answer.json()["sop_instance_uid"] == uid
                thumbnail = client.get(f"/v1/instances/{form}/thumbnail")
                assert thumbnail.status_code == 200 and thumbnail.content.startswith(b"\x89PNG")
                wado = client.get(f"/dicomweb/studies/{study}/series/{series}/instances/{form}")
                assert wado.status_code == 200
                assert part10(ds) in wado.content
                metadata = client.get(f"/dicomweb/studies/{study}/series/{series}/instances/"
                                      f"{form}/metadata")
                assert metadata.json()[0]["00080018"]["Value"] == [uid]
            listed = client.get(f"/dicomweb/studies/{study}/series/{series}/instances").json()
            url = listed[0]["00081190"]["Value"][0]
            assert url.endswith(quote(uid, safe=""))
            assert client.get(url).status_code == 200
            results = client.post("/v1/search", json={"sop_instance_uid": uid}).json()
            assert results["results"][0]["sop_instance_uid"] == uid
            assert pydicom.dcmread(io.BytesIO(runtime.store.get(stored.object_key))).SOPInstanceUID \
                == uid
    finally:
        runtime.close()


@pytest.mark.parametrize("name", ["SC_rgb_rle_2frame.dcm", "emri_small_jpeg_2k_lossless.dcm"])
def test_frames_are_served_as_stored_and_rendered(stand: tuple[TestClient, Runtime],
                                                  name: str) -> None:
    client, _ = stand
    data = Path(get_testdata_file(name)).read_bytes()
    ds = pydicom.dcmread(io.BytesIO(data))
    assert stow(client, body(("application/dicom", data))).status_code == 200
    base = (f"/dicomweb/studies/{ds.StudyInstanceUID}/series/{ds.SeriesInstanceUID}/"
            f"instances/{ds.SOPInstanceUID}")
    count = int(ds.NumberOfFrames)
    answer = client.get(f"{base}/frames/{','.join(str(n) for n in range(1, count + 1))}",
                        headers={**KEY, "Accept": 'multipart/related; '
                                 'type="application/octet-stream"; transfer-syntax=*'})
    assert answer.status_code == 200
    assert f"transfer-syntax={ds.file_meta.TransferSyntaxUID}" in answer.text[:400]
    frames = [part.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n", 1)[0]
              for part in answer.content.split(answer.headers["content-type"].split("boundary=")[1]
                                               .encode())[1:-1]]
    assert len(frames) == count and all(frame and frame in ds.PixelData for frame in frames)
    uncompressed = client.get(f"{base}/frames/1", headers={
        **KEY, "Accept": 'multipart/related; type="application/octet-stream"; '
                         'transfer-syntax=1.2.840.10008.1.2.1'})
    assert uncompressed.status_code == 406 and "never transcoded" in uncompressed.json()["detail"]
    assert client.get(f"{base}/frames/{count + 1}", headers=KEY).status_code == 404
    assert client.get(f"{base}/frames/0", headers=KEY).status_code == 400
    rendered = client.get(f"{base}/frames/{count}/rendered", headers=KEY)
    assert rendered.status_code == 200 and rendered.content.startswith(b"\x89PNG")
    jpeg = client.get(f"{base}/frames/1/rendered", headers={**KEY, "Accept": "image/jpeg"})
    assert jpeg.headers["content-type"] == "image/jpeg" and jpeg.content.startswith(b"\xff\xd8")
