"""UIDs from the wire, checked before they become object keys or log fields.

A DICOM UID is digits and dots, at most 64 characters (PS3.5 section 9). Real archives hold
UIDs that break the stricter rules (components with leading zeros, a trailing pad byte), and
refusing those would lose images, so :func:`clean_uid` accepts any dotted run of digits and
strips the padding; anything else (a slash, ``..``, letters, control bytes) is not a UID and
must never reach a path. Callers then decide: the listener files such instances under a
content-addressed key instead of rejecting them.
"""

from __future__ import annotations

import re

_UID = re.compile(r"[0-9]+(?:\.[0-9]+)*")
MAX_UID_LENGTH = 64


class InvalidUID(ValueError):
    """A value that cannot be used as a DICOM UID (and therefore not in an object key)."""


def clean_uid(value: object) -> str:
    """Return ``value`` as a safe UID string, or raise :class:`InvalidUID` saying why."""
    if value is None:
        raise InvalidUID("missing UID")
    text = str(value).rstrip("\x00 ")
    if not text:
        raise InvalidUID("empty UID")
    if len(text) > MAX_UID_LENGTH:
        raise InvalidUID(f"UID longer than {MAX_UID_LENGTH} characters ({len(text)})")
    if not _UID.fullmatch(text):
        raise InvalidUID(f"not a UID (only digits and single dots allowed): {text[:80]!r}")
    return text


def is_valid_uid(value: object) -> bool:
    try:
        clean_uid(value)
    except InvalidUID:
        return False
    return True
