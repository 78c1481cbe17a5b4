"""The demo's labelled images: a class-balanced MedNIST subset when present, else synthetic.

MedNIST (`mednist-64.tar.gz`, beside the checkout in `../shared/data/` or given with
``--mednist``) is read straight from the archive, only the members the subset needs. Without
it the demo draws a small synthetic set (four shapes with noise), so it still runs offline
on a fresh machine. Each picture also becomes a Secondary Capture DICOM instance with a
plausible modality and body part, which is what the demo sends over C-STORE.
"""

from __future__ import annotations

import hashlib
import heapq
import io
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from shared.dicom.synthetic import StudyIds, make_secondary_capture, write

# MedNIST class -> (modality, body part) of the Secondary Capture that carries it
MEDNIST_CLASSES: dict[str, tuple[str, str]] = {
    "AbdomenCT": ("CT", "ABDOMEN"),
    "BreastMRI": ("MR", "BREAST"),
    "CXR": ("DX", "CHEST"),
    "ChestCT": ("CT", "CHEST"),
    "Hand": ("DX", "HAND"),
    "HeadCT": ("CT", "HEAD"),
}
SYNTHETIC_CLASSES = ("disc", "square", "ring", "cross")


@dataclass(frozen=True)
class LabelledImage:
    label: str
    pixels: np.ndarray  # uint8 (H, W)
    modality: str
    body_part: str


def default_mednist_archive() -> Path | None:
    """``../shared/data/mednist-64.tar.gz`` beside the checkout, when it is there."""
    candidate = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mednist-64.tar.gz"
    return candidate if candidate.is_file() else None


def mednist_subset(archive: Path, per_class: int, seed: int = 0) -> list[LabelledImage]:
    """``per_class`` seeded pseudo-random images of each MedNIST class, in one pass over the tar.

    A gzip'ed tar has no index, so picking members by name would decompress it again for
    each one; instead every member gets a seeded hash and each class keeps its lowest
    ``per_class`` on a heap while the archive streams by.
    """
    best: dict[str, list[tuple[int, str, bytes]]] = {}
    with tarfile.open(archive, mode="r|gz") as tar:
        for member in tar:
            if not (member.isfile() and member.name.endswith((".jpeg", ".jpg", ".png"))):
                continue
            label = Path(member.name).parent.name
            rank = -int.from_bytes(hashlib.sha256(f"{seed}:{member.name}".encode()).digest()[:8], "big")
            heap = best.setdefault(label, [])
            if len(heap) < per_class or rank > heap[0][0]:
                handle = tar.extractfile(member)
                assert handle is not None
                entry = (rank, member.name, handle.read())
                if len(heap) < per_class:
                    heapq.heappush(heap, entry)
                else:
                    heapq.heapreplace(heap, entry)
    images = []
    for label in sorted(best):
        modality, body_part = MEDNIST_CLASSES.get(label, ("OT", "UNKNOWN"))
        for _, _, data in sorted(best[label], key=lambda entry: entry[1]):
            with Image.open(io.BytesIO(data)) as picture:
                images.append(LabelledImage(label, np.asarray(picture.convert("L")), modality, body_part))
    return images


def synthetic_set(per_class: int, size: int = 64, seed: int = 0) -> list[LabelledImage]:
    """Four shapes at random places and sizes over noise: separable, but not trivially."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    images = []
    for label in SYNTHETIC_CLASSES:
        for _ in range(per_class):
            cy, cx = rng.uniform(0.3, 0.7, 2) * size
            r = rng.uniform(0.12, 0.25) * size
            distance = np.hypot(yy - cy, xx - cx)
            mask = {
                "disc": distance < r,
                "square": (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r),
                "ring": (distance < r) & (distance > 0.6 * r),
                "cross": ((np.abs(yy - cy) < r / 3) | (np.abs(xx - cx) < r / 3))
                & (np.abs(yy - cy) < r) & (np.abs(xx - cx) < r),
            }[label]
            picture = rng.normal(40, 12, (size, size)) + 160 * mask
            images.append(LabelledImage(label, np.clip(picture, 0, 255).astype(np.uint8), "OT", "PHANTOM"))
    return images


def split(images: list[LabelledImage], fraction: float = 0.8, seed: int = 0) -> tuple[list[LabelledImage], list[LabelledImage]]:
    """Seeded stratified split: database (also the training set) and queries."""
    rng = random.Random(seed)
    database, queries = [], []
    for label in sorted({image.label for image in images}):
        members = [image for image in images if image.label == label]
        rng.shuffle(members)
        cut = round(len(members) * fraction)
        database += members[:cut]
        queries += members[cut:]
    return database, queries


def write_class_folders(images: list[LabelledImage], folder: Path) -> Path:
    """``folder/<class>/<n>.png``: the layout `medhash train` reads."""
    for number, image in enumerate(images):
        target = folder / image.label / f"{number:05d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image.pixels).save(target)
    return folder


def write_dicom(images: list[LabelledImage], folder: Path) -> dict[str, str]:
    """One Secondary Capture per picture (a study per class); returns SOP UID -> label."""
    labels: dict[str, str] = {}
    studies: dict[str, StudyIds] = {}
    for number, image in enumerate(images):
        ids = studies.setdefault(image.label, StudyIds.new(f"DEMO-{image.label[:8].upper()}"))
        ds = make_secondary_capture(ids, number + 1, image.pixels, modality=image.modality,
                                    body_part=image.body_part)
        write(ds, folder / image.label / f"{number:05d}.dcm")
        labels[str(ds.SOPInstanceUID)] = image.label
    return labels
