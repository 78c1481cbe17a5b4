"""The search service: HTTP API, Prometheus metrics and the search page, over ``shared/``.

``create_app`` puts a :class:`~shared.pipeline.wiring.Runtime` (catalog, object store) and
the checkpoint's encoder behind a FastAPI app: the routes are in
:mod:`services.search.routes`, what they depend on in :mod:`services.search.dependencies`,
the error answers in :mod:`services.search.errors`; all the work happens in
:class:`~services.search.engine.SearchEngine` and ``shared/``. The app is served by uvicorn
(``medhash search``); tests drive it in-process.

Errors are JSON ``{"detail": "..."}`` that say what to do: 400 an unreadable upload, 401 a
missing or wrong API key, 403 a key without the role (or DICOMweb retrieval while patient
data is not exposed), 404 an unknown UID or frame, 409 an instance not encoded yet, 413 a
body over the limit, 415 a wrong content type, 422 an invalid request, 503 no model or no
index yet (``/healthz`` says which) or the catalog unreachable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from services.search import admin
from services.search.access import KeyRing, caller
from services.search.dependencies import SearchService
from services.search.dicomweb import dicomweb_router
from services.search.engine import SearchEngine
from services.search.errors import ERROR_RESPONSES, add_error_handlers
from services.search.routes import PAGE_DIR, pages, v1
from shared.config import parse_api_key
from shared.hashing.inference import BatchEncoder
from shared.index import configure_search_threads
from shared.pipeline.wiring import Runtime

DEFAULT_MAX_UPLOAD_BYTES = 64_000_000


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
    ``api_keys``: ``MEDHASH_API_KEYS`` entries (``name:role:key`` or a bare key); when any
    is given, every ``/v1`` and ``/dicomweb`` route requires one (``services/search/access.py``).
    ``expose_patient_data`` adds ``patient_id`` to results and instances and serves DICOMweb
    retrieval. ``MEDHASH_VIEWER_URL``, ``MEDHASH_CORS_ORIGINS`` and the STOW-RS limits come
    from the runtime's settings. The runtime (and with it the encoder) stays the caller's to
    close.
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
    app.state.service = SearchService(runtime, engine, expose_patient_data, max_upload_bytes)
    app.state.keys = KeyRing([parse_api_key(entry) for entry in api_keys])
    add_error_handlers(app)
    app.include_router(v1, prefix="/v1", responses=ERROR_RESPONSES,
                       dependencies=[Depends(caller)])
    app.include_router(admin.router, prefix="/v1", responses=ERROR_RESPONSES, tags=["admin"])
    app.include_router(dicomweb_router(), prefix="/dicomweb", responses=ERROR_RESPONSES,
                       tags=["DICOMweb"], dependencies=[Depends(caller)])
    app.include_router(pages)
    if runtime.settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=runtime.settings.cors_origins,
                           allow_methods=["GET", "POST", "OPTIONS"],
                           allow_headers=["Accept", "Authorization", "Content-Type", "X-API-Key"],
                           expose_headers=["Content-Location", "Warning", "ETag"])
    app.mount("/static", StaticFiles(directory=PAGE_DIR), name="static")
    return app
