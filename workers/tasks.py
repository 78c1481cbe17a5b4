"""The Celery tasks: thin wrappers that hand a catalog id to the stage in ``shared/``.

Each worker process builds its runtime (object store client, catalog pool, publisher) on
first use, after Celery's fork, so no connection is ever shared across processes.
Transient errors (object store or catalog unreachable) retry with exponential backoff and
jitter; anything about the instance itself is recorded in the catalog by the stage and is
never retried.
"""

from __future__ import annotations

from functools import lru_cache

from shared.runtime import Runtime
from shared.catalog import CatalogUnavailable
from shared.config import get_settings
from shared.objectstore import ObjectStoreUnavailable
from shared.preprocess import PreprocessOptions, Preprocessor
from shared.queue import Stage
from workers.app import app

TRANSIENT = (ObjectStoreUnavailable, CatalogUnavailable)


@lru_cache(maxsize=1)
def _preprocessor() -> Preprocessor:
    settings = get_settings()
    runtime = Runtime.from_settings(settings)
    return Preprocessor(
        runtime.store, runtime.catalog, runtime.dispatcher, PreprocessOptions.from_settings(settings)
    )


@app.task(
    name=Stage.PREPROCESS.task_name,
    autoretry_for=TRANSIENT,
    retry_backoff=2,
    retry_backoff_max=120,
    retry_jitter=True,
    max_retries=20,
)
def preprocess(instance_id: int) -> str | None:
    """Decode, normalise, resize and clean one instance's frames into slices."""
    state = _preprocessor().run(int(instance_id))
    return state.value if state else None
