"""The DICOM files that pip packages ship (pydicom's test files and pydicom-data), offline.

``pydicom.data.get_testdata_files`` also tries to download files missing from the local
copies; tests must never touch the network, so this lists only what is installed.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.data.data_manager import DATA_ROOT, external_data_sources


def shipped_files() -> list[Path]:
    """Every installed test file of pydicom and pydicom-data, sorted, without duplicates."""
    files = {p for p in (Path(DATA_ROOT) / "test_files").rglob("*") if p.is_file()}
    for source in external_data_sources().values():
        files.update(Path(p) for p in source.get_paths("**/*", 0))
    return sorted(files)
