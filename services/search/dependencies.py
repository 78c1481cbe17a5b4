"""What the search service's routes depend on: the service's parts, and the links a result
carries (thumbnail, WADO-RS, viewer)."""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from fastapi import Request

from services.search.engine import SearchEngine
from shared.pipeline.wiring import Runtime


@dataclass(frozen=True)
class SearchService:
    """One app's engine, runtime and options; the routes get it with ``Depends(service)``."""

    runtime: Runtime
    engine: SearchEngine
    expose_patient_data: bool
    max_upload_bytes: int

    def patient(self, patient_id: str | None) -> dict[str, str | None]:
        """The ``patient_id`` field of a response, present only when patient data is exposed."""
        return {"patient_id": patient_id} if self.expose_patient_data else {}

    def links(self, request: Request, study: str | None, series: str | None,
              sop: str) -> dict[str, str]:
        """A result's ``wado_url`` (when DICOMweb retrieval is served) and ``viewer_url``
        (when ``MEDHASH_VIEWER_URL`` is set); absent otherwise."""
        links: dict[str, str] = {}
        if self.expose_patient_data and study is not None and series is not None:
            links["wado_url"] = (f"{str(request.base_url).rstrip('/')}/dicomweb/studies/"
                                 f"{_segment(study)}/series/{_segment(series)}/instances/"
                                 f"{_segment(sop)}")
        template = self.runtime.settings.viewer_url
        if template is not None:
            links["viewer_url"] = template.format(study=_segment(study or ""),
                                                  series=_segment(series or ""),
                                                  sop=_segment(sop))
        return links


def _segment(uid: str) -> str:
    return quote(uid, safe="")


async def service(request: Request) -> SearchService:
    """The :class:`SearchService` of the app serving ``request``."""
    return request.app.state.service  # type: ignore[no-any-return]


def thumbnail_url(request: Request, sop_instance_uid: str, frame: int) -> str:
    """Path of a frame's thumbnail, under the app's root path (a reverse proxy's prefix)."""
    root = request.scope.get("root_path", "")
    return f"{root}/v1/instances/{quote(sop_instance_uid, safe='')}/thumbnail?frame={frame}"
