"""The admin routes: forgetting a patient or a study, and reading the audit trail. Both need
an API key of role ``admin`` (:func:`services.search.access.admin`)."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Depends, HTTPException, Query
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.search.access import Caller, admin
from services.search.dependencies import SearchService, service
from services.search.schemas import (
    AuditEntryInfo,
    AuditPage,
    ForgetJobInfo,
    ForgetRequest,
)
from shared.storage.catalog.forget import ForgetJob, ForgetState

router = APIRouter()


def _info(job: ForgetJob) -> ForgetJobInfo:
    return ForgetJobInfo(**{**asdict(job), "state": job.state.value})


@router.post("/admin/forget", response_model=ForgetJobInfo,
             responses={202: {"model": ForgetJobInfo, "description": "Rows and objects gone; "
                              "index entries go when each indexer applies the tombstones."}})
async def forget(body: ForgetRequest, who: Caller = Depends(admin),
                 svc: SearchService = Depends(service)) -> JSONResponse:
    """Forget a patient or a study: raw objects, slices, catalog rows, index entries.

    Searches stop returning it at once; 200 when nothing of it remains, 202 while an indexer
    has yet to drop its codes (``GET /v1/admin/forget/{id}`` follows the job).
    """
    if (body.patient_id is None) == (body.study_instance_uid is None):
        raise HTTPException(422, "give exactly one of patient_id and study_instance_uid")
    forgetter = svc.runtime.forgetter
    if body.patient_id is not None:
        job = await run_in_threadpool(forgetter.forget_patient, body.patient_id, who.name)
    else:
        assert body.study_instance_uid is not None
        job = await run_in_threadpool(forgetter.forget_study, body.study_instance_uid, who.name)
    return JSONResponse(_info(job).model_dump(),
                        status_code=200 if job.state is ForgetState.DONE else 202)


@router.get("/admin/forget", response_model=list[ForgetJobInfo])
def forget_jobs(limit: int = Query(100, ge=1, le=1000), _: Caller = Depends(admin),
                svc: SearchService = Depends(service)) -> list[ForgetJobInfo]:
    """Forget jobs, newest first."""
    return [_info(job) for job in svc.runtime.catalog.forget_jobs(limit=limit)]


@router.get("/admin/forget/{job_id}", response_model=ForgetJobInfo)
def forget_job(job_id: int, _: Caller = Depends(admin),
               svc: SearchService = Depends(service)) -> ForgetJobInfo:
    """One forget job, resumed first if it is unfinished (so its state is current)."""
    job = svc.runtime.catalog.forget_job(job_id)
    if job is None:
        raise HTTPException(404, f"no forget job {job_id}; GET /v1/admin/forget lists them")
    if job.state is not ForgetState.DONE:
        job = svc.runtime.forgetter.resume(job)
    return _info(job)


@router.get("/audit", response_model=AuditPage)
def audit(
    limit: int = Query(100, ge=1, le=1000),
    offset: int = Query(0, ge=0),
    action: str | None = Query(None, max_length=32, description="Only this action."),
    actor: str | None = Query(None, max_length=128, description="Only this key name or AE."),
    since: float | None = Query(None, description="Only entries at or after this Unix time."),
    until: float | None = Query(None, description="Only entries before this Unix time."),
    who: Caller = Depends(admin),
    svc: SearchService = Depends(service),
) -> AuditPage:
    """The audit trail, newest first, one page at a time (reading it is audited too)."""
    catalog = svc.runtime.catalog
    entries, total = catalog.audit_entries(limit=limit, offset=offset, action=action,
                                           actor=actor, since=since, until=until)
    catalog.record_audit(who.name, "audit", [], len(entries))
    return AuditPage(total=total, limit=limit, offset=offset,
                     entries=[AuditEntryInfo(**asdict(entry)) for entry in entries])
