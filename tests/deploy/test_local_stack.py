"""deploy/local_stack.py restarts what exits, as the compose and Kubernetes restart policies do."""
from __future__ import annotations

import os
import threading
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
    stop = threading.Event()
    supervisor = threading.Thread(target=stack.supervise, args=(stop,), kwargs={"poll_s": 0.1, "backoff_s": 1.0})
    supervisor.start()
    try:
        first.wait(timeout=60)
        deadline = time.monotonic() + 30
        while stack.processes["short-lived"] is first and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        stop.set()
        supervisor.join(timeout=10)
    assert not supervisor.is_alive()
    assert stack.processes["short-lived"] is not first
    assert "restarted after exit code 0" in (tmp_path / "short-lived.log").read_text()
    stack.processes["short-lived"].wait(timeout=60)
