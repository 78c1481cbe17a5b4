"""Hostile input against the running services: the listener and the search API stay up, say
no clearly, and record nothing they could not read.

* Listener, raw bytes: hypothesis-generated PDUs (random type, length and body) and
  mutations of a real A-ASSOCIATE-RQ, each on its own connection. After every example the
  listener still answers C-ECHO.
* Listener, datasets: a real association and a C-STORE whose dataset bytes are generated
  (random, or a valid Secondary Capture flipped, truncated or spliced). Whatever the answer,
  an instance answered Success must parse (its UIDs readable) and one answered a failure must
  leave no row; every stored one then ends final, and the listener keeps answering.
* UIDs crafted to steer object keys (``..``, ``/``, absolute paths) sent end to end through the
  listener, in the study, series or SOP Instance UID: stored under ``raw/invalid-uid/``,
  processed normally, every key in the bucket a plain one.
* Search uploads: decompression bombs (a PNG header claiming 50000x50000, a real highly
  compressible 12000x12000 PNG, a deflated DICOM of 16384x16384 zeros), an oversized body,
  bad JSON, wrong content types: each a clear 4xx within seconds, and the service keeps
  answering.

Sizes (CI): 40 raw-PDU, 40 association-request and 40 dataset examples, 12 crafted UIDs;
times ``MEDHASH_RELIABILITY_SCALE``.
"""

from __future__ import annotations

import functools
import io
import itertools
import os
import socket
import struct
import threading
import time
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from pydicom.dataset import FileMetaDataset
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    DeflatedExplicitVRLittleEndian,
    SecondaryCaptureImageStorage,
    generate_uid,
)
from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

from shared.dicom.header import read_header
from shared.dicom.synthetic import StudyIds, make_secondary_capture, write
from shared.dicom.uids import InvalidUID, clean_uid
from shared.storage.catalog import InstanceState
from shared.storage.objectstore import check_key
from testbed.catalog_audit import all_instances
from testbed.lsh_model import picture
from tests.reliability.harness import (
    ALLOWED_AE,
    PICTURE_SIDE,
    Deployment,
    audit,
    echo,
    scaled,
    wait_until,
)

pytestmark = [pytest.mark.reliability, pytest.mark.integration, pytest.mark.slow]

FUZZ = settings(max_examples=scaled(40, minimum=5), deadline=None, database=None,
                suppress_health_check=list(HealthCheck))
"""Hypothesis against a live deployment: no deadline (the box is shared), no example database
(a failing example is printed; reruns are independent of what a previous run found)."""

_numbers = itertools.count(1)


# --- raw bytes on the DICOM port ------------------------------------------------------------------


@functools.cache
def association_request() -> bytes:
    """The bytes of a real A-ASSOCIATE-RQ as pynetdicom sends it, captured on a local socket
    (pynetdicom then waits for an answer that never comes, and gives up after 2 s)."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        ae = AE(ae_title=ALLOWED_AE)
        ae.add_requested_context(Verification)
        ae.add_requested_context(SecondaryCaptureImageStorage)
        ae.acse_timeout = ae.network_timeout = 2
        thread = threading.Thread(
            target=ae.associate, args=("127.0.0.1", server.getsockname()[1]), kwargs={"ae_title": "MEDHASH"},
            daemon=True)
        thread.start()
        conn, _ = server.accept()
        with conn:
            conn.settimeout(5)
            data = b""
            while len(data) < 6 or len(data) < 6 + struct.unpack(">I", data[2:6])[0]:
                data += conn.recv(65536)
        thread.join(timeout=10)
    return data


def throw(port: int, payload: bytes) -> None:
    """Send ``payload`` on a fresh connection, close our side, drain what comes back (<= 2 s)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        try:
            conn.sendall(payload)
            conn.shutdown(socket.SHUT_WR)
            conn.settimeout(2)
            while conn.recv(65536):
                pass
        except OSError:
            pass  # the listener may reset a connection it does not like: that is its right


pdus = st.builds(
    lambda kind, body, length: struct.pack(">BBI", kind, 0, len(body) if length is None else length) + body,
    kind=st.one_of(st.integers(1, 7), st.integers(0, 255)),
    body=st.binary(max_size=1024),
    length=st.one_of(st.none(), st.integers(0, 2**32 - 1)),
)


@st.composite
def mutated(draw: st.DrawFn, original: bytes) -> bytes:
    """``original`` with a few bytes overwritten, then maybe truncated or extended."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 8))):
        position = draw(st.integers(0, len(data) - 1))
        data[position] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.none(), st.integers(0, len(data))))
    tail = draw(st.binary(max_size=64))
    return bytes(data[:cut]) + tail


def test_random_pdus_and_broken_association_requests(deployment: Deployment) -> None:
    exits = len(deployment.exits)
    rows = len(all_instances(deployment.catalog))

    @FUZZ
    @given(payload=st.one_of(pdus, mutated(association_request())))
    def check(payload: bytes) -> None:
        throw(deployment.dicom_port, payload)
        assert echo(deployment.dicom_port), f"listener stopped answering after {payload[:64]!r}"

    check()
    deployment.assert_no_exit_since(exits)
    assert len(all_instances(deployment.catalog)) == rows


# --- fuzzed datasets in a real association --------------------------------------------------------


def dataset_bytes(ds: Any) -> bytes:
    """The encoded dataset alone (no preamble, no file meta), as it travels in P-DATA."""
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    data = buffer.getvalue()
    meta_length = struct.unpack("<I", data[140:144])[0]  # (0002,0000) group length value
    return data[144 + meta_length:]


TEMPLATE = dataset_bytes(make_secondary_capture(StudyIds.new(), 1, picture(7, PICTURE_SIDE)))


def part10_with(folder: Path, dataset: bytes) -> tuple[Path, str]:
    """A Part 10 file with a valid file meta (a fresh SOP Instance UID) around ``dataset``."""
    uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = uid
    meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    path = folder / f"fuzz-{next(_numbers)}.dcm"
    with path.open("wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(handle, meta)
        handle.write(dataset)
    return path, uid


datasets = st.one_of(
    st.binary(max_size=2048),
    mutated(TEMPLATE),
    st.integers(0, len(TEMPLATE)).map(lambda cut: TEMPLATE[:cut]),
    st.tuples(st.integers(0, len(TEMPLATE)), st.binary(min_size=1, max_size=256)).map(
        lambda splice: TEMPLATE[:splice[0]] + splice[1] + TEMPLATE[splice[0]:]),
)


def test_fuzzed_datasets_over_a_real_association(deployment: Deployment, tmp_path: Path) -> None:
    exits = len(deployment.exits)
    stored: list[str] = []
    statuses: dict[str, int] = {}

    @FUZZ
    @given(dataset=datasets)
    def check(dataset: bytes) -> None:
        path, uid = part10_with(tmp_path, dataset)
        result, = deployment.sender().send([path])
        assert result.status is not None, f"no answer: {result.reason}"
        statuses[f"0x{result.status:04X}"] = statuses.get(f"0x{result.status:04X}", 0) + 1
        row = deployment.catalog.current(uid)
        if result.stored:
            assert row is not None, "Success without a catalog row"
            header = read_header(deployment.store.get(row.object_key))
            clean_uid(header.sop_class_uid)  # readable, or this raises: unparseable stored
            if not row.object_key.startswith("raw/invalid-uid/"):
                clean_uid(header.sop_instance_uid)  # else kept as text, never in a key
            stored.append(uid)
        else:
            assert result.status == 0xC000, f"not 'cannot understand': {result.reason}"
            assert row is None, "refused, yet recorded"
        assert echo(deployment.dicom_port)

    check()
    print(f"\n[hostile] fuzzed datasets: statuses {statuses}")
    # what was stored goes through the pipeline like anything else: final, with a reason if not indexed
    if stored:
        states = deployment.wait_final(stored, timeout_s=120)
        print(f"[hostile] stored fuzzed instances ended {sorted(s.value for s in states.values())}")
    deployment.assert_no_exit_since(exits)
    audit(deployment, stored)


# --- UIDs crafted to escape object keys, end to end ------------------------------------------------


CRAFTED_STUDY_UIDS = ["../../etc", "..", "/etc/passwd", "1.2/../../x", "1.2.3/", "./1.2", "1.2.3.",
                      "1.2.3 /..", "%2e%2e%2f", "1.2.3:/x"]
CRAFTED_SOP_UIDS = ["../../../evil", "1.2.3/../x", "/abs/1.2", "1.2.3.."]


def test_crafted_uids_never_steer_an_object_key(deployment: Deployment, tmp_path: Path) -> None:
    exits = len(deployment.exits)
    sender = deployment.sender()
    stored: list[str] = []
    for number, crafted in enumerate(CRAFTED_STUDY_UIDS + ["1.2.840.1"] * 2):
        series = crafted if number % 2 else "1.2.3.4"  # crafted in the study, then in the series
        study = "1.2.3" if number % 2 else crafted
        ds = make_secondary_capture(StudyIds("PAT", study, series), 1, picture(900 + number, PICTURE_SIDE))
        result, = sender.send([write(ds, tmp_path / f"study-{number}.dcm")])
        assert result.stored, (crafted, result.reason)
        row = deployment.catalog.current(str(ds.SOPInstanceUID))
        assert row is not None
        try:
            clean_uid(crafted)
            expected_prefix = f"raw/{study}/{series}/"
        except InvalidUID:
            expected_prefix = "raw/invalid-uid/"
        assert row.object_key.startswith(expected_prefix), (crafted, row.object_key)
        stored.append(str(ds.SOPInstanceUID))
    for number, crafted in enumerate(CRAFTED_SOP_UIDS):
        ds = make_secondary_capture(StudyIds.new(), 1, picture(950 + number, PICTURE_SIDE), sop_instance_uid=crafted)
        result, = sender.send([write(ds, tmp_path / f"sop-{number}.dcm")])
        assert result.stored, (crafted, result.reason)  # README: "not a UID" is stored under raw/invalid-uid/
        row = deployment.catalog.current(crafted)
        assert row is not None and row.object_key.startswith("raw/invalid-uid/"), (crafted, row)
        stored.append(crafted)

    states = deployment.wait_final(stored, timeout_s=120)
    assert {state for state in states.values()} == {InstanceState.INDEXED}, states
    deployment.wait_loaded()
    audit(deployment, stored, verify_bytes=stored)
    for key in deployment.store.list():
        assert check_key(key) == key and ".." not in key.split("/"), key
    deployment.assert_no_exit_since(exits)


def test_a_nul_inside_a_uid_is_stored_like_any_invalid_uid(deployment: Deployment, tmp_path: Path) -> None:
    exits = len(deployment.exits)
    ds = make_secondary_capture(StudyIds("PAT", "1.2.3\x00/../x", "1.2.3.4"), 1, picture(990, PICTURE_SIDE))
    result, = deployment.sender().send([write(ds, tmp_path / "nul.dcm")])
    uid = str(ds.SOPInstanceUID)
    try:
        assert result.stored, result.reason  # README: "not a UID" is stored under raw/invalid-uid/
        row = deployment.catalog.current(uid)
        assert row is not None and row.object_key.startswith("raw/invalid-uid/")
    finally:
        if not result.stored:  # the orphan this leaves would fail every later audit: clean it up
            for key in deployment.store.list("raw/invalid-uid/"):
                if key not in {row.object_key for row in all_instances(deployment.catalog)}:
                    print(f"\n[hostile] NUL in a UID: {result.reason}, left {key} without a catalog row")
                    deployment.store.delete(key)
    deployment.wait_final([uid])
    deployment.assert_no_exit_since(exits)


# --- hostile search uploads -----------------------------------------------------------------------


def png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False, compress_level=9)
    return buffer.getvalue()


def png_claiming(width: int, height: int) -> bytes:
    """A real 8x8 PNG whose header is rewritten to claim ``width`` x ``height`` (valid CRC)."""
    small = png(np.zeros((8, 8), np.uint8))
    header = b"IHDR" + struct.pack(">II", width, height) + small[24:29]
    return small[:12] + header + struct.pack(">I", zlib.crc32(header)) + small[33:]


def zlib_bomb_png(side: int) -> bytes:
    """A genuine ``side`` x ``side`` all-black PNG: ~1000:1 compressed, so 144 MP weigh ~140 KB."""
    raw = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + one byte per pixel
    body = b"".join(raw.compress(row) for _ in range(side)) + raw.flush()

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", body) + chunk(b"IEND", b""))


def deflated_dicom_bomb(side: int) -> bytes:
    """A Deflated Explicit VR Little Endian Secondary Capture of ``side`` x ``side`` zeros:
    the whole dataset inflates to ``side**2`` bytes from a body ~1000 times smaller."""
    ds = make_secondary_capture(StudyIds.new(), 1, np.zeros((8, 8), np.uint8))
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.Rows = ds.Columns = side
    ds.PixelData = bytes(side * side)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def file(data: bytes, media_type: str = "application/octet-stream") -> dict[str, Any]:
    return {"files": {"file": ("upload", data, media_type)}}


HOSTILE_UPLOADS: list[tuple[str, dict[str, Any], int, str]] = [
    # Pillow's own bomb check fires before the service's pixel limit: a 400 naming the size either way
    ("PNG header claiming 50000x50000", file(png_claiming(50_000, 50_000), "image/png"), 400, "pixels"),
    ("genuine 12000x12000 zlib-bomb PNG", file(zlib_bomb_png(12_000), "image/png"), 400, "larger than"),
    ("over the upload limit", file(os.urandom(2_100_000)), 413, "limit"),
    ("over the limit, no Content-Length", {"content": iter([
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.png"\r\n'
        b"Content-Type: image/png\r\n\r\n", *[b"x" * 500_000] * 5]),
        "headers": {"content-type": "multipart/form-data; boundary=b"}}, 413, "limit"),
    ("bad JSON", {"content": b'{"sop_instance_uid": ', "headers": {"content-type": "application/json"}},
     422, "not valid JSON"),
    ("JSON of the wrong shape", {"json": ["1.2.3"]}, 422, "invalid search request"),
    ("JSON k out of range", {"json": {"sop_instance_uid": "1.2.3", "k": 10**9}}, 422, "k"),
    ("text/plain body", {"content": b"hello", "headers": {"content-type": "text/plain"}}, 415, "multipart"),
    ("XML body", {"content": b"<a/>", "headers": {"content-type": "application/xml"}}, 415, "multipart"),
    ("file part declared text/html", file(png(picture(1, PICTURE_SIDE)), "text/html"), 415, "upload a DICOM"),
    ("broken multipart", {"content": b"--b\r\nContent-Disposition: form-data\r\n\r\nx",
                          "headers": {"content-type": "multipart/form-data; boundary=b"}}, 400, "multipart"),
    ("random bytes as a file", file(os.urandom(5000)), 400, "not a DICOM"),
]


def test_hostile_search_uploads_get_a_clear_4xx(deployment: Deployment) -> None:
    exits = len(deployment.exits)
    timings: dict[str, float] = {}
    with deployment.http() as client:
        for name, kwargs, status, message in HOSTILE_UPLOADS:
            started = time.monotonic()
            response = client.post("/v1/search", **kwargs)
            timings[name] = time.monotonic() - started
            assert response.status_code == status, (name, response.status_code, response.text[:300])
            assert message in response.json()["detail"], (name, response.json())
            assert timings[name] < 10, f"{name}: {timings[name]:.1f} s to refuse"
        health = client.get("/healthz")
        assert health.status_code == 200, health.text
        good = client.post("/v1/search", files={"file": ("q.png", png(picture(3, PICTURE_SIDE)), "image/png")})
        assert good.status_code == 200, good.text
    print("\n[hostile] search refusals: " + ", ".join(f"{n} {1000 * t:.0f} ms" for n, t in timings.items()))
    deployment.assert_no_exit_since(exits)


def test_deflated_dicom_bomb_upload_is_refused(deployment: Deployment) -> None:
    exits = len(deployment.exits)
    bomb = deflated_dicom_bomb(8_500)  # 72 MP (the PNG limit is 64 MP), 72 MB inflated, ~70 KB uploaded
    with deployment.http(timeout_s=120) as client:
        started = time.monotonic()
        response = client.post("/v1/search", **file(bomb, "application/dicom"))
        seconds = time.monotonic() - started
        print(f"\n[hostile] deflated DICOM bomb ({len(bomb)} bytes): {response.status_code} in {seconds:.1f} s")
        wait_until(lambda: client.get("/healthz").status_code == 200, 60, "search healthy after the bomb")
    deployment.assert_no_exit_since(exits)
    assert 400 <= response.status_code < 500 and seconds < 10, (response.status_code, seconds)
