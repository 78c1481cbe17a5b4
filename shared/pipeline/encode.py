"""The encode stage: a preprocessed instance's slices become packed hash codes.

Codes are written per slice with the model version, and the instance moves
``preprocessed -> encoded`` in the same transaction, which only the first delivery wins.
The model itself runs in :class:`shared.hashing.inference.BatchEncoder`, shared by every
task of the process.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from shared.hashing.inference import BatchEncoder
from shared.metrics import stage_metrics
from shared.pipeline.queues import StageHost, hand_over
from shared.storage.catalog import Catalog, InstanceState, SliceCodes
from shared.storage.objectstore import ObjectNotFound, ObjectStore
from shared.storage.slice_format import decode_slice

log = logging.getLogger("medhash.encode")

__all__ = ["EncodeStage"]


@dataclass
class EncodeStage:
    """Encodes one preprocessed instance's slices; safe to call any number of times."""

    store: ObjectStore
    catalog: Catalog
    host: StageHost
    encoder: BatchEncoder

    @stage_metrics("encode")
    def run(self, instance_id: int) -> InstanceState | None:
        """Encode the instance if it is still ``preprocessed``; returns the state it reached."""
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
            hand_over(self.host, instance_id, InstanceState.RECEIVED)
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
        hand_over(self.host, instance_id, InstanceState.ENCODED)
        return InstanceState.ENCODED
