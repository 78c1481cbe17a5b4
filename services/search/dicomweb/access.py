"""Who may retrieve over DICOMweb: QIDO-RS and WADO-RS hand out the stored objects and their
patient attributes (PatientID, PatientName), so they are served only where the operator
exposed patient data (``MEDHASH_EXPOSE_PATIENT_DATA``), to a caller with a valid key when
keys are configured. STOW-RS (receiving) needs only the key."""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Depends, HTTPException

from services.search.access import Caller, caller
from services.search.dependencies import SearchService, service
from services.search.metrics import DICOMWEB_REQUESTS


def retrieval(who: Caller = Depends(caller), svc: SearchService = Depends(service)) -> Caller:
    """The caller of a QIDO-RS or WADO-RS route: 403 unless patient data is exposed."""
    if not svc.expose_patient_data:
        raise HTTPException(403, "DICOMweb retrieval (QIDO-RS, WADO-RS) returns the stored "
                                 "objects with their patient identifiers, and this service does "
                                 "not expose patient data: set MEDHASH_EXPOSE_PATIENT_DATA=true "
                                 "(with MEDHASH_API_KEYS) to serve it")
    return who


def audited(svc: SearchService, who: Caller, transaction: str, targets: Sequence[str],
            count: int, outcome: str = "ok", detail: str | None = None) -> None:
    """Append a DICOMweb transaction to the audit trail and count it."""
    action = "retrieve" if transaction in ("metadata", "frames", "rendered") else transaction
    if detail is None and action != transaction:
        detail = transaction  # which kind of retrieve
    svc.runtime.catalog.record_audit(who.name, action, targets, count, outcome, detail)
    DICOMWEB_REQUESTS.labels(transaction, outcome).inc()
