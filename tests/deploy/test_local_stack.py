"""deploy/local_stack.py restarts what exits, as the compose and Kubernetes restart policies do."""
from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

import deploy.local_stack as local_stack

pytestmark = pytest.mark.unit


def test_supervise_restarts_an_exited_process_until_stopped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # `medhash --help` exits at once: a stand-in for a worker that died
    monkeypatch.setattr(local_stack, "PROCESSES", {"short-lived": ["--help"]})
    stack = local_stack.LocalStack({**os.environ, "MEDHASH_METRICS_PORT": "0"}, tmp_path)
    stack.spawn("short-lived")
    first = stack.processes["short-lived"]
    supervisor = stack.supervisor(poll_s=0.1, backoff_s=1.0)
    supervisor.start()
    try:
        first.wait(timeout=60)
        deadline = time.monotonic() + 30
        while stack.processes["short-lived"] is first and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        supervisor.stop()
    assert stack.processes["short-lived"] is not first
    restarted = stack.processes["short-lived"]
    restarted.wait(timeout=60)
    time.sleep(1.5)  # past the back-off: a supervisor still running would restart it again
    assert stack.processes["short-lived"] is restarted, "the supervisor kept running after stop()"
    assert "restarted after exit code 0" in (tmp_path / "short-lived.log").read_text()
