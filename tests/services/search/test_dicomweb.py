"""DICOMweb against a client no one here wrote: dicomweb-client (from the highdicom authors)
stores a multi-file study by STOW-RS, finds it by QIDO-RS and retrieves it by WADO-RS byte
for byte; then the pipeline indexes it and a PNG query's top result carries a WADO-RS URL
that returns the original and a viewer link. In both configurations (SQLite + folder,
PostgreSQL + S3 + Redis)."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
import requests
from dicomweb_client.api import DICOMwebClient

from services.search import create_app
from shared.config import Settings
from shared.dicom.synthetic import StudyIds, make_ct, make_secondary_capture, write
from shared.hashing.inference import BatchEncoder
from shared.pipeline.wiring import Runtime
from testbed.catalog_audit import all_instances
from tests.services.search.conftest import (
    IMAGE_SIZE,
    Pipeline,
    picture,
    png_bytes,
    served,
)

KEY = "reader-secret"
VIEWER = "https://viewer.example.org/viewer?StudyInstanceUIDs={study}&SOPInstanceUID={sop}"


@dataclass
class Stand:
    """A served search app over a runtime of the given settings, and what it stores."""

    pipeline: Pipeline
    base_url: str

    @property
    def runtime(self) -> Runtime:
        return self.pipeline.runtime

    def client(self, key: str = KEY) -> DICOMwebClient:
        return DICOMwebClient(url=f"{self.base_url}/dicomweb", headers={"X-API-Key": key})

    def index(self, sop_uids: list[str]) -> None:
        """Run the stored instances through preprocess, encode and index, then publish."""
        for uid in sop_uids:
            current = self.runtime.catalog.current(uid)
            assert current is not None
            self.pipeline.preprocessor.run(current.id)
            self.pipeline.encode_stage.run(current.id)
            self.pipeline.indexer.run(current.id)
        generation = self.pipeline.publish()
        deadline = time.monotonic() + 20
        while requests.get(f"{self.base_url}/v1/stats", headers={"X-API-Key": KEY},
                           timeout=30).json()["index"]["generation"] != generation:
            assert time.monotonic() < deadline, "the service did not load the new generation"
            time.sleep(0.05)

    def search(self, png: bytes, **fields: str) -> list[dict[str, Any]]:
        response = requests.post(f"{self.base_url}/v1/search", headers={"X-API-Key": KEY},
                                 files={"file": ("q.png", png, "image/png")}, data=fields,
                                 timeout=60)
        assert response.status_code == 200, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results


def app_settings(settings: Settings, **changes: object) -> Settings:
    return settings.model_copy(update={"image_size": IMAGE_SIZE, "viewer_url": VIEWER, **changes})


@contextmanager
def stand(settings: Settings, encoder: BatchEncoder, *, expose: bool = True,
          keys: tuple[str, ...] = (f"pacs:read:{KEY}", "dpo:admin:admin-secret")) -> Iterator[Stand]:
    runtime = Runtime.from_settings(app_settings(settings))
    try:
        pipeline = Pipeline(runtime, encoder)
        app = create_app(runtime, encoder=encoder, api_keys=keys, expose_patient_data=expose,
                         refresh_interval_s=0.05)
        with served(app) as base_url:
            yield Stand(pipeline, base_url)
    finally:
        runtime.close()


def study_files(folder: Path, patient_id: str = "PAT-DW-1") -> list[Path]:
    """A study of two series: three Secondary Captures and two CT slices, as Part 10 files."""
    ids = StudyIds.new(patient_id=patient_id)
    ct_ids = StudyIds(patient_id, ids.study_instance_uid, StudyIds.new().series_instance_uid)
    files = [write(make_secondary_capture(ids, n, picture(40 + n), modality="MR"),
                   folder / f"sc{n}.dcm") for n in range(1, 4)]
    files += [write(make_ct(ct_ids, n, rows=64, columns=64, seed=n), folder / f"ct{n}.dcm")
              for n in range(1, 3)]
    return files


def wado_parts(stand_: Stand, path: str) -> list[bytes]:
    """The parts of a WADO-RS response, split by dicomweb-client's own multipart decoder."""
    client = stand_.client()
    response = client._session.get(f"{stand_.base_url}/dicomweb/{path}",
                                   headers={"Accept": 'multipart/related; type="application/dicom"'})
    assert response.status_code == 200, response.text
    return list(client._decode_multipart_message(response, stream=False))


@pytest.mark.integration
@pytest.mark.slow
def test_dicomweb_client_stores_finds_and_retrieves_a_study_byte_identical(
        any_settings: Settings, encoder: BatchEncoder, tmp_path: Path) -> None:
    files = study_files(tmp_path / "study")
    originals = {pydicom.dcmread(path).SOPInstanceUID: path.read_bytes() for path in files}
    study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
    with stand(any_settings, encoder) as stand_:
        client = stand_.client()
        datasets = [pydicom.dcmread(path) for path in files]
        answer = client.store_instances(datasets)
        stored = [item.ReferencedSOPInstanceUID for item in answer.ReferencedSOPSequence]
        assert sorted(stored) == sorted(originals)
        assert "FailedSOPSequence" not in answer
        # stored as sent: what dicomweb-client put on the wire is what the store holds
        sent = {ds.SOPInstanceUID: _encoded(ds) for ds in datasets}
        rows = {row.sop_instance_uid: row for row in all_instances(stand_.runtime.catalog)}
        for uid, data in sent.items():
            assert stand_.runtime.store.get(rows[uid].object_key) == data
        assert sent == originals  # pydicom re-encodes these files to their own bytes

        # idempotent: the same study again is the same rows
        again = client.store_instances([pydicom.dcmread(path) for path in files])
        assert len(again.ReferencedSOPSequence) == len(files)
        assert len(all_instances(stand_.runtime.catalog)) == len(files)

        # QIDO-RS
        studies = client.search_for_studies(search_filters={"PatientID": "PAT-DW-1"})
        assert [study["0020000D"]["Value"][0] for study in studies] == [study_uid]
        assert studies[0]["00201208"]["Value"] == [5]
        assert sorted(studies[0]["00080061"]["Value"]) == ["CT", "MR"]
        series = client.search_for_series(study_uid)
        assert len(series) == 2
        instances = client.search_for_instances(study_uid, search_filters={"Modality": "CT"})
        assert len(instances) == 2
        assert client.search_for_studies(search_filters={"PatientID": "PAT-DW-*"})
        assert client.search_for_studies(search_filters={"PatientID": "OTHER"}) == []
        assert client.search_for_studies(search_filters={"StudyDate": "20250101-20261231"})
        assert client.search_for_studies(search_filters={"StudyDate": "20270101-"}) == []

        # WADO-RS: the study, a series, an instance, byte for byte; metadata
        assert sorted(wado_parts(stand_, f"studies/{study_uid}")) == sorted(originals.values())
        retrieved = client.retrieve_study(study_uid)
        assert sorted(ds.SOPInstanceUID for ds in retrieved) == sorted(originals)
        one = next(iter(originals))
        series_uid = rows[one].series_instance_uid
        assert wado_parts(stand_, f"studies/{study_uid}/series/{series_uid}/instances/{one}") == [
            originals[one]]
        metadata = client.retrieve_instance_metadata(study_uid, series_uid, one)
        assert metadata["00080018"]["Value"] == [one]
        assert "7FE00010" not in metadata
        rendered = client.retrieve_instance_frames_rendered(study_uid, series_uid, one, [1])
        assert rendered.startswith(b"\x89PNG")
        frames = client.retrieve_instance_frames(study_uid, series_uid, one, [1])
        assert frames == [pydicom.dcmread(io.BytesIO(originals[one])).PixelData]

        # the pipeline indexes it; a PNG query's top result links to the original and a viewer
        stand_.index(list(originals))
        sc_uid = next(uid for uid, data in originals.items()
                      if pydicom.dcmread(io.BytesIO(data)).Modality == "MR")
        pixels = pydicom.dcmread(io.BytesIO(originals[sc_uid])).pixel_array.astype(np.uint8)
        top = stand_.search(png_bytes(pixels))[0]
        assert top["sop_instance_uid"] == sc_uid and top["distance"] == 0
        assert top["viewer_url"] == VIEWER.format(study=study_uid, sop=sc_uid)
        original = requests.get(top["wado_url"], headers={"X-API-Key": KEY}, timeout=30)
        assert original.status_code == 200
        assert list(client._decode_multipart_message(original, stream=False)) == [originals[sc_uid]]

        audit = requests.get(f"{stand_.base_url}/v1/audit", params={"limit": 1000},
                             headers={"X-API-Key": "admin-secret"}, timeout=30).json()
        actions = {(entry["actor"], entry["action"]) for entry in audit["entries"]}
        assert {("pacs", "stow"), ("pacs", "qido"), ("pacs", "retrieve"),
                ("pacs", "search")} <= actions
        assert "PAT-DW-1" not in str(audit)


def _encoded(ds: pydicom.Dataset) -> bytes:
    """The bytes dicomweb-client sends for a dataset (its own encoding, pydicom.dcmwrite)."""
    buffer = io.BytesIO()
    pydicom.dcmwrite(buffer, ds)
    return buffer.getvalue()


@pytest.mark.unit
def test_retrieval_is_refused_unless_patient_data_is_exposed_and_stow_still_works(
        embedded_settings: Settings, encoder: BatchEncoder, tmp_path: Path) -> None:
    files = study_files(tmp_path / "study", patient_id="PAT-HIDDEN")
    with stand(embedded_settings, encoder, expose=False) as stand_:
        client = stand_.client()
        answer = client.store_instances([pydicom.dcmread(path) for path in files])
        assert len(answer.ReferencedSOPSequence) == len(files)
        study_uid = pydicom.dcmread(files[0]).StudyInstanceUID
        for path in ("studies", f"studies/{study_uid}", f"studies/{study_uid}/metadata"):
            response = requests.get(f"{stand_.base_url}/dicomweb/{path}",
                                    headers={"X-API-Key": KEY}, timeout=30)
            assert response.status_code == 403, path
            assert "MEDHASH_EXPOSE_PATIENT_DATA" in response.json()["detail"]
            assert "PAT-HIDDEN" not in response.text
        # the search results carry no WADO-RS URL then, but the viewer link
        stand_.index([pydicom.dcmread(path).SOPInstanceUID for path in files])
        result = stand_.search(png_bytes(picture(41)))[0]
        assert "wado_url" not in result and "patient_id" not in result
        assert result["viewer_url"].startswith("https://viewer.example.org/")
        # no key, a wrong key: 401 on every DICOMweb route
        assert requests.get(f"{stand_.base_url}/dicomweb/studies", timeout=30).status_code == 401
        assert requests.post(f"{stand_.base_url}/dicomweb/studies", timeout=30,
                             headers={"X-API-Key": "nope"}).status_code == 401
