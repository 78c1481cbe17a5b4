"""Who is calling, and what they may do: named API keys with roles, and the audit trail.

``MEDHASH_API_KEYS`` entries are ``name:role:key`` (or a bare key, role ``read``). With keys
configured, every ``/v1`` and ``/dicomweb`` route needs one (``X-API-Key``, or
``Authorization: Bearer <key>`` for clients such as OHIF and Orthanc's DICOMweb plugin that
only set that header); the admin routes (forget, audit) need a key of role ``admin``. With
none configured the service is open for reading (the embedded default's first try), and
the admin routes stay closed: forgetting patients and reading who searched for what are not
things an unauthenticated caller may do (``medhash forget`` and ``medhash audit`` work on
the catalog directly for the operator).

Every action is appended to the catalog's audit trail under the caller's key name.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence
from dataclasses import dataclass

from fastapi import Depends, HTTPException, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from shared.config import ApiKey

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Caller:
    """The authenticated caller: the key's name (what the audit trail records) and role."""

    name: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


_HEADER = APIKeyHeader(name="X-API-Key", auto_error=False,
                       description="One of the service's keys (MEDHASH_API_KEYS).")
_BEARER = HTTPBearer(auto_error=False, description="The same key as a bearer token.")


class KeyRing:
    """The configured keys, compared in constant time against every one of them."""

    def __init__(self, keys: Sequence[ApiKey]) -> None:
        self.keys = list(keys)

    def __bool__(self) -> bool:
        return bool(self.keys)

    def identify(self, given: str | None) -> Caller | None:
        """The caller a presented key belongs to; None for a missing or wrong key."""
        if not self.keys:
            return Caller(ANONYMOUS, "read")
        presented = (given or "").encode()
        match = None
        for key in self.keys:  # every key compared: the time taken says nothing about which
            if hmac.compare_digest(presented, key.key.encode()):
                match = key
        return None if match is None or not given else Caller(match.name, match.role)


def caller(request: Request, key: str | None = Security(_HEADER),
           bearer: HTTPAuthorizationCredentials | None = Security(_BEARER)) -> Caller:
    """The route's caller, or 401 when keys are configured and none of them was sent."""
    ring: KeyRing = request.app.state.keys
    found = ring.identify(key or (bearer.credentials if bearer else None))
    if found is None:
        raise HTTPException(401, "missing or wrong API key: send the header `X-API-Key: <key>` "
                                 "(or `Authorization: Bearer <key>`) with one of the service's "
                                 "keys", headers={"WWW-Authenticate": "Bearer"})
    return found


def admin(request: Request, who: Caller = Depends(caller)) -> Caller:
    """The caller of an admin route: 403 unless the key's role is ``admin``."""
    if not request.app.state.keys:
        raise HTTPException(403, "admin routes (forget, audit) need an admin API key, and none "
                                 "is configured: set MEDHASH_API_KEYS=name:admin:<key> (or use "
                                 "`medhash forget` / `medhash audit` on the catalog)")
    if not who.is_admin:
        raise HTTPException(403, f"the key {who.name!r} has role {who.role!r}; this route needs "
                                 "a key of role `admin`")
    return who
