"""The distributed topology without Docker: every medhash service as its own local process.

    python deploy/local_stack.py          # MEDHASH_DATABASE_URL, _BROKER_URL, _S3_*, _MODEL set

starts the listener, the search service, the indexer, the reconciler, two preprocess (CPU)
workers and one encode worker, exactly the processes docker-compose.yml and the Kubernetes
manifests run, restarts any that exits (as their restart policies do), and stops them all on
Ctrl-C. The integration tests use :class:`LocalStack`
to run the same topology against the PostgreSQL, Redis and S3 servers they start.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from shared.background import Periodic, wait_for_signal

# name -> `medhash` arguments; the worker layout of docs/operations.md
PROCESSES: dict[str, list[str]] = {
    "listener": ["listener"],
    "search": ["search"],
    "indexer": ["indexer"],
    "reconciler": ["reconciler"],
    "preprocess-1": ["worker", "--queues", "preprocess", "--concurrency", "1"],
    "preprocess-2": ["worker", "--queues", "preprocess", "--concurrency", "1"],
    # twice MEDHASH_ENCODE_BATCH_SIZE (32) threads, so the next batch fills while one runs
    "encode-1": ["worker", "--queues", "encode", "--pool", "threads", "--concurrency", "64"],
}


@dataclass
class LocalStack:
    """Starts :data:`PROCESSES` with one environment; logs go to ``log_dir/<name>.log``."""

    env: dict[str, str]
    log_dir: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _started_at: dict[str, float] = field(default_factory=dict)

    def start(self, timeout_s: float = 120.0) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        for name in PROCESSES:
            self.spawn(name)
        self.wait_for_search(timeout_s)

    def spawn(self, name: str, note: str = "") -> None:
        """Start (or start again) one of :data:`PROCESSES`, appending to its log."""
        # one host, several exporters: each process gets its own metrics port (0 = off)
        metrics_base = int(self.env.get("MEDHASH_METRICS_PORT", "9108"))
        number = list(PROCESSES).index(name)
        env = {**self.env, "MEDHASH_METRICS_PORT": str(metrics_base + number if metrics_base else 0)}
        with (self.log_dir / f"{name}.log").open("ab") as log:
            if note:
                log.write(f"\n--- {note} {time.strftime('%H:%M:%S')}\n".encode())
            self.processes[name] = subprocess.Popen(
                [sys.executable, "-m", "medhash.cli", *PROCESSES[name]], env=env,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            )

    def supervisor(self, poll_s: float = 1.0, backoff_s: float = 5.0) -> Periodic:
        """A loop (not started) restarting any process that exits, as docker-compose's
        ``restart: unless-stopped`` and a Kubernetes Deployment do.

        Why: Celery's threads-pool workers (encode, indexer) can exit on a Redis restart
        (a kombu AttributeError while restoring unacknowledged messages) and a worker may
        die of anything else; nothing is lost (the reconciler re-sends), but without a
        supervisor that stage would stay down. ``backoff_s`` spaces restarts of a process
        that keeps failing (e.g. the catalog is down at start-up).
        """
        return Periodic("supervisor", poll_s, lambda: self.restart_exited(backoff_s))

    def restart_exited(self, backoff_s: float) -> None:
        """Start again every process that exited, unless it was started less than
        ``backoff_s`` ago."""
        for name, process in list(self.processes.items()):
            if process.poll() is None or time.monotonic() - self._started_at.get(name, -backoff_s) < backoff_s:
                continue
            print(f"{name} exited with {process.returncode}; restarting (log: {self.log_dir / name}.log)",
                  file=sys.stderr, flush=True)
            self._started_at[name] = time.monotonic()
            self.spawn(name, note=f"restarted after exit code {process.returncode}")

    def wait_for_search(self, timeout_s: float) -> None:
        """Until the search service answers and the DICOM port accepts connections."""
        url = f"http://127.0.0.1:{self.env['MEDHASH_HTTP_PORT']}/healthz"
        dicom_port = int(self.env.get("MEDHASH_DICOM_PORT", "11112"))
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise RuntimeError(f"{name} exited with {process.returncode}:\n{self.log_tail(name)}")
            if _answers(url) and _accepts(dicom_port):
                return
            time.sleep(0.5)
        raise RuntimeError(f"search service not up in {timeout_s} s:\n{self.log_tail('search')}")

    def log_tail(self, name: str, chars: int = 3000) -> str:
        path = self.log_dir / f"{name}.log"
        return path.read_text(errors="replace")[-chars:] if path.exists() else ""

    def stop(self) -> None:
        """SIGTERM every process group, then SIGKILL what is still there after 20 s."""
        for process in self.processes.values():
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        for process in self.processes.values():
            try:
                process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2):  # noqa: S310 - loopback only
            return True
    except OSError as exc:
        return getattr(exc, "code", None) == 503  # up, only waiting for an index


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def main() -> None:
    for required in ("MEDHASH_DATABASE_URL", "MEDHASH_BROKER_URL", "MEDHASH_S3_ENDPOINT", "MEDHASH_MODEL"):
        if not os.environ.get(required):
            sys.exit(f"{required} is not set: the local stack runs the distributed configuration")
    env = {"MEDHASH_HTTP_PORT": "8080", **os.environ}
    stack = LocalStack(env, Path(os.environ.get("MEDHASH_STACK_LOGS", "medhash-stack-logs")))
    stack.start()
    print(f"medhash stack up: search on :{env['MEDHASH_HTTP_PORT']}, logs in {stack.log_dir}; Ctrl-C stops it")
    supervisor = stack.supervisor()
    supervisor.start()
    try:
        wait_for_signal()
    finally:
        supervisor.stop()
        stack.stop()


if __name__ == "__main__":
    main()
