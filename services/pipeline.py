"""Every stage of the pipeline inside one process: the embedded default of ``medhash serve``.

The same stage objects the Celery workers run, registered on the in-process queues:
preprocess threads, encode threads feeding one shared batch encoder, one indexer writing
generations, and the reconciler. Without ``MEDHASH_MODEL`` only preprocessing runs; the
encode and index stages start once a model is configured.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from shared.hashing.inference import BatchEncoder, open_encoder
from shared.pipeline.encode import EncodeStage
from shared.pipeline.index import Indexer
from shared.pipeline.preprocess import PreprocessOptions, Preprocessor
from shared.pipeline.queues import InProcessDispatcher
from shared.pipeline.reconcile import Reconciler
from shared.pipeline.states import Stage
from shared.pipeline.wiring import Runtime

log = logging.getLogger("medhash.pipeline")


@dataclass
class EmbeddedPipeline:
    runtime: Runtime
    encoder: BatchEncoder | None = None
    indexer: Indexer | None = None
    reconciler: Reconciler | None = field(default=None, init=False)

    @classmethod
    def start(cls, runtime: Runtime) -> EmbeddedPipeline:
        settings = runtime.settings
        dispatcher = runtime.dispatcher
        if not isinstance(dispatcher, InProcessDispatcher):
            raise ValueError("the in-process pipeline needs the embedded queues (no MEDHASH_BROKER_URL)")
        preprocessor = Preprocessor(runtime.store, runtime.catalog, dispatcher,
                                    PreprocessOptions.from_settings(settings))
        dispatcher.register(Stage.PREPROCESS, preprocessor.run, settings.worker_threads)
        pipeline = cls(runtime)
        if settings.model is not None:
            pipeline.encoder = open_encoder(settings)
            stage = EncodeStage(runtime.store, runtime.catalog, dispatcher, pipeline.encoder)
            # twice as many feeding threads as a batch holds slices: while one batch runs, the
            # next one fills (with exactly a batch's worth, batches ran half full; bench/encode.py)
            dispatcher.register(Stage.ENCODE, stage.run, 2 * settings.encode_batch_size)
            pipeline.indexer = Indexer(
                runtime.store, runtime.catalog, pipeline.encoder.model_version,
                pipeline.encoder.checkpoint.model.bits, shards=settings.index_shards,
                flush_s=settings.index_flush_s, compact_deltas=settings.index_compact_deltas,
            )
            dispatcher.register(Stage.INDEX, pipeline.indexer.run, 1)
            pipeline.indexer.start()
        else:
            log.warning("MEDHASH_MODEL is not set: instances stop at `preprocessed` until it is")
        pipeline.reconciler = Reconciler(runtime.catalog, dispatcher, settings)
        pipeline.reconciler.start()
        return pipeline

    def stop(self) -> None:
        if self.reconciler is not None:
            self.reconciler.stop()
        self.runtime.dispatcher.close()
        if self.indexer is not None:
            self.indexer.stop()
        if self.encoder is not None:
            self.encoder.close()
