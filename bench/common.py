"""What every benchmark shares: the record of the run (command, machine, load), the Markdown
table, ratios measured side by side, the argument parser's common options, the test
stand-ins for the distributed rows, and starting and stopping the processes measured.

A benchmark measures; it never asserts timings. Each script prints the command that ran,
the machine and its load before and after (on a shared 2-core box the load explains noisy
numbers), a table pasteable into docs/benchmarks.md, and with ``--json`` everything it
printed as data.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

REPO_ROOT = Path(__file__).resolve().parent.parent

Load = tuple[float, float, float]


def load() -> Load:
    """1/5/15-minute load averages: on a shared 2-core box they explain noisy numbers."""
    return os.getloadavg()


def machine(**extra: Any) -> dict[str, Any]:
    """Cores, CPU model, kernel and Python, plus whatever versions a benchmark depends on."""
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {"nproc": os.cpu_count(), "cpu": model, "kernel": platform.release(),
            "python": platform.python_version(), **extra}


@dataclass
class Run:
    """The record of one benchmark run: printed at the start and the end, and the JSON file.

    ``versions`` names the entries of :attr:`machine` the machine line shows beside the
    cores, CPU and kernel.
    """

    machine: dict[str, Any]
    versions: Sequence[str] = ()
    command: str = field(default_factory=lambda: " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv]))
    started_at: str = field(default_factory=lambda: dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    load_start: Load = field(default_factory=load)
    load_end: Load | None = None

    def print_start(self) -> None:
        shown = " ".join(f"{name}={self.machine[name]}" for name in self.versions)
        print(f"command: {self.command}")
        print(f"machine: nproc={self.machine['nproc']} cpu={self.machine['cpu']!r} "
              f"kernel={self.machine['kernel']} {shown}".rstrip())
        print(f"load average at start: {_loads(self.load_start)}", flush=True)

    def finish(self) -> None:
        """Note the load at the end and print it."""
        self.load_end = load()
        print(f"load average at end: {_loads(self.load_end)}")

    def write_json(self, path: Path | None, **results: Any) -> None:
        """The run's record and ``results`` as JSON (nothing when ``path`` is None)."""
        if path is None:
            return
        path.write_text(json.dumps({
            "command": self.command, "started_at": self.started_at, "machine": self.machine,
            "load_start": self.load_start, "load_end": self.load_end, **results,
        }, indent=2, default=str))
        print(f"results written to {path}")


def _loads(values: Load) -> str:
    return " ".join(f"{value:.2f}" for value in values)


def parser(description: str) -> argparse.ArgumentParser:
    """An argument parser with the options every benchmark has: ``--workdir`` and ``--json``."""
    parser = argparse.ArgumentParser(
        description=f"{description} Prints a Markdown table; numbers are measured, never asserted.")
    parser.add_argument("--workdir", type=Path, default=None,
                        help="where data dirs, servers and logs write (default: a temporary folder, "
                        "removed afterwards); put it on the disk you want measured")
    parser.add_argument("--json", type=Path, default=None, help="write results and context here")
    return parser


def add_ct_options(parser: argparse.ArgumentParser, count: int, what: str) -> None:
    """``--count``, ``--rows``, ``--columns`` and ``--files`` of a benchmark over synthetic CT."""
    parser.add_argument("--count", type=int, default=count, help=f"{what} (default {count})")
    parser.add_argument("--rows", type=int, default=512, help="image rows (default 512)")
    parser.add_argument("--columns", type=int, default=512, help="image columns (default 512)")
    parser.add_argument("--files", type=Path, default=None,
                        help="keep the generated files here and reuse them next time "
                        "(default: a temporary folder, removed afterwards)")


@dataclass(frozen=True)
class Folders:
    """Where a run keeps its generated files, its servers' data and its logs."""

    files: Path
    work: Path
    logs: Path


def run_folders(stack: contextlib.ExitStack, args: argparse.Namespace, prefix: str) -> Folders:
    """``--files`` and ``--workdir``, or folders in a temporary one that ``stack`` removes."""
    tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix=prefix)))
    work = args.workdir or tmp / "work"
    (work / "logs").mkdir(parents=True, exist_ok=True)
    return Folders(getattr(args, "files", None) or tmp / "files", work, work / "logs")


def markdown_table(columns: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A Markdown table, printable and pasteable into docs/benchmarks.md as is.

    A column whose name ends in ``:`` is right-aligned (numbers); the colon is not shown.
    """
    header = "| " + " | ".join(name.rstrip(":") for name in columns) + " |"
    rule = "| " + " | ".join("---:" if name.endswith(":") else "---" for name in columns) + " |"
    return "\n".join([header, rule, *("| " + " | ".join(str(cell) for cell in row) + " |" for row in rows)])


R = TypeVar("R")


def ratios_to_reference(results: Sequence[R], *, group: Callable[[R], Hashable],
                        is_reference: Callable[[R], bool], ok: Callable[[R], bool],
                        rate: Callable[[R], float]) -> list[float | None]:
    """Each result's rate over the rate of its group's reference run (None: failed, or no
    successful reference). Benchmarks run the reference right before the runs of its group
    (same repeat), so a burst of load from elsewhere hits both alike."""
    reference = {group(r): rate(r) for r in results if is_reference(r) and ok(r)}
    return [rate(r) / reference[group(r)] if ok(r) and group(r) in reference else None
            for r in results]


def ratio_text(value: float | None) -> str:
    """``1.23x``, or an em dash where there is no ratio (a failed run, no reference)."""
    return "—" if value is None else f"{value:.2f}x"


def number(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def load_change(before: Load, after: Load) -> str:
    """The 1-minute load before and after a run, as the tables show it."""
    return f"{before[0]:.2f}→{after[0]:.2f}"


def wait_until(predicate: Callable[[], bool], timeout: float, what: str,
               alive: Callable[[], bool] = lambda: True, poll: float = 0.1) -> None:
    """Poll ``predicate``; RuntimeError naming ``what`` when the process died or time ran out."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if not alive():
            raise RuntimeError(f"{what}: the process exited")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: timed out after {timeout:.0f} s")
        time.sleep(poll)


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 30.0) -> None:
    """SIGTERM a process we started, by its PID (Celery and uvicorn finish cleanly on it),
    then SIGKILL it if it is still there after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class StandIns:
    """PostgreSQL + Redis + moto S3 from :mod:`testbed.servers`, with a fresh database and
    bucket per run: the distributed rows' servers.

    They are *test stand-ins*: PostgreSQL with fsync off and moto (an in-memory, pure-Python
    S3) instead of MinIO, all on the same cores as medhash, so those rows measure the code
    path and the stand-ins, not a production deployment.
    """

    NOTE = ("ran on test stand-ins (PostgreSQL with fsync off, moto's in-memory S3, Redis) "
            "sharing the same cores, not on a production MinIO/PostgreSQL.")

    def __init__(self, stack: contextlib.ExitStack, workdir: Path, prefix: str) -> None:
        from testbed.servers import PostgresServer, RedisServer, S3Server

        print("starting PostgreSQL, Redis and moto S3 (test stand-ins) ...", flush=True)
        self.prefix = prefix
        self.pg = stack.enter_context(PostgresServer())
        self.redis = stack.enter_context(RedisServer(workdir / "redis"))
        # Not persistent: the request recorder would append every object body to a file.
        self.s3 = stack.enter_context(S3Server(workdir / "s3", persistent=False))
        self.runs = 0

    def env(self) -> dict[str, str]:
        """``MEDHASH_*`` of a fresh catalog database and bucket, and empty queues."""
        import psycopg
        import redis

        self.runs += 1
        name = f"{self.prefix}_{os.getpid()}_{self.runs}"
        redis.Redis.from_url(self.redis.url).flushall()
        with psycopg.connect(self.pg.url_for("postgres"), autocommit=True) as admin:
            admin.execute(f'CREATE DATABASE "{name}"')
        return {
            "MEDHASH_DATABASE_URL": self.pg.url_for(name),
            "MEDHASH_BROKER_URL": self.redis.url,
            "MEDHASH_S3_ENDPOINT": self.s3.endpoint,
            "MEDHASH_S3_ACCESS_KEY": self.s3.access_key,
            "MEDHASH_S3_SECRET_KEY": self.s3.secret_key,
            "MEDHASH_S3_BUCKET": name.replace("_", "-"),
        }
