"""Association negotiation against real senders: who gets in, what is accepted, what goes on.

* Transfer syntaxes: the listener's order keeps a sender's own encoding (dcmsend offers an RLE
  file's own syntax beside uncompressed fallbacks), and ``MEDHASH_TRANSFER_SYNTAXES`` changes it.
* SOP classes: retired (US Image Storage, 1.2.840.10008.5.1.4.1.1.6) and private ones are
  stored, unless ``MEDHASH_ACCEPT_UNKNOWN_SOP_CLASSES`` is off.
* A C-STORE whose SOP class is not its presentation context's gets 0x0122 and the
  association carries on with the next instance (dcmtk's dcmsend, and a pynetdicom SCU).
* Connections that never associate (40 TCP probes, 40 silent ones) never take a slot:
  ``echoscu`` right after them succeeds at once; silent ones are closed after
  ``MEDHASH_ASSOCIATION_REQUEST_TIMEOUT``, idle associations after ``MEDHASH_NETWORK_TIMEOUT``.
"""

from __future__ import annotations

import logging
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    MRImageStorage,
    RLELossless,
)
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from services.listener.negotiation import (
    LOSSLESS_ENCAPSULATED,
    StorageClasses,
    default_transfer_syntaxes,
    preferred_transfer_syntaxes,
)
from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import UID_PREFIX, StudyIds, make_ct, write
from tests.conftest import RunningListener, dcmtk, dcmtk_env
from tests.services.listener.dicomtools import dataset_bytes, dcmtk_rewrite
from tests.shipped import shipped_files
from testbed.catalog_audit import all_instances

StartListener = Callable[[Settings], RunningListener]

RETIRED_US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6"
PRIVATE_STORAGE = UID_PREFIX + "99.1"  # no standard or pydicom name: a vendor's own class


def shipped(name: str) -> Path:
    return next(path for path in shipped_files() if path.name == name)


def echo(port: int) -> bool:
    return subprocess.run(
        [dcmtk("echoscu"), "-aec", "MEDHASH", "127.0.0.1", str(port)],
        env=dcmtk_env(), capture_output=True, timeout=30,
    ).returncode == 0


def dcmsend(port: int, *files: Path) -> str:
    result = subprocess.run(
        [dcmtk("dcmsend"), "-v", "-aet", "DCMTKSCU", "-aec", "MEDHASH", "127.0.0.1", str(port), *map(str, files)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=120,
    )
    return result.stdout + result.stderr


def verification_association(port: int) -> Association:
    """An association proposing only Verification, left open for the caller."""
    ae = AE(ae_title="HOLDER")
    ae.add_requested_context(Verification)
    return ae.associate("127.0.0.1", port, ae_title="MEDHASH")


@contextmanager
def listener_log() -> Iterator[list[logging.LogRecord]]:
    """The listener's log records while the block runs."""
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = records.append  # type: ignore[method-assign]
    log = logging.getLogger("medhash.listener")
    previous = log.level
    log.setLevel(logging.INFO)
    log.addHandler(handler)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.setLevel(previous)


# --- the order, and the SOP classes it admits (no server) -----------------------------------


@pytest.mark.unit
def test_default_order_prefers_encapsulated_then_explicit_then_implicit_then_big_endian() -> None:
    order = default_transfer_syntaxes()
    rank = order.index
    assert len(order) == len(set(order))
    assert max(rank(ts) for ts in LOSSLESS_ENCAPSULATED if ts in order) < rank("1.2.840.10008.1.2.4.50")
    assert rank("1.2.840.10008.1.2.4.50") < rank("1.2.840.10008.1.2.1.99") < rank(ExplicitVRLittleEndian)
    assert rank(ExplicitVRLittleEndian) < rank(ImplicitVRLittleEndian) < rank("1.2.840.10008.1.2.2")
    assert order[-1] == "1.2.840.10008.1.2.2"


@pytest.mark.unit
def test_the_setting_replaces_the_order() -> None:
    settings = Settings(transfer_syntaxes=f"{ImplicitVRLittleEndian}, {ExplicitVRLittleEndian},{ImplicitVRLittleEndian}")
    assert preferred_transfer_syntaxes(settings) == [ImplicitVRLittleEndian, ExplicitVRLittleEndian]
    with pytest.raises(ValueError, match="not a transfer syntax UID"):
        Settings(transfer_syntaxes="1.2.840.10008.1.2,JPEG")


@pytest.mark.unit
@pytest.mark.parametrize(
    ("uid", "accepted"),
    [
        (RETIRED_US_IMAGE_STORAGE, True),  # retired storage
        ("1.2.840.10008.5.1.4.1.1.501.1", True),  # DICOS CT: in pydicom, newer than pynetdicom
        (PRIVATE_STORAGE, True),  # private / unknown
        ("1.2.840.10008.5.1.4.1.2.2.1", False),  # Study Root Q/R Find: a query, not storage
        ("1.2.840.10008.1.20.1", False),  # Storage Commitment Push Model: served, not stored
        ("1.2.840.10008.1.3.10", False),  # Media Storage Directory (DICOMDIR): media only
        ("1.2.840.10008.1.2.1", False),  # a transfer syntax UID proposed as abstract syntax
    ],
)
def test_which_abstract_syntaxes_beyond_the_standard_list_are_storage(uid: str, accepted: bool) -> None:
    assert StorageClasses(accept_unknown=True).admit(uid) is accepted
    assert StorageClasses(accept_unknown=False).admit(uid) is False  # also once registered
    assert StorageClasses(accept_unknown=False).admit(CTImageStorage)


# --- transfer syntaxes with real senders --------------------------------------------------------


@pytest.mark.integration
def test_dcmsend_sends_an_rle_file_as_rle_unless_the_setting_prefers_implicit(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    rle = shipped("MR_small_RLE.dcm")
    listener = listener_factory(embedded_settings)
    assert "Received C-STORE Response (Success)" in dcmsend(listener.port, rle)
    row = all_instances(listener.runtime.catalog)[-1]
    assert row.transfer_syntax_uid == RLELossless
    assert dataset_bytes(listener.runtime.store.get(row.object_key)) == dcmtk_rewrite(rle, RLELossless, tmp_path)

    implicit_first = listener_factory(embedded_settings.model_copy(update={
        "data_dir": embedded_settings.data_dir / "other",
        "transfer_syntaxes": [ImplicitVRLittleEndian, ExplicitVRLittleEndian, RLELossless]}))
    log = dcmsend(implicit_first.port, rle)
    assert "Received C-STORE Response (Success)" in log
    assert all_instances(implicit_first.runtime.catalog)[-1].transfer_syntax_uid == ImplicitVRLittleEndian


# --- SOP classes -----------------------------------------------------------------------------------


def private_and_retired(folder: Path) -> list[Path]:
    """A retired US image (a shipped file) and a CT re-labelled with a private SOP class."""
    ds = make_ct(StudyIds.new(), 1, rows=32, columns=32)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = PRIVATE_STORAGE
    return [shipped("color-pl.dcm"), write(ds, folder / "private.dcm")]


@pytest.mark.integration
def test_retired_and_private_storage_classes_are_stored(
    any_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(any_settings)
    files = private_and_retired(tmp_path)
    results = Sender("127.0.0.1", listener.port, "MEDHASH").send(files)
    assert [r.reason for r in results if not r.stored] == []
    stored = {row.sop_class_uid for row in all_instances(listener.runtime.catalog)}
    assert stored == {RETIRED_US_IMAGE_STORAGE, PRIVATE_STORAGE}
    # and by dcmtk too, on a second association in the same process (pynetdicom's registry)
    assert "Received C-STORE Response (Success)" in dcmsend(listener.port, files[1])


@pytest.mark.integration
def test_unknown_sop_classes_refused_when_switched_off(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(embedded_settings.model_copy(update={"accept_unknown_sop_classes": False}))
    ct = write(make_ct(StudyIds.new(), 1, rows=32, columns=32), tmp_path / "ct.dcm")
    results = Sender("127.0.0.1", listener.port, "MEDHASH").send([*private_and_retired(tmp_path), ct])
    assert [r.stored for r in results] == [False, False, True]
    assert all("did not accept" in r.reason for r in results[:2])
    assert [row.sop_class_uid for row in all_instances(listener.runtime.catalog)] == [CTImageStorage]


# --- a mismatched C-STORE does not end the association --------------------------------------------


@pytest.mark.integration
def test_dcmsend_association_with_a_mismatched_instance_goes_on(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    """explicit_VR-UN.dcm holds every element as UN: dcmtk proposes CT Image Storage from the
    file meta but sends the C-STORE with the SOP class it reads from the UN bytes."""
    listener = listener_factory(embedded_settings)
    ids = StudyIds.new()
    before, after = (write(make_ct(ids, n, rows=32, columns=32), tmp_path / f"{n}.dcm") for n in (1, 2))
    with listener_log() as records:
        log = dcmsend(listener.port, before, shipped("explicit_VR-UN.dcm"), after)
    answers = [line.split("Response ")[1] for line in log.splitlines() if "Received C-STORE Response" in line]
    assert answers == ["(Success)", "(Refused: SOPClassNotSupported)", "(Success)"], log
    assert sum("association accepted" in r.getMessage() for r in records) == 1  # one association
    assert {row.sop_instance_uid for row in all_instances(listener.runtime.catalog)} == {
        str(dcmread(before).SOPInstanceUID), str(dcmread(after).SOPInstanceUID)}
    assert echo(listener.port)


def c_store(assoc: object, context_id: int, sop_class: str, dataset: bytes, sop_instance: str) -> int:
    """A C-STORE-RQ on a chosen context, whatever its SOP class (no pynetdicom check)."""
    request = C_STORE()
    request.MessageID = 7
    request.AffectedSOPClassUID = sop_class
    request.AffectedSOPInstanceUID = sop_instance
    request.Priority = 2
    request.DataSet = BytesIO(dataset)
    assoc._reactor_checkpoint.clear()  # type: ignore[attr-defined]  # noqa: SLF001 - as send_c_store does
    try:
        assoc.dimse.send_msg(request, context_id)  # type: ignore[attr-defined]
        _, response = assoc.dimse.get_msg(block=True)  # type: ignore[attr-defined]
    finally:
        assoc._reactor_checkpoint.set()  # type: ignore[attr-defined]  # noqa: SLF001
    return int(response.Status)


@pytest.mark.integration
@pytest.mark.parametrize("affected", [MRImageStorage, PRIVATE_STORAGE + ".7", "not-a-uid"])
def test_pynetdicom_c_store_with_another_sop_class_gets_0122_and_the_association_goes_on(
    embedded_settings: Settings, listener_factory: StartListener, affected: str
) -> None:
    listener = listener_factory(embedded_settings)
    ae = AE(ae_title="MISMATCH")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate("127.0.0.1", listener.port, ae_title="MEDHASH")
    assert assoc.is_established
    try:
        context_id = assoc.accepted_contexts[0].context_id
        good, odd = (make_ct(StudyIds.new(), n, rows=16, columns=16) for n in (1, 2))
        buffer = BytesIO()
        dcmwrite(buffer, odd, enforce_file_format=False)
        assert c_store(assoc, context_id, affected, buffer.getvalue(), str(odd.SOPInstanceUID)) == 0x0122
        assert assoc.is_established
        status = assoc.send_c_store(good)
        assert status.Status == 0x0000
    finally:
        assoc.release()
    assert [row.sop_instance_uid for row in all_instances(listener.runtime.catalog)] == [good.SOPInstanceUID]


# --- connections that never associate, and idle associations --------------------------------------


@pytest.mark.integration
def test_probes_never_hold_an_association_slot(
    embedded_settings: Settings, listener_factory: StartListener
) -> None:
    settings = embedded_settings.model_copy(update={"max_associations": 4})
    listener = listener_factory(settings)
    for _ in range(40):  # a TCP readiness probe, a port scan
        socket.create_connection(("127.0.0.1", listener.port), timeout=5).close()
    silent = [socket.create_connection(("127.0.0.1", listener.port), timeout=30) for _ in range(40)]
    try:
        assert echo(listener.port), "a connection that never associated took an association slot"
        # the silent ones are closed after the association request timeout (2 s by default)
        started = time.monotonic()
        for conn in silent:
            assert conn.recv(16) == b""
        assert time.monotonic() - started < 25, "silent connections were not closed"
    finally:
        for conn in silent:
            conn.close()
    assert echo(listener.port)


@pytest.mark.integration
def test_association_slots_are_counted_on_association_requests(
    embedded_settings: Settings, listener_factory: StartListener
) -> None:
    listener = listener_factory(embedded_settings.model_copy(update={"max_associations": 2}))
    held = [verification_association(listener.port) for _ in range(2)]
    try:
        assert all(a.is_established for a in held)
        third = verification_association(listener.port)
        assert third.is_rejected  # transient, local limit exceeded: the sender retries later
        assert not echo(listener.port)
    finally:
        for assoc in held:
            assoc.release()
    deadline = time.monotonic() + 20
    while not echo(listener.port):
        assert time.monotonic() < deadline, "released slots were not given back"
        time.sleep(0.2)


@pytest.mark.integration
def test_idle_association_is_aborted_after_the_network_timeout(
    embedded_settings: Settings, listener_factory: StartListener
) -> None:
    listener = listener_factory(embedded_settings.model_copy(update={"network_timeout": 1.0}))
    assoc = verification_association(listener.port)
    assert assoc.is_established
    deadline = time.monotonic() + 30
    while assoc.is_established and time.monotonic() < deadline:
        time.sleep(0.1)
    assert assoc.is_aborted, "the listener kept an idle association open"
    assert echo(listener.port)


@pytest.mark.integration
def test_a_non_uid_sop_instance_uid_is_stored_under_invalid_uid(
    any_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(any_settings)
    ds = make_ct(StudyIds.new(), 1, rows=32, columns=32)
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.ABC/../x"
    path = write(ds, tmp_path / "odd.dcm")
    result, = Sender("127.0.0.1", listener.port, "MEDHASH").send([path])
    assert result.stored, result.reason
    row = listener.runtime.catalog.current("1.2.3.4.ABC/../x")
    assert row is not None and row.object_key.startswith("raw/invalid-uid/")
    assert dataset_bytes(listener.runtime.store.get(row.object_key)) == dataset_bytes(path.read_bytes())
