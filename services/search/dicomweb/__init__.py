"""DICOMweb (PS3.18) on the search service's port under ``/dicomweb``: STOW-RS in
(:mod:`~services.search.dicomweb.stow`), WADO-RS (:mod:`~services.search.dicomweb.wado`) and
QIDO-RS (:mod:`~services.search.dicomweb.qido`) out, in the DICOM JSON model
(:mod:`~services.search.dicomweb.dicomjson`). Enough for a viewer such as OHIF to use medhash
as a data source, and for a router such as Orthanc to forward to it over HTTP.

The routes are registered in an order that keeps every UID one value even when it holds a
``/``: searches at the root, then routes ending in a fixed word (``metadata``,
``rendered``), then searches nested in a study or series, then plain retrieval.
"""

from __future__ import annotations

from fastapi import APIRouter

from services.search.dicomweb import qido, stow, wado


def dicomweb_router() -> APIRouter:
    """Every DICOMweb route, in matching order; ``create_app`` mounts it at ``/dicomweb``."""
    router = APIRouter()
    for part in (stow.router, qido.top, wado.specific, qido.nested, wado.generic):
        router.include_router(part)
    return router


__all__ = ["dicomweb_router"]
