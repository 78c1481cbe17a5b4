"""Inference: a checkpoint's model on the device, fed in shared batches.

One model per process, loaded once (CUDA is first touched here, after any fork). Slices
from many callers are batched together by :class:`BatchEncoder` (up to a batch size or a
wait time) because a GPU, and on CPU channels-last convolutions, are only efficient on
batches. The forward pass runs under ``torch.inference_mode`` with AMP on CUDA; the same code
runs on the CPU. This module is all an encode worker needs of the hash model: no training
code is imported.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import Future

import numpy as np
import torch

from shared.config import Settings
from shared.hashing.checkpoint import LoadedCheckpoint, load_checkpoint
from shared.hashing.transform import to_model_uint8

__all__ = ["BatchEncoder", "open_encoder", "resolve_device"]


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" picks CUDA when present, else CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


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
