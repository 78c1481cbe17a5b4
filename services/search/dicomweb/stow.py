"""STOW-RS (PS3.18 10.5): ``POST /dicomweb/studies[/{study}]``, the C-STORE promises over HTTP.

Each ``application/dicom`` part is a Part 10 file and goes through the listener's own
:class:`~shared.pipeline.ingest.Ingestor`, so it is durable before the response, stored
byte for byte as sent, idempotent (the same bytes again are one row), filed under
``raw/invalid-uid/`` when its UIDs are not UIDs, and accepted whatever its SOP class. The
identity is the file meta's Media Storage SOP Instance UID, as the C-STORE request's
Affected SOP Instance UID is for the listener.

A part that cannot be stored is answered in FailedSOPSequence with a Failure Reason while
the request's other parts are kept, and its reason goes into a ``Warning`` header:
0xC000 (cannot understand: not a Part 10 file, another media type, too large, unreadable),
0xA900 (its Study Instance UID is not the one in the URL), 0xA700 (out of resources: the
object store or the catalog is down; the sender should retry). HTTP status: 200 when every
part was stored, 202 when some were, 409 when none could be (503 with ``Retry-After`` when
every failure was an outage), 400 for a malformed body (nothing stored), 413 for a body over
``MEDHASH_STOW_MAX_BYTES`` (nothing stored), 415 for anything but
``multipart/related; type="application/dicom"``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from fastapi import APIRouter, Depends, HTTPException, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from services.search.access import Caller, caller
from services.search.dependencies import SearchService, service
from services.search.dicomweb.access import audited
from services.search.dicomweb.dicomjson import (
    MEDIA_TYPE,
    JsonDataset,
    referenced,
    stow_response,
    uid_path,
)
from services.search.dicomweb.multipart import (
    Part,
    content_type_parameters,
    read_related,
)
from shared.dicom.header import UnreadableDataset, read_header
from shared.dicom.part10 import read_file_meta
from shared.pipeline.ingest import StoreStatus

log = logging.getLogger("medhash.dicomweb")

router = APIRouter()

HOW_TO = ('send Content-Type: multipart/related; type="application/dicom"; boundary=... with '
          "one DICOM Part 10 file per part, each part with Content-Type: application/dicom")

CANNOT_UNDERSTAND = int(StoreStatus.CANNOT_UNDERSTAND)
MAX_BOUNDARY = 200
STUDY_MISMATCH = 0xA900
"""PS3.18 10.5.3: the instance does not belong to the study named in the request URL."""


@dataclass
class StowResult:
    stored: list[JsonDataset] = field(default_factory=list)
    failed: list[JsonDataset] = field(default_factory=list)
    failure_statuses: list[int] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stored_uids: list[str] = field(default_factory=list)

    def fail(self, number: int, reason: str, status: int, sop_class_uid: str | None = None,
             sop_instance_uid: str | None = None) -> None:
        self.failed.append(referenced(sop_class_uid, sop_instance_uid, failure=status))
        self.failure_statuses.append(status)
        self.warnings.append(f"part {number}: {reason}")

    @property
    def http_status(self) -> int:
        if not self.failed:
            return 200
        if self.stored:
            return 202
        if all(status == StoreStatus.OUT_OF_RESOURCES for status in self.failure_statuses):
            return 503
        return 409


@router.post("/studies", response_class=JSONResponse, summary="STOW-RS: store instances",
             responses={200: {"content": {MEDIA_TYPE: {}}}})
async def store_instances(request: Request, who: Caller = Depends(caller),
                          svc: SearchService = Depends(service)) -> JSONResponse:
    """Store the request's DICOM instances (any study)."""
    return await _stow(request, None, who, svc)


@router.post("/studies/{study:path}", response_class=JSONResponse,
             summary="STOW-RS: store instances of one study",
             responses={200: {"content": {MEDIA_TYPE: {}}}})
async def store_study_instances(study: str, request: Request, who: Caller = Depends(caller),
                                svc: SearchService = Depends(service)) -> JSONResponse:
    """Store the request's DICOM instances; those of another study fail with 0xA900."""
    return await _stow(request, study, who, svc)


async def _stow(request: Request, study: str | None, who: Caller,
                svc: SearchService) -> JSONResponse:
    media_type, parameters = content_type_parameters(request.headers.get("content-type", ""))
    if media_type != "multipart/related":
        raise HTTPException(415, f"STOW-RS takes multipart/related, not {media_type or '(none)'!r}; "
                                 f"{HOW_TO}")
    part_type = parameters.get("type", "").lower()
    if part_type != "application/dicom":
        raise HTTPException(415, f"parts of type {part_type or '(none)'!r} are not supported (only "
                                 f"DICOM files, not DICOM JSON with bulk data); {HOW_TO}")
    boundary = parameters.get("boundary", "")
    # RFC 2046 allows 70 characters; Orthanc's DICOMweb plugin sends 73, so allow some more
    if not boundary or len(boundary) > MAX_BOUNDARY:
        raise HTTPException(400, f"the Content-Type has no usable boundary parameter; {HOW_TO}")
    settings = svc.runtime.settings
    parts = await read_related(request, boundary=boundary, max_bytes=settings.stow_max_bytes,
                               max_part_bytes=settings.stow_max_part_bytes, how_to=HOW_TO)
    try:
        if not len(parts):
            raise HTTPException(400, f"the request holds no parts; {HOW_TO}")
        base = dicomweb_base(request)
        result = await run_in_threadpool(_store_all, svc, list(parts), study, base)
    finally:
        parts.close()
    await run_in_threadpool(
        audited, svc, who, "stow", result.stored_uids, len(result.stored),
        {200: "ok", 202: "partial"}.get(result.http_status, "failed"),
        "; ".join(result.warnings) or None)
    headers = {"Warning": ", ".join(f'299 medhash "{_quoted(text)}"'
                                    for text in result.warnings[:20])} if result.warnings else {}
    if result.http_status == 503:
        headers["Retry-After"] = "30"
    body = stow_response(result.stored, result.failed,
                         f"{base}/{uid_path(study)}" if study is not None else None)
    return JSONResponse(body, status_code=result.http_status, media_type=MEDIA_TYPE,
                        headers=headers)


def dicomweb_base(request: Request) -> str:
    """Absolute URL of ``/dicomweb`` as this request reached it (a proxy's prefix included)."""
    return f"{str(request.base_url).rstrip('/')}/dicomweb"


def _quoted(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', "'").replace("\r", " ").replace("\n", " ")[:300]


def _store_all(svc: SearchService, parts: list[Part], study: str | None, base: str) -> StowResult:
    result = StowResult()
    for number, part in enumerate(parts, start=1):
        _store_one(svc, number, part, study, base, result)
    return result


def _store_one(svc: SearchService, number: int, part: Part, study: str | None, base: str,
               result: StowResult) -> None:
    if part.media_type not in ("application/dicom", ""):
        result.fail(number, f"Content-Type {part.media_type!r} is not application/dicom",
                    CANNOT_UNDERSTAND)
        return
    if part.too_large:
        result.fail(number, f"{part.size} bytes is more than the "
                            f"{svc.runtime.settings.stow_max_part_bytes} allowed per instance "
                            "(MEDHASH_STOW_MAX_PART_BYTES)", CANNOT_UNDERSTAND)
        return
    data = part.read()
    try:
        meta = read_file_meta(data)
        header = read_header(data)
    except (ValueError, UnreadableDataset) as exc:
        result.fail(number, str(exc), CANNOT_UNDERSTAND)
        return
    sop_class = meta.sop_class_uid or header.sop_class_uid
    sop_instance = meta.sop_instance_uid or header.sop_instance_uid
    if meta.transfer_syntax_uid is None:
        result.fail(number, "the file meta has no Transfer Syntax UID", CANNOT_UNDERSTAND,
                    sop_class, sop_instance)
        return
    if study is not None and header.study_instance_uid != study:
        result.fail(number, f"Study Instance UID {str(header.study_instance_uid)[:80]!r} is not "
                            f"the study of the request URL", STUDY_MISMATCH, sop_class, sop_instance)
        return
    outcome = svc.runtime.ingestor.store_instance(
        data, sop_instance_uid=sop_instance or "", sop_class_uid=sop_class or "",
        transfer_syntax_uid=meta.transfer_syntax_uid, calling_ae=None)
    if outcome.status is not StoreStatus.SUCCESS:
        result.fail(number, outcome.reason, int(outcome.status), sop_class, sop_instance)
        return
    assert sop_instance is not None  # the ingestor refuses an instance without one
    url = f"{base}/{uid_path(header.study_instance_uid or '', header.series_instance_uid or '', sop_instance)}"
    result.stored.append(referenced(sop_class, sop_instance, retrieve_url=url))
    result.stored_uids.append(sop_instance)
