"""The distributed object store: an S3 bucket through the ``minio`` client (MinIO in production).

MinIO acknowledges a PUT only after the object is written to its drives (erasure-coded and
fsync'ed by default), so ``put`` returning is the durability point. Connection failures,
timeouts and 5xx answers become :class:`ObjectStoreUnavailable`; the client's own retries
are kept short so a C-STORE waiting on a dead store fails in seconds, not minutes.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from contextlib import contextmanager

import urllib3
from minio import Minio
from minio.error import S3Error, ServerError

from shared.storage.objectstore.base import (
    ObjectNotFound,
    ObjectStoreUnavailable,
    check_key,
)

_MISSING_CODES = {"NoSuchKey", "NoSuchObject"}
_BUSY_CODES = {"SlowDown", "ServiceUnavailable", "InternalError", "XMinioServerNotInitialized"}


class S3ObjectStore:
    """Objects in one bucket, created on first use."""

    def __init__(
        self,
        *,
        endpoint: str,
        access_key: str,
        secret_key: str,
        bucket: str,
        secure: bool = False,
        region: str = "us-east-1",
        timeout_s: float = 10.0,
    ) -> None:
        self.bucket = bucket
        http = urllib3.PoolManager(
            timeout=urllib3.Timeout(connect=timeout_s, read=timeout_s),
            maxsize=64,
            retries=urllib3.Retry(
                total=2, backoff_factor=0.2, status_forcelist=[500, 502, 503, 504]
            ),
        )
        self._client = Minio(
            endpoint,
            access_key=access_key,
            secret_key=secret_key,
            secure=secure,
            region=region,
            http_client=http,
        )
        self._bucket_ready = False

    def _ensure_bucket(self) -> None:
        if self._bucket_ready:
            return
        with _unavailable_on_failure(f"bucket {self.bucket}"):
            if not self._client.bucket_exists(self.bucket):
                try:
                    self._client.make_bucket(self.bucket)
                except S3Error as exc:
                    if exc.code not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                        raise
        self._bucket_ready = True

    def put(
        self,
        key: str,
        data: bytes,
        content_type: str = "application/octet-stream",
        *,
        durable: bool = True,  # MinIO acknowledges only durable writes; nothing to skip
    ) -> None:
        check_key(key)
        self._ensure_bucket()
        with _unavailable_on_failure(f"put {key}"):
            self._client.put_object(
                self.bucket, key, io.BytesIO(data), len(data), content_type=content_type
            )

    def get(self, key: str) -> bytes:
        check_key(key)
        self._ensure_bucket()
        with _unavailable_on_failure(f"get {key}"):
            try:
                response = self._client.get_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    raise ObjectNotFound(key) from None
                raise
            try:
                return response.read()
            finally:
                response.close()
                response.release_conn()

    def exists(self, key: str) -> bool:
        check_key(key)
        self._ensure_bucket()
        with _unavailable_on_failure(f"stat {key}"):
            try:
                self._client.stat_object(self.bucket, key)
            except S3Error as exc:
                if exc.code in _MISSING_CODES:
                    return False
                raise
        return True

    def delete(self, key: str) -> None:
        check_key(key)
        self._ensure_bucket()
        with _unavailable_on_failure(f"delete {key}"):
            self._client.remove_object(self.bucket, key)

    def list(self, prefix: str = "") -> Iterator[str]:
        self._ensure_bucket()
        with _unavailable_on_failure(f"list {prefix}"):
            keys = [
                obj.object_name
                for obj in self._client.list_objects(self.bucket, prefix=prefix, recursive=True)
                if obj.object_name is not None
            ]
        return iter(sorted(keys))

    def check(self) -> None:
        self._bucket_ready = False
        self._ensure_bucket()


@contextmanager
def _unavailable_on_failure(what: str) -> Iterator[None]:
    """Turn transport errors and server-side failures into :class:`ObjectStoreUnavailable`."""
    try:
        yield
    except (urllib3.exceptions.HTTPError, OSError, ServerError) as exc:
        raise ObjectStoreUnavailable(f"object store unreachable ({what}): {exc}") from exc
    except S3Error as exc:
        if exc.code in _BUSY_CODES:
            raise ObjectStoreUnavailable(f"object store busy ({what}): {exc.code}") from exc
        raise
