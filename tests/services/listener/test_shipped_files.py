"""Every DICOM file pydicom and pydicom-data ship, sent by dcmtk's storescu, one by one.

Each file is offered in its own SOP class and transfer syntax (a per-file storescu profile),
as a PACS forwarding what it holds would. Whatever a sender can transmit must end with a
definite status at the sender and, when that status is Success, a catalog row and the bytes
in the store; the listener must keep serving throughout.
"""

from __future__ import annotations

import subprocess
from collections import Counter
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

import pytest
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.filereader import read_file_meta_info

from shared.config import Settings
from testbed.catalog_audit import all_instances
from tests.conftest import RunningListener, dcmtk, dcmtk_env
from tests.services.listener.dicomtools import dataset_bytes, storescu, storescu_config
from tests.shipped import shipped_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def essentials(ds: Dataset) -> tuple[str, str, bytes | None]:
    """What a re-encoding sender must never change: the instance's identity and its pixels."""
    return str(ds.SOPClassUID), str(ds.SOPInstanceUID), ds.get("PixelData")


def test_all_shipped_files_end_in_a_definite_state(
    embedded_settings: Settings,
    listener_factory: Callable[[Settings], RunningListener],
    tmp_path: Path,
) -> None:
    listener = listener_factory(embedded_settings)
    catalog, store = listener.runtime.catalog, listener.runtime.store
    outcomes: Counter[str] = Counter()
    stored: list[Path] = []
    for path in shipped_files():
        try:
            meta = read_file_meta_info(path)
            sop_class, syntax = str(meta.MediaStorageSOPClassUID), str(meta.TransferSyntaxUID)
        except Exception:
            outcomes["not a Part 10 file: the sender cannot transmit it"] += 1
            continue
        config = storescu_config(tmp_path / "profile.cfg", sop_class, syntax)
        result = storescu([path], listener.port, config=config, extra=("-v",))
        log = result.stdout + result.stderr
        if result.returncode == 0:
            outcomes["stored"] += 1
            stored.append(path)
            continue
        # otherwise a definite answer: refused by the listener with a status, or never
        # sendable by dcmtk (it could not read or re-encode the file, and said so)
        if "Received Store Response" in log:
            outcomes["refused with a status"] += 1
        elif any(line.startswith(("E:", "F:")) for line in log.splitlines()):
            outcomes["the sender cannot transmit it"] += 1
        else:
            pytest.fail(f"{path.name}: storescu ended without a definite outcome:\n{log}")
        assert result.returncode != 0
    print("\nshipped files through storescu:", dict(outcomes))

    # every Success is a catalog row whose object holds what dcmtk sent. dcmtk decodes the
    # file and re-encodes it for the wire (dropping group lengths and trailing padding,
    # repairing bad VRs), so identity and pixel data are compared for every file, and whole
    # datasets byte for byte where dcmtk left them alone.
    identical = 0
    for path in stored:
        sent = essentials(dcmread(path))
        uid = sent[1]  # dcmtk sends the dataset's own UID, whatever the file meta says
        expected = dataset_bytes(path.read_bytes())
        objects = [store.get(v.object_key) for v in catalog.versions(uid)]
        assert any(essentials(dcmread(BytesIO(blob))) == sent for blob in objects), path.name
        identical += any(dataset_bytes(blob) == expected for blob in objects)
    # reported, not asserted: how often dcmtk re-encodes is dcmtk's business (the byte-for-byte
    # promise for senders that stream a file unchanged is in test_listener/test_orthanc)
    print(f"{identical} of {len(stored)} stored byte-identical to the file")
    assert outcomes["stored"] >= 100  # pydicom + pydicom-data hold well over 100 sendable files
    assert len(all_instances(catalog)) == len({row.object_key for row in all_instances(catalog)})
    echo = subprocess.run(
        [dcmtk("echoscu"), "-aec", "MEDHASH", "127.0.0.1", str(listener.port)],
        env=dcmtk_env(), capture_output=True, timeout=30,
    )
    assert echo.returncode == 0, "the listener stopped serving"
