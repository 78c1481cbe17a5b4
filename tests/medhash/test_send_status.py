"""The contract's command forms: `medhash send` exit codes and `medhash status --json`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from shared.config import Settings
from shared.dicom.synthetic import write_ct_series
from tests.conftest import RunningListener

pytestmark = pytest.mark.integration

MEDHASH = [sys.executable, "-m", "medhash.cli"]


def run(args: list[str], settings: Settings) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "MEDHASH_DATA_DIR": str(settings.data_dir)}
    return subprocess.run([*MEDHASH, *args], env=env, capture_output=True, text=True, timeout=120)


def test_send_then_status(
    embedded_settings: Settings, listener_factory: Callable[[Settings], RunningListener], tmp_path: Path
) -> None:
    listener = listener_factory(embedded_settings)
    write_ct_series(tmp_path / "study", 3, rows=64, columns=64)
    sent = run(["send", str(tmp_path / "study"), "--host", "127.0.0.1", "--port", str(listener.port),
                "--called-ae", "MEDHASH"], embedded_settings)
    assert sent.returncode == 0, sent.stderr
    assert "stored" in sent.stderr

    status = run(["status", "--json"], embedded_settings)
    assert status.returncode == 0, status.stderr
    report = json.loads(status.stdout)
    assert report["total"] == 3 and report["states"]["received"] == 3
    assert set(report["states"]) == {"received", "preprocessed", "encoded", "indexed", "failed", "skipped"}


def test_send_exits_non_zero_when_a_file_was_not_stored(
    embedded_settings: Settings, listener_factory: Callable[[Settings], RunningListener], tmp_path: Path
) -> None:
    listener = listener_factory(embedded_settings)
    folder = tmp_path / "mixed"
    write_ct_series(folder, 2, rows=64, columns=64)
    (folder / "notes.txt").write_text("not DICOM")
    sent = run(["send", str(folder), "--port", str(listener.port), "--called-ae", "MEDHASH",
                "--json", str(tmp_path / "out.json")], embedded_settings)
    assert sent.returncode == 1
    results = json.loads((tmp_path / "out.json").read_text())
    assert sorted(r["status"] for r in results if r["status"] is not None) == [0, 0]
    assert any("not a DICOM" in r["reason"] for r in results)
