"""The Storage Commitment Push Model SCP (PS3.4 annex J): telling a PACS what medhash holds.

A PACS that forwards with storage commitment sends an N-ACTION-RQ (Action Type 1) listing
SOP Class/Instance UID pairs under a Transaction UID. The N-ACTION-RSP only says the request
was accepted; the answer comes later as an N-EVENT-REPORT-RQ (Event Type 1: all committed,
2: some failed) carrying the same Transaction UID, the committed instances in Referenced
SOP Sequence and the others in Failed SOP Sequence with a Failure Reason.

Truthful, not optimistic: an instance is committed only if
:meth:`shared.pipeline.ingest.Ingestor.holding` finds a catalog row of that SOP class whose
object is present with the sha256 the row recorded, read back from the object store at the
time of the request. Checking runs on worker threads, never on an association's thread.

Where the report goes (J.3.3.1.2): requesters listed in ``MEDHASH_COMMITMENT_PEERS``
(``AE@host:port``; Orthanc and most PACS expect this) get it on a new association that
medhash opens, proposing the SCP role for itself by SCP/SCU role selection, retried a few
times when the peer cannot be reached. Any other requester gets it on the association that
asked, if that is still open; if it was released first, the report cannot be delivered and
an error says which setting would fix that.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_messages import N_ACTION_RSP
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StorageCommitmentPushModel,
    StorageCommitmentPushModelInstance,
)

from shared.config import Settings
from shared.dicom.part10 import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from shared.dicom.uids import InvalidUID, clean_uid
from shared.pipeline.ingest import Ingestor, Problem

log = logging.getLogger("medhash.commitment")

REQUEST_STORAGE_COMMITMENT = 1
"""Action Type ID of the N-ACTION (PS3.4 J.3.2)."""
ALL_COMMITTED, SOME_FAILED = 1, 2
"""Event Type IDs of the N-EVENT-REPORT (PS3.4 J.3.3)."""

FAILURE_REASONS: dict[Problem, int] = {
    Problem.NO_SUCH_INSTANCE: 0x0112,  # No such object instance
    Problem.CLASS_CONFLICT: 0x0119,  # Class / Instance conflict
    Problem.DAMAGED: 0x0110,  # Processing failure
    Problem.UNAVAILABLE: 0x0213,  # Resource limitation: ask again later
}
"""Failure Reason (0008,1197) values of PS3.3 C.14.1.1 for each reason an instance is not held."""

SUCCESS = 0x0000
NO_SUCH_ACTION = 0x0123
INVALID_OBJECT_INSTANCE = 0x0117
MISSING_ATTRIBUTE = 0x0120
PROCESSING_FAILURE = 0x0110

ANSWER_SETTLE_S = 0.05
"""After pynetdicom says it sends the N-ACTION-RSP (EVT_DIMSE_SENT fires just before the PDU
is queued), how long to wait before a report may follow on the same association: the
report must never overtake the response to the request it answers."""
DELIVERY_RETRY_DELAYS_S = (2.0, 10.0, 30.0)
"""Waits between attempts to open the report's association to a peer that did not answer."""
WORKERS = 4


@dataclass(frozen=True)
class Transaction:
    """One accepted commitment request and where its answer must go."""

    uid: str
    references: tuple[tuple[str, str], ...]
    """(SOP Class UID, SOP Instance UID) pairs, as requested."""
    calling_ae: str
    assoc: Association
    answered: threading.Event = field(default_factory=threading.Event, compare=False)
    """Set once the N-ACTION-RSP of this request is on its way."""


@dataclass(frozen=True)
class Report:
    """The N-EVENT-REPORT of one transaction."""

    event_type: int
    dataset: Dataset
    committed: int
    failed: int


class CommitmentSCP:
    """The ``EVT_N_ACTION`` handler, and the workers that check and deliver the reports."""

    def __init__(self, settings: Settings, ingestor: Ingestor) -> None:
        self.settings = settings
        self.ingestor = ingestor
        self._peers = settings.commitment_addresses
        self._pool: ThreadPoolExecutor | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._unanswered: dict[tuple[int, int], Transaction] = {}
        """Accepted requests whose N-ACTION-RSP is not sent yet, by (association, message ID)."""

    def start(self) -> None:
        self._stopping.clear()
        self._pool = ThreadPoolExecutor(WORKERS, thread_name_prefix="medhash-commitment")

    def stop(self) -> None:
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def on_action(self, event: evt.Event) -> tuple[int, Dataset | None]:
        """Accept (0x0000) or refuse a commitment request; the answer itself comes later."""
        calling_ae = (event.assoc.requestor.ae_title or "").strip()
        request = event.request
        if event.action_type != REQUEST_STORAGE_COMMITMENT:
            return self._refuse(NO_SUCH_ACTION, f"Action Type ID {event.action_type} (only 1 exists)", calling_ae)
        if str(request.RequestedSOPInstanceUID) != StorageCommitmentPushModelInstance:
            return self._refuse(
                INVALID_OBJECT_INSTANCE,
                f"Requested SOP Instance UID {request.RequestedSOPInstanceUID} is not the well-known "
                f"{StorageCommitmentPushModelInstance}", calling_ae,
            )
        try:
            transaction = _transaction(event.action_information, calling_ae, event.assoc)
        except (ValueError, AttributeError, KeyError, TypeError) as exc:
            return self._refuse(MISSING_ATTRIBUTE, f"unusable Action Information: {exc}", calling_ae)
        if self._pool is None:
            return self._refuse(PROCESSING_FAILURE, "the listener is shutting down", calling_ae)
        key = (id(event.assoc), int(event.message_id))
        with self._lock:
            self._unanswered[key] = transaction
        self._pool.submit(self._complete, transaction, key)
        log.info(
            "commitment requested for %d instance(s), transaction %s", len(transaction.references),
            transaction.uid, extra={"stage": "commitment", "calling_ae": calling_ae},
        )
        return SUCCESS, None

    def on_dimse_sent(self, event: evt.Event) -> None:
        """Note that an accepted request's N-ACTION-RSP is being sent (its report may follow)."""
        if not isinstance(event.message, N_ACTION_RSP):
            return
        key = (id(event.assoc), int(event.message.command_set.MessageIDBeingRespondedTo))
        with self._lock:
            transaction = self._unanswered.pop(key, None)
        if transaction is not None:
            transaction.answered.set()

    def _refuse(self, status: int, reason: str, calling_ae: str) -> tuple[int, None]:
        log.warning("commitment request refused (0x%04X): %s", status, reason,
                    extra={"stage": "commitment", "calling_ae": calling_ae})
        return status, None

    def report(self, transaction: Transaction) -> Report:
        """Check every requested instance now and build the N-EVENT-REPORT's Event Information."""
        committed: list[Dataset] = []
        failed: list[Dataset] = []
        for sop_class, sop_instance in transaction.references:
            holding = self.ingestor.holding(sop_class, sop_instance)
            item = Dataset()
            item.ReferencedSOPClassUID = sop_class
            item.ReferencedSOPInstanceUID = sop_instance
            if holding.held:
                committed.append(item)
                continue
            assert holding.problem is not None
            item.FailureReason = FAILURE_REASONS[holding.problem]
            failed.append(item)
            log.warning(
                "not committed (0x%04X, %s): %s", item.FailureReason, holding.problem.value,
                holding.detail, extra={"stage": "commitment", "sop_instance_uid": sop_instance,
                                       "calling_ae": transaction.calling_ae},
            )
        dataset = Dataset()
        dataset.TransactionUID = transaction.uid
        dataset.RetrieveAETitle = self.settings.ae_title
        if committed:
            dataset.ReferencedSOPSequence = committed
        if failed:
            dataset.FailedSOPSequence = failed
        return Report(SOME_FAILED if failed else ALL_COMMITTED, dataset, len(committed), len(failed))

    def _complete(self, transaction: Transaction, key: tuple[int, int]) -> None:
        try:
            report = self.report(transaction)
            if transaction.answered.wait(self.settings.dimse_timeout):
                time.sleep(ANSWER_SETTLE_S)
            with self._lock:  # never answered (the association broke first): forget it
                self._unanswered.pop(key, None)
            where = self._deliver(transaction, report)
        except Exception:  # a worker must never die silently: the requester would wait forever
            log.exception("commitment transaction %s failed", transaction.uid,
                          extra={"stage": "commitment", "calling_ae": transaction.calling_ae})
            return
        extra = {"stage": "commitment", "calling_ae": transaction.calling_ae}
        if where is None:
            log.error(
                "commitment result for transaction %s (%d committed, %d failed) not delivered: "
                "the requesting association is closed and %s has no MEDHASH_COMMITMENT_PEERS "
                "entry (AE@host:port) for a new one", transaction.uid, report.committed,
                report.failed, transaction.calling_ae or "the requester", extra=extra,
            )
        else:
            log.info("commitment result for transaction %s delivered %s: %d committed, %d failed",
                     transaction.uid, where, report.committed, report.failed, extra=extra)

    def _deliver(self, transaction: Transaction, report: Report) -> str | None:
        """Send the report; returns where it went, None when it could not be delivered."""
        peer = self._peers.get(transaction.calling_ae)
        if peer is None:
            if transaction.assoc.is_established and _send(transaction.assoc, report):
                return "on the requesting association"
            return None
        host, port = peer
        for attempt, delay in enumerate((0.0, *DELIVERY_RETRY_DELAYS_S), start=1):
            if self._stopping.wait(delay):
                return None
            if self._send_on_new_association(transaction.calling_ae, host, port, report):
                return f"to {transaction.calling_ae}@{host}:{port}"
            log.warning("commitment report to %s@%s:%d failed (attempt %d)", transaction.calling_ae,
                        host, port, attempt, extra={"stage": "commitment"})
        return None

    def _send_on_new_association(self, peer_ae: str, host: str, port: int, report: Report) -> bool:
        ae = AE(ae_title=self.settings.ae_title)
        ae.implementation_class_uid = IMPLEMENTATION_CLASS_UID
        ae.implementation_version_name = IMPLEMENTATION_VERSION_NAME
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.settings.dimse_timeout
        ae.add_requested_context(
            StorageCommitmentPushModel, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
        )
        # J.3.3.1.2: the SCP that opens the association proposes the SCP role for itself
        role = build_role(StorageCommitmentPushModel, scp_role=True)
        assoc = ae.associate(host, port, ae_title=peer_ae, ext_neg=[role])
        if not assoc.is_established:
            return False
        try:
            return _send(assoc, report)
        finally:
            if assoc.is_established:
                assoc.release()


def _send(assoc: Association, report: Report) -> bool:
    """N-EVENT-REPORT on an established association; pynetdicom pauses the acceptor's reactor."""
    try:
        status, _ = assoc.send_n_event_report(
            report.dataset, report.event_type, StorageCommitmentPushModel,
            StorageCommitmentPushModelInstance,
        )
    except (RuntimeError, ValueError) as exc:  # released meanwhile, or no usable context
        log.warning("N-EVENT-REPORT not sent: %s", exc, extra={"stage": "commitment"})
        return False
    return bool(status) and status.get("Status") == SUCCESS


def _transaction(info: Dataset, calling_ae: str, assoc: Association) -> Transaction:
    """The request's Transaction UID and references; ValueError saying what is missing."""
    if "TransactionUID" not in info or not info.TransactionUID:
        raise ValueError("Transaction UID (0008,1195) missing")
    try:
        transaction_uid = clean_uid(info.TransactionUID)
    except InvalidUID as exc:
        raise ValueError(f"Transaction UID (0008,1195): {exc}") from exc
    items = info.get("ReferencedSOPSequence")
    if not items:
        raise ValueError("Referenced SOP Sequence (0008,1199) missing or empty")
    references = []
    for number, item in enumerate(items, start=1):
        sop_class = str(item.get("ReferencedSOPClassUID") or "").strip("\x00 ")
        sop_instance = str(item.get("ReferencedSOPInstanceUID") or "").strip("\x00 ")
        if not sop_class or not sop_instance:
            raise ValueError(f"item {number} of Referenced SOP Sequence lacks its SOP Class or Instance UID")
        references.append((sop_class, sop_instance))
    return Transaction(transaction_uid, tuple(references), calling_ae, assoc)
