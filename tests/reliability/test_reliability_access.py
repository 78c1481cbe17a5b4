"""Access: who may send, who may search, and what a search result may tell.

All through the running deployment's own processes:

* the listener refuses associations from calling AE titles outside
  ``MEDHASH_ALLOWED_CALLING_AES`` (C-ECHO and C-STORE alike) and stores nothing from them;
* the search service answers every ``/v1`` route with 401 without the API key or with a
  wrong one, and serves it with the key (``/healthz`` stays open for probes);
* search results and instance details carry no patient-identifying attribute
  (``MEDHASH_EXPOSE_PATIENT_DATA`` is off);
* DICOM over TLS with client certificates: ``tests/services/listener/test_tls.py`` proves the TLS
  handshake rules on an in-process listener; here a second ``medhash listener`` *process*
  with TLS, a client CA and the AE allow-list feeds the same distributed pipeline, so an
  instance sent over mutual TLS ends searchable, while a sender without a certificate, over
  plain TCP, or with a certificate but a refused AE title stores nothing.
"""

from __future__ import annotations

import ssl
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from shared.dicom.sender import Sender
from shared.storage.catalog import InstanceState
from testbed.catalog_audit import all_instances
from testbed.servers import free_port
from tests.reliability.harness import (
    ALLOWED_AE,
    Batch,
    Deployment,
    audit,
    echo,
    ingest,
    wait_until,
)
from tests.services.listener.test_tls import issue

pytestmark = [pytest.mark.reliability, pytest.mark.integration]

PATIENT_ID = "PAT-RELIABILITY-SECRET-0042"


def test_only_allowed_calling_ae_titles_may_associate(healthy: Deployment, tmp_path: Path) -> None:
    batch = Batch.make(tmp_path, 2)
    rows = len(all_instances(healthy.catalog))
    assert echo(healthy.dicom_port, ALLOWED_AE)
    for intruder in ("INTRUDER", "MEDHASH_SCU2", "medhash_scu", ""):
        if intruder:
            assert not echo(healthy.dicom_port, intruder), intruder
        refused = healthy.sender(calling_ae=intruder or "ANONYMOUS").send(batch.paths)
        assert [r.stored for r in refused] == [False, False], (intruder, refused)
        assert all("rejected" in r.reason for r in refused), refused
    assert len(all_instances(healthy.catalog)) == rows, "an instance from a refused AE was recorded"
    # and the listener still takes the allowed sender's instances
    allowed = ingest(healthy, batch, senders=1)
    assert allowed.stored_uids == set(batch.uids.values()) and allowed.resent == 0


def test_search_wants_the_api_key_on_every_v1_route(healthy: Deployment, tmp_path: Path) -> None:
    uid = next(iter(ingest(healthy, Batch.make(tmp_path, 1), senders=1).stored_uids))
    healthy.wait_final([uid])
    healthy.wait_loaded()
    routes = [("GET", "/v1/stats", {}), ("GET", f"/v1/instances/{uid}", {}),
              ("GET", f"/v1/instances/{uid}/thumbnail", {}),
              ("POST", "/v1/search", {"json": {"sop_instance_uid": uid}})]
    for key in (None, "", "wrong-key", "reliability-key2", "RELIABILITY-KEY"):
        with healthy.http(api_key=key) as client:
            for method, url, kwargs in routes:
                response = client.request(method, url, **kwargs)
                assert response.status_code == 401, (key, url, response.status_code)
                assert "X-API-Key" in response.json()["detail"]
            assert client.get("/healthz").status_code == 200  # probes need no key
    with healthy.http() as client:
        for method, url, kwargs in routes:
            assert client.request(method, url, **kwargs).status_code == 200, url


def test_results_carry_no_patient_data(healthy: Deployment, tmp_path: Path) -> None:
    batch = Batch.make(tmp_path, 3, patient_id=PATIENT_ID)
    uids = ingest(healthy, batch, senders=1).stored_uids
    healthy.wait_final(uids)
    healthy.wait_loaded()
    assert {row.patient_id for row in all_instances(healthy.catalog)
            if row.sop_instance_uid in uids} == {PATIENT_ID}  # the catalog has it...
    with healthy.http() as client:
        for uid in uids:
            for response in (client.post("/v1/search", json={"sop_instance_uid": uid, "k": 100}),
                             client.get(f"/v1/instances/{uid}")):
                assert response.status_code == 200, response.text
                assert PATIENT_ID not in response.text  # ...the answers do not
                assert "patient" not in response.text.lower(), response.text[:500]


# --- DICOM over TLS, as its own listener process ----------------------------------------------------


@pytest.fixture(scope="module")
def tls_material(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    ca_path, _, ca_cert, ca_key = issue("medhash-reliability-ca", folder)
    server_cert, server_key, _, _ = issue("server", folder, (ca_cert, ca_key))
    client_cert, client_key, _, _ = issue("client", folder, (ca_cert, ca_key))
    return {"ca": ca_path, "server_cert": server_cert, "server_key": server_key,
            "client_cert": client_cert, "client_key": client_key}


@pytest.fixture
def tls_listener(deployment: Deployment, tls_material: dict[str, Path]) -> Iterator[int]:
    """A second `medhash listener` process of the deployment, with mutual TLS on its own port."""
    port = free_port()
    env = {**deployment.stack.env, "MEDHASH_DICOM_PORT": str(port), "MEDHASH_METRICS_PORT": "0",
           "MEDHASH_TLS_CERT": str(tls_material["server_cert"]),
           "MEDHASH_TLS_KEY": str(tls_material["server_key"]), "MEDHASH_TLS_CA": str(tls_material["ca"])}
    with (deployment.stack.log_dir / "listener-tls.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "medhash.cli", "listener"], env=env,
                                   stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: "medhash listener: AE" in deployment.stack.log_tail("listener-tls"), 60,
                   "TLS listener up")
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_dicom_over_mutual_tls_feeds_the_pipeline(healthy: Deployment, tls_listener: int,
                                                  tls_material: dict[str, Path], tmp_path: Path) -> None:
    def context(with_certificate: bool) -> ssl.SSLContext:
        tls = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=tls_material["ca"])
        tls.check_hostname = False  # the server certificate names localhost
        if with_certificate:
            tls.load_cert_chain(tls_material["client_cert"], tls_material["client_key"])
        return tls

    batch = Batch.make(tmp_path, 2)
    rows = len(all_instances(healthy.catalog))
    refused = {
        "no client certificate": Sender("localhost", tls_listener, "MEDHASH", ALLOWED_AE, tls=context(False)),
        "plain TCP": Sender("127.0.0.1", tls_listener, "MEDHASH", ALLOWED_AE),
        "certificate, refused AE title": Sender("localhost", tls_listener, "MEDHASH", "INTRUDER",
                                                tls=context(True)),
    }
    for name, sender in refused.items():
        assert not any(r.stored for r in sender.send(batch.paths[:1])), name
    assert len(all_instances(healthy.catalog)) == rows

    results = Sender("localhost", tls_listener, "MEDHASH", ALLOWED_AE, tls=context(True)).send(batch.paths)
    assert all(r.stored for r in results), [r.reason for r in results]
    uids = set(batch.uids.values())
    states = healthy.wait_final(uids)
    assert set(states.values()) == {InstanceState.INDEXED}
    healthy.wait_loaded()
    audit(healthy, uids, verify_bytes=uids)
