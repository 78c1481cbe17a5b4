"""Garbage, aborted transfers and unparseable datasets: the listener survives, stores nothing."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pynetdicom import AE, _config, evt
from pynetdicom.pdu import P_DATA_TF

from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import StudyIds, make_ct, write
from testbed.catalog_audit import all_instances
from tests.conftest import RunningListener, dcmtk, dcmtk_env

pytestmark = pytest.mark.integration

StartListener = Callable[[Settings], RunningListener]


def still_serving(listener: RunningListener) -> bool:
    return subprocess.run(
        [dcmtk("echoscu"), "-aec", "MEDHASH", "127.0.0.1", str(listener.port)],
        env=dcmtk_env(), capture_output=True, timeout=30,
    ).returncode == 0


def nothing_stored(listener: RunningListener) -> bool:
    return all_instances(listener.runtime.catalog) == [] and list(listener.runtime.store.list()) == []


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        os.urandom(4096),
        b"\x01\x00\x00\x00\xff\xff\xff\xff" + b"\x00" * 64,  # A-ASSOCIATE-RQ claiming 4 GB
        b"\x04\x00\x00\x00\x00\x10" + b"\x00" * 16,  # P-DATA before any association
    ],
)
def test_garbage_bytes_on_the_port(
    embedded_settings: Settings, listener_factory: StartListener, payload: bytes
) -> None:
    listener = listener_factory(embedded_settings)
    with socket.create_connection(("127.0.0.1", listener.port), timeout=5) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        try:
            conn.recv(1024)
        except OSError:
            pass
    assert still_serving(listener)
    assert nothing_stored(listener)


def test_connection_dropped_mid_transfer(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    # small PDUs from the sender (the listener's maximum) so the dataset takes ~32 fragments
    listener = listener_factory(embedded_settings.model_copy(update={"max_pdu_size": 16384}))
    path = write(make_ct(StudyIds.new(), 1, rows=512, columns=512), tmp_path / "big.dcm")
    sent_pdata = 0

    def cut_after_a_few_fragments(event: evt.Event) -> None:
        nonlocal sent_pdata
        if isinstance(event.pdu, P_DATA_TF):
            sent_pdata += 1
            if sent_pdata == 4:  # command + some dataset fragments are out: drop the wire
                event.assoc.dul.socket.socket.shutdown(socket.SHUT_RDWR)

    ae = AE(ae_title="CUTTER")
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    assoc = ae.associate(
        "127.0.0.1", listener.port, ae_title="MEDHASH",
        evt_handlers=[(evt.EVT_PDU_SENT, cut_after_a_few_fragments)],
    )
    assert assoc.is_established
    previous = _config.STORE_SEND_CHUNKED_DATASET
    _config.STORE_SEND_CHUNKED_DATASET = True
    try:
        status = assoc.send_c_store(str(path))
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = previous
        assoc.abort()
    assert not status  # no answer: the sender knows nothing was stored
    assert sent_pdata >= 4
    assert still_serving(listener)
    assert nothing_stored(listener)


def test_dataset_that_does_not_parse_is_refused(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(embedded_settings)
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    path = tmp_path / "broken.dcm"
    with path.open("wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(handle, meta)
        # (0008,0016) UI with a length far beyond the data, then noise
        handle.write(b"\x08\x00\x16\x00UI\xff\x7f" + os.urandom(300))
    results = Sender("127.0.0.1", listener.port, "MEDHASH").send([path])
    assert results[0].status is not None and 0xC000 <= results[0].status <= 0xCFFF
    assert still_serving(listener)
    assert nothing_stored(listener)
    # and a good instance right after is stored normally
    good = write(make_ct(StudyIds.new(), 1, rows=32, columns=32), tmp_path / "good.dcm")
    assert Sender("127.0.0.1", listener.port, "MEDHASH").send([good])[0].stored
