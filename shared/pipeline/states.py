"""Where an instance is in the pipeline. The catalog is the source of truth; queues only hint."""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    """received -> preprocessed -> encoded -> indexed, or failed / skipped with a reason."""

    RECEIVED = "received"
    PREPROCESSED = "preprocessed"
    ENCODED = "encoded"
    INDEXED = "indexed"
    FAILED = "failed"
    SKIPPED = "skipped"

    @property
    def is_final(self) -> bool:
        return self in {InstanceState.INDEXED, InstanceState.FAILED, InstanceState.SKIPPED}
