"""The DICOM Part 10 header (preamble, ``DICM``, file meta group): written in front of a dataset
received over C-STORE, read from a file received over STOW-RS.

Encoded by hand rather than with pydicom's validating writer: it runs once per received
instance on the listener's hot path, its content is fixed by the C-STORE request and the
presentation context, and it must be deterministic so that identical datasets give
identical objects (and therefore one catalog row).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from io import BytesIO

import pydicom

IMPLEMENTATION_CLASS_UID = "1.2.826.0.1.3680043.10.1427.1"
IMPLEMENTATION_VERSION_NAME = "MEDHASH_01"


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One explicit-VR little-endian element of group 0002, padded to even length."""
    if len(value) % 2:
        value += b"\x00" if vr == b"UI" else b" "
    if vr == b"OB":
        return struct.pack("<HH", 0x0002, element) + vr + b"\x00\x00" + struct.pack("<I", len(value)) + value
    return struct.pack("<HH", 0x0002, element) + vr + struct.pack("<H", len(value)) + value


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str) -> bytes:
    """Preamble, prefix and file meta information group for one instance."""
    body = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),
        _element(0x0002, b"UI", sop_class_uid.encode("ascii", "replace")),
        _element(0x0003, b"UI", sop_instance_uid.encode("ascii", "replace")),
        _element(0x0010, b"UI", transfer_syntax_uid.encode("ascii", "replace")),
        _element(0x0012, b"UI", IMPLEMENTATION_CLASS_UID.encode()),
        _element(0x0013, b"SH", IMPLEMENTATION_VERSION_NAME.encode()),
    ))
    group_length = struct.pack("<HH", 0x0002, 0x0000) + b"UL" + struct.pack("<HI", 4, len(body))
    return b"\x00" * 128 + b"DICM" + group_length + body


@dataclass(frozen=True)
class FileMeta:
    """What a received Part 10 file's meta group says it is (STOW-RS parts carry their own)."""

    sop_class_uid: str | None
    sop_instance_uid: str | None
    transfer_syntax_uid: str | None


def read_file_meta(data: bytes) -> FileMeta:
    """The file meta group of a Part 10 byte stream; ValueError unless it has the 128-byte
    preamble, ``DICM`` and a readable group 0002 (the dataset itself is not read)."""
    if data[128:132] != b"DICM":
        raise ValueError("not a DICOM Part 10 file (no 128-byte preamble followed by 'DICM')")
    try:
        # the dataset part is skipped over: only one tag is converted, pixels never read
        meta = pydicom.dcmread(BytesIO(data), stop_before_pixels=True,
                               specific_tags=["SOPClassUID"]).file_meta
    except Exception as exc:  # pydicom raises many types for malformed input
        raise ValueError(f"unreadable file meta information: {type(exc).__name__}: {exc}") from exc

    def text(keyword: str) -> str | None:
        value = str(meta.get(keyword, "") or "").replace("\x00", "").strip()
        return value or None

    return FileMeta(text("MediaStorageSOPClassUID"), text("MediaStorageSOPInstanceUID"),
                    text("TransferSyntaxUID"))
