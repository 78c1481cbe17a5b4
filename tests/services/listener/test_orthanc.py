"""Orthanc, a real PACS, forwarding to medhash: by REST and by a Lua auto-routing script."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.config import Settings
from shared.dicom.synthetic import write_ct_series
from testbed.catalog_audit import all_instances
from testbed.servers import OrthancServer
from tests.conftest import RunningListener
from tests.services.listener.test_listener import assert_stored_identically

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


def test_orthanc_rest_store_to_modality(
    any_settings: Settings,
    listener_factory: Callable[[Settings], RunningListener],
    orthanc_factory: Callable[..., OrthancServer],
    tmp_path: Path,
) -> None:
    listener = listener_factory(any_settings)
    orthanc = orthanc_factory(modalities={"medhash": ["MEDHASH", "127.0.0.1", listener.port]})
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
