"""Training on the archive: the catalog's preprocessed slices, labelled by a CSV of UIDs."""
from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from pydicom.filereader import read_file_meta_info
from typer.testing import CliRunner

from medhash.commands.learning import app
from shared.config import Settings, get_settings
from shared.dicom.synthetic import StudyIds, write_ct_series
from shared.hashing.transform import to_model_uint8
from shared.learning.archive import CatalogSlices
from shared.learning.datasets import load_labelled_slices
from shared.pipeline.ingest import Ingestor, StoreStatus
from shared.pipeline.preprocess import PreprocessOptions, Preprocessor
from shared.pipeline.wiring import Runtime
from shared.storage.objectstore import ObjectStore
from shared.storage.slice_format import decode_slice


@dataclass
class ReadCounter:
    """The real store, remembering which keys were read."""

    store: ObjectStore
    keys: list[str] = field(default_factory=list)

    def get(self, key: str) -> bytes:
        self.keys.append(key)
        return self.store.get(key)


@dataclass
class Archive:
    settings: Settings
    runtime: Runtime
    series: dict[str, StudyIds]  # name -> UIDs
    excluded_slice: int


@pytest.fixture
def archive(embedded_settings: Settings, tmp_path: Path) -> Iterator[Archive]:
    yield from _archive(embedded_settings, tmp_path)


@pytest.fixture
def any_archive(any_settings: Settings, tmp_path: Path) -> Iterator[Archive]:
    """The same on SQLite + folder and on PostgreSQL + S3."""
    yield from _archive(any_settings, tmp_path)


def _archive(settings: Settings, tmp_path: Path) -> Iterator[Archive]:
    """Three patients' CT series ingested and preprocessed; one slice excluded by cleaning."""
    runtime = Runtime.from_settings(settings)
    ingestor = Ingestor(runtime.store, runtime.catalog, runtime.host)
    preprocessor = Preprocessor(runtime.store, runtime.catalog, runtime.host,
                                PreprocessOptions.from_settings(settings))
    series = {name: StudyIds.new(patient_id=f"PAT-{name}") for name in ("a", "b", "c")}
    for number, (name, ids) in enumerate(series.items()):
        for path in write_ct_series(tmp_path / name, 4 if name != "c" else 2, rows=48, columns=48,
                                    seed=number, ids=ids):
            meta = read_file_meta_info(path)
            outcome = ingestor.store_instance(path.read_bytes(), sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
                                              sop_class_uid=str(meta.MediaStorageSOPClassUID),
                                              transfer_syntax_uid=str(meta.TransferSyntaxUID))
            assert outcome.status is StoreStatus.SUCCESS and outcome.instance_id is not None
            preprocessor.run(outcome.instance_id)
    slices_a = runtime.catalog.series_slices(series["a"].series_instance_uid)
    assert len(slices_a) == 4
    runtime.catalog.record_series_cleaning(series["a"].series_instance_uid,
                                           [(s.id, "too dark" if i == 0 else None) for i, s in enumerate(slices_a)])
    yield Archive(settings, runtime, series, slices_a[0].id)
    runtime.close()


def labels_csv(path: Path, archive: Archive) -> Path:
    # patient a by PatientID, patient b by series; patient c has no label
    path.write_text("PatientID,SeriesInstanceUID,label\n"
                    f"{archive.series['a'].patient_id},,liver\n"
                    f",{archive.series['b'].series_instance_uid},lung\n")
    return path


# embedded and distributed (the distributed run carries the integration mark)
def test_catalog_slices_load_labelled_kept_slices_only(any_archive: Archive, tmp_path: Path) -> None:
    archive = any_archive
    catalog, store = archive.runtime.catalog, archive.runtime.store
    reads = ReadCounter(store)
    data = load_labelled_slices(CatalogSlices(catalog, reads), labels_csv(tmp_path / "labels.csv", archive),  # type: ignore[arg-type]
                                image_size=32)
    assert data.class_names == ["liver", "lung"]
    assert sorted(np.bincount(data.labels.numpy()).tolist()) == [3, 4]  # a: 4 slices minus the excluded one
    kept = {d.object_key: d for d in catalog.training_slices()}
    assert archive.excluded_slice not in {d.slice_id for d in kept.values()}
    unlabelled = {k for k, d in kept.items() if d.patient_id == archive.series["c"].patient_id}
    assert len(unlabelled) == 2 and not unlabelled & set(reads.keys)  # never read
    assert len(reads.keys) == len(data) == 7
    for key, image in zip(reads.keys, data.images, strict=True):  # what the encode worker feeds the model
        assert np.array_equal(image[0].numpy(), to_model_uint8(decode_slice(store.get(key)), 32))


@pytest.mark.unit
def test_train_and_evaluate_on_the_archive(archive: Archive, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEDHASH_DATA_DIR", str(archive.settings.data_dir))
    for name in ("MEDHASH_DATABASE_URL", "MEDHASH_S3_ENDPOINT", "MEDHASH_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)
    get_settings.cache_clear()  # read the environment above; cleared again below
    try:
        csv_path = labels_csv(tmp_path / "labels.csv", archive)
        model = tmp_path / "m.pt"
        runner = CliRunner()
        common = ["--device", "cpu", "--threads", "1"]
        r = runner.invoke(app, ["train", "--labels", str(csv_path), "--split-seed", "0", "--out", str(model),
                                "--method", "dsh", "--bits", "16", "--epochs", "1", "--image-size", "32",
                                "--backbone", "mobilenetv3_small_050", "--batch-size", "4", *common])
        assert r.exit_code == 0, r.output
        out = tmp_path / "eval.json"
        r = runner.invoke(app, ["evaluate", str(model), "--labels", str(csv_path), "--seed", "0",
                                "--json", str(out), *common])
        assert r.exit_code == 0, r.output
        metrics = json.loads(out.read_text())
        # 8:2 per class: liver 3 -> 2 + 1, lung 4 -> 3 + 1
        assert (metrics["num_database"], metrics["num_queries"]) == (5, 2)
        assert metrics["data"]["labels"] == str(csv_path)

        r = runner.invoke(app, ["train", str(tmp_path), "--labels", str(csv_path), "--out", str(model)])
        assert r.exit_code != 0 and "not both" in r.output
        r = runner.invoke(app, ["train", "--labels", str(tmp_path / "missing.csv"), "--out", str(model)])
        assert r.exit_code != 0 and "missing.csv" in str(r.exception) + r.output
    finally:
        get_settings.cache_clear()
