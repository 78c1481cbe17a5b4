"""Storing one received instance: the listener's durability contract, free of networking.

Order of effects, and why:

1. Parse the header (never pixels) and check the UIDs: an unreadable dataset is refused
   before anything is written.
2. Same UID and same sha256 already in the catalog: answer Success, write nothing.
3. Put the bytes in the object store under a content-addressed key; ``put`` returns only
   when they are durable. Writing the same bytes twice lands on the same key, so a retry
   after a failure is harmless.
4. Commit the catalog row. If that fails, the object this request created is removed again
   (nothing half-written) and the sender is told to retry.
5. Only then answer Success, and hand the instance to the ``preprocess`` queue (the
   reconciler covers a message that gets lost).

Failures of the store or the catalog answer 0xA700 (Out of Resources), which storage SCUs
and PACS routers treat as "retry later"; a dataset that can never be stored answers a
0xC000 failure so the sender does not retry it forever.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass
from enum import IntEnum

from shared.dicom.header import HeaderSummary, UnreadableDataset, read_header
from shared.dicom.uids import InvalidUID, clean_uid
from shared.metrics import BYTES_RECEIVED, INSTANCES_RECEIVED, STORE_SECONDS
from shared.pipeline.queues import StageHost, hand_over
from shared.storage.catalog import (
    Catalog,
    CatalogUnavailable,
    InstanceState,
    NewInstance,
)
from shared.storage.objectstore import ObjectStore, ObjectStoreError

log = logging.getLogger("medhash.ingest")


class StoreStatus(IntEnum):
    """C-STORE response statuses the listener answers (PS3.4 B.2.3)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700
    CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    reason: str
    instance_id: int | None = None
    object_key: str | None = None
    duplicate: bool = False


def raw_object_key(header: HeaderSummary, sop_instance_uid: str, sha256: str) -> str:
    """``raw/<Study>/<Series>/<SOP>.<sha256[:16]>.dcm``, or a content-only key.

    The hash suffix keeps every distinct version of an instance under its own key, so a
    re-sent instance with other bytes never overwrites what an earlier sender was told is
    stored. Instances whose study or series UID is missing or malformed go under
    ``raw/invalid-uid/<sha256>.dcm``: stored, never refused, and never able to steer a path.
    """
    try:
        study = clean_uid(header.study_instance_uid)
        series = clean_uid(header.series_instance_uid)
        sop = clean_uid(sop_instance_uid)
    except InvalidUID:
        return f"raw/invalid-uid/{sha256}.dcm"
    return f"raw/{study}/{series}/{sop}.{sha256[:16]}.dcm"


class Ingestor:
    """Stores received instances; thread-safe, one instance shared by all associations."""

    def __init__(self, store: ObjectStore, catalog: Catalog, host: StageHost) -> None:
        self.store = store
        self.catalog = catalog
        self.host = host
        # Requests carrying identical bytes share one key; serialising them makes the
        # "remove the object again if the catalog failed" step unable to remove an object
        # that a concurrent request has just recorded.
        self._key_locks = [threading.Lock() for _ in range(64)]

    def store_instance(
        self,
        part10: bytes,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str | None = None,
    ) -> StoreOutcome:
        """Store a Part 10 byte stream (preamble, file meta, dataset as received)."""
        started = time.perf_counter()
        outcome = self._store(
            part10,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae=calling_ae,
        )
        STORE_SECONDS.observe(time.perf_counter() - started)
        label = "duplicate" if outcome.duplicate else outcome.status.name.lower()
        INSTANCES_RECEIVED.labels(outcome=label).inc()
        level = logging.INFO if outcome.status is StoreStatus.SUCCESS else logging.WARNING
        log.log(
            level,
            "%s: %s",
            label,
            outcome.reason,
            extra={
                "stage": "listener",
                "sop_instance_uid": sop_instance_uid,
                "calling_ae": calling_ae,
                "status": f"0x{outcome.status.value:04X}",
            },
        )
        return outcome

    def _store(
        self,
        part10: bytes,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str | None,
    ) -> StoreOutcome:
        try:
            uid = clean_uid(sop_instance_uid)
        except InvalidUID as exc:
            return StoreOutcome(StoreStatus.CANNOT_UNDERSTAND, f"affected SOP instance UID: {exc}")
        try:
            header = read_header(part10)
        except UnreadableDataset as exc:
            return StoreOutcome(StoreStatus.CANNOT_UNDERSTAND, str(exc))
        # pydicom reads a truncated or scrambled stream without complaint, so a composite
        # instance must at least carry its identifying UIDs, readable, in the dataset itself.
        for keyword, value in (("SOP Class UID", header.sop_class_uid),
                               ("SOP Instance UID", header.sop_instance_uid)):
            try:
                clean_uid(value)
            except InvalidUID as exc:
                return StoreOutcome(StoreStatus.CANNOT_UNDERSTAND, f"dataset {keyword}: {exc}")
        if header.sop_instance_uid != uid:
            # Refusing would lose an image over a sender's bookkeeping error; the request's
            # UID stays the identity because it is what the sender tracks as stored.
            log.warning(
                "dataset SOP Instance UID %r differs from the request's; stored under the "
                "request's", header.sop_instance_uid,
                extra={"stage": "listener", "sop_instance_uid": uid},
            )

        sha256 = hashlib.sha256(part10).hexdigest()
        key = raw_object_key(header, uid, sha256)
        with self._key_locks[int(sha256[:8], 16) % len(self._key_locks)]:
            try:
                existing = self.catalog.find_duplicate(uid, sha256)
            except CatalogUnavailable as exc:
                return StoreOutcome(StoreStatus.OUT_OF_RESOURCES, f"catalog unavailable: {exc}")
            if existing is not None:
                return StoreOutcome(
                    StoreStatus.SUCCESS,
                    "identical bytes already stored",
                    instance_id=existing,
                    object_key=key,
                    duplicate=True,
                )
            try:
                self.store.put(key, part10, content_type="application/dicom")
            except ObjectStoreError as exc:
                return StoreOutcome(StoreStatus.OUT_OF_RESOURCES, f"object store: {exc}")
            try:
                recorded = self.catalog.record_received(
                    NewInstance(
                        sop_instance_uid=uid,
                        sop_class_uid=header.sop_class_uid or sop_class_uid,
                        transfer_syntax_uid=transfer_syntax_uid,
                        sha256=sha256,
                        size_bytes=len(part10),
                        object_key=key,
                        study_instance_uid=header.study_instance_uid,
                        series_instance_uid=header.series_instance_uid,
                        patient_id=header.patient_id,
                        modality=header.modality,
                        body_part=header.body_part,
                        number_of_frames=header.number_of_frames,
                        calling_ae=calling_ae,
                    )
                )
            except CatalogUnavailable as exc:
                self._remove_orphan(key)
                return StoreOutcome(StoreStatus.OUT_OF_RESOURCES, f"catalog unavailable: {exc}")

        BYTES_RECEIVED.inc(len(part10))
        if recorded.superseded:
            log.warning(
                "new bytes for an instance already stored; both kept, the new one is current",
                extra={"stage": "listener", "sop_instance_uid": uid},
            )
        if not recorded.duplicate:
            hand_over(self.host, recorded.instance_id, InstanceState.RECEIVED)
        return StoreOutcome(
            StoreStatus.SUCCESS,
            "stored" if not recorded.superseded else "stored as a new version",
            instance_id=recorded.instance_id,
            object_key=key,
            duplicate=recorded.duplicate,
        )

    def _remove_orphan(self, key: str) -> None:
        try:
            self.store.delete(key)
        except ObjectStoreError as exc:
            log.error(
                "could not remove %s after the catalog failed; it has no catalog row: %s",
                key, exc, extra={"stage": "listener"},
            )
