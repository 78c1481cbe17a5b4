"""The Celery tasks: every stage of ``shared/pipeline``, registered on the worker's app.

:meth:`shared.pipeline.wiring.Runtime.host_stages` registers one task per stage
(``medhash.preprocess``, ``medhash.encode``, ``medhash.index``) through the runtime's
:class:`~shared.pipeline.queues.CeleryHost`; each task hands its catalog id to the stage's
``run``. The runtime builds its parts (object store client, catalog pool, publisher, and for
encode workers the model) on first use, after Celery's fork, so no connection and no CUDA
context is ever shared across processes. Transient errors (object store or catalog
unreachable) retry with exponential backoff and jitter; anything about the instance itself
is recorded in the catalog by the stage and is never retried.

Process layout (see README): ``preprocess`` workers are prefork, one process per core;
``encode`` workers run one process per GPU with a thread pool (``--pool threads``) so many
tasks feed one shared batch; the ``index`` worker is a single process (one index writer).
"""

from __future__ import annotations

from typing import Any

from celery.signals import worker_shutdown

from shared.config import get_settings
from shared.pipeline.wiring import Runtime
from workers.app import app

runtime = Runtime(get_settings(), celery_app=app)
"""This worker's runtime; nothing in it is built before the first task."""

runtime.host_stages()


@worker_shutdown.connect
def _close(**_: Any) -> None:
    """A stopping worker publishes what its indexer buffered rather than leaving it to the
    reconciler, and closes its connections."""
    runtime.close()
