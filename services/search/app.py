"""The search service: HTTP API, Prometheus metrics and the search page, over ``shared/``.

``create_app`` wires a :class:`~shared.pipeline.wiring.Runtime` (catalog, object store) and the
checkpoint's encoder into a FastAPI app; all the work happens in
:class:`~services.search.engine.SearchEngine` and ``shared/``. The app is served by uvicorn
(``medhash search``); tests drive it in-process.

Errors are JSON ``{"detail": "..."}`` that say what to do: 400 an unreadable upload, 401 a
missing or wrong API key, 404 an unknown UID or frame, 409 an instance not encoded yet, 413 a
body over the limit, 415 a wrong content type, 422 an invalid request, 503 no model or no
index yet (``/healthz`` says which).
"""

from __future__ import annotations

import base64
import hmac
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from urllib.parse import quote

from fastapi import APIRouter, Depends, FastAPI, HTTPException, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool

from services.search.engine import (
    InstanceNotReady,
    SearchEngine,
    SearchOutcome,
    SearchUnavailable,
    UnknownInstance,
)
from services.search.metrics import SEARCH_REQUESTS, SEARCH_SECONDS
from services.search.schemas import (
    DEFAULT_K,
    MAX_K,
    Check,
    ErrorBody,
    FrameInfo,
    Health,
    IndexInfo,
    InstanceInfo,
    InstanceQuery,
    QueryInfo,
    SearchResponse,
    SearchResult,
    Stats,
)
from services.search.uploads import read_search_request
from shared.dicom.pixels import PixelPipelineError
from shared.hashing.inference import BatchEncoder
from shared.index import configure_search_threads
from shared.pipeline.query import UnreadableQuery
from shared.pipeline.wiring import Runtime
from shared.storage.slice_format import thumbnail_png

log = logging.getLogger("medhash.search")

PAGE_DIR = Path(__file__).parent / "page"
DEFAULT_MAX_UPLOAD_BYTES = 64_000_000

PAGE_CSP = ("default-src 'self'; img-src 'self' data: blob:; script-src 'self'; "
            "style-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'")
"""The page loads nothing but its own files: no CDN, no inline script, no framing."""

ERROR_STATUS: dict[type[Exception], int] = {
    UnreadableQuery: 400,
    PixelPipelineError: 400,
    UnknownInstance: 404,
    InstanceNotReady: 409,
    SearchUnavailable: 503,
}
"""Domain errors of ``shared/`` and the engine, and the HTTP status each one is."""

OUTCOMES = {400: "unreadable", 404: "not_found", 409: "not_ready", 413: "too_large",
            415: "unsupported_type", 422: "invalid", 503: "unavailable"}
"""Label of ``medhash_search_requests_total`` for each error status."""

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (400, 401, 404, 409, 413, 415, 422, 503)
}

SEARCH_BODY = {
    "required": True,
    "content": {
        "multipart/form-data": {"schema": {
            "type": "object",
            "required": ["file"],
            "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "A DICOM Part 10 file, a PNG or a JPEG."},
                "k": {"type": "integer", "minimum": 1, "maximum": MAX_K},
                "include_excluded": {"type": "boolean"},
            },
        }},
        "application/json": {"schema": InstanceQuery.model_json_schema()},
    },
}


def _status_of(exc: Exception) -> int:
    if isinstance(exc, HTTPException):
        return exc.status_code
    return next((status for kind, status in ERROR_STATUS.items() if isinstance(exc, kind)), 500)


def _detail_of(exc: Exception) -> str:
    if isinstance(exc, PixelPipelineError):
        return (f"the DICOM file yields no image: {exc.reason}; upload an image instance "
                "(CT, MR, CR, DX, Secondary Capture, ...)")
    if isinstance(exc, UnreadableQuery):
        return f"{exc}; upload a DICOM file, a PNG or a JPEG"
    return str(exc)


def thumbnail_url(request: Request, sop_instance_uid: str, frame: int) -> str:
    """Path of a frame's thumbnail, under the app's root path (a reverse proxy's prefix)."""
    root = request.scope.get("root_path", "")
    return f"{root}/v1/instances/{quote(sop_instance_uid, safe='')}/thumbnail?frame={frame}"


def _api_key_dependency(api_keys: Sequence[str]) -> Callable[[str | None], None]:
    header = APIKeyHeader(name="X-API-Key", auto_error=False,
                          description="One of the keys the service was started with.")
    keys = [key.encode() for key in api_keys]

    def require_api_key(key: str | None = Security(header)) -> None:
        # compare_digest against every key: the time taken says nothing about which matched
        given = (key or "").encode()
        if not sum(hmac.compare_digest(given, candidate) for candidate in keys):
            raise HTTPException(401, "missing or wrong API key: send the header "
                                     "`X-API-Key: <key>` with one of the service's keys")

    return require_api_key


def create_app(
    runtime: Runtime,
    *,
    encoder: BatchEncoder | None = None,
    api_keys: Sequence[str] = (),
    expose_patient_data: bool = False,
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
    max_query_frames: int = 16,
    refresh_interval_s: float | None = None,
) -> FastAPI:
    """The search service over ``runtime``.

    ``encoder`` defaults to the runtime's, the checkpoint of ``MEDHASH_MODEL``; without one
    the service still serves the page, instances and stats, and answers searches with 503.
    ``api_keys``: when any is given, every ``/v1`` route requires one in ``X-API-Key``.
    ``expose_patient_data`` adds ``patient_id`` to results and instances. The runtime (and
    with it the encoder) stays the caller's to close.
    """
    configure_search_threads(runtime.settings.search_threads)
    if encoder is None and runtime.settings.model is not None:
        encoder = runtime.encoder
    engine = SearchEngine(runtime, encoder, max_query_frames=max_query_frames,
                          refresh_interval_s=refresh_interval_s or runtime.settings.search_refresh_s)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        engine.start()
        try:
            yield
        finally:
            engine.stop()

    app = FastAPI(
        title="medhash search",
        summary="Find stored medical images that look like a query image (deep hashing).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.engine = engine

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)

    async def domain_error(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": _detail_of(exc)}, status_code=_status_of(exc))

    for kind in ERROR_STATUS:
        app.add_exception_handler(kind, domain_error)

    v1 = APIRouter(prefix="/v1", responses=ERROR_RESPONSES,
                   dependencies=[Depends(_api_key_dependency(api_keys))] if api_keys else [])

    def patient(patient_id: str | None) -> dict[str, str | None]:
        return {"patient_id": patient_id} if expose_patient_data else {}

    def search_response(request: Request, outcome: SearchOutcome, k: int) -> SearchResponse:
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
                **patient(hit.detail.patient_id),
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
    ) -> SearchResponse:
        """Nearest stored slices to an uploaded image or to a stored instance.

        Multipart ``file`` (DICOM, PNG or JPEG), or JSON ``{"sop_instance_uid": ...}``. A
        multi-frame query searches with each frame (evenly spaced ones above the service's
        cap) and ranks every stored slice by its smallest distance to any of them.
        """
        started = time.perf_counter()
        source = "upload"
        try:
            parsed = await read_search_request(request, max_upload_bytes)
            count = parsed.options.k or k or DEFAULT_K
            excluded = bool(parsed.options.include_excluded if
                            parsed.options.include_excluded is not None else include_excluded)
            if parsed.sop_instance_uid is not None:
                source = "instance"
                outcome = await run_in_threadpool(engine.search_instance,
                                                  parsed.sop_instance_uid, count, excluded)
            else:
                assert parsed.data is not None
                outcome = await run_in_threadpool(engine.search_upload, parsed.data, count,
                                                  excluded)
            response = search_response(request, outcome, count)
        except Exception as exc:
            status = _status_of(exc)
            SEARCH_REQUESTS.labels(OUTCOMES.get(status, "error")).inc()
            if status == 500:
                log.exception("search failed", extra={"stage": "search"})
            raise
        finally:
            SEARCH_SECONDS.labels(source).observe(time.perf_counter() - started)
        SEARCH_REQUESTS.labels("ok").inc()
        return response

    @v1.get("/instances/{sop_uid}", response_model=InstanceInfo,
            response_model_exclude_unset=True)
    def instance(request: Request, sop_uid: str) -> InstanceInfo:
        """The current version of a stored instance: pipeline state, reason, metadata, frames."""
        current = engine.current(sop_uid)
        return InstanceInfo(
            sop_instance_uid=current.sop_instance_uid,
            state=current.state.value,
            reason=current.reason,
            state_changed_at=current.state_changed_at,
            received_at=current.received_at,
            versions=len(runtime.catalog.versions(sop_uid)),
            sop_class_uid=current.sop_class_uid,
            transfer_syntax_uid=current.transfer_syntax_uid,
            study_instance_uid=current.study_instance_uid,
            series_instance_uid=current.series_instance_uid,
            modality=current.modality,
            body_part=current.body_part,
            number_of_frames=current.number_of_frames,
            size_bytes=current.size_bytes,
            frames=[FrameInfo(frame=item.frame_index, excluded=item.excluded,
                              exclusion_reason=item.exclusion_reason,
                              thumbnail_url=thumbnail_url(request, sop_uid, item.frame_index))
                    for item in runtime.catalog.slices(current.id)],
            **patient(current.patient_id),
        )

    @v1.get("/instances/{sop_uid}/thumbnail", response_class=Response,
            responses={200: {"content": {"image/png": {}}}})
    def thumbnail(
        request: Request,
        sop_uid: str,
        frame: int = Query(0, ge=0, description="0-based frame."),
        size: int = Query(128, ge=16, le=512, description="Side of the square PNG (pixels)."),
    ) -> Response:
        """A frame as the model saw it (windowed, square, padded): an 8-bit greyscale PNG."""
        etag, png = engine.thumbnail(sop_uid, frame, size)
        headers = {"ETag": etag, "Cache-Control": "private, no-cache"}
        if request.headers.get("if-none-match") == etag:
            return Response(status_code=304, headers=headers)
        return Response(png, media_type="image/png", headers=headers)

    @v1.get("/stats", response_model=Stats)
    def stats() -> Stats:
        """Instances by pipeline state, and the index the service has loaded."""
        states = runtime.catalog.counts_by_state()
        generation, size = engine.index_status()
        return Stats(states=states, total=sum(states.values()),
                     model_version=engine.model_version,
                     index=IndexInfo(generation=generation, size=size))

    app.include_router(v1)

    @app.get("/healthz", response_model=Health, responses={503: {"model": Health}})
    def healthz() -> JSONResponse:
        """``ok`` (200) when the catalog and the object store answer and an index is loaded;
        ``degraded`` (503) otherwise, each check saying what is wrong."""
        def catalog_probe() -> str:
            return f"{sum(runtime.catalog.counts_by_state().values())} instances"

        def store_probe() -> str:
            runtime.store.check()
            return "answers"

        checks = {"catalog": _check(catalog_probe), "store": _check(store_probe),
                  "index": _check(lambda: _index_summary(engine))}
        healthy = all(check.ok for check in checks.values())
        body = Health(status="ok" if healthy else "degraded", checks=checks)
        return JSONResponse(body.model_dump(), status_code=200 if healthy else 503)

    @app.get("/metrics", response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
    def metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(PAGE_DIR / "index.html", headers={"Content-Security-Policy": PAGE_CSP})

    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")
    return app


def _check(probe: Callable[[], str]) -> Check:
    """Run one health probe; any exception is the check's failure, described."""
    try:
        return Check(ok=True, detail=probe())
    except Exception as exc:
        return Check(ok=False, detail=str(exc) or type(exc).__name__)


def _index_summary(engine: SearchEngine) -> str:
    generation, size = engine.index_status()
    if engine.model_version is None:
        raise SearchUnavailable("no model configured (MEDHASH_MODEL)")
    if generation is None:
        raise SearchUnavailable(f"no index generation published yet for model "
                                f"{engine.model_version[:12]}")
    return f"generation {generation}, {size} codes, model {engine.model_version[:12]}"
