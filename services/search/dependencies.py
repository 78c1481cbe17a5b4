"""What the search service's routes depend on: the service's parts, and the API key check."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import quote

from fastapi import HTTPException, Request, Security
from fastapi.security import APIKeyHeader

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


async def service(request: Request) -> SearchService:
    """The :class:`SearchService` of the app serving ``request``."""
    return request.app.state.service  # type: ignore[no-any-return]


def thumbnail_url(request: Request, sop_instance_uid: str, frame: int) -> str:
    """Path of a frame's thumbnail, under the app's root path (a reverse proxy's prefix)."""
    root = request.scope.get("root_path", "")
    return f"{root}/v1/instances/{quote(sop_instance_uid, safe='')}/thumbnail?frame={frame}"


def api_key_dependency(api_keys: Sequence[str]) -> Callable[[str | None], None]:
    """A dependency that answers 401 unless the ``X-API-Key`` header holds one of ``api_keys``."""
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
