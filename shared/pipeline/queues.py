"""Telling the pipeline "there is work": Celery queues when distributed, threads when embedded.

A message carries only a catalog instance id. The catalog says what state the instance is
in, so a lost message costs time, not data (the reconciler re-sends it), and a duplicated
one is harmless (tasks are idempotent). Publishing happens on a background thread: a slow
or dead broker must never hold up a C-STORE answer.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Protocol

from shared.pipeline.states import InstanceState, Stage, stage_for

log = logging.getLogger("medhash.queue")

Handler = Callable[[int], object]  # a stage returns the state it reached; the queue ignores it


class Dispatcher(Protocol):
    def enqueue(self, stage: Stage, instance_id: int) -> None:
        """Ask for ``instance_id`` to be processed by ``stage``; never blocks for long."""
        ...

    def close(self) -> None: ...


def hand_over(queues: Dispatcher, instance_id: int, reached: InstanceState) -> None:
    """Enqueue the instance for the stage the transition table names for the state it
    reached; nothing once it is final."""
    stage = stage_for(reached)
    if stage is not None:
        queues.enqueue(stage, instance_id)


class InProcessDispatcher:
    """The embedded default: one queue per stage, consumed by worker threads in this process.

    A stage without a registered handler keeps its messages until one is registered; they
    are lost when the process exits, which the catalog-driven reconciler makes harmless.
    """

    def __init__(self) -> None:
        self._queues: dict[Stage, queue.Queue[int | None]] = {s: queue.Queue() for s in Stage}
        self._threads: list[threading.Thread] = []

    def register(self, stage: Stage, handler: Handler, threads: int = 1) -> None:
        for number in range(threads):
            thread = threading.Thread(
                target=self._consume,
                args=(stage, handler),
                name=f"medhash-{stage.value}-{number}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)

    def _consume(self, stage: Stage, handler: Handler) -> None:
        work = self._queues[stage]
        while (instance_id := work.get()) is not None:
            try:
                handler(instance_id)
            except Exception:
                log.exception("stage=%s instance_id=%s handler failed", stage, instance_id)

    def enqueue(self, stage: Stage, instance_id: int) -> None:
        self._queues[stage].put(instance_id)

    def pending(self, stage: Stage) -> int:
        return self._queues[stage].qsize()

    def close(self) -> None:
        for thread in self._threads:
            self._queues[Stage(thread.name.split("-")[1])].put(None)
        for thread in self._threads:
            thread.join(timeout=10)


class CeleryDispatcher:
    """The distributed configuration: Celery messages on Redis, sent by a publisher thread."""

    def __init__(self, send_task: Callable[..., object]) -> None:
        self._send_task = send_task
        self._outbox: queue.Queue[tuple[Stage, int] | None] = queue.Queue()
        self._publisher = threading.Thread(
            target=self._publish, name="medhash-publisher", daemon=True
        )
        self._publisher.start()

    def _publish(self) -> None:
        while (item := self._outbox.get()) is not None:
            stage, instance_id = item
            try:
                self._send_task(stage.task_name, args=[instance_id], queue=stage.value)
            except Exception as exc:  # the reconciler re-sends what the broker did not take
                log.warning(
                    "stage=%s instance_id=%s enqueue failed, left to the reconciler: %s",
                    stage, instance_id, exc,
                )
            finally:
                self._outbox.task_done()

    def enqueue(self, stage: Stage, instance_id: int) -> None:
        self._outbox.put((stage, instance_id))

    def flush(self) -> None:
        """Wait until every message handed over so far was published (or given up)."""
        self._outbox.join()

    def close(self) -> None:
        self._outbox.put(None)
        self._publisher.join(timeout=10)
