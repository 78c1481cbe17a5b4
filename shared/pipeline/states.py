"""Where an instance is in the pipeline, and which stage moves it on: the one transition table.

The catalog is the source of truth; queues only hint. Every stage takes an instance out of
one non-final state and hands it to whichever stage :data:`TRANSITIONS` names for the state
it reached; the reconciler re-sends stuck instances along the same table. A stage therefore
never names its successor, and adding a stage is one row here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol


class InstanceState(StrEnum):
    """received -> preprocessed -> encoded -> indexed, or failed / skipped with a reason."""

    RECEIVED = "received"
    PREPROCESSED = "preprocessed"
    ENCODED = "encoded"
    INDEXED = "indexed"
    FAILED = "failed"
    SKIPPED = "skipped"


class Stage(StrEnum):
    """A pipeline stage, and the queue its workers consume (named after it)."""

    PREPROCESS = "preprocess"
    ENCODE = "encode"
    INDEX = "index"

    @property
    def task_name(self) -> str:
        """The Celery task that runs the stage on a worker."""
        return f"medhash.{self.value}"

    @property
    def needs_model(self) -> bool:
        """Encode and index work with one model version's codes: they wait for ``MEDHASH_MODEL``."""
        return self is not Stage.PREPROCESS


@dataclass(frozen=True)
class Transition:
    """``stage`` takes an instance out of ``source``; on success it has reached ``target``."""

    source: InstanceState
    stage: Stage
    target: InstanceState


TRANSITIONS: tuple[Transition, ...] = (
    Transition(InstanceState.RECEIVED, Stage.PREPROCESS, InstanceState.PREPROCESSED),
    Transition(InstanceState.PREPROCESSED, Stage.ENCODE, InstanceState.ENCODED),
    Transition(InstanceState.ENCODED, Stage.INDEX, InstanceState.INDEXED),
)
"""The pipeline, in order: one row per non-final state."""

_OUT_OF: dict[InstanceState, Stage] = {row.source: row.stage for row in TRANSITIONS}


def stage_for(state: InstanceState) -> Stage | None:
    """The stage that takes an instance out of ``state``; None for a final state."""
    return _OUT_OF.get(state)


class StageRunner(Protocol):
    """What every stage exposes, whichever host (threads or Celery) runs it."""

    def run(self, instance_id: int) -> InstanceState | None:
        """Do the stage's work for one instance if it is still in the stage's source state.

        Returns the state the instance reached, or None when this call moved nothing (an
        earlier delivery already did the work, or the stage only buffered it). Safe to call
        any number of times for the same instance.
        """
        ...
