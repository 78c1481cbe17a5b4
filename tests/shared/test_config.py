"""The settings object reads MEDHASH_* variables, and the README documents every one."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.config import Settings, settings_markdown_table

pytestmark = pytest.mark.unit


def test_environment_overrides_defaults(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MEDHASH_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MEDHASH_ALLOWED_CALLING_AES", "PACS1, ROUTER ,")
    monkeypatch.setenv("MEDHASH_DICOM_PORT", "104")
    settings = Settings()
    assert settings.data_dir == tmp_path
    assert settings.allowed_calling_aes == ["PACS1", "ROUTER"]
    assert settings.dicom_port == 104
    assert settings.embedded and settings.ae_title == "MEDHASH"


def test_distributed_when_any_server_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDHASH_DATABASE_URL", "postgresql://db/medhash")
    assert not Settings().embedded


def test_bad_ae_title_is_refused_with_a_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDHASH_AE_TITLE", "A_TITLE_THAT_IS_TOO_LONG")
    with pytest.raises(ValueError, match="1 to 16 characters"):
        Settings()


def test_readme_documents_every_setting() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert settings_markdown_table() in readme, "run scripts/update_readme_settings.py"
