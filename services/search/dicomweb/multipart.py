"""``multipart/related`` in both directions (PS3.18 8.6.1.2, RFC 2387): reading a STOW-RS body,
bounded while it streams, and writing WADO-RS responses.

Reading spools each part to a temporary file (memory stays bounded by one chunk and the
spool threshold, whatever the part's size) and hands the parts over only once the closing
boundary has arrived: a body that is cut off or malformed anywhere is refused whole, so no
instance of it is stored, let alone half of one. A request body over ``max_bytes`` is
refused with 413 as soon as that many bytes arrived (or before reading, from its
``Content-Length``); a part over ``max_part_bytes`` is kept as "too large" without its
bytes, so the request's other parts can still be stored.
"""

from __future__ import annotations

import secrets
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import IO

from fastapi import HTTPException, Request
from python_multipart.multipart import (
    MultipartParseError,
    MultipartParser,
    parse_options_header,
)

SPOOL_BYTES = 8 * 1024 * 1024
"""A part up to this size stays in memory; larger ones go to a temporary file."""


@dataclass
class Part:
    """One body part: its headers (names lower-cased) and its bytes, or that it was too large."""

    headers: dict[str, str] = field(default_factory=dict)
    size: int = 0
    too_large: bool = False
    spool: IO[bytes] = field(default_factory=lambda: tempfile.SpooledTemporaryFile(SPOOL_BYTES))

    @property
    def media_type(self) -> str:
        """The part's Content-Type without parameters, lower-cased ('' when absent)."""
        return media_type_of(self.headers.get("content-type", ""))

    def read(self) -> bytes:
        self.spool.seek(0)
        return self.spool.read()


def media_type_of(value: str) -> str:
    return value.split(";")[0].strip().lower()


def content_type_parameters(value: str) -> tuple[str, dict[str, str]]:
    """(media type, parameters) of a Content-Type value, parameter names lower-cased."""
    media_type, options = parse_options_header(value)
    return (media_type.decode("latin-1").lower(),
            {key.decode("latin-1").lower(): item.decode("latin-1") for key, item in options.items()})


class Parts:
    """The parts of a completely read body; closing releases their spools."""

    def __init__(self, parts: list[Part]) -> None:
        self.parts = parts
        self._stack = ExitStack()
        for part in parts:
            self._stack.callback(part.spool.close)

    def __iter__(self) -> Iterator[Part]:
        return iter(self.parts)

    def __len__(self) -> int:
        return len(self.parts)

    def close(self) -> None:
        self._stack.close()


async def read_related(request: Request, *, boundary: str, max_bytes: int,
                       max_part_bytes: int, how_to: str) -> Parts:
    """Every part of a ``multipart/related`` body; 400 unless the body is complete and well
    formed, 413 beyond ``max_bytes``. ``how_to`` ends every error message."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    parts: list[Part] = []
    current: list[Part] = []
    header: dict[str, bytearray] = {"field": bytearray(), "value": bytearray()}
    ended = [False]

    def on_part_begin() -> None:
        current[:] = [Part()]

    def on_header_field(data: bytes, start: int, end: int) -> None:
        header["field"] += data[start:end]

    def on_header_value(data: bytes, start: int, end: int) -> None:
        header["value"] += data[start:end]

    def on_header_end() -> None:
        current[0].headers[header["field"].decode("latin-1").strip().lower()] = (
            header["value"].decode("latin-1").strip())
        header["field"], header["value"] = bytearray(), bytearray()

    def on_part_data(data: bytes, start: int, end: int) -> None:
        part = current[0]
        part.size += end - start
        if part.size > max_part_bytes:
            if not part.too_large:
                part.too_large = True
                part.spool.seek(0)
                part.spool.truncate()
            return
        part.spool.write(data[start:end])

    def on_part_end() -> None:
        parts.append(current.pop())

    def on_end() -> None:
        ended[0] = True

    parser = MultipartParser(boundary, {
        "on_part_begin": on_part_begin, "on_header_field": on_header_field,
        "on_header_value": on_header_value, "on_header_end": on_header_end,
        "on_part_data": on_part_data, "on_part_end": on_part_end, "on_end": on_end,
    }, max_header_count=32, max_header_size=8192)
    received = 0
    try:
        async for chunk in request.stream():
            received += len(chunk)
            if received > max_bytes:
                raise _too_large(max_bytes)
            if chunk and not ended[0]:
                parser.write(chunk)
        parser.finalize()
    except MultipartParseError as exc:
        _discard(parts + current)
        raise HTTPException(400, f"malformed multipart/related body ({exc}); {how_to}") from exc
    except BaseException:
        _discard(parts + current)
        raise
    if not ended[0]:
        _discard(parts + current)
        raise HTTPException(400, "the multipart/related body ends before its closing boundary "
                                 f"(--{boundary[:200]}--): it was cut off; nothing was stored; "
                                 f"{how_to}")
    return Parts(parts)


def _discard(parts: Iterable[Part]) -> None:
    for part in parts:
        part.spool.close()


def _too_large(limit: int) -> HTTPException:
    return HTTPException(413, f"the request body is larger than the {limit / 1e6:g} MB limit "
                              "(MEDHASH_STOW_MAX_BYTES); nothing of it was stored: send the "
                              "study in several smaller requests")


def new_boundary() -> str:
    return f"medhash-{secrets.token_hex(16)}"


def related_content_type(boundary: str, part_type: str) -> str:
    """The ``Content-Type`` of a ``multipart/related`` response whose parts are ``part_type``."""
    return f'multipart/related; type="{part_type}"; boundary={boundary}'


def encode_part(boundary: str, content_type: str, data: bytes,
                location: str | None = None) -> bytes:
    """One part, its leading boundary included (the closing one is :func:`closing`)."""
    head = f"--{boundary}\r\nContent-Type: {content_type}\r\n"
    if location is not None:
        head += f"Content-Location: {location}\r\n"
    return head.encode("latin-1") + f"Content-Length: {len(data)}\r\n\r\n".encode() + data + b"\r\n"


def closing(boundary: str) -> bytes:
    return f"--{boundary}--\r\n".encode()
