"""Orthanc, with Debian's DICOMweb plugin, forwards a study to medhash over STOW-RS (its
``/dicom-web/servers/{name}/stow`` route): the router a hospital already runs, configured
with nothing but medhash's URL and an API key header."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pydicom
import pytest

from shared.config import Settings
from shared.hashing.inference import BatchEncoder
from testbed.catalog_audit import all_instances
from testbed.servers import OrthancServer
from tests.services.search.test_dicomweb import KEY, stand, study_files

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PLUGIN = Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so")


def require_plugin() -> Path:
    """The plugin, or a skip (a failure under CI=true) naming the package that brings it."""
    if PLUGIN.is_file():
        return PLUGIN
    message = f"{PLUGIN} is missing: apt-get install orthanc-dicomweb (scripts/setup.sh does)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(message)
    pytest.skip(message)


def test_orthanc_forwards_a_study_over_stow_rs(
        any_settings: Settings, encoder: BatchEncoder, tmp_path: Path,
        orthanc_factory: Callable[..., OrthancServer]) -> None:
    plugin = require_plugin()
    files = study_files(tmp_path / "study", patient_id="PAT-ORTHANC")
    originals = {pydicom.dcmread(path).SOPInstanceUID: path.read_bytes() for path in files}
    with stand(any_settings, encoder) as stand_:
        orthanc = orthanc_factory(extra_config={
            "Plugins": [str(plugin)],
            "DicomWeb": {"Enable": True, "Servers": {"medhash": {
                "Url": f"{stand_.base_url}/dicomweb/", "HttpHeaders": {"X-API-Key": KEY}}}},
        })
        study = {orthanc.upload(data) for data in originals.values()}
        parent = orthanc.get(f"/instances/{next(iter(study))}")["ParentSeries"]
        study_id = orthanc.get(f"/series/{parent}")["ParentStudy"]
        try:
            orthanc.post("/dicom-web/servers/medhash/stow", {"Resources": [study_id]})
        except RuntimeError as exc:
            raise AssertionError(f"{exc}\n{orthanc.log_tail()}") from exc
        rows = {row.sop_instance_uid: row for row in all_instances(stand_.runtime.catalog)}
        assert sorted(rows) == sorted(originals)
        for uid, row in rows.items():
            # Orthanc sends the file it was given; medhash stores it byte for byte
            assert stand_.runtime.store.get(row.object_key) == originals[uid]
