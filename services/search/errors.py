"""How the search service's errors become HTTP answers: JSON ``{"detail": "..."}`` that says
what to do, and the status each domain error of ``shared/`` and the engine is."""

from __future__ import annotations

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from services.search.engine import InstanceNotReady, SearchUnavailable, UnknownInstance
from services.search.schemas import ErrorBody
from shared.dicom.pixels import PixelPipelineError
from shared.pipeline.query import UnreadableQuery
from shared.storage.catalog import CatalogUnavailable

ERROR_STATUS: dict[type[Exception], int] = {
    UnreadableQuery: 400,
    PixelPipelineError: 400,
    UnknownInstance: 404,
    InstanceNotReady: 409,
    SearchUnavailable: 503,
    CatalogUnavailable: 503,
}
"""Domain errors of ``shared/`` and the engine, and the HTTP status each one is."""

OUTCOMES = {400: "unreadable", 403: "forbidden", 404: "not_found", 409: "not_ready", 413: "too_large",
            415: "unsupported_type", 422: "invalid", 503: "unavailable"}
"""Label of ``medhash_search_requests_total`` for each error status."""

ERROR_RESPONSES: dict[int | str, dict[str, object]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 413, 415, 422, 503)
}
"""The error bodies every ``/v1`` route documents in the OpenAPI document."""


def status_of(exc: Exception) -> int:
    if isinstance(exc, HTTPException):
        return exc.status_code
    return next((status for kind, status in ERROR_STATUS.items() if isinstance(exc, kind)), 500)


def detail_of(exc: Exception) -> str:
    if isinstance(exc, PixelPipelineError):
        return (f"the DICOM file yields no image: {exc.reason}; upload an image instance "
                "(CT, MR, CR, DX, Secondary Capture, ...)")
    if isinstance(exc, UnreadableQuery):
        return f"{exc}; upload a DICOM file, a PNG or a JPEG"
    return str(exc)


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
    return JSONResponse({"detail": f"invalid request: {problems}"}, status_code=422)


async def _domain_error(_: Request, exc: Exception) -> JSONResponse:
    return JSONResponse({"detail": detail_of(exc)}, status_code=status_of(exc))


def add_error_handlers(app: FastAPI) -> None:
    """422 for an invalid request and :data:`ERROR_STATUS` for domain errors, as JSON."""
    app.add_exception_handler(RequestValidationError, _invalid_request)  # type: ignore[arg-type]
    for kind in ERROR_STATUS:
        app.add_exception_handler(kind, _domain_error)
