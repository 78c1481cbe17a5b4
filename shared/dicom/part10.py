"""The DICOM Part 10 header (preamble, ``DICM``, file meta group) in front of a received dataset.

Encoded by hand rather than with pydicom's validating writer: it runs once per received
instance on the listener's hot path, its content is fixed by the C-STORE request and the
presentation context, and it must be deterministic so that identical datasets give
identical objects (and therefore one catalog row).
"""

from __future__ import annotations

import struct

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
