"""Test helpers: the dataset part of a Part 10 stream, dcmtk's own encoding of a file, storescu."""

from __future__ import annotations

import subprocess
import zlib
from pathlib import Path

from pydicom.filereader import (
    _read_file_meta_info,  # noqa: PLC2701 - offset of the dataset
    read_preamble,
)
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
)

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


DCMCONV_SYNTAX = {
    ExplicitVRLittleEndian: "+te", ImplicitVRLittleEndian: "+ti", ExplicitVRBigEndian: "+tb",
    DeflatedExplicitVRLittleEndian: "+td",
}


def dcmtk_rewrite(path: Path, syntax: str, scratch: Path) -> tuple[str, bytes] | None:
    """What dcmtk makes of ``path`` when it writes it in ``syntax`` (None if it cannot).

    dcmtk's senders decode a file and encode it again for the wire (dropping trailing
    padding, recalculating group lengths, repairing bad VRs); ``dcmconv -p`` is that same
    encoding, so a stored dataset equal to it is exactly what the sender sent.
    """
    out = scratch / "dcmconv.dcm"
    result = subprocess.run([dcmtk("dcmconv"), "-p", DCMCONV_SYNTAX.get(syntax, "+t="), str(path), str(out)],
                            capture_output=True, timeout=60)
    return dataset_bytes(out.read_bytes()) if result.returncode == 0 else None


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


def png_of_zeros(side: int = 16) -> bytes:
    """A small black PNG, for uploads whose content does not matter."""
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()
