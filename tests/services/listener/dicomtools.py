"""Test helpers: the dataset part of a Part 10 stream, and dcmtk's storescu per file."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

from pydicom.filereader import (
    _read_file_meta_info,  # noqa: PLC2701 - offset of the dataset
    read_preamble,
)
from pydicom.uid import DeflatedExplicitVRLittleEndian

from tests.conftest import dcmtk, dcmtk_env


def dataset_bytes(part10: bytes) -> tuple[str, bytes]:
    """(transfer syntax, the encoded dataset after the file meta), inflated when deflated."""
    import io

    stream = io.BytesIO(part10)
    read_preamble(stream, force=False)
    meta = _read_file_meta_info(stream)
    syntax = str(meta.TransferSyntaxUID)
    body = part10[stream.tell():]
    if syntax == DeflatedExplicitVRLittleEndian:
        body = zlib.decompress(body, -zlib.MAX_WBITS)
    return syntax, body


def storescu_config(path: Path, sop_class: str, transfer_syntax: str) -> Path:
    """A storescu profile proposing exactly the file's own SOP class and transfer syntax."""
    path.write_text(
        "[[TransferSyntaxes]]\n[Own]\n"
        f"TransferSyntax1 = {transfer_syntax}\n\n"
        "[[PresentationContexts]]\n[Contexts]\n"
        f"PresentationContext1 = {sop_class}\\Own\n\n"
        "[[Profiles]]\n[Default]\nPresentationContexts = Contexts\n"
    )
    return path


def storescu(
    files: list[Path],
    port: int,
    *,
    config: Path | None = None,
    called_ae: str = "MEDHASH",
    calling_ae: str = "DCMTKSCU",
    extra: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """Run dcmtk's storescu against 127.0.0.1:port; exit code 0 means every file stored."""
    argv = [dcmtk("storescu"), "-aet", calling_ae, "-aec", called_ae, *extra]
    if config is not None:
        argv += ["-xf", str(config), "Default"]
    argv += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(argv, env=dcmtk_env(), capture_output=True, text=True, timeout=120)
