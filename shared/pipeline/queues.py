"""Telling the pipeline "there is work", and running the stages that do it: the stage hosts.

A :class:`StageHost` carries messages to the stages and runs them; there are two, with one
shape, so no caller ever asks which one it has:

- :class:`ThreadHost`, the embedded default: one queue per stage in this process, consumed
  by worker threads that :meth:`~ThreadHost.host` starts.
- :class:`CeleryHost`, the distributed configuration: Celery messages on Redis; hosting a
  stage registers its task on the Celery app, and a ``medhash worker`` process consuming the
  stage's queue runs it.

A message carries only a catalog instance id. The catalog says what state the instance is
in, so a lost message costs time, not data (the reconciler re-sends it), and a duplicated
one is harmless (stages are idempotent). Publishing to Redis happens on a background thread:
a slow or dead broker must never hold up a C-STORE answer.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

from shared.config import Settings
from shared.pipeline.states import InstanceState, Stage, stage_for
from shared.storage.catalog import CatalogUnavailable
from shared.storage.objectstore import ObjectStoreUnavailable

if TYPE_CHECKING:  # Celery loads only in processes that use the distributed configuration
    from celery import Celery

log = logging.getLogger("medhash.queue")

Handler = Callable[[int], InstanceState | None]
"""A stage's ``run``: takes a catalog instance id, returns the state it reached (or None)."""


class StageHost(Protocol):
    """Carries instance ids to the pipeline's stages and runs the stages hosted on it."""

    def enqueue(self, stage: Stage, instance_id: int) -> None:
        """Ask for ``instance_id`` to be processed by ``stage``; never blocks for long."""
        ...

    def host(self, stage: Stage, handler: Handler, concurrency: int) -> None:
        """Run ``handler`` for every message of ``stage``, up to ``concurrency`` at a time."""
        ...

    def pending(self, stage: Stage) -> int:
        """Messages waiting in ``stage``'s queue (those handed over so far included)."""
        ...

    def close(self) -> None:
        """Stop consuming and publishing; messages still queued are left to the reconciler."""
        ...


def hand_over(host: StageHost, instance_id: int, reached: InstanceState) -> None:
    """Enqueue the instance for the stage the transition table names for the state it
    reached; nothing once it is final."""
    stage = stage_for(reached)
    if stage is not None:
        host.enqueue(stage, instance_id)


class ThreadHost:
    """The embedded default: one queue per stage, consumed by worker threads in this process.

    A stage nobody hosts keeps its messages until it is hosted; they are lost when the
    process exits, which the catalog-driven reconciler makes harmless.
    """

    def __init__(self) -> None:
        self._queues: dict[Stage, queue.Queue[int | None]] = {s: queue.Queue() for s in Stage}
        self._threads: list[tuple[Stage, threading.Thread]] = []

    def host(self, stage: Stage, handler: Handler, concurrency: int) -> None:
        for number in range(concurrency):
            thread = threading.Thread(
                target=self._consume,
                args=(stage, handler),
                name=f"medhash-{stage.value}-{number}",
                daemon=True,
            )
            thread.start()
            self._threads.append((stage, thread))

    def _consume(self, stage: Stage, handler: Handler) -> None:
        work = self._queues[stage]
        while (instance_id := work.get()) is not None:
            try:
                handler(instance_id)
            except Exception:  # noqa: BLE001 - one instance's failure must not stop the thread
                log.exception("stage=%s instance_id=%s handler failed", stage, instance_id)

    def enqueue(self, stage: Stage, instance_id: int) -> None:
        self._queues[stage].put(instance_id)

    def pending(self, stage: Stage) -> int:
        return self._queues[stage].qsize()

    def close(self) -> None:
        for stage, _ in self._threads:
            self._queues[stage].put(None)
        for _, thread in self._threads:
            thread.join(timeout=10)


VISIBILITY_TIMEOUT_S = 3600
"""How long Redis waits for a task's acknowledgement before redelivering it: longer than the
slowest task, so a healthy task is never run twice in parallel."""

TRANSIENT = (ObjectStoreUnavailable, CatalogUnavailable)
"""Errors that are not the instance's fault: a task that meets one is retried."""

RETRY: dict[str, Any] = {
    "autoretry_for": TRANSIENT,
    "retry_backoff": 2,
    "retry_backoff_max": 120,
    "retry_jitter": True,
    "max_retries": 20,
}
"""Exponential backoff with jitter for transient errors; anything about the instance itself
is recorded in the catalog by the stage and never retried."""


def create_celery_app(settings: Settings, include: Sequence[str] = ()) -> Celery:
    """The Celery app of the distributed configuration, for publishers and workers alike.

    Reliability settings, chosen on purpose:

    - ``task_acks_late`` + ``task_reject_on_worker_lost``: a message is acknowledged only
      after its task finished, and a worker killed mid-task (``kill -9``, OOM) puts it back.
    - ``worker_prefetch_multiplier=1``: long tasks are not hoarded by one busy worker.
    - ``visibility_timeout``: see :data:`VISIBILITY_TIMEOUT_S`.
    - Publishing retries briefly, then gives up: the catalog-driven reconciler re-sends any
      instance that sits too long in a state, so a message that never reached Redis is not
      lost.

    ``include`` names the modules a worker imports to register its tasks (``workers.app``
    passes ``workers.tasks``); a process that only publishes needs none.
    """
    from celery import Celery
    from kombu import Queue

    app = Celery("medhash", broker=settings.broker_url or "memory://", include=list(include))
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


class CeleryHost:
    """The distributed configuration: Celery messages on Redis, sent by a publisher thread.

    The publisher starts on the first message, in the process that sends it: a prefork
    worker's children fork after the host is built, and a thread does not survive a fork.
    """

    def __init__(self, app: Celery) -> None:
        self.app = app
        self._outbox: queue.Queue[tuple[Stage, int] | None] = queue.Queue()
        self._publisher: threading.Thread | None = None
        self._publisher_pid = 0
        self._lock = threading.Lock()

    def host(self, stage: Stage, handler: Handler, concurrency: int) -> None:
        """Register ``handler`` as the stage's Celery task (see :data:`RETRY`).

        A worker started with ``-Q <stage>`` runs it; how many at a time is that worker's
        ``--concurrency``, so ``concurrency`` is not used here.
        """
        def run(instance_id: int) -> str | None:
            state = handler(int(instance_id))
            return state.value if state else None

        run.__name__ = run.__qualname__ = stage.value
        run.__doc__ = f"Run the {stage.value} stage for one catalog instance id."
        self.app.task(name=stage.task_name, **RETRY)(run)

    def enqueue(self, stage: Stage, instance_id: int) -> None:
        self._start_publisher()
        self._outbox.put((stage, instance_id))

    def _start_publisher(self) -> None:
        with self._lock:
            if self._publisher is None or self._publisher_pid != os.getpid():
                self._outbox = queue.Queue()  # a forked copy holds the parent's unsent items
                self._publisher = threading.Thread(
                    target=self._publish, args=(self._outbox,), name="medhash-publisher",
                    daemon=True,
                )
                self._publisher_pid = os.getpid()
                self._publisher.start()

    def _publish(self, outbox: queue.Queue[tuple[Stage, int] | None]) -> None:
        while (item := outbox.get()) is not None:
            stage, instance_id = item
            try:
                self.app.send_task(stage.task_name, args=[instance_id], queue=stage.value)
            except Exception as exc:  # noqa: BLE001 - the reconciler re-sends what the broker did not take
                log.warning(
                    "stage=%s instance_id=%s enqueue failed, left to the reconciler: %s",
                    stage, instance_id, exc,
                )
            finally:
                outbox.task_done()

    def flush(self) -> None:
        """Wait until every message handed over so far was published (or given up)."""
        self._outbox.join()

    def pending(self, stage: Stage) -> int:
        """Messages in the stage's Redis queue, once everything handed over was published."""
        self.flush()
        with self.app.connection_for_read() as connection:
            return int(connection.default_channel.queue_declare(queue=stage.value).message_count)

    def close(self) -> None:
        with self._lock:
            if self._publisher is not None and self._publisher_pid == os.getpid():
                self._outbox.put(None)
                self._publisher.join(timeout=10)
            self._publisher = None
