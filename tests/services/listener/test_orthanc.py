"""Orthanc, a real PACS, forwarding to medhash: by REST (also a study of odd instances) and by Lua."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest
from pydicom import dcmread

from shared.config import Settings
from shared.dicom.synthetic import UID_PREFIX, StudyIds, make_ct, write, write_ct_series
from tests.conftest import RunningListener
from tests.services.listener.test_listener import assert_stored_identically
from testbed.servers import OrthancServer
from tests.shipped import shipped_files
from testbed.catalog_audit import all_instances

pytestmark = pytest.mark.integration

AUTOROUTE_LUA = """
function OnStoredInstance(instanceId, tags, metadata, origin)
  -- forward everything that did not come from medhash itself, then keep Orthanc small
  if origin['RequestOrigin'] ~= 'DicomProtocol' then
    Delete(SendToModality(instanceId, 'medhash'))
  end
end
"""


def wait_for_rows(listener: RunningListener, count: int, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if len(all_instances(listener.runtime.catalog)) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"only {len(all_instances(listener.runtime.catalog))} of {count} arrived")


def forwarding(
    settings: Settings,
    listener_factory: Callable[[Settings], RunningListener],
    orthanc_factory: Callable[..., OrthancServer],
) -> tuple[RunningListener, OrthancServer]:
    """A listener, and an Orthanc that has it as its modality ``medhash``."""
    listener = listener_factory(settings)
    return listener, orthanc_factory(modalities={"medhash": ["MEDHASH", "127.0.0.1", listener.port]})


def test_orthanc_rest_store_to_modality(
    any_settings: Settings,
    listener_factory: Callable[[Settings], RunningListener],
    orthanc_factory: Callable[..., OrthancServer],
    tmp_path: Path,
) -> None:
    listener, orthanc = forwarding(any_settings, listener_factory, orthanc_factory)
    files = write_ct_series(tmp_path / "study", 5, rows=128, columns=128)
    ids = [orthanc.upload(path.read_bytes()) for path in files]
    answer = orthanc.store_to_modality("medhash", ids)
    assert answer["FailedInstancesCount"] == 0, answer
    assert answer["InstancesCount"] == len(files)
    assert_stored_identically(listener, files)
    rows = all_instances(listener.runtime.catalog)
    assert {row.calling_ae for row in rows} == {"ORTHANC"}


def test_orthanc_lua_autorouting(
    embedded_settings: Settings,
    listener_factory: Callable[[Settings], RunningListener],
    orthanc_factory: Callable[..., OrthancServer],
    tmp_path: Path,
) -> None:
    listener = listener_factory(embedded_settings)
    script = tmp_path / "autoroute.lua"
    script.write_text(AUTOROUTE_LUA)
    orthanc = orthanc_factory(
        aet="ROUTER",
        modalities={"medhash": ["MEDHASH", "127.0.0.1", listener.port]},
        lua_scripts=[script],
    )
    files = write_ct_series(tmp_path / "study", 4, rows=128, columns=128)
    for path in files:
        orthanc.upload(path.read_bytes())
    wait_for_rows(listener, len(files))
    assert_stored_identically(listener, files)
    assert {row.calling_ae for row in all_instances(listener.runtime.catalog)} == {"ROUTER"}


def odd_study(folder: Path) -> list[Path]:
    """One study as a hospital archive holds it: plain CT slices, plus the instances that used
    to stop a forward job (a retired SOP class, a private one, a SOP Instance UID that is not a
    UID, an empty Pixel Data)."""
    ids = StudyIds.new()
    files = write_ct_series(folder, 2, rows=64, columns=64, ids=ids)
    retired = dcmread(next(p for p in shipped_files() if p.name == "color-pl.dcm"))  # US Image Storage (retired)
    private = make_ct(ids, 3, rows=32, columns=32)
    private.SOPClassUID = private.file_meta.MediaStorageSOPClassUID = UID_PREFIX + "99.1"
    not_a_uid = make_ct(ids, 4, rows=32, columns=32)
    not_a_uid.SOPInstanceUID = not_a_uid.file_meta.MediaStorageSOPInstanceUID = "1.2.3.4.ABC"
    empty = make_ct(ids, 5, rows=32, columns=32)
    empty.PixelData = b""
    for number, ds in enumerate((retired, private, not_a_uid, empty)):
        ds.StudyInstanceUID, ds.PatientID = ids.study_instance_uid, ids.patient_id
        files.append(write(ds, folder / f"odd-{number}.dcm"))
    return files


def test_orthanc_default_forward_job_of_a_study_with_odd_instances_delivers_every_instance(
    any_settings: Settings,
    listener_factory: Callable[[Settings], RunningListener],
    orthanc_factory: Callable[..., OrthancServer],
    tmp_path: Path,
) -> None:
    listener, orthanc = forwarding(any_settings, listener_factory, orthanc_factory)
    files = odd_study(tmp_path / "study")
    study = {orthanc.get(f"/instances/{orthanc.upload(path.read_bytes())}/study")["ID"] for path in files}
    assert len(study) == 1
    answer = orthanc.store_to_modality("medhash", list(study))  # Orthanc's defaults: not permissive
    assert answer["FailedInstancesCount"] == 0, answer
    assert answer["InstancesCount"] == len(files)
    rows = all_instances(listener.runtime.catalog)
    assert sorted(row.sop_instance_uid for row in rows) == sorted(str(dcmread(p).SOPInstanceUID) for p in files)
    by_uid = {row.sop_instance_uid: row for row in rows}
    assert by_uid["1.2.3.4.ABC"].object_key.startswith("raw/invalid-uid/")
