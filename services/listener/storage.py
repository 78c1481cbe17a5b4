"""The Storage SCP (C-STORE, PS3.4 annex B): every instance stored exactly as it arrived.

Thin glue between pynetdicom and :class:`shared.pipeline.ingest.Ingestor`: the encoded
dataset goes to the ingestor untouched (no decoding, no re-encoding) behind a file meta
derived from the request and the presentation context. A request the ingestor must not
see, a C-STORE whose Affected SOP Class UID is not its presentation context's abstract
syntax, gets a failure status here and the association goes on, as dcmtk's storescp does:
the sender's other instances are not held hostage by one odd request.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field

from pydicom.dataset import Dataset
from pynetdicom import evt

from shared.dicom.part10 import file_meta
from shared.pipeline.ingest import Ingestor, StoreOutcome, StoreStatus
from shared.storage.catalog import CatalogUnavailable

log = logging.getLogger("medhash.listener")

MAX_ERROR_COMMENT = 64
"""(0000,0902) Error Comment is an LO: at most 64 characters."""


@dataclass
class _Tally:
    """What one association stored, for its audit entry when it closes."""

    calling_ae: str
    stored: list[str] = field(default_factory=list)
    failed: int = 0


class StorageSCP:
    """The ``EVT_C_STORE`` handler, and the audit entry of each association that stored."""

    def __init__(self, ingestor: Ingestor) -> None:
        self.ingestor = ingestor
        self._tallies: dict[int, _Tally] = {}
        self._lock = threading.Lock()

    def _count(self, event: evt.Event, calling_ae: str | None, uid: str, stored: bool) -> None:
        with self._lock:
            tally = self._tallies.setdefault(id(event.assoc), _Tally(calling_ae or "?"))
        if stored:
            tally.stored.append(uid)
        else:
            tally.failed += 1

    def on_closed(self, event: evt.Event) -> None:
        """``EVT_CONN_CLOSE``: one audit entry (``c-store``) for an association that stored."""
        with self._lock:
            tally = self._tallies.pop(id(event.assoc), None)
        if tally is None:
            return
        try:
            self.ingestor.catalog.record_audit(
                f"ae:{tally.calling_ae}", "c-store", tally.stored, len(tally.stored),
                "ok" if not tally.failed else "partial" if tally.stored else "failed",
                f"{tally.failed} refused" if tally.failed else None)
        except CatalogUnavailable as exc:
            log.error("audit entry of an association from %s lost: %s", tally.calling_ae, exc,
                      extra={"stage": "listener", "calling_ae": tally.calling_ae})

    def on_store(self, event: evt.Event) -> Dataset:
        request = event.request
        requestor = event.assoc.requestor
        calling_ae = requestor.ae_title.strip() if requestor.ae_title else None
        sop_class_uid = str(request.AffectedSOPClassUID or "")
        sop_instance_uid = str(request.AffectedSOPInstanceUID or "")
        context_class = str(event.context.abstract_syntax)
        if sop_class_uid != context_class:
            outcome = StoreOutcome(
                StoreStatus.SOP_CLASS_NOT_SUPPORTED,
                f"Affected SOP Class UID {sop_class_uid[:80]!r} sent on the presentation context "
                f"of {context_class}: the sender must propose a context for its SOP class",
            )
            self.ingestor.report(outcome, sop_instance_uid=sop_instance_uid, calling_ae=calling_ae)
            self._count(event, calling_ae, sop_instance_uid, False)
            return _status(outcome, "SOP class differs from the presentation context")
        transfer_syntax_uid = str(event.context.transfer_syntax)
        part10 = file_meta(sop_class_uid, sop_instance_uid, transfer_syntax_uid)
        outcome = self.ingestor.store_instance(
            part10 + request.DataSet.getvalue(),
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            calling_ae=calling_ae,
        )
        self._count(event, calling_ae, sop_instance_uid, outcome.status is StoreStatus.SUCCESS)
        return _status(outcome, outcome.reason)


def _status(outcome: StoreOutcome, comment: str) -> Dataset:
    """The C-STORE response: the status, and for a failure an Error Comment an operator can read."""
    status = Dataset()
    status.Status = int(outcome.status)
    if outcome.status is not StoreStatus.SUCCESS:
        text = comment.replace("\\", "/").encode("ascii", "replace").decode()
        status.ErrorComment = text[:MAX_ERROR_COMMENT]
    return status
