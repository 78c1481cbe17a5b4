"""The transition table: one stage out of every non-final state, none out of a final one,
and each stage's target is the next stage's source (one chain, no gaps)."""

from __future__ import annotations

import pytest

from shared.pipeline.states import TRANSITIONS, InstanceState, Stage, stage_for

pytestmark = pytest.mark.unit


FINAL = {InstanceState.INDEXED, InstanceState.FAILED, InstanceState.SKIPPED}


def test_every_non_final_state_has_exactly_one_stage_out() -> None:
    sources = [row.source for row in TRANSITIONS]
    assert sorted(sources) == sorted(set(InstanceState) - FINAL)
    for state in InstanceState:
        assert (stage_for(state) is None) == (state in FINAL)


def test_the_rows_chain_received_to_indexed_through_every_stage() -> None:
    assert TRANSITIONS[0].source is InstanceState.RECEIVED
    for before, after in zip(TRANSITIONS, TRANSITIONS[1:], strict=False):
        assert before.target is after.source
    assert TRANSITIONS[-1].target is InstanceState.INDEXED
    assert [row.stage for row in TRANSITIONS] == list(Stage)
