"""Storage Commitment Push Model against real SCUs: pynetdicom, and Orthanc 1.10 through its REST API.

A PACS may delete what it forwarded once medhash commits to it, so the answer must be true:
committed are exactly the instances stored (a catalog row of that SOP class and an intact
object); an unknown UID, a wrong SOP class, a missing or altered object are failed with
their Failure Reason. The report comes on the requesting association while that is open
(pynetdicom waits for it there) or, for requesters in ``MEDHASH_COMMITMENT_PEERS``, on a new
association medhash opens to them (Orthanc expects that).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid
from pynetdicom import AE, evt
from pynetdicom.dimse_messages import N_EVENT_REPORT_RSP
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import write_ct_series
from tests.conftest import RunningListener
from testbed.servers import OrthancServer, free_port

pytestmark = pytest.mark.integration

StartListener = Callable[[Settings], RunningListener]
NO_SUCH_INSTANCE, CLASS_CONFLICT, PROCESSING_FAILURE = 0x0112, 0x0119, 0x0110


@dataclass
class Reports:
    """N-EVENT-REPORTs an SCU received (the EVT_N_EVENT_REPORT handler)."""

    received: list[tuple[int, Dataset]] = field(default_factory=list)
    answered: threading.Event = field(default_factory=threading.Event)

    def on_report(self, event: evt.Event) -> tuple[int, None]:
        self.received.append((int(event.event_type), event.event_information))
        return 0x0000, None

    def on_sent(self, event: evt.Event) -> None:
        if isinstance(event.message, N_EVENT_REPORT_RSP):
            self.answered.set()

    def handlers(self) -> list[tuple[evt.EventType, Callable[[evt.Event], object]]]:
        return [(evt.EVT_N_EVENT_REPORT, self.on_report), (evt.EVT_DIMSE_SENT, self.on_sent)]

    def wait(self, timeout_s: float = 60.0) -> tuple[int, Dataset]:
        """The report, once this SCU has answered it (releasing earlier would lose the answer)."""
        assert self.answered.wait(timeout_s), "no N-EVENT-REPORT arrived"
        time.sleep(0.1)  # the N-EVENT-REPORT-RSP is queued just after EVT_DIMSE_SENT
        return self.received[-1]


def request(references: list[tuple[str, str]], transaction_uid: str | None = None) -> Dataset:
    ds = Dataset()
    ds.TransactionUID = transaction_uid or generate_uid()
    ds.ReferencedSOPSequence = []
    for sop_class, sop_instance in references:
        item = Dataset()
        item.ReferencedSOPClassUID = sop_class
        item.ReferencedSOPInstanceUID = sop_instance
        ds.ReferencedSOPSequence.append(item)
    return ds


def scu(calling_ae: str = "PACS") -> AE:
    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(StorageCommitmentPushModel, ExplicitVRLittleEndian)
    return ae


def ask(port: int, action: Dataset, *, action_type: int = 1, wait: bool = True) -> tuple[int, Reports]:
    """N-ACTION on a new association; with ``wait``, keep it open until the report came."""
    reports = Reports()
    assoc = scu().associate("127.0.0.1", port, ae_title="MEDHASH", evt_handlers=reports.handlers())
    assert assoc.is_established
    try:
        status, _ = assoc.send_n_action(action, action_type, StorageCommitmentPushModel,
                                        StorageCommitmentPushModelInstance)
        if wait and status.Status == 0x0000:
            reports.wait()
    finally:
        assoc.release()
    return int(status.Status), reports


def committed(report: Dataset) -> set[str]:
    return {str(item.ReferencedSOPInstanceUID) for item in report.get("ReferencedSOPSequence", [])}


def failed(report: Dataset) -> dict[str, int]:
    return {str(item.ReferencedSOPInstanceUID): int(item.FailureReason) for item in report.get("FailedSOPSequence", [])}


def stored_series(listener: RunningListener, folder: Path, count: int = 3) -> list[tuple[str, str]]:
    files = write_ct_series(folder, count, rows=32, columns=32)
    assert all(r.stored for r in Sender("127.0.0.1", listener.port, "MEDHASH").send(files))
    return [(str(ds.SOPClassUID), str(ds.SOPInstanceUID)) for ds in map(dcmread, files)]


def test_commitment_round_trip_on_the_same_association(
    any_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(any_settings)
    stored = stored_series(listener, tmp_path / "study")
    unknown = (stored[0][0], generate_uid())
    wrong_class = (MRImageStorage, stored[0][1])
    transaction = generate_uid()
    status, reports = ask(listener.port, request([*stored, unknown, wrong_class], transaction))
    assert status == 0x0000
    event_type, report = reports.received[0]
    assert event_type == 2  # failures exist
    assert str(report.TransactionUID) == transaction
    assert committed(report) == {uid for _, uid in stored}
    assert failed(report) == {unknown[1]: NO_SUCH_INSTANCE, wrong_class[1]: CLASS_CONFLICT}

    status, reports = ask(listener.port, request(stored))
    event_type, report = reports.received[0]
    assert event_type == 1 and committed(report) == {uid for _, uid in stored} and failed(report) == {}


def test_a_lost_or_altered_object_is_not_committed(
    any_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(any_settings)
    stored = stored_series(listener, tmp_path / "study")
    catalog, store = listener.runtime.catalog, listener.runtime.store
    lost, altered, intact = (catalog.current(uid) for _, uid in stored)
    assert lost is not None and altered is not None and intact is not None
    store.delete(lost.object_key)
    store.put(altered.object_key, store.get(altered.object_key)[:-2] + b"\x00\x01")
    _, reports = ask(listener.port, request(stored))
    event_type, report = reports.received[0]
    assert event_type == 2
    assert committed(report) == {intact.sop_instance_uid}
    assert failed(report) == {lost.sop_instance_uid: PROCESSING_FAILURE, altered.sop_instance_uid: PROCESSING_FAILURE}


def test_invalid_requests_are_refused_with_a_status(
    embedded_settings: Settings, listener_factory: StartListener
) -> None:
    listener = listener_factory(embedded_settings)
    assert ask(listener.port, request([]), wait=False)[0] == 0x0120  # no Referenced SOP Sequence
    no_transaction = request([(MRImageStorage, generate_uid())])
    del no_transaction.TransactionUID
    assert ask(listener.port, no_transaction, wait=False)[0] == 0x0120
    assert ask(listener.port, request([(MRImageStorage, generate_uid())]), action_type=2, wait=False)[0] == 0x0123


def test_report_on_a_new_association_to_a_configured_peer(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    """The requester releases at once and listens on its own port (MEDHASH_COMMITMENT_PEERS)."""
    reports = Reports()
    pacs = AE(ae_title="PACS")
    pacs.add_supported_context(StorageCommitmentPushModel, ExplicitVRLittleEndian, scu_role=True, scp_role=True)
    pacs_port = free_port()
    server = pacs.start_server(("127.0.0.1", pacs_port), block=False,
                               evt_handlers=reports.handlers())
    try:
        listener = listener_factory(embedded_settings.model_copy(
            update={"commitment_peers": [f"PACS@127.0.0.1:{pacs_port}"]}))
        stored = stored_series(listener, tmp_path / "study", 2)
        status, _ = ask(listener.port, request(stored), wait=False)
        assert status == 0x0000
        event_type, report = reports.wait()
        assert event_type == 1 and committed(report) == {uid for _, uid in stored}
    finally:
        server.shutdown()


def test_undeliverable_report_is_logged_with_the_setting_to_fix_it(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.ERROR)
    handler.emit = records.append  # type: ignore[method-assign]
    logging.getLogger("medhash.commitment").addHandler(handler)
    try:
        listener = listener_factory(embedded_settings)
        stored = stored_series(listener, tmp_path / "study", 1)
        assert ask(listener.port, request(stored), wait=False)[0] == 0x0000  # released at once
        deadline = time.monotonic() + 30
        while not records and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        logging.getLogger("medhash.commitment").removeHandler(handler)
    assert records, "an undelivered commitment report was not reported"
    assert "MEDHASH_COMMITMENT_PEERS" in records[0].getMessage()


def test_orthanc_storage_commitment_scu(
    any_settings: Settings,
    listener_factory: StartListener,
    orthanc_factory: Callable[..., OrthancServer],
    tmp_path: Path,
) -> None:
    """Orthanc forwards a study, then asks through POST /modalities/{id}/storage-commitment."""
    dicom_port = free_port()
    orthanc = orthanc_factory(modalities={"medhash": ["MEDHASH", "127.0.0.1", dicom_port]})
    listener_factory(any_settings.model_copy(update={
        "dicom_port": dicom_port, "commitment_peers": [f"ORTHANC@127.0.0.1:{orthanc.dicom_port}"]}))
    files = write_ct_series(tmp_path / "study", 3, rows=32, columns=32)
    answer = orthanc.store_to_modality("medhash", [orthanc.upload(path.read_bytes()) for path in files])
    assert answer["FailedInstancesCount"] == 0
    instances = [{"SOPClassUID": str(ds.SOPClassUID), "SOPInstanceUID": str(ds.SOPInstanceUID)}
                 for ds in map(dcmread, files)]
    never_sent = {"SOPClassUID": instances[0]["SOPClassUID"], "SOPInstanceUID": generate_uid()}
    started = orthanc.post("/modalities/medhash/storage-commitment", {"DicomInstances": [*instances, never_sent]})
    deadline = time.monotonic() + 60
    while (result := orthanc.get(started["Path"]))["Status"] == "Pending":
        assert time.monotonic() < deadline, "Orthanc never received the N-EVENT-REPORT"
        time.sleep(0.2)
    assert result["Status"] == "Failure"  # Orthanc's word for "some failed"
    assert {item["SOPInstanceUID"] for item in result["Success"]} == {i["SOPInstanceUID"] for i in instances}
    assert [(f["SOPInstanceUID"], f["FailureReason"]) for f in result["Failures"]] == [
        (never_sent["SOPInstanceUID"], NO_SUCH_INSTANCE)]
