"""The Celery application: ``celery -A workers.app worker -Q preprocess`` starts a CPU worker.

Reliability settings, chosen on purpose:

- ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only after
  its task finished, and a worker killed mid-task (``kill -9``, OOM) puts it back.
- ``worker_prefetch_multiplier=1``: long tasks are not hoarded by one busy worker.
- ``visibility_timeout``: how long Redis waits for an acknowledgement before redelivering;
  longer than the slowest task so a healthy task is not run twice in parallel.
- Publishing retries briefly, then gives up: the catalog-driven reconciler re-sends any
  instance that sits too long in a state, so a message that never reached Redis is not lost.
"""

from __future__ import annotations

from celery import Celery
from kombu import Queue

from shared.config import Settings, get_settings
from shared.pipeline.states import Stage

VISIBILITY_TIMEOUT_S = 3600


def create_celery_app(settings: Settings) -> Celery:
    broker = settings.broker_url or "memory://"
    app = Celery("medhash", broker=broker, include=["workers.tasks"])
    app.conf.update(
        task_queues=[Queue(stage.value) for stage in Stage],
        task_default_queue=Stage.PREPROCESS.value,
        task_routes={stage.task_name: {"queue": stage.value} for stage in Stage},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_transport_options={"visibility_timeout": VISIBILITY_TIMEOUT_S},
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=5,
        task_publish_retry=True,
        task_publish_retry_policy={
            "max_retries": 2,
            "interval_start": 0.2,
            "interval_step": 0.5,
            "interval_max": 1.0,
        },
        worker_hijack_root_logger=False,
    )
    return app


app = create_celery_app(get_settings())
