"""The object store: one interface, a local-folder backend and an S3 (MinIO) backend.

:func:`open_object_store` picks the backend from the settings, so no caller knows which one
it talks to.
"""

from __future__ import annotations

from shared.config import Settings
from shared.storage.objectstore.base import (
    InvalidKey,
    ObjectNotFound,
    ObjectStore,
    ObjectStoreError,
    ObjectStoreUnavailable,
    check_key,
)
from shared.storage.objectstore.local import LocalObjectStore


def open_object_store(settings: Settings) -> ObjectStore:
    """The object store the settings describe: S3 when an endpoint is set, else a folder."""
    if settings.s3_endpoint:
        from shared.storage.objectstore.s3 import S3ObjectStore

        return S3ObjectStore(
            endpoint=settings.s3_endpoint,
            access_key=settings.s3_access_key,
            secret_key=settings.s3_secret_key,
            bucket=settings.s3_bucket,
            secure=settings.s3_secure,
            region=settings.s3_region,
        )
    return LocalObjectStore(settings.object_dir)


__all__ = [
    "InvalidKey",
    "LocalObjectStore",
    "ObjectNotFound",
    "ObjectStore",
    "ObjectStoreError",
    "ObjectStoreUnavailable",
    "check_key",
    "open_object_store",
]
