"""The Celery tasks: thin wrappers that hand a catalog id to the stage in ``shared/``.

Each worker process builds its runtime (object store client, catalog pool, publisher, and
for encode workers the model) on first use, after Celery's fork, so no connection and no
CUDA context is ever shared across processes. Transient errors (object store or catalog
unreachable) retry with exponential backoff and jitter; anything about the instance itself
is recorded in the catalog by the stage and is never retried.

Process layout (see README): ``preprocess`` workers are prefork, one process per core;
``encode`` workers run one process per GPU with a thread pool (``--pool threads``) so many
tasks feed one shared batch; the ``index`` worker is a single process (one index writer).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, TypeVar

from celery.signals import worker_shutdown

from shared.config import get_settings
from shared.pipeline.preprocess import PreprocessOptions, Preprocessor
from shared.pipeline.states import Stage
from shared.pipeline.wiring import Runtime
from shared.storage.catalog import CatalogUnavailable
from shared.storage.objectstore import ObjectStoreUnavailable
from workers.app import app

if TYPE_CHECKING:  # torch and faiss load only in the processes that encode or index
    from shared.pipeline.encode import EncodeStage
    from shared.pipeline.index import Indexer

TRANSIENT = (ObjectStoreUnavailable, CatalogUnavailable)
T = TypeVar("T")


def once_per_process(build: Callable[[], T]) -> Callable[[], T]:
    """Build on first use, exactly once even when the pool's threads race to it.

    An encode or index worker runs tasks on threads: two threads creating the model (or the
    index writer) at once would load it twice, or give the index two writers.
    """
    lock = threading.Lock()
    built: list[T] = []

    @wraps(build)
    def get() -> T:
        if not built:
            with lock:
                if not built:
                    built.append(build())
        return built[0]

    get.is_built = lambda: bool(built)  # type: ignore[attr-defined]
    return get
RETRY = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 20,
}


@once_per_process
def _runtime() -> Runtime:
    return Runtime.from_settings(get_settings())


@once_per_process
def _preprocessor() -> Preprocessor:
    runtime = _runtime()
    return Preprocessor(runtime.store, runtime.catalog, runtime.dispatcher,
                        PreprocessOptions.from_settings(runtime.settings))


@once_per_process
def encode_stage() -> EncodeStage:
    from shared.hashing.inference import open_encoder
    from shared.pipeline.encode import EncodeStage

    runtime = _runtime()
    return EncodeStage(runtime.store, runtime.catalog, runtime.dispatcher, open_encoder(runtime.settings))


@once_per_process
def indexer() -> Indexer:
    """The process's single index writer, flushing on its own thread."""
    from shared.pipeline.index import Indexer

    runtime = _runtime()
    encoder = encode_stage().encoder  # the model version and bits come from the checkpoint
    settings = runtime.settings
    writer = Indexer(runtime.store, runtime.catalog, encoder.model_version,
                     encoder.checkpoint.model.bits, shards=settings.index_shards,
                     flush_s=settings.index_flush_s, compact_deltas=settings.index_compact_deltas)
    writer.start()
    return writer


@app.task(name=Stage.PREPROCESS.task_name, **RETRY)
def preprocess(instance_id: int) -> str | None:
    """Decode, normalise, resize and clean one instance's frames into slices."""
    state = _preprocessor().run(int(instance_id))
    return state.value if state else None


@app.task(name=Stage.ENCODE.task_name, **RETRY)
def encode(instance_id: int) -> str | None:
    """Hash one instance's slices (batched with other tasks of this process)."""
    state = encode_stage().run(int(instance_id))
    return state.value if state else None


@app.task(name=Stage.INDEX.task_name, **RETRY)
def index(instance_id: int) -> None:
    """Buffer one instance's codes for the next index generation."""
    indexer().run(int(instance_id))


@worker_shutdown.connect
def _publish_before_exit(**_: Any) -> None:
    """A stopping indexer publishes what it buffered rather than leaving it to the reconciler."""
    if indexer.is_built():  # type: ignore[attr-defined]
        indexer().stop()
