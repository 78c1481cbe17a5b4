"""The preprocess stage: a stored instance becomes clean, normalised slices (DAFH section 3.1).

Runs the same on a Celery CPU worker and on a thread of ``medhash serve``. Every effect is
idempotent, keyed by the instance (SOP Instance UID + bytes) and frame: slice objects go to
deterministic keys, and the catalog moves ``received -> preprocessed`` together with the
slice rows in one transaction that only the first delivery wins. A redelivered message, a
reconciler's re-send or a task killed half-way therefore never duplicates a slice.

Cleaning happens in two steps: the absolute rules (blank, saturated) at once, per slice;
the IQR rule across a series once the series is stable (:func:`clean_stable_series`), since
quartiles over a series that is still arriving would depend on arrival order.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass

from shared.config import Settings
from shared.dicom.cleaning import (
    CleaningThresholds,
    SliceStats,
    flag_outliers,
    slice_stats,
)
from shared.dicom.pixels import (
    NoPixelData,
    UndecodablePixelData,
    Window,
    WindowPolicy,
    iter_frames,
    resize_keep_aspect,
)
from shared.metrics import stage_metrics
from shared.pipeline.queues import StageHost, hand_over
from shared.storage.catalog import Catalog, CatalogUnavailable, InstanceState, NewSlice
from shared.storage.objectstore import (
    ObjectNotFound,
    ObjectStore,
    ObjectStoreUnavailable,
)
from shared.storage.slice_format import SLICE_MEDIA_TYPE, encode_slice

log = logging.getLogger("medhash.preprocess")


@dataclass(frozen=True)
class PreprocessOptions:
    image_size: int
    window: WindowPolicy
    thresholds: CleaningThresholds
    max_attempts: int = 5

    @classmethod
    def from_settings(cls, settings: Settings) -> PreprocessOptions:
        if (settings.window_center is None) != (settings.window_width is None):
            raise ValueError("set both MEDHASH_WINDOW_CENTER and MEDHASH_WINDOW_WIDTH, or neither")
        override = (
            Window(center=settings.window_center, width=settings.window_width)
            if settings.window_center is not None and settings.window_width is not None
            else None
        )
        return cls(
            image_size=settings.image_size,
            window=WindowPolicy(override=override),
            thresholds=CleaningThresholds(
                iqr_k=settings.iqr_k,
                blank_variance=settings.blank_variance,
                saturated_fraction=settings.saturated_fraction,
            ),
            max_attempts=settings.max_attempts,
        )


def slice_prefix(raw_key: str) -> str:
    """``slices/<Study>/<Series>/<SOP>.<sha>/``: where every slice of a raw object lives."""
    stem = raw_key.removeprefix("raw/").removesuffix(".dcm")
    return f"slices/{stem}/"


def slice_key(raw_key: str, frame_index: int) -> str:
    """``slices/<Study>/<Series>/<SOP>.<sha>/<frame>.png``: beside the raw object it came from."""
    return f"{slice_prefix(raw_key)}{frame_index:05d}.png"


class Preprocessor:
    """Turns one catalogued instance into slices; safe to call any number of times."""

    def __init__(
        self,
        store: ObjectStore,
        catalog: Catalog,
        host: StageHost,
        options: PreprocessOptions,
    ) -> None:
        self.store = store
        self.catalog = catalog
        self.host = host
        self.options = options

    @stage_metrics("preprocess")
    def run(self, instance_id: int) -> InstanceState | None:
        """Process the instance if it is still ``received``; returns the state it reached.

        Transient failures (object store or catalog unreachable) propagate so the caller
        retries; everything about the instance itself ends in ``skipped`` or ``failed``.
        """
        instance = self.catalog.get(instance_id)
        if instance is None or instance.state is not InstanceState.RECEIVED:
            return None  # already done by an earlier delivery, or never recorded
        extra = {"stage": "preprocess", "sop_instance_uid": instance.sop_instance_uid,
                 "instance_id": instance_id}
        # Counted before the work: an instance that kills its worker every time (a decoder
        # crash, the OOM killer) must end as failed instead of being redelivered forever.
        attempts = self.catalog.count_attempt(instance_id)
        if attempts > self.options.max_attempts:
            return self._finish(
                instance_id, InstanceState.FAILED,
                f"gave up after {self.options.max_attempts} attempts that did not finish "
                "(the worker died or timed out each time)", extra,
            )
        try:
            return self._process(instance_id, instance.object_key, extra)
        except (ObjectStoreUnavailable, CatalogUnavailable):
            # an outage is not the instance's fault: give the attempt back, let the caller retry
            with contextlib.suppress(CatalogUnavailable):
                self.catalog.count_attempt(instance_id, -1)
            raise

    def _process(self, instance_id: int, raw_key: str, extra: dict[str, object]) -> InstanceState | None:
        try:
            raw = self.store.get(raw_key)
        except ObjectNotFound:
            return self._finish(instance_id, InstanceState.FAILED, f"raw object {raw_key} is missing", extra)
        try:
            slices = self._slices(raw, raw_key)
        except NoPixelData as exc:
            return self._finish(instance_id, InstanceState.SKIPPED, exc.reason, extra)
        except UndecodablePixelData as exc:
            return self._finish(instance_id, InstanceState.FAILED, exc.reason, extra)
        if not self.catalog.transition(
            instance_id, InstanceState.RECEIVED, InstanceState.PREPROCESSED, slices=slices
        ):
            return None
        excluded = sum(item.excluded for item in slices)
        log.info("%d slices (%d excluded)", len(slices), excluded, extra=extra)
        hand_over(self.host, instance_id, InstanceState.PREPROCESSED)
        return InstanceState.PREPROCESSED

    def _slices(self, raw: bytes, raw_key: str) -> list[NewSlice]:
        slices = []
        for frame in iter_frames(raw, self.options.window):
            pixels = resize_keep_aspect(frame.pixels, self.options.image_size)
            stats = slice_stats(frame.pixels, self.options.thresholds)  # padding would skew it
            # absolute rules now (a series of one): the IQR rule runs on the stable series
            reasons = flag_outliers([stats], self.options.thresholds)[0].reasons
            key = slice_key(raw_key, frame.index)
            # derived from durable raw bytes: if a power cut loses it, it is made again
            self.store.put(key, encode_slice(pixels), content_type=SLICE_MEDIA_TYPE, durable=False)
            slices.append(
                NewSlice(
                    frame_index=frame.index,
                    object_key=key,
                    height=int(pixels.shape[0]),
                    width=int(pixels.shape[1]),
                    stats=asdict(stats),
                    excluded=bool(reasons),
                    exclusion_reason="; ".join(reasons) or None,
                )
            )
        return slices

    def _finish(
        self, instance_id: int, state: InstanceState, reason: str, extra: dict[str, object]
    ) -> InstanceState | None:
        if not self.catalog.transition(instance_id, InstanceState.RECEIVED, state, reason=reason):
            return None
        log.warning("%s: %s", state.value, reason, extra=extra)
        return state


def clean_stable_series(catalog: Catalog, thresholds: CleaningThresholds, stable_s: float) -> int:
    """Apply the absolute and IQR rules across every series that stopped growing.

    Returns the number of series cleaned. A series that grows again later is cleaned again,
    over all its slices, so the verdict never depends on the order slices arrived in.
    """
    cleaned = 0
    for series in catalog.series_to_clean(stable_s):
        slices = catalog.series_slices(series)
        verdicts = flag_outliers([SliceStats(**item.stats) for item in slices], thresholds)
        catalog.record_series_cleaning(
            series,
            [(item.id, "; ".join(v.reasons) or None) for item, v in zip(slices, verdicts, strict=True)],
        )
        log.info(
            "series cleaned: %d of %d slices excluded", sum(v.excluded for v in verdicts),
            len(slices), extra={"stage": "cleaning", "series_instance_uid": series},
        )
        cleaned += 1
    return cleaned
