"""Reading ``POST /v1/search`` bodies: bounded while streaming, with errors that say what to do.

FastAPI's ``UploadFile`` parameters would spool the whole body to disk before the route
runs, however large; this module reads the stream itself and stops at the limit, so a
multi-gigabyte upload costs the service nothing but the 413. A ``Content-Length`` over the
limit is refused before a byte of the body is read.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator
from dataclasses import dataclass
from typing import TypeVar

from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser

from services.search.schemas import InstanceQuery, SearchOptions

M = TypeVar("M", bound=BaseModel)

JSON_LIMIT = 64 * 1024
"""A JSON query is a UID and its options: anything larger is not one."""

FILE_TYPES = frozenset({"application/dicom", "application/octet-stream", "image/png", "image/jpeg",
                        "image/pjpeg", ""})
"""Declared types of the ``file`` part accepted; the content is then sniffed anyway."""

HOW_TO = ("send multipart/form-data with a `file` part (a DICOM file, PNG or JPEG), or "
          'application/json {"sop_instance_uid": "..."}')


@dataclass(frozen=True)
class SearchRequest:
    """A parsed search body: ``data`` for an upload, ``sop_instance_uid`` otherwise."""

    options: SearchOptions
    data: bytes | None = None
    sop_instance_uid: str | None = None


def _megabytes(size: int) -> str:
    return f"{size / 1_000_000:g} MB"


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"request body is larger than the {_megabytes(limit)} limit; "
                              "upload a single image or one DICOM instance, not a series")


async def _limited(request: Request, limit: int) -> AsyncGenerator[bytes, None]:
    """The body's chunks, failing with 413 as soon as they add up to more than ``limit``."""
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise _too_large(limit)
        yield chunk


def describe(error: ValidationError) -> str:
    """A pydantic error as one line a person can act on (``k: Input should be ...``)."""
    return "; ".join(
        f"{'.'.join(str(part) for part in item['loc']) or 'body'}: {item['msg']}"
        for item in error.errors()
    )


def _validated(model: type[M], values: object) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise HTTPException(422, f"invalid search request: {describe(exc)}") from exc


def sniff(data: bytes) -> None:
    """400 unless the bytes are a DICOM Part 10 file, a PNG or a JPEG."""
    if not data:
        raise HTTPException(400, "the uploaded file is empty; choose a DICOM, PNG or JPEG file")
    if data[128:132] == b"DICM" or data.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")):
        return
    raise HTTPException(
        400, "the uploaded file is not a DICOM Part 10 file (with its 128-byte preamble and "
             "'DICM'), a PNG or a JPEG; export the image in one of these formats and retry")


async def read_search_request(request: Request, max_upload_bytes: int) -> SearchRequest:
    """Parse a multipart upload or a JSON instance query, enforcing the size limits."""
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = JSON_LIMIT if media_type == "application/json" else max_upload_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    if media_type == "multipart/form-data":
        return await _read_upload(request, limit)
    if media_type == "application/json":
        body = b"".join([chunk async for chunk in _limited(request, limit)])
        try:
            values = json.loads(body)
        except ValueError as exc:
            raise HTTPException(422, f"the body is not valid JSON ({exc}); {HOW_TO}") from exc
        query = _validated(InstanceQuery, values)
        options = SearchOptions(**query.model_dump(exclude={"sop_instance_uid"}))
        return SearchRequest(options, sop_instance_uid=query.sop_instance_uid)
    raise HTTPException(415, f"unsupported content type {media_type or '(none)'!r}: {HOW_TO}")


async def _read_upload(request: Request, limit: int) -> SearchRequest:
    parser = MultiPartParser(request.headers, _limited(request, limit), max_files=1, max_fields=16,
                             max_part_size=1024)
    try:
        form = await parser.parse()
    except MultiPartException as exc:
        raise HTTPException(400, f"malformed multipart body ({exc.message}); {HOW_TO}") from exc
    try:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise HTTPException(422, f"the multipart body has no `file` part; {HOW_TO}")
        declared = (upload.content_type or "").split(";")[0].strip().lower()
        if declared not in FILE_TYPES:
            raise HTTPException(
                415, f"the file is declared as {declared!r}; upload a DICOM file "
                     "(application/dicom), a PNG or a JPEG")
        options = _validated(SearchOptions, {key: value for key, value in form.items()
                                             if key in SearchOptions.model_fields})
        data = await upload.read()
    finally:
        await form.close()
    sniff(data)
    return SearchRequest(options, data=data)
