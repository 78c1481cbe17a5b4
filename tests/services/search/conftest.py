"""Fixtures of the search tests: a tiny untrained checkpoint, and a pipeline that stores,
preprocesses, encodes and indexes synthetic instances for real (``shared/`` end to end).

An untrained model is enough here: its codes are deterministic, so a stored image queried
again lands on its own code at distance 0, and the tests check plumbing, not retrieval
quality (that is ``medhash evaluate``'s job).
"""

from __future__ import annotations

import io
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI
from PIL import Image
from pydicom.dataset import Dataset

from shared.config import Settings
from shared.dicom.synthetic import StudyIds, make_ct, make_secondary_capture
from shared.hashing.checkpoint import load_checkpoint
from shared.hashing.inference import BatchEncoder
from shared.pipeline.encode import EncodeStage
from shared.pipeline.index import Indexer
from shared.pipeline.ingest import Ingestor, StoreStatus
from shared.pipeline.preprocess import PreprocessOptions, Preprocessor
from shared.pipeline.wiring import Runtime
from testbed.lsh_model import build_lsh_checkpoint, picture

IMAGE_SIZE = 48
"""Side of the stored slices (small: fast to preprocess, encode and thumbnail)."""


def search_settings(data_dir: Path) -> Settings:
    """The embedded default in ``data_dir``; no server, no port, nothing from the environment."""
    return Settings(data_dir=data_dir, dicom_host="127.0.0.1", dicom_port=0, metrics_port=0,
                    database_url=None, broker_url=None, s3_endpoint=None, model=None,
                    image_size=IMAGE_SIZE)


def png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def part10(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def multiframe_capture(ids: StudyIds, number: int, frames: list[np.ndarray]) -> Dataset:
    """A multi-frame 8-bit Secondary Capture (``make_secondary_capture`` makes one frame)."""
    ds = make_secondary_capture(ids, number, frames[0])
    ds.NumberOfFrames = len(frames)
    ds.PixelData = np.stack(frames).tobytes()
    return ds


@pytest.fixture(scope="session")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_lsh_checkpoint(tmp_path_factory.mktemp("model") / "model.pt")


@pytest.fixture(scope="session")
def encoder(checkpoint: Path) -> Iterator[BatchEncoder]:
    batch_encoder = BatchEncoder(load_checkpoint(checkpoint), batch_size=16, max_wait_s=0.002)
    yield batch_encoder
    batch_encoder.close()


@dataclass
class Pipeline:
    """Store -> preprocess -> encode -> index, run synchronously, one instance at a time."""

    runtime: Runtime
    encoder: BatchEncoder
    compact_deltas: int = 32
    indexer: Indexer = field(init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        bits = 8 * self.encoder.encode([np.zeros((IMAGE_SIZE, IMAGE_SIZE), np.float32)]).shape[1]
        self.indexer = Indexer(self.runtime.store, self.runtime.catalog,
                               self.encoder.model_version, bits, shards=2,
                               compact_deltas=self.compact_deltas)
        self.ingestor = Ingestor(self.runtime.store, self.runtime.catalog, self.runtime.host)
        self.preprocessor = Preprocessor(self.runtime.store, self.runtime.catalog,
                                         self.runtime.host,
                                         PreprocessOptions.from_settings(self.runtime.settings))
        self.encode_stage = EncodeStage(self.runtime.store, self.runtime.catalog,
                                        self.runtime.host, self.encoder)

    def add(self, ds: Dataset) -> int:
        """Store an instance and run it through every stage up to the indexer's buffer."""
        outcome = self.ingestor.store_instance(
            part10(ds), sop_instance_uid=ds.SOPInstanceUID, sop_class_uid=ds.SOPClassUID,
            transfer_syntax_uid=ds.file_meta.TransferSyntaxUID)
        assert outcome.status is StoreStatus.SUCCESS and outcome.instance_id is not None
        self.preprocessor.run(outcome.instance_id)
        self.encode_stage.run(outcome.instance_id)
        with self._lock:
            self.indexer.run(outcome.instance_id)
        return outcome.instance_id

    def publish(self) -> int:
        """Flush the indexer: a new generation holding everything added so far."""
        with self._lock:
            generation = self.indexer.flush()
        assert generation is not None
        return generation


@contextmanager
def pipeline_in(data_dir: Path, encoder: BatchEncoder, compact_deltas: int = 32) -> Iterator[Pipeline]:
    runtime = Runtime.from_settings(search_settings(data_dir))
    try:
        yield Pipeline(runtime, encoder, compact_deltas)
    finally:
        runtime.close()


@dataclass(frozen=True)
class World:
    """A published index over a few instances of every kind the search must handle."""

    pipeline: Pipeline
    pictures: dict[str, np.ndarray]
    """8-bit pixels of each Secondary Capture, by SOP Instance UID."""
    ct_uid: str
    blank_uid: str
    multiframe_uid: str
    frames: list[np.ndarray]
    """8-bit pixels of the multi-frame instance's frames."""


WORLD_PICTURES = 10


@pytest.fixture(scope="session")
def world(tmp_path_factory: pytest.TempPathFactory, encoder: BatchEncoder) -> Iterator[World]:
    """Shared by the read-only tests: ten pictures as Secondary Captures of two modalities, a
    windowed 16-bit CT, a blank picture the cleaning excludes, and a three-frame instance."""
    with pipeline_in(tmp_path_factory.mktemp("world"), encoder) as pipeline:
        ids = StudyIds.new(patient_id="PAT-SECRET-42")
        pictures: dict[str, np.ndarray] = {}
        for number in range(WORLD_PICTURES):
            pixels = picture(number)
            ds = make_secondary_capture(ids, number + 1, pixels, modality="MR" if number % 2 else "XC",
                                        body_part="HEAD" if number % 2 else "SKIN")
            pipeline.add(ds)
            pictures[ds.SOPInstanceUID] = pixels
        ct = make_ct(ids, 50, rows=96, columns=96, seed=3)
        pipeline.add(ct)
        blank = make_secondary_capture(ids, 60, np.zeros((64, 64), np.uint8))
        pipeline.add(blank)
        frames = [picture(seed) for seed in (20, 21, 22)]
        multiframe = multiframe_capture(ids, 70, frames)
        pipeline.add(multiframe)
        pipeline.publish()
        yield World(pipeline, pictures, ct.SOPInstanceUID, blank.SOPInstanceUID,
                    multiframe.SOPInstanceUID, frames)


@contextmanager
def served(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a thread; yields its base URL."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()
