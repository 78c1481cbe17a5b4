"""The preprocess stage on the embedded default: states, slices, idempotency, cleaning."""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.encaps import encapsulate
from pydicom.filereader import read_file_meta_info

from shared.config import Settings
from shared.dicom.synthetic import StudyIds, make_ct, write
from shared.pipeline.ingest import Ingestor, StoreStatus
from shared.pipeline.preprocess import (
    PreprocessOptions,
    Preprocessor,
    clean_stable_series,
)
from shared.pipeline.reconcile import Reconciler
from shared.pipeline.states import Stage
from shared.pipeline.wiring import Runtime
from shared.storage.catalog import InstanceState
from shared.storage.slice_format import decode_slice
from testbed.catalog_audit import all_slices
from tests.shipped import shipped_files

pytestmark = pytest.mark.unit


@dataclass
class Pipeline:
    runtime: Runtime
    ingestor: Ingestor
    preprocessor: Preprocessor

    def ingest(self, path: Path) -> int | None:
        meta = read_file_meta_info(path)
        outcome = self.ingestor.store_instance(
            path.read_bytes(),
            sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            transfer_syntax_uid=str(meta.TransferSyntaxUID),
        )
        return outcome.instance_id if outcome.status is StoreStatus.SUCCESS else None


@pytest.fixture
def pipeline(embedded_settings: Settings) -> Pipeline:
    settings = embedded_settings.model_copy(update={"image_size": 64})
    runtime = Runtime.from_settings(settings)
    yield Pipeline(
        runtime,
        Ingestor(runtime.store, runtime.catalog, runtime.host),
        Preprocessor(runtime.store, runtime.catalog, runtime.host,
                     PreprocessOptions.from_settings(settings)),
    )
    runtime.close()


def slice_pixels(pipeline: Pipeline, instance_id: int) -> list[np.ndarray]:
    return [decode_slice(pipeline.runtime.store.get(s.object_key))
            for s in pipeline.runtime.catalog.slices(instance_id)]


@pytest.mark.slow
def test_every_shipped_file_reaches_a_final_state_with_a_reason(pipeline: Pipeline) -> None:
    ids: dict[str, int] = {}
    for path in shipped_files():
        try:
            instance_id = pipeline.ingest(path)
        except Exception:  # no file meta: not something a sender could have sent
            continue
        if instance_id is not None:
            ids[path.name] = instance_id
            pipeline.preprocessor.run(instance_id)
    catalog = pipeline.runtime.catalog
    states: Counter[str] = Counter()
    for name, instance_id in ids.items():
        row = catalog.get(instance_id)
        assert row is not None
        states[row.state.value] += 1
        assert row.state in {InstanceState.PREPROCESSED, InstanceState.SKIPPED, InstanceState.FAILED}, name
        if row.state is InstanceState.PREPROCESSED:
            assert len(catalog.slices(instance_id)) == row.number_of_frames, name
        else:
            assert row.reason, f"{name}: {row.state} without a reason"
    print("\nshipped files preprocessed:", dict(states))
    assert states["preprocessed"] >= 100 and states["skipped"] >= 5

    # lossless compressed files shipped beside an uncompressed twin give identical slices
    twins = [("MR_small.dcm", "MR_small_RLE.dcm"), ("MR_small.dcm", "MR_small_jp2klossless.dcm"),
             ("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm"), ("emri_small.dcm", "emri_small_RLE.dcm"),
             ("emri_small.dcm", "emri_small_jpeg_2k_lossless.dcm"), ("SC_rgb.dcm", "SC_rgb_rle.dcm"),
             ("US1_UNCR.dcm", "US1_J2KR.dcm"), ("RG1_UNCR.dcm", "RG1_J2KR.dcm")]
    for plain, compressed in twins:
        a, b = slice_pixels(pipeline, ids[plain]), slice_pixels(pipeline, ids[compressed])
        assert len(a) == len(b) > 0
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True)), (plain, compressed)

    # a multi-frame instance gives one slice per frame
    multi = catalog.get(ids["emri_small.dcm"])
    assert multi is not None and multi.number_of_frames == 10
    assert [s.frame_index for s in catalog.slices(multi.id)] == list(range(10))


def test_slices_are_normalised_and_resized_with_aspect_kept(pipeline: Pipeline, tmp_path: Path) -> None:
    ds = make_ct(StudyIds.new(), 1, rows=64, columns=128)
    instance_id = pipeline.ingest(write(ds, tmp_path / "wide.dcm"))
    assert instance_id is not None
    assert pipeline.preprocessor.run(instance_id) is InstanceState.PREPROCESSED
    (pixels,) = slice_pixels(pipeline, instance_id)
    assert pixels.shape == (64, 64)
    assert 0.0 <= pixels.min() and pixels.max() <= 1.0
    # 128x64 resized to 64x32 and centred: 16 rows of zero padding above and below
    assert not pixels[:16].any() and not pixels[-16:].any() and pixels[16:48].any()
    assert pipeline.runtime.host.pending(Stage.ENCODE) == 1


def test_running_twice_or_concurrently_makes_one_set_of_slices(pipeline: Pipeline, tmp_path: Path) -> None:
    ids = StudyIds.new()
    instance_ids = [pipeline.ingest(write(make_ct(ids, n, rows=64, columns=64), tmp_path / f"{n}.dcm"))
                    for n in range(1, 4)]
    threads = [threading.Thread(target=pipeline.preprocessor.run, args=(i,))
               for i in instance_ids for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for instance_id in instance_ids:
        assert pipeline.preprocessor.run(instance_id) is None  # already done
    catalog = pipeline.runtime.catalog
    assert len(all_slices(catalog)) == 3
    assert catalog.counts_by_state()["preprocessed"] == 3
    assert len(list(pipeline.runtime.store.list("slices/"))) == 3


def test_sr_is_skipped_and_undecodable_pixels_fail_naming_the_syntax(pipeline: Pipeline, tmp_path: Path) -> None:
    sr = next(p for p in shipped_files() if p.name == "test-SR.dcm")
    sr_id = pipeline.ingest(sr)
    ds = make_ct(StudyIds.new(), 1, rows=32, columns=32)
    ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.50"  # JPEG baseline, but not a JPEG
    ds.PixelData = encapsulate([b"\xff\xd8 this is not a JPEG stream \xff\xd9"])
    bad_id = pipeline.ingest(write(ds, tmp_path / "bad.dcm"))
    assert sr_id is not None and bad_id is not None
    assert pipeline.preprocessor.run(sr_id) is InstanceState.SKIPPED
    assert pipeline.preprocessor.run(bad_id) is InstanceState.FAILED
    catalog = pipeline.runtime.catalog
    assert "SR" in (catalog.get(sr_id).reason or "")  # type: ignore[union-attr]
    bad = catalog.get(bad_id)
    assert bad is not None and "1.2.840.10008.1.2.4.50" in (bad.reason or "")


def test_stable_series_cleaning_excludes_outliers_and_keeps_them(pipeline: Pipeline, tmp_path: Path) -> None:
    ids = StudyIds.new()
    paths = [write(make_ct(ids, n, rows=64, columns=64), tmp_path / f"{n}.dcm") for n in range(1, 9)]
    blank = make_ct(ids, 9, rows=64, columns=64)
    blank.PixelData = np.full((64, 64), 1024 - 1000 + 1024, dtype=np.uint16).tobytes()  # all air
    paths.append(write(blank, tmp_path / "blank.dcm"))
    for path in paths:
        instance_id = pipeline.ingest(path)
        assert instance_id is not None
        pipeline.preprocessor.run(instance_id)
    catalog = pipeline.runtime.catalog
    assert catalog.series_to_clean(stable_s=3600) == []  # not stable yet
    thresholds = pipeline.preprocessor.options.thresholds
    assert clean_stable_series(catalog, thresholds, stable_s=0) == 1
    slices = catalog.series_slices(ids.series_instance_uid)
    assert len(slices) == 9  # flagged slices are kept
    flagged = [s for s in slices if s.excluded]
    assert len(flagged) == 1 and flagged[0].exclusion_reason and "blank" in flagged[0].exclusion_reason
    assert clean_stable_series(catalog, thresholds, stable_s=0) == 0  # nothing new to clean


def test_reconciler_resends_what_sat_too_long_and_gives_up_on_poison(
    pipeline: Pipeline, embedded_settings: Settings, tmp_path: Path
) -> None:
    settings = embedded_settings.model_copy(update={"reconcile_after_s": 0.0, "max_attempts": 2})
    instance_id = pipeline.ingest(write(make_ct(StudyIds.new(), 1, rows=32, columns=32), tmp_path / "a.dcm"))
    assert instance_id is not None
    host = pipeline.runtime.host
    before = host.pending(Stage.PREPROCESS)
    time.sleep(0.01)
    assert Reconciler(pipeline.runtime.catalog, host, settings,
                      pipeline.runtime.forgetter).run_once() == 1
    assert host.pending(Stage.PREPROCESS) == before + 1
    # a worker that dies every time: attempts are counted before the work starts
    catalog = pipeline.runtime.catalog
    for _ in range(settings.max_attempts):
        catalog.count_attempt(instance_id)
    options = PreprocessOptions.from_settings(settings)
    preprocessor = Preprocessor(pipeline.runtime.store, catalog, host, options)
    assert preprocessor.run(instance_id) is InstanceState.FAILED
    row = catalog.get(instance_id)
    assert row is not None and "gave up after 2 attempts" in (row.reason or "")
