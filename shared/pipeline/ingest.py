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

An instance whose UIDs are not UIDs (letters, a slash, 80 characters) is stored all the same,
under a content-addressed key (:func:`raw_object_key`): refusing it would stop a PACS's
forward job at that instance, and the sender's identifier stays its catalog identity.

:meth:`Ingestor.holding` is the other half of the contract, for storage commitment: an
instance is held when a catalog row of that SOP class exists and its object is present
with the sha256 the row recorded, checked again on every request.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from dataclasses import dataclass, fields
from enum import Enum, IntEnum

from shared.dicom.header import HeaderSummary, UnreadableDataset, read_header
from shared.dicom.uids import InvalidUID, clean_uid
from shared.metrics import BYTES_RECEIVED, INSTANCES_RECEIVED, STORE_SECONDS
from shared.pipeline.queues import StageHost, hand_over
from shared.storage.catalog import (
    Catalog,
    CatalogUnavailable,
    InstanceState,
    NewInstance,
    RecordOutcome,
)
from shared.storage.objectstore import ObjectNotFound, ObjectStore, ObjectStoreError

log = logging.getLogger("medhash.ingest")


class StoreStatus(IntEnum):
    """C-STORE response statuses the listener answers (PS3.4 B.2.3, PS3.7 C)."""

    SUCCESS = 0x0000
    SOP_CLASS_NOT_SUPPORTED = 0x0122
    OUT_OF_RESOURCES = 0xA700
    CANNOT_UNDERSTAND = 0xC000


@dataclass(frozen=True)
class StoreOutcome:
    status: StoreStatus
    reason: str
    instance_id: int | None = None
    object_key: str | None = None
    duplicate: bool = False


HEADER_COLUMNS = tuple(
    item.name for item in fields(HeaderSummary)
    if item.name in {column.name for column in fields(NewInstance)}
    and item.name not in {"sop_instance_uid", "sop_class_uid"})
"""The header attributes the catalog keeps as they are (the identity and class are decided
in :meth:`Ingestor._store`): study, series, patient, modality, dates, numbers."""

MAX_IDENTIFIER_LENGTH = 1024
"""Longest SOP Instance UID kept as an identity (a UID has 64 characters; this only bounds
what a catalog index can hold)."""


def instance_identity(value: object) -> str:
    """The SOP Instance UID a sender gave, as the catalog's identity for the instance.

    A valid UID is returned as :func:`clean_uid` cleans it. Anything else that is not empty
    is kept as text (NUL bytes dropped: PostgreSQL cannot hold them), so an instance with a
    malformed UID is stored and found again by the same value; it only never becomes part of
    an object key. :class:`InvalidUID` when there is no usable identifier at all.
    """
    try:
        return clean_uid(value)
    except InvalidUID:
        pass
    text = str(value if value is not None else "").replace("\x00", "").strip()
    if not text:
        raise InvalidUID("missing SOP Instance UID")
    if len(text) > MAX_IDENTIFIER_LENGTH:
        raise InvalidUID(f"SOP Instance UID of {len(text)} characters: not an identifier")
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def raw_object_key(header: HeaderSummary, sop_instance_uid: str, sha256: str) -> str:
    """``raw/<Study>/<Series>/<SOP>.<sha256[:16]>.dcm``, or a content-only key.

    The hash suffix keeps every distinct version of an instance under its own key, so a
    re-sent instance with other bytes never overwrites what an earlier sender was told is
    stored. Instances whose study, series or SOP instance UID is missing or malformed go
    under ``raw/invalid-uid/<sha256>.dcm``: stored, never refused, and never able to steer a
    path.
    """
    try:
        study = clean_uid(header.study_instance_uid)
        series = clean_uid(header.series_instance_uid)
        sop = clean_uid(sop_instance_uid)
    except InvalidUID:
        return f"raw/invalid-uid/{sha256}.dcm"
    return f"raw/{study}/{series}/{sop}.{sha256[:16]}.dcm"


class Problem(Enum):
    """Why an instance is not held (storage commitment's failure reasons, in domain terms)."""

    NO_SUCH_INSTANCE = "no such instance"
    CLASS_CONFLICT = "stored under another SOP class"
    DAMAGED = "object missing or altered"
    UNAVAILABLE = "catalog or object store unavailable"


@dataclass(frozen=True)
class Holding:
    """Whether medhash holds one instance durably, and if not, why."""

    problem: Problem | None
    detail: str

    @property
    def held(self) -> bool:
        return self.problem is None


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
        self.report(outcome, sop_instance_uid=sop_instance_uid, calling_ae=calling_ae)
        return outcome

    def report(self, outcome: StoreOutcome, *, sop_instance_uid: str, calling_ae: str | None) -> None:
        """Count and log one answered C-STORE (also those refused before reaching :meth:`store_instance`)."""
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

    def _store(
        self,
        part10: bytes,
        *,
        sop_instance_uid: str,
        sop_class_uid: str,
        transfer_syntax_uid: str,
        calling_ae: str | None,
    ) -> StoreOutcome:
        identified = _identify(part10, sop_instance_uid)
        if isinstance(identified, StoreOutcome):
            return identified
        uid, header = identified
        sha256 = hashlib.sha256(part10).hexdigest()
        try:
            patient_key = self.catalog.patient_key(header.patient_id, header.issuer_of_patient_id)
        except CatalogUnavailable as exc:
            return StoreOutcome(StoreStatus.OUT_OF_RESOURCES, f"catalog unavailable: {exc}")
        new = NewInstance(
            sop_instance_uid=uid,
            sop_class_uid=header.sop_class_uid or sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            sha256=sha256,
            size_bytes=len(part10),
            object_key=raw_object_key(header, uid, sha256),
            calling_ae=calling_ae,
            patient_key=patient_key,
            **{name: getattr(header, name) for name in HEADER_COLUMNS},
        )
        with self._key_locks[int(sha256[:8], 16) % len(self._key_locks)]:
            written = self._write(part10, new)
        if isinstance(written, StoreOutcome):
            return written
        return self._announce(new, written)

    def _write(self, part10: bytes, new: NewInstance) -> RecordOutcome | StoreOutcome:
        """Object, then catalog row (the object removed again if the row fails); or a duplicate's outcome."""
        try:
            existing = self.catalog.find_duplicate(new.sop_instance_uid, new.sha256)
        except CatalogUnavailable as exc:
            return StoreOutcome(StoreStatus.OUT_OF_RESOURCES, f"catalog unavailable: {exc}")
        if existing is not None:
            return StoreOutcome(
                StoreStatus.SUCCESS,
                "identical bytes already stored",
                instance_id=existing,
                object_key=new.object_key,
                duplicate=True,
            )
        try:
            self.store.put(new.object_key, part10, content_type="application/dicom")
        except ObjectStoreError as exc:
            return StoreOutcome(StoreStatus.OUT_OF_RESOURCES, f"object store: {exc}")
        try:
            return self.catalog.record_received(new)
        except CatalogUnavailable as exc:
            self._remove_orphan(new.object_key)
            return StoreOutcome(StoreStatus.OUT_OF_RESOURCES, f"catalog unavailable: {exc}")

    def _announce(self, new: NewInstance, recorded: RecordOutcome) -> StoreOutcome:
        """The bytes are durable and recorded: count them and hand the instance to preprocess."""
        BYTES_RECEIVED.inc(new.size_bytes)
        if recorded.superseded:
            log.warning(
                "new bytes for an instance already stored; both kept, the new one is current",
                extra={"stage": "listener", "sop_instance_uid": new.sop_instance_uid},
            )
        if not recorded.duplicate:
            hand_over(self.host, recorded.instance_id, InstanceState.RECEIVED)
        return StoreOutcome(
            StoreStatus.SUCCESS,
            "stored" if not recorded.superseded else "stored as a new version",
            instance_id=recorded.instance_id,
            object_key=new.object_key,
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

    def holding(self, sop_class_uid: str, sop_instance_uid: str) -> Holding:
        """Whether this instance is held durably now: a row of that SOP class, its object intact.

        Reads and hashes the object (every version of the UID with that class, current first,
        until one is intact): a commitment answer must not rest on a row whose object a disk
        or an operator has since lost.
        """
        try:
            uid = instance_identity(sop_instance_uid)
            versions = self.catalog.versions(uid)
        except InvalidUID as exc:
            return Holding(Problem.NO_SUCH_INSTANCE, str(exc))
        except CatalogUnavailable as exc:
            return Holding(Problem.UNAVAILABLE, f"catalog unavailable: {exc}")
        if not versions:
            return Holding(Problem.NO_SUCH_INSTANCE, "never stored (or forgotten)")
        matching = [v for v in versions if v.sop_class_uid == sop_class_uid]
        if not matching:
            classes = ", ".join(sorted({v.sop_class_uid for v in versions}))
            return Holding(Problem.CLASS_CONFLICT, f"stored as SOP class {classes}")
        for version in sorted(matching, key=lambda v: not v.is_current):
            try:
                data = self.store.get(version.object_key)
            except ObjectNotFound:
                continue
            except ObjectStoreError as exc:
                return Holding(Problem.UNAVAILABLE, f"object store: {exc}")
            if hashlib.sha256(data).hexdigest() == version.sha256:
                return Holding(None, f"held as {version.object_key}")
        log.error(
            "catalog rows without an intact object (missing, or bytes changed): %s",
            ", ".join(v.object_key for v in matching),
            extra={"stage": "commitment", "sop_instance_uid": uid},
        )
        return Holding(Problem.DAMAGED, "the stored object is missing or its bytes changed")


def _identify(part10: bytes, sop_instance_uid: str) -> tuple[str, HeaderSummary] | StoreOutcome:
    """The instance's identity and header, or the refusal of a dataset that cannot be stored."""
    try:
        uid = instance_identity(sop_instance_uid)
    except InvalidUID as exc:
        return StoreOutcome(StoreStatus.CANNOT_UNDERSTAND, f"affected SOP Instance UID: {exc}")
    try:
        header = read_header(part10)
    except UnreadableDataset as exc:
        return StoreOutcome(StoreStatus.CANNOT_UNDERSTAND, str(exc))
    # pydicom reads a truncated or scrambled stream without complaint, so a composite
    # instance must at least carry, in the dataset itself, a readable SOP Class UID (what
    # it is) and some SOP Instance UID (which one; a malformed one is kept as text).
    try:
        clean_uid(header.sop_class_uid)
        instance_identity(header.sop_instance_uid)
    except InvalidUID as exc:
        return StoreOutcome(StoreStatus.CANNOT_UNDERSTAND, f"dataset: {exc}")
    if header.sop_instance_uid != uid:
        # Refusing would lose an image over a sender's bookkeeping error; the request's
        # UID stays the identity because it is what the sender tracks as stored.
        log.warning(
            "dataset SOP Instance UID %r differs from the request's; stored under the "
            "request's", header.sop_instance_uid,
            extra={"stage": "listener", "sop_instance_uid": uid},
        )
    return uid, header
