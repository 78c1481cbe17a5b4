"""The listener against real senders (dcmtk's echoscu/storescu, medhash send), both configurations."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest
from pydicom.filereader import read_file_meta_info

from shared.config import Settings
from shared.dicom.sender import Sender
from shared.dicom.synthetic import StudyIds, make_ct, write, write_ct_series
from shared.pipeline.states import Stage
from shared.storage.catalog import InstanceState
from testbed.catalog_audit import all_instances
from tests.conftest import RunningListener, dcmtk, dcmtk_env
from tests.services.listener.dicomtools import dataset_bytes, storescu, storescu_config
from tests.shipped import shipped_files

pytestmark = pytest.mark.integration

StartListener = Callable[[Settings], RunningListener]


def assert_stored_identically(listener: RunningListener, files: list[Path]) -> None:
    """Every file's dataset is in the store byte for byte, under a catalog row of its UID.

    Shipped test files reuse SOP Instance UIDs across transfer syntaxes, so the row holding a
    file is one of the UID's versions, not necessarily the current one.
    """
    catalog, store = listener.runtime.catalog, listener.runtime.store
    for path in files:
        sop_uid = str(read_file_meta_info(path).MediaStorageSOPInstanceUID)
        versions = catalog.versions(sop_uid)
        assert versions, f"{path.name}: no catalog row"
        assert sum(v.is_current for v in versions) == 1
        expected = dataset_bytes(path.read_bytes())
        holding = [v for v in versions if dataset_bytes(store.get(v.object_key)) == expected]
        assert len(holding) == 1, f"{path.name}: dataset not stored byte for byte"
        assert holding[0].state is InstanceState.RECEIVED
        assert holding[0].size_bytes == len(store.get(holding[0].object_key))


def queued(listener: RunningListener) -> int:
    """How many preprocess messages the listener handed to the queue."""
    return listener.runtime.host.pending(Stage.PREPROCESS)


def test_echoscu(any_settings: Settings, listener_factory: StartListener) -> None:
    listener = listener_factory(any_settings)
    result = subprocess.run(
        [dcmtk("echoscu"), "-aec", "MEDHASH", "127.0.0.1", str(listener.port)],
        env=dcmtk_env(), capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr


def test_storescu_series_is_stored_byte_identical(
    any_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(any_settings)
    files = write_ct_series(tmp_path / "series", 6, rows=128, columns=128)
    meta = read_file_meta_info(files[0])
    config = storescu_config(tmp_path / "own.cfg", meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID)
    result = storescu(files, listener.port, config=config)
    assert result.returncode == 0, result.stderr
    assert_stored_identically(listener, files)
    row = listener.runtime.catalog.current(str(meta.MediaStorageSOPInstanceUID))
    assert row is not None and row.calling_ae == "DCMTKSCU" and row.modality == "CT"
    assert queued(listener) == len(files)


def one_file_per_transfer_syntax() -> list[Path]:
    """A shipped pydicom file for every transfer syntax the shipped files use."""
    chosen: dict[str, Path] = {}
    for name in shipped_files():
        try:
            meta = read_file_meta_info(name)
            syntax, sop_class = str(meta.TransferSyntaxUID), str(meta.MediaStorageSOPClassUID)
        except Exception:
            continue
        if sop_class.startswith("1.2.840.10008.1.3.10"):  # DICOMDIR: media only, not storable
            continue
        chosen.setdefault(syntax, name)
    return list(chosen.values())


def test_medhash_send_keeps_every_transfer_syntax(
    any_settings: Settings, listener_factory: StartListener
) -> None:
    listener = listener_factory(any_settings)
    files = one_file_per_transfer_syntax()
    syntaxes = {str(read_file_meta_info(f).TransferSyntaxUID) for f in files}
    # the encapsulated families the issue names, as shipped by pydicom and pydicom-data
    for expected in ("1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.80",
                     "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.1.99",
                     "1.2.840.10008.1.2.2", "1.2.840.10008.1.2"):
        assert expected in syntaxes
    results = Sender("127.0.0.1", listener.port, "MEDHASH").send(files)
    assert [r for r in results if not r.stored] == []
    assert_stored_identically(listener, files)


def test_same_uid_identical_bytes_once_changed_bytes_new_current_version(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(embedded_settings)
    ids = StudyIds.new()
    original = make_ct(ids, 1, rows=64, columns=64)
    first = write(original, tmp_path / "a.dcm")
    sender = Sender("127.0.0.1", listener.port, "MEDHASH")
    assert all(r.stored for r in sender.send([first, first]))
    assert len(listener.runtime.catalog.versions(original.SOPInstanceUID)) == 1

    original.PatientName = "Corrected^Name"
    second = write(original, tmp_path / "b.dcm")
    assert all(r.stored for r in sender.send([second]))
    versions = listener.runtime.catalog.versions(original.SOPInstanceUID)
    assert [v.is_current for v in versions] == [True, False]
    assert dataset_bytes(listener.runtime.store.get(versions[0].object_key)) == dataset_bytes(second.read_bytes())
    assert dataset_bytes(listener.runtime.store.get(versions[1].object_key)) == dataset_bytes(first.read_bytes())
    assert listener.runtime.catalog.counts_by_state()["received"] == 1
    assert queued(listener) == 2


def test_only_allowed_calling_ae_titles_associate(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    settings = embedded_settings.model_copy(update={"allowed_calling_aes": ["PACS1"]})
    listener = listener_factory(settings)

    def echo(calling: str) -> int:
        return subprocess.run(
            [dcmtk("echoscu"), "-aet", calling, "-aec", "MEDHASH", "127.0.0.1", str(listener.port)],
            env=dcmtk_env(), capture_output=True, timeout=30,
        ).returncode

    assert echo("PACS1") == 0
    assert echo("INTRUDER") != 0
    ct = write(make_ct(StudyIds.new(), 1, rows=32, columns=32), tmp_path / "ct.dcm")
    refused = Sender("127.0.0.1", listener.port, "MEDHASH", calling_ae="INTRUDER").send([ct])
    assert not refused[0].stored and "rejected" in refused[0].reason
    assert all_instances(listener.runtime.catalog) == []


def test_several_senders_at_once(
    any_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(any_settings)
    batches = [write_ct_series(tmp_path / f"s{n}", 8, rows=96, columns=96) for n in range(4)]
    outcomes: list[bool] = []

    def send(files: list[Path]) -> None:
        results = Sender("127.0.0.1", listener.port, "MEDHASH", calling_ae="SENDER").send(files)
        outcomes.extend(r.stored for r in results)

    threads = [threading.Thread(target=send, args=(files,)) for files in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert outcomes == [True] * 32
    assert_stored_identically(listener, [f for files in batches for f in files])
    assert listener.runtime.catalog.counts_by_state()["received"] == 32


def test_instance_with_crafted_uids_is_kept_under_a_content_key(
    embedded_settings: Settings, listener_factory: StartListener, tmp_path: Path
) -> None:
    listener = listener_factory(embedded_settings)
    ds = make_ct(StudyIds.new(), 1, rows=32, columns=32)
    ds.StudyInstanceUID = "../../../../etc"
    path = write(ds, tmp_path / "crafted.dcm")
    assert Sender("127.0.0.1", listener.port, "MEDHASH").send([path])[0].stored
    row = listener.runtime.catalog.current(ds.SOPInstanceUID)
    assert row is not None and row.object_key.startswith("raw/invalid-uid/")
    assert row.study_instance_uid == "../../../../etc"  # kept as data, never as a path
    objects = [p for p in embedded_settings.object_dir.rglob("*") if p.is_file()]
    assert len(objects) == 1 and objects[0].is_relative_to(embedded_settings.object_dir)
    assert pydicom.dcmread(objects[0]).SOPInstanceUID == ds.SOPInstanceUID
