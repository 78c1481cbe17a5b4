"""Who may retrieve over DICOMweb: QIDO-RS and WADO-RS hand out the stored objects and their
patient attributes (PatientID, PatientName), so they are served only where the operator
exposed patient data (``MEDHASH_EXPOSE_PATIENT_DATA``), to a caller with a valid key when
keys are configured. STOW-RS (receiving) needs only the key."""

from __future__ import annotations

from fastapi import Depends, HTTPException

from services.search.access import Caller, caller
from services.search.dependencies import SearchService, service


def retrieval(who: Caller = Depends(caller), svc: SearchService = Depends(service)) -> Caller:
    """The caller of a QIDO-RS or WADO-RS route: 403 unless patient data is exposed."""
    if not svc.expose_patient_data:
        raise HTTPException(403, "DICOMweb retrieval (QIDO-RS, WADO-RS) returns the stored "
                                 "objects with their patient identifiers, and this service does "
                                 "not expose patient data: set MEDHASH_EXPOSE_PATIENT_DATA=true "
                                 "(with MEDHASH_API_KEYS) to serve it")
    return who
