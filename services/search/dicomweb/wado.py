"""WADO-RS (PS3.18 10.4): the stored objects themselves, their metadata, and rendered frames.

A study, series or instance is returned as ``multipart/related; type="application/dicom"``
with each current instance's bytes exactly as stored (the sha256 the catalog recorded):
medhash never transcodes, so an ``Accept`` that names only other transfer syntaxes gets 406
and names the stored ones. ``/metadata`` is the stored header as DICOM JSON (pixel data left
out; other binary values inline), ``/frames/{n}/rendered`` a frame as an 8-bit PNG (or JPEG
when asked for), windowed as the file says (its first VOI LUT or window, else min-max).

Every identifier is matched as stored, a ``/`` in it included (the routes take it
percent-encoded or plain).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from starlette.concurrency import run_in_threadpool

from services.search.access import Caller
from services.search.dependencies import SearchService, service
from services.search.dicomweb.access import retrieval
from services.search.dicomweb.dicomjson import MEDIA_TYPE, metadata_json, uid_path
from services.search.dicomweb.multipart import (
    closing,
    content_type_parameters,
    encode_part,
    new_boundary,
    related_content_type,
)
from services.search.dicomweb.stow import dicomweb_base
from shared.dicom.pixels import PixelPipelineError, WindowPolicy, iter_frames
from shared.storage.catalog import Instance

specific = APIRouter()
"""Routes whose path ends in a fixed word: registered before QIDO's nested searches."""
generic = APIRouter()
"""Study, series and instance retrieval: registered last (their last UID may hold a ``/``)."""


def _instances(svc: SearchService, study: str, series: str | None = None,
               sop: str | None = None) -> list[Instance]:
    found = svc.runtime.catalog.retrievable(study, series, sop)
    if not found:
        what = " / ".join(part for part in (study, series, sop) if part is not None)
        raise HTTPException(404, f"nothing stored under {what[:300]!r}: check the UIDs "
                                 "(QIDO-RS /dicomweb/studies lists what is stored)")
    return found


def _check_acceptable(request: Request, instances: list[Instance]) -> None:
    """406 when ``Accept`` rules out application/dicom or every instance's stored syntax."""
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return
    demanded: set[str] = set()
    for item in accept.split(","):
        media_type, parameters = content_type_parameters(item.strip())
        part_type = parameters.get("type", "application/dicom").lower()
        if media_type in ("*/*", "application/dicom") or (
                media_type == "multipart/related" and part_type in ("application/dicom", "*/*")):
            syntax = parameters.get("transfer-syntax", "*")
            if syntax == "*":
                return
            demanded.add(syntax)
    stored = sorted({instance.transfer_syntax_uid for instance in instances})
    if not demanded or not set(stored) <= demanded:
        raise HTTPException(406, f"medhash returns instances as stored, never transcoded: "
                                 f"ask for multipart/related; type=\"application/dicom\" with "
                                 f"transfer-syntax=* or one of {', '.join(stored)}")


def _retrieve(request: Request, svc: SearchService, who: Caller, study: str,
              series: str | None = None, sop: str | None = None) -> StreamingResponse:
    instances = _instances(svc, study, series, sop)
    _check_acceptable(request, instances)
    svc.runtime.catalog.record_audit(who.name, "retrieve", [sop or series or study],
                                     len(instances))
    boundary = new_boundary()
    base = dicomweb_base(request)

    def body() -> Iterator[bytes]:
        for instance in instances:
            data = svc.runtime.store.get(instance.object_key)
            location = f"{base}/{uid_path(study, instance.series_instance_uid or '', instance.sop_instance_uid)}"
            yield encode_part(boundary, f"application/dicom; transfer-syntax="
                                        f"{instance.transfer_syntax_uid}", data, location)
        yield closing(boundary)

    return StreamingResponse(body(), media_type=related_content_type(boundary, "application/dicom"))


def _metadata(svc: SearchService, who: Caller, instances: list[Instance], target: str) -> JSONResponse:
    svc.runtime.catalog.record_audit(who.name, "retrieve", [target], len(instances),
                                     detail="metadata")
    body = [metadata_json(svc.runtime.store.get(instance.object_key)) for instance in instances]
    return JSONResponse(body, media_type=MEDIA_TYPE)


@specific.get("/studies/{study:path}/series/{series:path}/instances/{sop:path}/frames/{frame}/rendered",
              response_class=Response, summary="WADO-RS: a frame rendered as PNG or JPEG",
              responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
async def rendered_frame(request: Request, study: str, series: str, sop: str, frame: str,
                         who: Caller = Depends(retrieval),
                         svc: SearchService = Depends(service)) -> Response:
    """One frame (1-based) as an 8-bit greyscale image, windowed as the file says."""
    if not frame.isdigit() or int(frame) < 1:
        raise HTTPException(400, f"frame {frame[:20]!r}: rendered frames take one 1-based frame "
                                 "number (e.g. /frames/1/rendered)")
    accept = request.headers.get("accept", "")
    jpeg = "image/jpeg" in accept and "image/png" not in accept
    instance = _instances(svc, study, series, sop)[0]
    image = await run_in_threadpool(_render, svc, instance, int(frame), jpeg)
    svc.runtime.catalog.record_audit(who.name, "retrieve", [sop], 1, detail=f"rendered frame {frame}")
    return Response(image, media_type="image/jpeg" if jpeg else "image/png")


def _render(svc: SearchService, instance: Instance, frame: int, jpeg: bool) -> bytes:
    if frame > instance.number_of_frames:
        raise HTTPException(404, f"instance {instance.sop_instance_uid[:80]} has "
                                 f"{instance.number_of_frames} frame(s), not {frame}")
    try:
        for item in iter_frames(svc.runtime.store.get(instance.object_key), WindowPolicy()):
            if item.index == frame - 1:
                pixels = np.rint(np.clip(item.pixels, 0.0, 1.0) * 255).astype(np.uint8)
                buffer = io.BytesIO()
                Image.fromarray(pixels).save(buffer, format="JPEG" if jpeg else "PNG", quality=90)
                return buffer.getvalue()
    except PixelPipelineError as exc:
        raise HTTPException(422, f"instance {instance.sop_instance_uid[:80]} cannot be rendered: "
                                 f"{exc.reason}") from exc
    raise HTTPException(404, f"instance {instance.sop_instance_uid[:80]} has no frame {frame}")


@specific.get("/studies/{study:path}/series/{series:path}/instances/{sop:path}/metadata",
              summary="WADO-RS: metadata of an instance")
def instance_metadata(study: str, series: str, sop: str, who: Caller = Depends(retrieval),
                      svc: SearchService = Depends(service)) -> JSONResponse:
    return _metadata(svc, who, _instances(svc, study, series, sop), sop)


@specific.get("/studies/{study:path}/series/{series:path}/metadata",
              summary="WADO-RS: metadata of a series")
def series_metadata(study: str, series: str, who: Caller = Depends(retrieval),
                    svc: SearchService = Depends(service)) -> JSONResponse:
    return _metadata(svc, who, _instances(svc, study, series), series)


@specific.get("/studies/{study:path}/metadata", summary="WADO-RS: metadata of a study")
def study_metadata(study: str, who: Caller = Depends(retrieval),
                   svc: SearchService = Depends(service)) -> JSONResponse:
    return _metadata(svc, who, _instances(svc, study), study)


@generic.get("/studies/{study:path}/series/{series:path}/instances/{sop:path}",
             response_class=StreamingResponse, summary="WADO-RS: an instance as stored")
def retrieve_instance(request: Request, study: str, series: str, sop: str,
                      who: Caller = Depends(retrieval),
                      svc: SearchService = Depends(service)) -> StreamingResponse:
    return _retrieve(request, svc, who, study, series, sop)


@generic.get("/studies/{study:path}/series/{series:path}", response_class=StreamingResponse,
             summary="WADO-RS: a series as stored")
def retrieve_series(request: Request, study: str, series: str, who: Caller = Depends(retrieval),
                    svc: SearchService = Depends(service)) -> StreamingResponse:
    return _retrieve(request, svc, who, study, series)


@generic.get("/studies/{study:path}", response_class=StreamingResponse,
             summary="WADO-RS: a study as stored")
def retrieve_study(request: Request, study: str, who: Caller = Depends(retrieval),
                   svc: SearchService = Depends(service)) -> StreamingResponse:
    return _retrieve(request, svc, who, study)
