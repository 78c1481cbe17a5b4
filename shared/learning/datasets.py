"""Labelled image sets for training and evaluation.

Images are decoded once, resized to the model's input size and kept in memory as uint8
greyscale (N, 1, S, S): medical sets at hashing resolutions fit easily, and decoding JPEG
or DICOM every epoch would cost more CPU than the model at 64 px. Augmentation (DAFH
sec. 3.1: noise, blur, brightness, rotation, scaling) runs batched on tensors for the same
reason. Models take 3 channels (so ImageNet-pretrained timm weights fit), produced by
``to_model_input`` which repeats the grey channel and normalises.
"""
from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Protocol, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from shared.hashing.transform import (
    DEFAULT_NORMALIZATION,
    resize_image,
    to_model_input,
    to_uint8,
)

__all__ = [
    "IMAGE_EXTENSIONS", "DEFAULT_NORMALIZATION", "ImageSet", "SliceSource", "read_image", "to_uint8",
    "load_folder", "load_labelled_slices", "stratified_split", "balanced_subset", "Augmenter",
    "to_model_input", "balanced_batches", "resize_image", "split_folder", "split_set", "list_folder",
    "LabelledImage",
]

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".dcm", ".dicom"})
UID_LEVELS = ("SeriesInstanceUID", "StudyInstanceUID", "PatientID")  # most specific first


@dataclass
class ImageSet:
    """Images (uint8, N x 1 x S x S), integer labels, the class names they index, and ids."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: list[str]
    ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "ImageSet":
        idx = torch.as_tensor(np.asarray(indices, dtype=np.int64))
        return ImageSet(self.images[idx], self.labels[idx], self.class_names, [self.ids[i] for i in idx.tolist()])


LabelledImage = np.ndarray | Callable[[], np.ndarray]
"""An image, or a function that loads it: sources of many slices load only the labelled ones."""


class SliceSource(Protocol):
    """Anything yielding (slice id, image, {PatientID, StudyInstanceUID, SeriesInstanceUID}).

    :class:`shared.learning.archive.CatalogSlices` is the catalog's; tests also use plain lists.
    """

    def __iter__(self) -> Iterator[tuple[str, LabelledImage, Mapping[str, str]]]: ...


def _read_dicom(path: Path) -> np.ndarray:
    """First frame through the same pixel pipeline the CPU workers run, as uint8.

    Training on DICOM must see what the encoders will see: modality and VOI LUT, the
    per-modality default window, MONOCHROME1 inversion and colour-to-grey all come from
    :mod:`shared.dicom.pixels`, not from a second, slightly different implementation.
    """
    from shared.dicom.pixels import iter_frames

    first = next(iter_frames(path.read_bytes()))
    return np.round(first.pixels * 255.0).astype(np.uint8)


def read_image(path: Path, size: int) -> np.ndarray:
    """Greyscale uint8 (size, size) from PNG/JPEG/DICOM."""
    if path.suffix.lower() in {".dcm", ".dicom"}:
        return resize_image(_read_dicom(path), size)
    with Image.open(path) as img:
        return resize_image(np.asarray(img.convert("L")), size)


def _class_dirs(root: Path) -> list[Path]:
    dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not dirs:
        raise ValueError(f"{root} has no class sub-folders")
    return dirs


def list_folder(root: Path | str, class_names: Sequence[str] | None = None
                ) -> tuple[list[Path], np.ndarray, list[str]]:
    """Image paths under ``root/<class>/`` (recursively, sorted), their labels, class names.

    ``class_names`` fixes the label order (e.g. the union of two folders' classes) so labels
    agree across folders; class folders not in it are an error. Listing is separate from
    decoding so a subset can be chosen before paying for JPEG/DICOM decoding.
    """
    root = Path(root)
    dirs = _class_dirs(root)
    names = list(class_names) if class_names is not None else [d.name for d in dirs]
    index = {n: i for i, n in enumerate(names)}
    paths: list[Path] = []
    labels: list[int] = []
    for d in dirs:
        if d.name not in index:
            raise ValueError(f"class folder {d.name!r} is not among the classes {names}")
        found = sorted(p for p in d.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
        paths += found
        labels += [index[d.name]] * len(found)
    if not paths:
        raise ValueError(f"no images under {root}")
    return paths, np.asarray(labels, dtype=np.int64), names


def _decode(paths: Sequence[Path], labels: np.ndarray, names: list[str], root: Path, image_size: int) -> ImageSet:
    images = np.stack([read_image(p, image_size) for p in paths])
    return ImageSet(torch.from_numpy(images)[:, None], torch.from_numpy(labels), names,
                    [str(p.relative_to(root)) for p in paths])


def load_folder(root: Path | str, image_size: int, class_names: Sequence[str] | None = None) -> ImageSet:
    """Every image under ``root/<class>/``, labelled by its class folder (see ``list_folder``)."""
    paths, labels, names = list_folder(root, class_names)
    return _decode(paths, labels, names, Path(root), image_size)


def load_labelled_slices(source: Iterable[tuple[str, LabelledImage, Mapping[str, str]]], labels_csv: Path | str,
                         image_size: int, label_column: str = "label") -> ImageSet:
    """Label catalog slices from a CSV keyed by PatientID, StudyInstanceUID or SeriesInstanceUID.

    Each CSV row names one UID column (others empty) and a label; a slice takes the label of
    its most specific match (series over study over patient), so a study-level label can be
    overridden for one series. Slices without a match are skipped (unlabelled, and never
    loaded when the source gives a loader), and one UID with two different labels is an
    error rather than a silent pick.
    """
    if not Path(labels_csv).is_file():
        raise FileNotFoundError(f"labels CSV {labels_csv} not found")
    table: dict[tuple[str, str], str] = {}
    with open(labels_csv, newline="") as fh:
        for row in csv.DictReader(fh):
            for level in UID_LEVELS:
                uid = (row.get(level) or "").strip()
                if uid:
                    label = row[label_column].strip()
                    if table.setdefault((level, uid), label) != label:
                        raise ValueError(f"{level} {uid} has two labels: {table[(level, uid)]!r}, {label!r}")
                    break
    names = sorted(set(table.values()))
    index = {n: i for i, n in enumerate(names)}
    images: list[np.ndarray] = []
    labels: list[int] = []
    ids: list[str] = []
    for slice_uid, image, uids in source:
        label = next((table[(lv, uids[lv])] for lv in UID_LEVELS if uids.get(lv) and (lv, uids[lv]) in table), None)
        if label is not None:
            images.append(resize_image(image() if callable(image) else image, image_size))
            labels.append(index[label])
            ids.append(slice_uid)
    if not images:
        raise ValueError("no slice matched a labelled UID")
    return ImageSet(torch.from_numpy(np.stack(images))[:, None], torch.tensor(labels), names, ids)


def split_folder(root: Path | str, image_size: int, seed: int = 0, fraction: float = 0.8,
                 per_class: int | None = None) -> tuple[ImageSet, ImageSet]:
    """The evaluation protocol in one call: list a class folder, optionally keep a seeded
    class-balanced subset of ``per_class`` images, split it stratified 8:2 (train and
    database; queries), decode. ``medhash train --split-seed`` and ``medhash evaluate
    --split-of`` both go through here, so they agree on the split.
    """
    paths, labels, names = list_folder(root, None)
    return tuple(_decode([paths[i] for i in part], labels[part], names, Path(root), image_size)
                 for part in _split_indices(labels, seed, fraction, per_class))  # type: ignore[return-value]


def split_set(data: ImageSet, seed: int = 0, fraction: float = 0.8, per_class: int | None = None
              ) -> tuple[ImageSet, ImageSet]:
    """``split_folder``'s protocol for a set already in memory (the catalog's labelled slices)."""
    first, second = _split_indices(data.labels.numpy(), seed, fraction, per_class)
    return data.subset(first), data.subset(second)


def _split_indices(labels: np.ndarray, seed: int, fraction: float, per_class: int | None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the two parts: the optional seeded class-balanced subset, split stratified."""
    keep = balanced_subset(labels, per_class, seed) if per_class is not None else np.arange(len(labels))
    first, second = stratified_split(labels[keep], fraction, seed)
    return keep[first], keep[second]


def stratified_split(labels: torch.Tensor | np.ndarray, fraction: float = 0.8, seed: int = 0
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: per class, a ``fraction`` share (rounded) goes to the first part.

    Classes with at least two images keep at least one on each side, so every query class
    exists in the database. Both index arrays are sorted, so database order is file order.
    """
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    first: list[np.ndarray] = []
    second: list[np.ndarray] = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = int(round(fraction * len(idx)))
        if len(idx) >= 2:
            n = min(max(n, 1), len(idx) - 1)
        first.append(idx[:n])
        second.append(idx[n:])
    return np.sort(np.concatenate(first)), np.sort(np.concatenate(second))


def balanced_subset(labels: torch.Tensor | np.ndarray, per_class: int, seed: int = 0) -> np.ndarray:
    """Seeded subset with at most ``per_class`` images of each class (sorted indices)."""
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    parts = [rng.permutation(np.flatnonzero(labels == c))[:per_class] for c in np.unique(labels)]
    return np.sort(np.concatenate(parts))


@dataclass
class Augmenter:
    """DAFH's augmentations, each sample drawn independently, on float images in [0, 1].

    Rotation and scaling share one affine warp (reflection padding so no black corners
    become a cue); blur is a 3x3 Gaussian on a random half of the batch; brightness is a
    multiplicative factor; noise is additive Gaussian. Ranges are mild because the paper
    gives none and strong warps would change anatomy.
    """

    rotation_deg: float = 15.0
    scale: tuple[float, float] = (0.9, 1.1)
    brightness: float = 0.2
    blur_prob: float = 0.5
    noise_std: float = 0.03

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        b = x.shape[0]

        def uniform(lo: float, hi: float) -> torch.Tensor:
            return (torch.rand(b, generator=generator) * (hi - lo) + lo).to(x.device)

        angle = uniform(-self.rotation_deg, self.rotation_deg) * math.pi / 180.0
        inv_scale = 1.0 / uniform(*self.scale)
        cos, sin = torch.cos(angle) * inv_scale, torch.sin(angle) * inv_scale
        zeros = torch.zeros_like(cos)
        theta = torch.stack([torch.stack([cos, -sin, zeros], 1), torch.stack([sin, cos, zeros], 1)], 1)
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
        kernel = torch.tensor([1.0, 2.0, 1.0], device=x.device)
        kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(x.shape[1], 1, 3, 3)
        blurred = F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), kernel, groups=x.shape[1])
        use_blur = (uniform(0.0, 1.0) < self.blur_prob).view(b, 1, 1, 1)
        x = torch.where(use_blur, blurred, x)
        x = x * uniform(1.0 - self.brightness, 1.0 + self.brightness).view(b, 1, 1, 1)
        noise = torch.randn(x.shape, generator=generator).to(x.device) * self.noise_std
        return (x + noise).clamp(0.0, 1.0)


def balanced_batches(labels: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch (ceil(N / batch_size) batches) of class-balanced "P x K" batches.

    In-batch triplet mining and pairwise losses need every batch to hold several images of
    a few classes (Hermans et al. 2017); all methods get the same batches so the comparison
    is fair. K = max(2, batch_size // num_classes) images from each of P random classes,
    drawn without replacement where the class is large enough.
    """
    classes = torch.unique(labels)
    members = [torch.nonzero(labels == c).flatten() for c in classes]
    k = max(2, batch_size // len(classes))
    p = max(1, min(len(classes), batch_size // k))
    for _ in range(math.ceil(len(labels) / batch_size)):
        chosen = torch.randperm(len(classes), generator=generator)[:p]
        parts = []
        for c in chosen.tolist():
            m = members[c]
            if len(m) >= k:
                parts.append(m[torch.randperm(len(m), generator=generator)[:k]])
            else:
                parts.append(m[torch.randint(len(m), (k,), generator=generator)])
        yield torch.cat(parts)
