"""WADO-RS (PS3.18 10.4): the stored objects themselves, their metadata, and rendered frames.

A study, series or instance is returned as ``multipart/related; type="application/dicom"``
with each current instance's bytes exactly as stored (the sha256 the catalog recorded):
medhash never transcodes, so an ``Accept`` that names only other transfer syntaxes gets 406
and names the stored ones. ``/metadata`` is the stored header as DICOM JSON (pixel data left
out; other binary values inline), ``/frames/{list}`` the frames' pixel data as stored
(``application/octet-stream; transfer-syntax=...``, what OHIF's image loader reads), and
``/frames/{n}/rendered`` a frame as an 8-bit PNG (or JPEG when asked for), windowed as the
file says (its first VOI LUT or window, else min-max).

Every identifier is matched as stored, a ``/`` in it included (the routes take it
percent-encoded or plain).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import pydicom
import pydicom.encaps
from fastapi import APIRouter, Depends, HTTPException, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse
from PIL import Image
from pydicom.uid import UID

from services.search.access import Caller
from services.search.dependencies import SearchService, service
from services.search.dicomweb.access import audited, retrieval
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


def _check_acceptable(request: Request, instances: list[Instance],
                      part_type: str = "application/dicom") -> None:
    """406 when ``Accept`` rules out ``part_type`` or every instance's stored syntax."""
    accept = request.headers.get("accept", "")
    if not accept.strip():
        return
    demanded: set[str] = set()
    for item in accept.split(","):
        media_type, parameters = content_type_parameters(item.strip())
        asked = parameters.get("type", part_type).lower()
        if media_type in ("*/*", part_type) or (
                media_type == "multipart/related" and asked in (part_type, "*/*")):
            syntax = parameters.get("transfer-syntax", "*")
            if syntax == "*":
                return
            demanded.add(syntax)
    stored = sorted({instance.transfer_syntax_uid for instance in instances})
    if not demanded or not set(stored) <= demanded:
        raise HTTPException(406, f"medhash returns instances as stored, never transcoded: "
                                 f"ask for multipart/related; type=\"{part_type}\" with "
                                 f"transfer-syntax=* or one of {', '.join(stored)}")


def _retrieve(request: Request, svc: SearchService, who: Caller, study: str,
              series: str | None = None, sop: str | None = None) -> StreamingResponse:
    instances = _instances(svc, study, series, sop)
    _check_acceptable(request, instances)
    audited(svc, who, "retrieve", [sop or series or study], len(instances))
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
    audited(svc, who, "metadata", [target], len(instances))
    body = [metadata_json(svc.runtime.store.get(instance.object_key)) for instance in instances]
    return JSONResponse(body, media_type=MEDIA_TYPE)


@specific.get("/studies/{study:path}/series/{series:path}/instances/{sop:path}/frames/{frame}/rendered",
              response_class=Response, summary="WADO-RS: a frame rendered as PNG or JPEG",
              responses={200: {"content": {"image/png": {}, "image/jpeg": {}}}})
def rendered_frame(request: Request, study: str, series: str, sop: str, frame: str,
                   who: Caller = Depends(retrieval),
                   svc: SearchService = Depends(service)) -> Response:
    """One frame (1-based) as an 8-bit greyscale image, windowed as the file says."""
    if not frame.isdigit() or int(frame) < 1:
        raise HTTPException(400, f"frame {frame[:20]!r}: rendered frames take one 1-based frame "
                                 "number (e.g. /frames/1/rendered)")
    accept = request.headers.get("accept", "")
    jpeg = "image/jpeg" in accept and "image/png" not in accept
    instance = _instances(svc, study, series, sop)[0]
    image = _render(svc, instance, int(frame), jpeg)
    audited(svc, who, "rendered", [sop], 1, detail=f"rendered frame {frame}")
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


@specific.get("/studies/{study:path}/series/{series:path}/instances/{sop:path}/frames/{frames}",
              response_class=StreamingResponse, summary="WADO-RS: frames' pixel data as stored")
def retrieve_frames(request: Request, study: str, series: str, sop: str, frames: str,
                    who: Caller = Depends(retrieval),
                    svc: SearchService = Depends(service)) -> Response:
    """Pixel data of frames (1-based, ``1,3,5``) in the stored transfer syntax, one part
    each (what OHIF's ``wadors`` image loader asks for)."""
    numbers = [part.strip() for part in frames.split(",")]
    if not numbers or not all(number.isdigit() and int(number) >= 1 for number in numbers):
        raise HTTPException(400, f"frames {frames[:40]!r}: expected 1-based frame numbers "
                                 "separated by commas (e.g. /frames/1,2)")
    instance = _instances(svc, study, series, sop)[0]
    _check_acceptable(request, [instance], "application/octet-stream")
    data = _frames(svc, instance, [int(number) for number in numbers])
    audited(svc, who, "frames", [sop], len(data),
                                     detail=f"frames {frames[:100]}")
    boundary = new_boundary()
    content_type = f"application/octet-stream; transfer-syntax={instance.transfer_syntax_uid}"
    body = b"".join(encode_part(boundary, content_type, item) for item in data) + closing(boundary)
    return Response(body, media_type=related_content_type(boundary, "application/octet-stream"))


def _frames(svc: SearchService, instance: Instance, numbers: list[int]) -> list[bytes]:
    """The stored bytes of each frame: a slice of native pixel data, or the frame's
    fragments of encapsulated pixel data, never decoded."""
    dataset = pydicom.dcmread(io.BytesIO(svc.runtime.store.get(instance.object_key)), force=True)
    if "PixelData" not in dataset:
        raise HTTPException(404, f"instance {instance.sop_instance_uid[:80]} has no pixel data")
    count = instance.number_of_frames
    if max(numbers) > count:
        raise HTTPException(404, f"instance {instance.sop_instance_uid[:80]} has {count} "
                                 f"frame(s), not {max(numbers)}")
    pixels = dataset.PixelData
    if UID(instance.transfer_syntax_uid).is_encapsulated:
        return [pydicom.encaps.get_frame(pixels, number - 1, number_of_frames=count)
                for number in numbers]
    bits = int(dataset.get("BitsAllocated", 8))
    if bits % 8:
        raise HTTPException(406, "frames of 1-bit pixel data are not served one by one; "
                                 "retrieve the instance")
    size = int(dataset.Rows) * int(dataset.Columns) * int(dataset.get("SamplesPerPixel", 1)) \
        * bits // 8
    return [pixels[(number - 1) * size:number * size] for number in numbers]


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
