"""One-file checkpoints: everything an encoder needs, and a content hash as the model version.

Layout (a ``torch.save`` dict readable with ``weights_only=True``): format, method, backbone,
bits, image_size, num_classes, model_kwargs, normalization, class_names, state_dict,
train_config, metrics, version, and optionally training_state (optimizer, epoch, step, RNG)
for ``--resume``.

The version is sha256 over the canonical JSON of the configuration and every weight's
bytes. Codes belong to a model version (DESIGN.md): two files with the same version give the
same codes, and metrics or resume state can be added later without changing it.
Loading never touches the network: the timm backbone is built with ``pretrained=False`` and
the stored weights are loaded into it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import torch

from shared.hashing.models import HashModel, create_model, pack_codes
from shared.hashing.transform import resize_image, to_model_input

__all__ = ["FORMAT", "model_version", "save_checkpoint", "load_checkpoint", "update_metrics", "LoadedCheckpoint"]

FORMAT = "medhash-checkpoint/1"
_CONFIG_KEYS = ("method", "backbone", "bits", "num_classes", "image_size", "model_kwargs", "normalization",
                "class_names", "train_config")


def model_version(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> str:
    """sha256 of the configuration (canonical JSON) and of each weight, in key order."""
    h = hashlib.sha256(json.dumps({k: config[k] for k in _CONFIG_KEYS}, sort_keys=True).encode())
    for key in sorted(state_dict):
        tensor = state_dict[key].detach().cpu().contiguous().reshape(-1)
        h.update(key.encode())
        h.update(str(tuple(tensor.shape)).encode() + str(tensor.dtype).encode())
        h.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()


def _atomic_save(obj: Mapping[str, Any], path: Path) -> None:
    """Write then rename, so a crash mid-save never leaves a truncated checkpoint."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(dict(obj), tmp)
    os.replace(tmp, path)


def save_checkpoint(
    path: Path | str,
    model: HashModel,
    class_names: Sequence[str],
    normalization: Mapping[str, Sequence[float]],
    train_config: Mapping[str, Any],
    metrics: Mapping[str, Any] | None = None,
    training_state: Mapping[str, Any] | None = None,
) -> str:
    """Save ``model`` (built by ``create_model``) with its metadata; returns the version."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {
        "format": FORMAT,
        **model.config,
        "normalization": {k: list(v) for k, v in normalization.items()},
        "class_names": list(class_names),
        "train_config": dict(train_config),
        "metrics": dict(metrics or {}),
        "state_dict": state,
    }
    payload["version"] = model_version(state, payload)
    if training_state is not None:
        payload["training_state"] = dict(training_state)
    _atomic_save(payload, Path(path))
    return payload["version"]


def update_metrics(path: Path | str, metrics: Mapping[str, Any]) -> None:
    """Record evaluation metrics in the checkpoint (the version does not change)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    payload["metrics"] = {**payload.get("metrics", {}), **metrics}
    _atomic_save(payload, Path(path))


@dataclass
class LoadedCheckpoint:
    """A ready-to-encode model and its metadata."""

    model: HashModel
    meta: dict[str, Any]

    @property
    def version(self) -> str:
        return self.meta["version"]

    @property
    def image_size(self) -> int:
        return int(self.meta["image_size"])

    @property
    def class_names(self) -> list[str]:
        return list(self.meta["class_names"])

    def _inputs(self, images: torch.Tensor, batch_size: int) -> Iterator[torch.Tensor]:
        """Model-ready batches of greyscale uint8 images (B, 1, S, S) on the model's device."""
        device = next(self.model.parameters()).device
        fmt = torch.channels_last if device.type == "cpu" else torch.contiguous_format
        for i in range(0, len(images), batch_size):
            batch = to_model_input(images[i:i + batch_size].to(device), self.meta["normalization"])
            yield batch.contiguous(memory_format=fmt)

    def encode(self, images: torch.Tensor, batch_size: int = 256) -> np.ndarray:
        """Packed codes for greyscale uint8 images already at ``image_size`` (B, 1, S, S)."""
        return self.encode_and_predict(images, batch_size)[0]

    @torch.no_grad()
    def encode_and_predict(self, images: torch.Tensor, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray | None]:
        """``encode`` plus, from the same forward pass, the model's own classifier's top-1
        class per image (None for methods without one). Why: for DAFH and saliency fusion it
        separates "the backbone has not learned the classes" from "the hash layer lags the
        features it is given" (docs/results.md)."""
        self.model.eval()
        codes: list[np.ndarray] = []
        predictions: list[np.ndarray] | None = []
        for batch in self._inputs(images, batch_size):
            output = self.model(batch)
            codes.append(pack_codes(output.codes))
            if output.logits is None or predictions is None:
                predictions = None
            else:
                predictions.append(output.logits.argmax(1).cpu().numpy())
        if not codes:
            return np.zeros((0, (self.model.bits + 7) // 8), np.uint8), np.zeros(0, np.int64)
        return np.concatenate(codes), None if predictions is None else np.concatenate(predictions)

    def encode_arrays(self, arrays: Sequence[np.ndarray]) -> np.ndarray:
        """Packed codes for arbitrary 2-D slices (any dtype/size): min-max to uint8, resize."""
        stack = np.stack([resize_image(a, self.image_size) for a in arrays])
        return self.encode(torch.from_numpy(stack)[:, None])


def load_checkpoint(path: Path | str, device: str | torch.device = "cpu") -> LoadedCheckpoint:
    """Rebuild the model offline and load its weights; checks the stored version."""
    meta = torch.load(path, map_location="cpu", weights_only=True)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path} is not a {FORMAT} file")
    model = create_model(meta["method"], backbone=meta["backbone"], bits=meta["bits"],
                         num_classes=meta["num_classes"], image_size=meta["image_size"], pretrained=False,
                         **meta["model_kwargs"])
    model.load_state_dict(meta["state_dict"])
    if model_version(meta["state_dict"], meta) != meta["version"]:
        raise ValueError(f"{path}: weights or configuration do not match the stored version")
    model.to(device).eval()
    if torch.device(device).type == "cpu":
        model.to(memory_format=torch.channels_last)  # faster depthwise convolutions on CPU
    return LoadedCheckpoint(model, meta)
