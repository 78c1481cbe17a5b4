"""UIDs from the wire never escape the object store's bucket or folder."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.dicom.header import HeaderSummary
from shared.dicom.uids import InvalidUID, clean_uid
from shared.pipeline.ingest import raw_object_key
from shared.storage.objectstore import InvalidKey, LocalObjectStore, check_key

pytestmark = pytest.mark.unit

SHA = "ab" * 32


def header(study: str | None, series: str | None) -> HeaderSummary:
    return HeaderSummary(None, None, study, series, None, None, None, 1)


def test_clean_uid_accepts_uids_and_strips_padding() -> None:
    assert clean_uid("1.2.840.10008.5.1.4.1.1.2\x00") == "1.2.840.10008.5.1.4.1.1.2"
    assert clean_uid("1.2.3 ") == "1.2.3"
    assert clean_uid("1.02.3") == "1.02.3"  # non-conformant leading zero, seen in archives


@pytest.mark.parametrize(
    "value", ["", None, "../../etc/passwd", "1.2/3", "1..2", ".1.2", "1.2.", "1.2.abc", "1" * 65, "1.2\n3"]
)
def test_clean_uid_rejects_non_uids(value: str | None) -> None:
    with pytest.raises(InvalidUID):
        clean_uid(value)


def test_raw_key_is_readable_for_valid_uids() -> None:
    key = raw_object_key(header("1.2.3", "1.2.3.4"), "1.2.3.4.5", SHA)
    assert key == f"raw/1.2.3/1.2.3.4/1.2.3.4.5.{SHA[:16]}.dcm"
    assert check_key(key) == key


@pytest.mark.parametrize("study", ["../../..", "/etc", "1.2/../../x", "..", "1.2.3\\..\\x", None])
def test_crafted_uids_fall_back_to_content_key(study: str | None) -> None:
    assert raw_object_key(header(study, "1.2"), "1.2.3", SHA) == f"raw/invalid-uid/{SHA}.dcm"


@pytest.mark.parametrize("key", ["../x", "raw/../../x", "/abs", "raw//x", "raw/.hidden", "a\\b", "raw/x\x00"])
def test_check_key_rejects_escapes(key: str) -> None:
    with pytest.raises(InvalidKey):
        check_key(key)


@settings(max_examples=300, deadline=None)
@given(study=st.text(), series=st.text(), sop=st.text())
def test_no_uid_text_escapes_the_store_folder(tmp_path_factory: pytest.TempPathFactory, study: str, series: str, sop: str) -> None:
    root = tmp_path_factory.getbasetemp() / "store"
    store = LocalObjectStore(root)
    key = raw_object_key(header(study, series), sop, SHA)
    path = store._path(key)  # noqa: SLF001 - the mapping from key to path is what is under test
    assert path.resolve().is_relative_to(Path(root).resolve())
