"""shared/background.py: the one periodic loop keeps going through failing rounds and stops."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from shared.background import Periodic

pytestmark = pytest.mark.unit


class Outage(Exception):
    """Stands in for a catalog or object store that is briefly unreachable."""


def test_failing_rounds_are_logged_and_the_next_round_runs(caplog: pytest.LogCaptureFixture) -> None:
    rounds: list[int] = []
    done = threading.Event()

    def tick() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise Outage("catalog unreachable")
        if len(rounds) == 2:
            raise ValueError("a bug")
        done.set()

    loop = Periodic("probe", 0.01, tick, expected=(Outage,))
    with caplog.at_level(logging.WARNING, logger="medhash.background"):
        loop.start()
        try:
            assert done.wait(timeout=30), "the loop stopped after a failing round"
        finally:
            loop.stop()
    messages = [(record.levelno, record.getMessage(), record.exc_info is not None) for record in caplog.records]
    assert (logging.WARNING, "probe round failed, retrying in 0.01 s: catalog unreachable", False) in messages
    assert (logging.ERROR, "probe round failed, retrying in 0.01 s", True) in messages


def test_stop_ends_the_rounds() -> None:
    rounds: list[float] = []
    loop = Periodic("probe", 0.01, lambda: rounds.append(time.monotonic()))
    loop.start()
    deadline = time.monotonic() + 30
    while len(rounds) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    loop.stop()
    after_stop = len(rounds)
    time.sleep(0.1)
    assert after_stop >= 3 and len(rounds) == after_stop
