"""Who did what: API keys with names and roles, the append-only audit trail (search, instance,
thumbnail, C-STORE associations, forget, audit reads), the admin routes, and retention."""

from __future__ import annotations

import hashlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import ValidationError

from services.search import create_app
from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import StudyIds, make_secondary_capture, write
from shared.hashing.inference import BatchEncoder
from shared.storage.catalog import CatalogError
from testbed.catalog_audit import all_instances
from tests.conftest import RunningListener
from tests.services.search.conftest import Pipeline, picture, pipeline_in, png_bytes

pytestmark = pytest.mark.unit

KEYS = ["reader:read:r-secret", "dpo:admin:a-secret", "bare-legacy-key"]
READER, ADMIN = {"X-API-Key": "r-secret"}, {"X-API-Key": "a-secret"}


@pytest.fixture
def stand(tmp_path: Path, encoder: BatchEncoder) -> Iterator[tuple[Pipeline, TestClient, list[str]]]:
    with pipeline_in(tmp_path, encoder) as pipeline:
        ids = StudyIds.new(patient_id="PAT-AUDIT")
        uids = []
        for number in range(4):
            ds = make_secondary_capture(ids, number + 1, picture(number))
            pipeline.add(ds)
            uids.append(ds.SOPInstanceUID)
        pipeline.publish()
        with TestClient(create_app(pipeline.runtime, encoder=encoder, api_keys=KEYS)) as client:
            yield pipeline, client, uids


def test_keys_have_names_and_roles(stand: tuple[Pipeline, TestClient, list[str]]) -> None:
    _, client, uids = stand
    png = {"file": ("q.png", png_bytes(picture(1)), "image/png")}
    assert client.post("/v1/search", files=png).status_code == 401
    assert client.post("/v1/search", files=png, headers={"X-API-Key": "wrong"}).status_code == 401
    assert client.post("/v1/search", files=png, headers=READER).status_code == 200
    assert client.post("/v1/search", files=png,
                       headers={"Authorization": "Bearer r-secret"}).status_code == 200
    assert client.post("/v1/search", files=png,
                       headers={"X-API-Key": "bare-legacy-key"}).status_code == 200
    for path in ("/v1/audit", "/v1/admin/forget"):
        refused = client.get(path, headers=READER)
        assert refused.status_code == 403 and "admin" in refused.json()["detail"]
        assert client.get(path, headers={"X-API-Key": "bare-legacy-key"}).status_code == 403
        assert client.get(path, headers=ADMIN).status_code == 200
    assert client.get("/healthz").status_code in (200, 503)  # never behind a key
    assert client.get(f"/v1/instances/{uids[0]}", headers=READER).status_code == 200


def test_every_action_lands_in_the_append_only_audit_trail(
        stand: tuple[Pipeline, TestClient, list[str]]) -> None:
    pipeline, client, uids = stand
    started = time.time()
    client.post("/v1/search", headers=READER,
                files={"file": ("q.png", png_bytes(picture(2)), "image/png")})
    client.post("/v1/search", headers=READER, json={"sop_instance_uid": uids[1], "k": 2})
    client.get(f"/v1/instances/{uids[0]}", headers={"X-API-Key": "bare-legacy-key"})
    client.get(f"/v1/instances/{uids[0]}/thumbnail", headers=READER)
    page = client.get("/v1/audit", headers=ADMIN, params={"limit": 2}).json()
    assert page["total"] == 4 and len(page["entries"]) == 2
    everything = client.get("/v1/audit", headers=ADMIN, params={"since": started}).json()
    entries = {(entry["actor"], entry["action"]): entry for entry in everything["entries"]}
    assert set(entries) == {("reader", "search"), ("key-" + _sha8("bare-legacy-key"), "instance"),
                            ("reader", "thumbnail"), ("dpo", "audit")}
    by_uid = [entry for entry in everything["entries"] if entry["action"] == "search"
              and uids[1] in entry["targets"]]
    assert by_uid and by_uid[0]["targets"][0] == uids[1] and by_uid[0]["result_count"] == 2
    searches = client.get("/v1/audit", headers=ADMIN, params={"action": "search"}).json()
    assert searches["total"] == 2
    assert "PAT-AUDIT" not in str(everything)
    # append-only for every client of the database, not only medhash's code
    database = pipeline.runtime.catalog.database
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises((sqlite3.DatabaseError, CatalogError)), database.transaction() as tx:
            tx.execute(statement)
    assert pipeline.runtime.catalog.audit_entries()[1] == 7


def _sha8(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def test_admin_forget_route_forgets_a_study(stand: tuple[Pipeline, TestClient, list[str]]) -> None:
    pipeline, client, uids = stand
    study = pipeline.runtime.catalog.current(uids[0]).study_instance_uid  # type: ignore[union-attr]
    refused = client.post("/v1/admin/forget", headers=READER, json={"study_instance_uid": study})
    assert refused.status_code == 403
    both = client.post("/v1/admin/forget", headers=ADMIN,
                       json={"study_instance_uid": study, "patient_id": "x"})
    assert both.status_code == 422
    started = client.post("/v1/admin/forget", headers=ADMIN, json={"study_instance_uid": study})
    assert started.status_code == 202  # rows and objects gone, the indexer has yet to run
    job = started.json()
    assert job["state"] == "index" and job["instances"] == 4 and job["requested_by"] == "dpo"
    assert client.post("/v1/search", headers=READER, json={"sop_instance_uid": uids[0]}
                       ).status_code == 404
    pipeline.indexer.flush()
    assert client.get(f"/v1/admin/forget/{job['id']}", headers=ADMIN).json()["state"] == "done"
    assert all_instances(pipeline.runtime.catalog) == []
    assert list(pipeline.runtime.store.list("raw/")) == [] == list(pipeline.runtime.store.list("slices/"))


def test_admin_routes_stay_closed_without_keys(tmp_path: Path, encoder: BatchEncoder) -> None:
    with pipeline_in(tmp_path, encoder) as pipeline:
        with TestClient(create_app(pipeline.runtime, encoder=encoder)) as client:
            refused = client.post("/v1/admin/forget", json={"patient_id": "anyone"})
            assert refused.status_code == 403 and "MEDHASH_API_KEYS" in refused.json()["detail"]
            assert client.get("/v1/audit").status_code == 403
            assert client.get("/v1/stats").status_code == 200  # reading stays open


def test_key_entries_are_checked_when_the_settings_are_read() -> None:
    for bad in ("alice:root:secret", "alice:admin:", ":admin:secret", "a b:read:secret"):
        with pytest.raises(ValidationError):
            Settings(api_keys=bad)
    with pytest.raises(ValidationError, match="share a name"):
        Settings(api_keys="x:read:one,x:admin:two")


def test_a_c_store_association_is_audited_under_its_calling_ae(
        embedded_settings: Settings, listener_factory: Callable[[Settings], RunningListener],
        tmp_path: Path) -> None:
    listener = listener_factory(embedded_settings)
    ids = StudyIds.new()
    datasets = [make_secondary_capture(ids, n, picture(n)) for n in range(1, 4)]
    files = [write(ds, tmp_path / f"{n}.dcm") for n, ds in enumerate(datasets)]
    results = Sender("127.0.0.1", listener.port, "MEDHASH", calling_ae="ROUTER7").send(files)
    assert all(result.stored for result in results)
    deadline = time.monotonic() + 10
    while not listener.runtime.catalog.audit_entries(action="c-store")[0]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    [entry], _ = listener.runtime.catalog.audit_entries(action="c-store")
    assert entry.actor == "ae:ROUTER7" and entry.result_count == 3 and entry.outcome == "ok"
    assert sorted(entry.targets) == sorted(ds.SOPInstanceUID for ds in datasets)


def test_retention_forgets_studies_received_longer_ago(tmp_path: Path, encoder: BatchEncoder) -> None:
    with pipeline_in(tmp_path, encoder) as pipeline:
        pipeline.add(make_secondary_capture(StudyIds.new(), 1, picture(1)))
        pipeline.publish()
        forgetter = pipeline.runtime.forgetter
        assert forgetter.forget_expired(30.0) == []  # received just now: kept
        jobs = forgetter.forget_expired(30.0, now=time.time() + 31 * 86400)
        assert [job.selector for job in jobs] == ["retention"]
        assert all_instances(pipeline.runtime.catalog) == []
        settings = pipeline.runtime.settings.model_copy(update={"retention_days": 0.0})
        pipeline.add(make_secondary_capture(StudyIds.new(), 1, picture(2)))
        time.sleep(0.01)
        reconciler = type(pipeline.runtime.reconciler)(pipeline.runtime.catalog,
                                                       pipeline.runtime.host, settings, forgetter)
        reconciler.run_once()
        assert all_instances(pipeline.runtime.catalog) == []
        assert pipeline.runtime.catalog.audit_entries(actor="retention")[1] == 2
