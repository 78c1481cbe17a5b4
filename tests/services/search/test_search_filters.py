"""Filtered search returns exactly what a brute-force filter over the catalog's codes returns:
modality, body part, study date range, calling AE, the query's own patient or study left out,
alone and together, through the index's over-fetch and through the catalog scan that a very
selective filter falls back to."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from pydicom.dataset import Dataset

import services.search.engine as engine_module
from services.search import create_app
from shared.dicom.synthetic import StudyIds, make_secondary_capture
from shared.hashing.inference import BatchEncoder
from shared.pipeline.ingest import StoreStatus
from shared.pipeline.preprocess import PreprocessOptions
from shared.pipeline.query import query_slices
from shared.storage.catalog import Instance
from testbed.catalog_audit import all_codes, all_instances
from tests.services.search.conftest import (
    Pipeline,
    part10,
    picture,
    pipeline_in,
    png_bytes,
)

pytestmark = pytest.mark.unit

POPCOUNT = np.array([bin(value).count("1") for value in range(256)], dtype=np.int64)
MODALITIES = ("CT", "MR", "XC")
BODY_PARTS = ("HEAD", "CHEST", None)
DATES = ("20200115", "20211231", "20220101", "20230630", "20250101", None)
AES = ("PACS_A", "PACS_B", None)


@dataclass
class Archive:
    pipeline: Pipeline
    datasets: dict[str, Dataset]


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory, encoder: BatchEncoder) -> Iterator[Archive]:
    """48 instances over four patients, two studies each, with every combination of
    modality, body part, study date and calling AE spread over them."""
    with pipeline_in(tmp_path_factory.mktemp("filters"), encoder) as pipeline:
        datasets: dict[str, Dataset] = {}
        studies = [StudyIds.new(patient_id=f"PAT-{p}") for p in range(4) for _ in range(2)]
        for number in range(48):
            ids = studies[number % len(studies)]
            ds = make_secondary_capture(ids, number + 1, picture(100 + number % 20),
                                        modality=MODALITIES[number % 3],
                                        body_part=BODY_PARTS[(number // 3) % 3])
            date = DATES[number % len(DATES)]
            if date is None:
                del ds.StudyDate
            else:
                ds.StudyDate = date
            outcome = pipeline.ingestor.store_instance(
                part10(ds), sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
                transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
                calling_ae=AES[(number // 2) % 3])
            assert outcome.status is StoreStatus.SUCCESS and outcome.instance_id is not None
            pipeline.preprocessor.run(outcome.instance_id)
            pipeline.encode_stage.run(outcome.instance_id)
            pipeline.indexer.run(outcome.instance_id)
            datasets[ds.SOPInstanceUID] = ds
        pipeline.publish()
        yield Archive(pipeline, datasets)


@pytest.fixture(scope="module")
def client(archive: Archive, encoder: BatchEncoder) -> Iterator[TestClient]:
    with TestClient(create_app(archive.pipeline.runtime, encoder=encoder)) as test_client:
        yield test_client


def admitted(row: Instance, filters: dict[str, Any], query: Instance | None) -> bool:
    """The filters, written out here over the catalog's raw columns (not the product's rule)."""
    date = row.study_date
    return (
        (not filters.get("modality") or row.modality in filters["modality"])
        and (not filters.get("body_part") or row.body_part in filters["body_part"])
        and (not filters.get("calling_ae") or row.calling_ae in filters["calling_ae"])
        and ("study_date_from" not in filters
             or (date is not None and date >= filters["study_date_from"].replace("-", "")))
        and ("study_date_to" not in filters
             or (date is not None and date <= filters["study_date_to"].replace("-", "")))
        and not (filters.get("exclude_same_patient") and query is not None
                 and row.patient_id == query.patient_id)
        and not (filters.get("exclude_same_study") and query is not None
                 and row.study_instance_uid == query.study_instance_uid)
    )


def brute_force(archive: Archive, encoder: BatchEncoder, query_code: np.ndarray, k: int,
                filters: dict[str, Any], query: Instance | None) -> list[tuple[str, int]]:
    catalog = archive.pipeline.runtime.catalog
    rows = {row.id: row for row in all_instances(catalog)}
    codes = all_codes(catalog, encoder.model_version)
    ids = np.array([slice_id for slice_id, _ in codes])
    matrix = np.stack([np.frombuffer(code, np.uint8) for _, code in codes])
    distances = POPCOUNT[np.bitwise_xor(matrix, query_code)].sum(axis=1)
    slices = {item.id: item for row in rows.values() for item in catalog.slices(row.id)}
    ranked = []
    for position in np.lexsort((ids, distances)):
        item = slices[int(ids[position])]
        row = rows[item.instance_id]
        if row.is_current and not item.excluded and admitted(row, filters, query):
            ranked.append((row.sop_instance_uid, int(distances[position])))
    return ranked[:k]


FILTERS: list[dict[str, Any]] = [
    {},
    {"modality": ["CT"]},
    {"modality": ["CT", "MR"], "body_part": ["HEAD"]},
    {"study_date_from": "2022-01-01", "study_date_to": "20231231"},
    {"study_date_to": "20211231"},
    {"calling_ae": ["PACS_A"]},
    {"modality": ["XC"], "calling_ae": ["PACS_B"], "study_date_from": "20220101"},
    {"body_part": ["CHEST"], "exclude_same_patient": True},
    {"exclude_same_study": True},
    {"modality": ["MR"], "exclude_same_patient": True, "exclude_same_study": True},
    {"modality": ["NONE-SUCH"]},
]


def answer_of(client: TestClient, **request: Any) -> list[tuple[str, int]]:
    response = client.post("/v1/search", **request)
    assert response.status_code == 200, response.text
    return [(hit["sop_instance_uid"], hit["distance"]) for hit in response.json()["results"]]


@pytest.mark.parametrize("max_fetch", [engine_module.MAX_FETCH, 4],
                         ids=["over-fetch", "catalog-scan"])
def test_filtered_search_equals_brute_force_over_the_catalog(
        archive: Archive, encoder: BatchEncoder, client: TestClient, max_fetch: int,
        monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    # a tiny over-fetch cap sends every selective query down the catalog scan
    monkeypatch.setattr(engine_module, "MAX_FETCH", max_fetch)
    caplog.set_level(logging.DEBUG, logger="medhash.search")
    catalog = archive.pipeline.runtime.catalog
    options = PreprocessOptions.from_settings(archive.pipeline.runtime.settings)
    uids = list(archive.datasets)
    checked = 0
    answers = set()
    for (filters, k), uid in zip(itertools.product(FILTERS, (3, 100)), itertools.cycle(uids[::5])):
        query = catalog.current(uid)
        assert query is not None
        code = np.frombuffer(catalog.codes_of_sop(uid, encoder.model_version)[0][1], np.uint8)
        expected = brute_force(archive, encoder, code, k, filters, query)
        assert answer_of(client, json={"sop_instance_uid": uid, "k": k, **filters}) == expected, \
            (filters, k)
        answers.add(tuple(expected))
        # the same query uploaded as its DICOM file (same patient and study) ...
        dicom = answer_of(client, files={"file": ("q.dcm", part10(archive.datasets[uid]),
                                                  "application/dicom")},
                          data={"k": str(k), **{key: ",".join(value) if isinstance(value, list)
                                                else str(value).lower()
                                                for key, value in filters.items()}})
        assert dicom == expected, (filters, k)
        checked += 1
        if filters.get("exclude_same_patient") or filters.get("exclude_same_study"):
            continue
        # ... and a picture's code, for filters that need no patient
        pixels = picture(105)
        code = encoder.encode(query_slices(png_bytes(pixels), options))[0]
        expected = brute_force(archive, encoder, code, k, filters, None)
        assert answer_of(client, files={"file": ("q.png", png_bytes(pixels), "image/png")},
                         data={"k": str(k), **{key: ",".join(value) if isinstance(value, list)
                                               else value for key, value in filters.items()}}
                         ) == expected, (filters, k)
    assert checked == len(FILTERS) * 2
    assert len(answers) > len(FILTERS)  # the filters do change the answers
    scans = sum("scanned its" in record.getMessage() for record in caplog.records)
    assert (scans > len(FILTERS)) == (max_fetch == 4), scans


def test_patient_and_study_exclusion_need_a_patient_and_dates_must_be_dates(
        client: TestClient) -> None:
    png = {"file": ("q.png", png_bytes(picture(3)), "image/png")}
    refused = client.post("/v1/search", files=png, data={"exclude_same_patient": "true"})
    assert refused.status_code == 422 and "DICOM upload" in refused.json()["detail"]
    for bad in ("2024-13", "yesterday", "2024-01-01' OR 1=1"):
        answer = client.post("/v1/search", files=png, data={"study_date_from": bad})
        assert answer.status_code == 422, bad
