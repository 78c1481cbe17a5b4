"""The search service's routes: the ``/v1`` API (search, instances, thumbnails, stats) and the
service routes (health, metrics, the page). Every handler works through the app's
:class:`~services.search.dependencies.SearchService`; the work itself is the engine's. Each
``/v1`` action is appended to the audit trail under the caller's key name."""

from __future__ import annotations

import base64
import logging
import time
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from services.search.access import Caller, caller
from services.search.dependencies import SearchService, service, thumbnail_url
from services.search.engine import SearchEngine, SearchOutcome, SearchUnavailable
from services.search.errors import OUTCOMES, status_of
from services.search.metrics import SEARCH_REQUESTS, SEARCH_SECONDS
from services.search.schemas import (
    DEFAULT_K,
    MAX_K,
    Check,
    FrameInfo,
    Health,
    IndexInfo,
    InstanceInfo,
    InstanceQuery,
    QueryInfo,
    SearchOptions,
    SearchResponse,
    SearchResult,
    Stats,
)
from services.search.uploads import SearchRequest, read_search_request
from shared.dicom.header import read_header
from shared.storage.catalog import Instance, SliceFilter
from shared.storage.slice_format import thumbnail_png

log = logging.getLogger("medhash.search")

PAGE_DIR = Path(__file__).parent / "page"

PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
            "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")
"""The page loads nothing but its own files: no CDN, no inline script, no framing."""

SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "A DICOM Part 10 file, a PNG or a JPEG."},
                **{name: schema for name, schema in
                   SearchOptions.model_json_schema()["properties"].items()},
            },
        }},
        "application/json": {"schema": InstanceQuery.model_json_schema()},
    },
}
"""``POST /v1/search`` reads its body itself (bounded while streaming), so the OpenAPI
document describes it here."""

STORED_ATTRIBUTES = tuple(
    name for name in InstanceInfo.model_fields
    if name in {f.name for f in fields(Instance)} and name not in {"state", "patient_id"})
"""What ``GET /v1/instances/{sop_uid}`` shows of the catalog row as it is (the state as its
name, the patient only when exposed, versions and frames looked up)."""

v1 = APIRouter()
"""The ``/v1`` API; ``create_app`` mounts it with the prefix, the error bodies and the API key."""

pages = APIRouter()
"""Health, metrics and the search page: never behind an API key."""


def search_response(request: Request, svc: SearchService, outcome: SearchOutcome,
                    k: int) -> SearchResponse:
    """The HTTP body of a search outcome: what was searched with, and the described hits."""
    query = QueryInfo(
        source=outcome.source,
        sop_instance_uid=outcome.sop_instance_uid,
        slices=outcome.slices,
        frames=outcome.frames,
        thumbnail=None if outcome.first_slice is None else "data:image/png;base64,"
        + base64.b64encode(thumbnail_png(outcome.first_slice)).decode(),
        thumbnail_url=None if outcome.sop_instance_uid is None
        else thumbnail_url(request, outcome.sop_instance_uid, outcome.frames[0]),
    )
    results = [
        SearchResult(
            sop_instance_uid=hit.detail.sop_instance_uid,
            frame=hit.detail.frame_index,
            distance=hit.distance,
            study_instance_uid=hit.detail.study_instance_uid,
            series_instance_uid=hit.detail.series_instance_uid,
            modality=hit.detail.modality,
            body_part=hit.detail.body_part,
            thumbnail_url=thumbnail_url(request, hit.detail.sop_instance_uid,
                                        hit.detail.frame_index),
            excluded=hit.detail.excluded,
            **svc.links(request, hit.detail.study_instance_uid, hit.detail.series_instance_uid,
                        hit.detail.sop_instance_uid),
            **svc.patient(hit.detail.patient_id),
        )
        for hit in outcome.hits
    ]
    return SearchResponse(query=query, model_version=outcome.model_version,
                          generation=outcome.generation, k=k, results=results)


@v1.post("/search", response_model=SearchResponse, response_model_exclude_unset=True,
         openapi_extra={"requestBody": SEARCH_BODY})
async def search(
    request: Request,
    k: int | None = Query(None, ge=1, le=MAX_K,
                          description=f"Neighbours to return (default {DEFAULT_K}); a "
                          "value in the body wins."),
    include_excluded: bool | None = Query(
        None, description="Also return slices the cleaning excluded (default false)."),
    who: Caller = Depends(caller),
    svc: SearchService = Depends(service),
) -> SearchResponse:
    """Nearest stored slices to an uploaded image or to a stored instance.

    Multipart ``file`` (DICOM, PNG or JPEG), or JSON ``{"sop_instance_uid": ...}``, with
    optional filters (modality, body part, study date range, calling AE, leaving out the
    query's own patient or study): the top ``k`` is exact under them. A multi-frame query
    searches with each frame (evenly spaced ones above the service's cap) and ranks every
    stored slice by its smallest distance to any of them.
    """
    started = time.perf_counter()
    source = "upload"
    try:
        parsed = await read_search_request(request, svc.max_upload_bytes)
        count = parsed.options.k or k or DEFAULT_K
        excluded = bool(parsed.options.include_excluded if
                        parsed.options.include_excluded is not None else include_excluded)
        filters = await run_in_threadpool(slice_filter, svc, parsed, excluded)
        if parsed.sop_instance_uid is not None:
            source = "instance"
            outcome = await run_in_threadpool(svc.engine.search_instance,
                                              parsed.sop_instance_uid, count, filters)
        else:
            assert parsed.data is not None
            outcome = await run_in_threadpool(svc.engine.search_upload, parsed.data, count,
                                              filters)
        response = search_response(request, svc, outcome, count)
        await run_in_threadpool(
            svc.runtime.catalog.record_audit, who.name, "search",
            [*([outcome.sop_instance_uid] if outcome.sop_instance_uid else []),
             *(hit.sop_instance_uid for hit in response.results)],
            len(response.results), "ok", f"{source} query, k={count}")
    except Exception as exc:
        status = status_of(exc)
        SEARCH_REQUESTS.labels(OUTCOMES.get(status, "error")).inc()
        if status == 500:
            log.exception("search failed", extra={"stage": "search"})
        raise
    finally:
        SEARCH_SECONDS.labels(source).observe(time.perf_counter() - started)
    SEARCH_REQUESTS.labels("ok").inc()
    return response


def slice_filter(svc: SearchService, parsed: SearchRequest, include_excluded: bool) -> SliceFilter:
    """The request's filters as the catalog's :class:`SliceFilter`; "same patient / study"
    resolved from the queried instance or the uploaded DICOM header (422 for a picture)."""
    options = parsed.options
    patient_key = study = None
    if options.exclude_same_patient or options.exclude_same_study:
        if parsed.sop_instance_uid is not None:
            current = svc.engine.current(parsed.sop_instance_uid)
            patient_key, study = current.patient_key, current.study_instance_uid
        elif parsed.data is not None and parsed.data[128:132] == b"DICM":
            header = read_header(parsed.data)
            patient_key = svc.runtime.catalog.patient_key(header.patient_id,
                                                          header.issuer_of_patient_id)
            study = header.study_instance_uid
        else:
            raise HTTPException(422, "exclude_same_patient and exclude_same_study need a DICOM "
                                     "upload or a stored instance: a PNG or JPEG names no "
                                     "patient or study")
    return SliceFilter(
        include_excluded=include_excluded,
        modalities=frozenset(options.modality or ()),
        body_parts=frozenset(options.body_part or ()),
        study_date_from=options.study_date_from,
        study_date_to=options.study_date_to,
        calling_aes=frozenset(options.calling_ae or ()),
        exclude_patient_key=patient_key if options.exclude_same_patient else None,
        exclude_study_uid=study if options.exclude_same_study else None,
    )


@v1.get("/instances/{sop_uid:path}/thumbnail", response_class=Response,
        responses={200: {"content": {"image/png": {}}}})
def thumbnail(
    request: Request,
    sop_uid: str,
    frame: int = Query(0, ge=0, description="0-based frame."),
    size: int = Query(128, ge=16, le=512, description="Side of the square PNG (pixels)."),
    who: Caller = Depends(caller),
    svc: SearchService = Depends(service),
) -> Response:
    """A frame as the model saw it (windowed, square, padded): an 8-bit greyscale PNG.

    Any stored identifier works, one holding a ``/`` too (plain or as ``%2F``).
    """
    etag, png = svc.engine.thumbnail(sop_uid, frame, size)
    svc.runtime.catalog.record_audit(who.name, "thumbnail", [sop_uid], 1, detail=f"frame {frame}")
    headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
    if request.headers.get("if-none-match") == etag:
        return Response(status_code=304, headers=headers)
    return Response(png, media_type="image/png", headers=headers)


@v1.get("/instances/{sop_uid:path}", response_model=InstanceInfo, response_model_exclude_unset=True)
def instance(request: Request, sop_uid: str, who: Caller = Depends(caller),
             svc: SearchService = Depends(service)) -> InstanceInfo:
    """The current version of a stored instance: pipeline state, reason, metadata, frames.

    Any stored identifier works, one holding a ``/`` too (plain or as ``%2F``).
    """
    current = svc.engine.current(sop_uid)
    catalog = svc.runtime.catalog
    catalog.record_audit(who.name, "instance", [sop_uid], 1)
    return InstanceInfo(
        **{name: getattr(current, name) for name in STORED_ATTRIBUTES},
        state=current.state.value,
        versions=len(catalog.versions(sop_uid)),
        frames=[FrameInfo(frame=item.frame_index, excluded=item.excluded,
                          exclusion_reason=item.exclusion_reason,
                          thumbnail_url=thumbnail_url(request, sop_uid, item.frame_index))
                for item in catalog.slices(current.id)],
        **svc.patient(current.patient_id),
    )


@v1.get("/stats", response_model=Stats)
def stats(svc: SearchService = Depends(service)) -> Stats:
    """Instances by pipeline state, and the index the service has loaded."""
    states = svc.runtime.catalog.counts_by_state()
    generation, size = svc.engine.index_status()
    return Stats(states=states, total=sum(states.values()), model_version=svc.engine.model_version,
                 index=IndexInfo(generation=generation, size=size))


@pages.get("/healthz", response_model=Health, responses={503: {"model": Health}})
def healthz(svc: SearchService = Depends(service)) -> JSONResponse:
    """``ok`` (200) when the catalog and the object store answer and an index is loaded;
    ``degraded`` (503) otherwise, each check saying what is wrong."""
    runtime = svc.runtime

    def catalog_probe() -> str:
        return f"{sum(runtime.catalog.counts_by_state().values())} instances"

    def store_probe() -> str:
        runtime.store.check()
        return "answers"

    checks = {"catalog": _check(catalog_probe), "store": _check(store_probe),
              "index": _check(lambda: _index_summary(svc.engine))}
    healthy = all(check.ok for check in checks.values())
    body = Health(status="ok" if healthy else "degraded", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)


@pages.get("/metrics", response_class=Response,
           responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
def metrics() -> Response:
    """Prometheus metrics of this process."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


@pages.get("/", include_in_schema=False)
def page() -> FileResponse:
    return FileResponse(PAGE_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})


def _check(probe: Callable[[], str]) -> Check:
    """Run one health probe; any exception is the check's failure, described."""
    try:
        return Check(ok=True, detail=probe())
    except Exception as exc:  # noqa: BLE001 - a failing probe is what the check reports
        return Check(ok=False, detail=str(exc) or type(exc).__name__)


def _index_summary(engine: SearchEngine) -> str:
    generation, size = engine.index_status()
    if engine.model_version is None:
        raise SearchUnavailable("no model configured (MEDHASH_MODEL)")
    if generation is None:
        raise SearchUnavailable(f"no index generation published yet for model "
                                f"{engine.model_version[:12]}")
    return f"generation {generation}, {size} codes, model {engine.model_version[:12]}"
