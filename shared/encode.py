"""The encode stage: slices become packed hash codes with the checkpoint's model.

One model per process, loaded once (CUDA is first touched here, after any fork). Slices
from many tasks are batched together by :class:`BatchEncoder` (up to a batch size or a wait
time) because a GPU, and on CPU channels-last convolutions, are only efficient on batches.
The forward pass runs under ``torch.inference_mode`` with AMP on CUDA; the same code runs on
the CPU. Codes are written per slice with the model version, and the instance moves
``preprocessed -> encoded`` in the same transaction, which only the first delivery wins.

Queries take the same road: :func:`query_slices` turns an uploaded DICOM or picture into the
slices the pipeline would have stored, so a stored image queried finds itself at distance 0.
"""

from __future__ import annotations

import io
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import pydicom
import torch
from PIL import Image

from shared.catalog import Catalog, InstanceState, SliceCodes
from shared.checkpoint import LoadedCheckpoint, load_checkpoint
from shared.config import Settings
from shared.datasets import resize_image
from shared.dicom.pixels import frame_from_image, iter_frames, resize_keep_aspect
from shared.dicom.slices import decode_slice, encode_slice
from shared.metrics import STAGE_OUTCOMES, STAGE_SECONDS
from shared.objectstore import ObjectNotFound, ObjectStore
from shared.preprocess import PreprocessOptions
from shared.queue import Dispatcher, Stage
from shared.training import resolve_device

log = logging.getLogger("medhash.encode")

MAX_QUERY_PIXELS = 64_000_000
"""A query picture above this many pixels is refused (decompression-bomb guard)."""


class UnreadableQuery(ValueError):
    """An upload that is neither a DICOM instance with pixels nor a PNG/JPEG picture."""


def unit_to_uint8(slice_: np.ndarray) -> np.ndarray:
    """A stored [0, 1] slice as 8-bit grey at its own size: the fixed scale the model sees
    (never min-max, which would undo the windowing the preprocess stage applied)."""
    return np.round(np.clip(slice_, 0.0, 1.0) * 255.0).astype(np.uint8)


def to_model_uint8(slice_: np.ndarray, size: int) -> np.ndarray:
    """A stored [0, 1] slice as the uint8 picture of the model's input size."""
    grey = unit_to_uint8(slice_)
    return grey if grey.shape == (size, size) else resize_image(grey, size)


class BatchEncoder:
    """Encodes slices from many callers in shared batches; thread-safe.

    A caller's slices join the pending batch; the batch runs when it holds ``batch_size``
    slices or ``max_wait_s`` after its first slice arrived, whichever is first.
    """

    def __init__(self, checkpoint: LoadedCheckpoint, batch_size: int = 32, max_wait_s: float = 0.02) -> None:
        self.checkpoint = checkpoint
        self.batch_size = batch_size
        self.max_wait_s = max_wait_s
        self._pending: list[tuple[np.ndarray, Future[np.ndarray]]] = []
        self._first_at = 0.0
        self._lock = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="medhash-encoder", daemon=True)
        self._thread.start()

    @property
    def model_version(self) -> str:
        return self.checkpoint.version

    def encode(self, slices: list[np.ndarray]) -> np.ndarray:
        """Packed codes (n, bits/8) for [0, 1] slices; blocks until their batch ran."""
        size = self.checkpoint.image_size
        futures: list[Future[np.ndarray]] = []
        with self._lock:
            for item in slices:
                future: Future[np.ndarray] = Future()
                if not self._pending:
                    self._first_at = time.monotonic()
                self._pending.append((to_model_uint8(item, size), future))
                futures.append(future)
            self._lock.notify()
        return np.stack([f.result() for f in futures]) if futures else np.zeros((0, 0), np.uint8)

    def _take_batch(self) -> list[tuple[np.ndarray, Future[np.ndarray]]] | None:
        with self._lock:
            while True:
                if self._closed:
                    return None
                if len(self._pending) >= self.batch_size:
                    break
                if self._pending:
                    remaining = self.max_wait_s - (time.monotonic() - self._first_at)
                    if remaining <= 0:
                        break
                    self._lock.wait(remaining)
                else:
                    self._lock.wait()
            batch, self._pending = self._pending[: self.batch_size], self._pending[self.batch_size :]
            self._first_at = time.monotonic()
            return batch

    def _run(self) -> None:
        while (batch := self._take_batch()) is not None:
            try:
                codes = self.forward(np.stack([image for image, _ in batch]))
            except Exception as exc:  # every caller of this batch learns why
                for _, future in batch:
                    future.set_exception(exc)
                continue
            for (_, future), code in zip(batch, codes, strict=True):
                future.set_result(code)

    def forward(self, images: np.ndarray) -> np.ndarray:
        """The model's forward pass on uint8 images (n, S, S) -> packed codes."""
        tensor = torch.from_numpy(images)[:, None]
        device = next(self.checkpoint.model.parameters()).device
        with torch.inference_mode(), torch.autocast(device.type, enabled=device.type == "cuda"):
            return self.checkpoint.encode(tensor, batch_size=max(len(images), 1))

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._thread.join(timeout=10)


@dataclass
class EncodeStage:
    """Encodes one preprocessed instance's slices; safe to call any number of times."""

    store: ObjectStore
    catalog: Catalog
    dispatcher: Dispatcher
    encoder: BatchEncoder

    def run(self, instance_id: int) -> InstanceState | None:
        with STAGE_SECONDS.labels(stage="encode").time():
            state = self._run(instance_id)
        STAGE_OUTCOMES.labels(stage="encode", outcome=state.value if state else "noop").inc()
        return state

    def _run(self, instance_id: int) -> InstanceState | None:
        instance = self.catalog.get(instance_id)
        if instance is None or instance.state is not InstanceState.PREPROCESSED:
            return None
        extra = {"stage": "encode", "sop_instance_uid": instance.sop_instance_uid,
                 "instance_id": instance_id}
        slices = self.catalog.slices(instance_id)
        try:
            arrays = [decode_slice(self.store.get(item.object_key)) for item in slices]
        except ObjectNotFound as exc:
            # slices are derived data: one lost (power cut) is made again from the raw bytes
            self.catalog.transition(instance_id, InstanceState.PREPROCESSED, InstanceState.RECEIVED,
                                    reason=f"slice missing ({exc}); preprocessing again")
            self.dispatcher.enqueue(Stage.PREPROCESS, instance_id)
            log.warning("slice object missing, sent back to preprocess", extra=extra)
            return InstanceState.RECEIVED
        codes = self.encoder.encode(arrays)
        items = [(item.id, code.tobytes()) for item, code in zip(slices, codes, strict=True)]
        if not self.catalog.transition(
            instance_id, InstanceState.PREPROCESSED, InstanceState.ENCODED,
            codes=SliceCodes(self.encoder.model_version, items),
        ):
            return None
        log.info("%d slices encoded with model %s", len(items), self.encoder.model_version[:12],
                 extra=extra)
        self.dispatcher.enqueue(Stage.INDEX, instance_id)
        return InstanceState.ENCODED


def _stored_round_trip(pixels: np.ndarray) -> np.ndarray:
    """The slice exactly as the pipeline stores it (16-bit PNG quantisation included)."""
    return decode_slice(encode_slice(pixels))


def _check_dicom_size(data: bytes) -> None:
    """Refuse a DICOM query whose pixels would exceed the picture limit, before decoding.

    A deflated or compressed upload of a few KB can declare gigabytes of pixels; the header
    says how many before any of them is inflated.
    """
    try:
        header = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True,
                                 specific_tags=["Rows", "Columns", "NumberOfFrames", "SamplesPerPixel"])
        pixels = (int(header.get("Rows") or 0) * int(header.get("Columns") or 0)
                  * int(header.get("NumberOfFrames") or 1) * int(header.get("SamplesPerPixel") or 1))
    except Exception as exc:
        raise UnreadableQuery(f"the DICOM header does not parse ({type(exc).__name__}: {exc})") from exc
    if pixels > MAX_QUERY_PIXELS:
        raise UnreadableQuery(
            f"DICOM query declares {pixels} pixels, more than the {MAX_QUERY_PIXELS} allowed; "
            "send one frame or a smaller image"
        )


def query_slices(data: bytes, options: PreprocessOptions) -> list[np.ndarray]:
    """The slices the pipeline would store for an upload: a DICOM instance or a picture."""
    if len(data) > 132 and data[128:132] == b"DICM":
        _check_dicom_size(data)
        frames = [frame.pixels for frame in iter_frames(data, options.window)]
    else:
        try:
            with Image.open(io.BytesIO(data)) as picture:
                if picture.width * picture.height > MAX_QUERY_PIXELS:
                    raise UnreadableQuery(
                        f"picture of {picture.width}x{picture.height} pixels is larger than the "
                        f"{MAX_QUERY_PIXELS} allowed"
                    )
                grey = np.asarray(picture.convert("I;16") if picture.mode.startswith("I") else picture.convert("L"))
        except UnreadableQuery:
            raise
        except Exception as exc:
            raise UnreadableQuery(
                "not a DICOM Part 10 file nor a PNG/JPEG picture "
                f"({type(exc).__name__}: {exc})"
            ) from exc
        frames = [frame_from_image(grey)]
    return [_stored_round_trip(resize_keep_aspect(frame, options.image_size)) for frame in frames]


def open_encoder(settings: Settings) -> BatchEncoder:
    """The batch encoder of ``MEDHASH_MODEL``, with a clear error when none is configured."""
    if settings.model is None:
        raise ValueError(
            "MEDHASH_MODEL is not set: encoding needs a checkpoint (`medhash train ... --out "
            "model.pt`, then MEDHASH_MODEL=model.pt)"
        )
    if not settings.model.is_file():
        raise ValueError(f"MEDHASH_MODEL={settings.model} does not exist")
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    checkpoint = load_checkpoint(settings.model, device=resolve_device(settings.device))
    return BatchEncoder(checkpoint, settings.encode_batch_size, settings.encode_max_wait_s)
