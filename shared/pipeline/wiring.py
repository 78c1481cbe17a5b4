"""The one place a process is assembled: settings -> object store, catalog, stage host, stages.

Every medhash process builds one :class:`Runtime` from its settings and takes what it needs:
the listener its :attr:`~Runtime.ingestor`, a Celery worker the stages its queues name
(``workers/tasks.py``), the search service the :attr:`~Runtime.encoder`, ``medhash serve``
all of them on threads (:meth:`~Runtime.start_pipeline`). Each part is built once, on first
use, so a preprocess worker never loads the model, and the children of a prefork Celery
worker, which fork after ``workers.tasks`` built its runtime, each open their own
connections and CUDA context.

The embedded default and the distributed configuration differ only in what the settings
select here: which object store, which catalog database, and which host carries the queues
(threads of this process, or Celery on Redis for separate ``medhash worker`` processes).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Generic, TypeVar, overload

from shared.config import Settings
from shared.pipeline.forget import Forgetter
from shared.pipeline.ingest import Ingestor
from shared.pipeline.preprocess import PreprocessOptions, Preprocessor
from shared.pipeline.queues import (
    CeleryHost,
    Handler,
    StageHost,
    ThreadHost,
    create_celery_app,
)
from shared.pipeline.reconcile import Reconciler
from shared.pipeline.states import TRANSITIONS, Stage, StageRunner
from shared.storage.catalog import Catalog, open_catalog
from shared.storage.objectstore import ObjectStore, open_object_store

if TYPE_CHECKING:  # torch and faiss load only in the processes that encode, index or search
    from celery import Celery

    from shared.hashing.inference import BatchEncoder
    from shared.pipeline.encode import EncodeStage
    from shared.pipeline.index import Indexer

log = logging.getLogger("medhash.wiring")

T = TypeVar("T")


class once(Generic[T]):  # noqa: N801 - used like @property
    """A :class:`Runtime` part built on first access, exactly once even when threads race.

    An encode or index worker runs tasks on threads: two threads building the model (or the
    index writer) at once would load it twice, or give the index two writers.
    """

    def __init__(self, build: Callable[[Runtime], T]) -> None:
        self.build = build
        self.name = build.__name__
        self.__doc__ = build.__doc__
        self._lock = threading.RLock()

    @overload
    def __get__(self, runtime: None, owner: type[Runtime]) -> once[T]: ...
    @overload
    def __get__(self, runtime: Runtime, owner: type[Runtime]) -> T: ...
    def __get__(self, runtime: Runtime | None, owner: type[Runtime]) -> T | once[T]:
        if runtime is None:
            return self
        built = runtime.__dict__
        if self.name not in built:
            with self._lock:
                if self.name not in built:
                    built[self.name] = self.build(runtime)
        return built[self.name]


class Runtime:
    """One process's pipeline, built from its settings; :meth:`close` stops what was built."""

    def __init__(self, settings: Settings, *, celery_app: Celery | None = None) -> None:
        """``celery_app``: a Celery worker's own app (``workers.app``), so that its tasks
        register and publish on one app; other processes build their publishing app from
        ``settings`` when ``MEDHASH_BROKER_URL`` is set."""
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        self.settings = settings
        self._celery_app = celery_app

    @classmethod
    def from_settings(cls, settings: Settings) -> Runtime:
        return cls(settings)

    # --- what every process shares ------------------------------------------------------------

    @once
    def store(self) -> ObjectStore:
        """The object store: S3/MinIO, or a folder in the data dir."""
        return open_object_store(self.settings)

    @once
    def catalog(self) -> Catalog:
        """The catalog: PostgreSQL, or SQLite in the data dir."""
        return open_catalog(self.settings)

    @once
    def host(self) -> StageHost:
        """The queues: threads of this process, or Celery on ``MEDHASH_BROKER_URL``."""
        if self._celery_app is not None:
            return CeleryHost(self._celery_app)
        if self.settings.broker_url is None:
            return ThreadHost()
        return CeleryHost(create_celery_app(self.settings))

    @property
    def runs_stages(self) -> bool:
        """Whether this process consumes the queues itself (no ``MEDHASH_BROKER_URL``: the
        embedded default) rather than leaving them to ``medhash worker`` processes."""
        return self.settings.broker_url is None and self._celery_app is None

    # --- the stages ---------------------------------------------------------------------------

    @once
    def ingestor(self) -> Ingestor:
        """Stores what the listener receives and hands it to the preprocess stage."""
        return Ingestor(self.store, self.catalog, self.host)

    @once
    def preprocessor(self) -> Preprocessor:
        return Preprocessor(self.store, self.catalog, self.host,
                            PreprocessOptions.from_settings(self.settings))

    @once
    def encoder(self) -> BatchEncoder:
        """The model of ``MEDHASH_MODEL``, shared by the encode stage and the search service."""
        from shared.hashing.inference import open_encoder

        return open_encoder(self.settings)

    @once
    def encode_stage(self) -> EncodeStage:
        from shared.pipeline.encode import EncodeStage

        return EncodeStage(self.store, self.catalog, self.host, self.encoder)

    @once
    def indexer(self) -> Indexer:
        """The process's single index writer, flushing on its own thread."""
        from shared.pipeline.index import Indexer

        settings = self.settings
        writer = Indexer(self.store, self.catalog, self.encoder.model_version,
                         self.encoder.checkpoint.model.bits, shards=settings.index_shards,
                         flush_s=settings.index_flush_s,
                         compact_deltas=settings.index_compact_deltas)
        writer.start()
        return writer

    @once
    def forgetter(self) -> Forgetter:
        """Forgets patients and studies (``medhash forget``, the admin route, retention)."""
        return Forgetter(self.store, self.catalog)

    @once
    def reconciler(self) -> Reconciler:
        """Re-sends what sits too long in a state; not started until asked."""
        return Reconciler(self.catalog, self.host, self.settings, self.forgetter)

    def stage(self, stage: Stage) -> StageRunner:
        """The object that runs ``stage`` (built on first use)."""
        if stage is Stage.PREPROCESS:
            return self.preprocessor
        if stage is Stage.ENCODE:
            return self.encode_stage
        return self.indexer

    def concurrency(self, stage: Stage) -> int:
        """How many instances of ``stage`` this process runs at once on the embedded default."""
        if stage is Stage.PREPROCESS:
            return self.settings.worker_threads
        if stage is Stage.ENCODE:
            # twice as many feeding threads as a batch holds slices: while one batch runs, the
            # next one fills (with exactly a batch's worth, batches ran half full; bench/encode.py)
            return 2 * self.settings.encode_batch_size
        return 1  # the index has a single writer

    def host_stages(self) -> None:
        """Host every stage of the transition table on :attr:`host`.

        Each stage object is built on its first message, not here. Without ``MEDHASH_MODEL``
        the encode and index stages are not hosted: instances wait in ``preprocessed``.
        """
        for step in TRANSITIONS:
            if step.stage.needs_model and self.settings.model is None:
                continue
            self.host.host(step.stage, self._runner(step.stage), self.concurrency(step.stage))
        if self.settings.model is None:
            log.warning("MEDHASH_MODEL is not set: instances stop at `preprocessed` until it is")

    def _runner(self, stage: Stage) -> Handler:
        return lambda instance_id: self.stage(stage).run(instance_id)

    def start_pipeline(self) -> None:
        """What ``medhash serve`` runs beside the listener: on the embedded default every
        stage on threads of this process; in either configuration the reconciler."""
        if self.runs_stages:
            self.host_stages()
            if self.settings.model is not None:
                self.stage(Stage.INDEX)  # flushing from now on: forget jobs' tombstones too
        self.reconciler.start()

    def close(self) -> None:
        """Stop and close what was built, upstream first: no stage hands work to a stopped one."""
        built = self.__dict__
        if "reconciler" in built:
            self.reconciler.stop()
        if "host" in built:
            self.host.close()
        if "indexer" in built:
            self.indexer.stop()  # publishes what it buffered
        if "encoder" in built:
            self.encoder.close()
        if "catalog" in built:
            self.catalog.close()
