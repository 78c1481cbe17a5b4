"""Training data from the hospital's own archive: the catalog's preprocessed slices.

A hospital that has forwarded its studies to medhash already holds every slice, windowed and
cleaned, in the object store. To train on them it only adds labels: a CSV keyed by
PatientID, StudyInstanceUID or SeriesInstanceUID (:func:`shared.learning.datasets.load_labelled_slices`).
:class:`CatalogSlices` is the :class:`~shared.learning.datasets.SliceSource` that walks the catalog;
each image is read from the store only if its UIDs carry a label, and arrives as the same
8-bit picture the encode workers feed the model (:func:`shared.hashing.transform.unit_to_uint8`), so a
model trained here sees what it will encode.

    medhash train --labels labels.csv --out model.pt ...        # MEDHASH_* name the catalog
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import partial

import numpy as np

from shared.hashing.transform import unit_to_uint8
from shared.learning.datasets import LabelledImage
from shared.storage.catalog import Catalog, SliceDetail
from shared.storage.objectstore import ObjectStore
from shared.storage.slice_format import decode_slice

__all__ = ["CatalogSlices"]


@dataclass
class CatalogSlices:
    """Every kept slice of the current instances, in slice-id order."""

    catalog: Catalog
    store: ObjectStore

    def __iter__(self) -> Iterator[tuple[str, LabelledImage, Mapping[str, str]]]:
        for detail in self.catalog.training_slices():
            uids = {"PatientID": detail.patient_id or "", "StudyInstanceUID": detail.study_instance_uid or "",
                    "SeriesInstanceUID": detail.series_instance_uid or ""}
            yield f"{detail.sop_instance_uid}/{detail.frame_index}", partial(self._load, detail), uids

    def _load(self, detail: SliceDetail) -> np.ndarray:
        return unit_to_uint8(decode_slice(self.store.get(detail.object_key)))
