"""Freshness benchmark (issue 5): seconds from C-STORE Success to searchable, for the embedded
default (`medhash serve`) and the distributed local stack (every service its own process).

What is measured, and why this way:

* "Searchable" means what a user sees: ``POST /v1/search`` with JSON
  ``{"sop_instance_uid": uid, "k": 1}`` answers 200 and the first result *is* that instance.
  Before it is encoded the service answers 409 (no codes yet); once encoded but not yet in
  the index generation the search service has loaded, it answers 200 with some other
  instance first. The first 200 is recorded as well ("encoded"), so each latency splits into
  preprocess + encode, and index flush + the search service's refresh.
* The clock starts when the sender receives the C-STORE Success response for that file
  (``Sender.send(..., on_result=...)``: the listener has made the bytes durable and
  committed the catalog row) and stops at the first poll that sees the instance first. Polls
  run every ``--poll-s`` (50 ms) per pending instance, so every number is late by up to one
  poll interval plus one request.
* Data: Secondary Captures (``make_secondary_capture``) of ``testbed.lsh_model.picture(seed)``
  pixels at ``--image-size``, one new study; the model is ``testbed.lsh_model``'s
  locality-sensitive checkpoint (untrained EfficientNet-B0 whose hash layer projects onto
  principal directions), so different pictures get codes tens of bits apart and a
  self-match at distance 0 is never a tie: "first" is well defined. Any checkpoint can be
  given with ``--model``.
* Arrivals: ``--count`` instances in groups of ``--burst`` (default 1: one association per
  instance); the next group is sent once the previous one is searchable, after a random gap
  of 0-``--max-gap-s`` so arrivals fall at every phase of the indexer's flush clock and the
  search service's refresh clock (both periodic). One warm-up instance is sent and awaited
  first, untimed: start-up, model loading, the first index generation and the first
  queries' cold paths stay out of the numbers.
* Embedded: ``medhash serve`` as a subprocess (SQLite + folder + threads in one process),
  ``MEDHASH_INDEX_FLUSH_S`` = each of ``--flush-s`` (default 1.0, the setting's default, and
  0.2), a fresh data dir each.
* Distributed (``--distributed``): ``deploy.local_stack.LocalStack`` -- listener, search,
  indexer, reconciler, two preprocess workers and one encode worker as processes -- on
  PostgreSQL + Redis + an S3 API from ``testbed/servers.py``, built like
  ``tests/e2e/topology.py`` does. Those are *test stand-ins*: PostgreSQL with fsync off,
  moto (in-memory, pure-Python S3) instead of MinIO, all on the same cores as medhash.
* Every configuration must make every instance searchable within ``--timeout-s``; an
  instance that does not is reported (the row says how many), never silently dropped.

A benchmark measures; it never asserts timings. Example::

    /work/main/.venv/bin/python bench/freshness.py                          # embedded, flush 1.0 and 0.2
    /work/main/.venv/bin/python bench/freshness.py --distributed --count 20 --json /tmp/fresh.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/freshness.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO_ROOT))

import httpx
import numpy as np

from bench.common import Run, StandIns, load, load_change, markdown_table  # noqa: E402
from bench.common import machine as common_machine  # noqa: E402
from bench.common import parser as common_parser  # noqa: E402
from shared.config import Settings  # noqa: E402

EMBEDDED = "embedded (medhash serve)"
DISTRIBUTED = "distributed (local stack, stand-ins)"




# --------------------------------------------------------------------------------------------
# Topologies
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Running:
    """What the measurement needs of a started topology."""

    dicom_port: int
    http_url: str


def child_env(settings: Settings) -> dict[str, str]:
    """The settings as the MEDHASH_* environment of child processes (none inherited).

    The same translation ``tests/e2e/topology.py`` uses, so the bench runs what the
    end-to-end tests run.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("MEDHASH_")}
    for name, value in settings.model_dump(mode="json").items():
        if value is None:
            continue
        env[f"MEDHASH_{name.upper()}"] = ",".join(value) if isinstance(value, list) else str(value)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    return env


def base_update(workdir: Path, model: Path, image_size: int, flush_s: float) -> dict[str, Any]:
    """Settings shared by both topologies: loopback, free ports, no metrics exporters."""
    from testbed.servers import free_port

    return {
        "data_dir": workdir / "data", "model": model, "image_size": image_size,
        "dicom_host": "127.0.0.1", "dicom_port": free_port(), "http_host": "127.0.0.1",
        "http_port": free_port(), "metrics_port": 0, "index_flush_s": flush_s,
    }


@contextlib.contextmanager
def embedded(workdir: Path, model: Path, image_size: int, flush_s: float) -> Iterator[Running]:
    """One ``medhash serve`` process on the embedded default, stopped by its process group."""
    from deploy.local_stack import LocalStack

    settings = Settings(database_url=None, broker_url=None, s3_endpoint=None).model_copy(
        update=base_update(workdir, model, image_size, flush_s))
    log_dir = workdir / "logs"
    log_dir.mkdir(parents=True)
    with (log_dir / "serve.log").open("ab") as log:
        process = subprocess.Popen([sys.executable, "-m", "medhash.cli", "serve"],
                                   env=child_env(settings), stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
    stack = LocalStack(child_env(settings), log_dir, {"serve": process})
    try:
        stack.wait_for_search(300)
        yield Running(settings.dicom_port, f"http://127.0.0.1:{settings.http_port}")
    finally:
        stack.stop()


@contextlib.contextmanager
def distributed(workdir: Path, model: Path, image_size: int, flush_s: float,
                servers: StandIns) -> Iterator[Running]:
    """``LocalStack``: every service and worker its own process, on the stand-ins."""
    from deploy.local_stack import LocalStack

    env = {name.removeprefix("MEDHASH_").lower(): value for name, value in servers.env().items()}
    settings = Settings(**env).model_copy(update=base_update(workdir, model, image_size, flush_s))
    stack = LocalStack(child_env(settings), workdir / "logs")
    try:
        stack.start(timeout_s=300)
        yield Running(settings.dicom_port, f"http://127.0.0.1:{settings.http_port}")
    finally:
        stack.stop()


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One instance: seconds from its C-STORE Success to encoded and to searchable."""

    sop_instance_uid: str
    encoded_s: float | None = None
    searchable_s: float | None = None


def write_instances(folder: Path, count: int, image_size: int, first_seed: int) -> list[tuple[Path, str]]:
    """``count`` Secondary Captures of distinct pictures, written before any clock runs."""
    from shared.dicom.synthetic import StudyIds, make_secondary_capture, write
    from testbed.lsh_model import picture

    ids = StudyIds.new(patient_id="BENCHFRESH")
    out = []
    for number in range(count):
        ds = make_secondary_capture(ids, number + 1, picture(first_seed + number, image_size))
        out.append((write(ds, folder / f"{number:04d}.dcm"), str(ds.SOPInstanceUID)))
    return out


def probe(client: httpx.Client, uid: str) -> str:
    """'searchable' (200, itself first), 'encoded' (200, not first yet) or 'pending'."""
    response = client.post("/v1/search", json={"sop_instance_uid": uid, "k": 1})
    if response.status_code != 200:
        return "pending"
    results = response.json().get("results") or []
    return "searchable" if results and results[0].get("sop_instance_uid") == uid else "encoded"


def send_and_wait(running: Running, client: httpx.Client, group: Sequence[tuple[Path, str]],
                  poll_s: float, timeout_s: float) -> list[Sample]:
    """C-STORE ``group`` on one association; poll every instance until searchable."""
    from shared.dicom.sender import Sender, SendResult

    succeeded: dict[Path, float] = {}

    def on_result(result: SendResult) -> None:
        if result.stored:
            succeeded[result.path] = time.perf_counter()

    results = Sender("127.0.0.1", running.dicom_port, "MEDHASH").send(
        [path for path, _ in group], on_result=on_result)
    refused = [r for r in results if not r.stored]
    if refused:
        raise RuntimeError(f"C-STORE refused: {[r.reason for r in refused]}")
    samples = {uid: Sample(uid) for _, uid in group}
    started = {uid: succeeded[path] for path, uid in group}
    deadline = time.perf_counter() + timeout_s
    pending = [uid for _, uid in group]
    while pending and time.perf_counter() < deadline:
        for uid in list(pending):
            state = probe(client, uid)
            now = time.perf_counter()
            sample = samples[uid]
            if state in ("encoded", "searchable") and sample.encoded_s is None:
                sample.encoded_s = now - started[uid]
            if state == "searchable":
                sample.searchable_s = now - started[uid]
                pending.remove(uid)
        if pending:
            time.sleep(poll_s)
    return [samples[uid] for _, uid in group]


@dataclass
class ConfigResult:
    configuration: str
    flush_s: float
    count: int
    burst: int
    samples: list[Sample]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    seconds_total: float
    notes: list[str] = field(default_factory=list)

    def stats(self, attribute: str) -> dict[str, float | None]:
        """p50/p90/max over the instances that got there (None when none did)."""
        values = [v for s in self.samples if (v := getattr(s, attribute)) is not None]
        if not values:
            return {"p50": None, "p90": None, "max": None, "n": 0}
        return {"p50": float(np.percentile(values, 50)), "p90": float(np.percentile(values, 90)),
                "max": float(max(values)), "n": len(values)}


def measure(running: Running, args: argparse.Namespace, workdir: Path, label: str,
            flush_s: float) -> ConfigResult:
    """Warm-up (untimed), then ``--count`` instances in groups of ``--burst``."""
    files = write_instances(workdir / "files", args.count + 1, args.image_size, args.seed)
    warmup, timed = files[0], files[1:]
    rng = random.Random(args.seed)
    with httpx.Client(base_url=running.http_url, timeout=60, trust_env=False) as client:
        print("   warm-up instance ...", flush=True)
        (first,) = send_and_wait(running, client, [warmup], args.poll_s, args.timeout_s)
        if first.searchable_s is None:
            raise RuntimeError("the warm-up instance never became searchable")
        print(f"   warm-up searchable after {first.searchable_s:.2f} s (untimed)", flush=True)
        samples: list[Sample] = []
        before = load()
        started = time.perf_counter()
        for offset in range(0, len(timed), args.burst):
            time.sleep(rng.uniform(0, args.max_gap_s))
            group = timed[offset:offset + args.burst]
            got = send_and_wait(running, client, group, args.poll_s, args.timeout_s)
            samples += got
            text = ", ".join(f"{s.searchable_s:.2f}" if s.searchable_s is not None else "TIMEOUT"
                             for s in got)
            print(f"   {offset + len(group):3d}/{len(timed)}: searchable after {text} s", flush=True)
        total = time.perf_counter() - started
        after = load()
    return ConfigResult(label, flush_s, len(timed), args.burst, samples, before, after, total)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def table(results: Sequence[ConfigResult]) -> str:
    """A Markdown table, printable and pasteable into docs/benchmarks.md as is."""
    columns = ["configuration", "index flush s:", "instances:", "burst:", "searchable p50 s:", "p90 s:",
               "max s:", "encoded p50 s:", "encoded p90 s:", "not searchable:", "load before→after"]
    rows = []
    for r in results:
        searchable, encoded = r.stats("searchable_s"), r.stats("encoded_s")
        rows.append([r.configuration, f"{r.flush_s:g}", r.count, r.burst, fmt(searchable["p50"]),
                     fmt(searchable["p90"]), fmt(searchable["max"]), fmt(encoded["p50"]),
                     fmt(encoded["p90"]), r.count - int(searchable["n"] or 0),
                     load_change(r.load_before, r.load_after)])
    return markdown_table(columns, rows)


def machine() -> dict[str, Any]:
    return common_machine()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = common_parser(
        "Freshness benchmark: seconds from C-STORE Success until a search by the instance's UID "
        "returns it first, for `medhash serve` (embedded) and, with --distributed, the local "
        "stack of processes on PostgreSQL+Redis+moto S3 (test stand-ins).")
    parser.add_argument("--count", type=int, default=20, help="timed instances per configuration (default 20)")
    parser.add_argument("--burst", type=int, default=1,
                        help="instances sent together on one association (default 1)")
    parser.add_argument("--max-gap-s", type=float, default=1.0,
                        help="random 0..this pause before each group, so arrivals fall at every "
                        "phase of the periodic flush and refresh (default 1.0)")
    parser.add_argument("--poll-s", type=float, default=0.05, help="search poll interval (default 0.05)")
    parser.add_argument("--timeout-s", type=float, default=120.0,
                        help="give up on an instance after this long (default 120)")
    parser.add_argument("--flush-s", type=float, nargs="+", default=[1.0, 0.2],
                        help="MEDHASH_INDEX_FLUSH_S values for the embedded runs (default 1.0 0.2)")
    parser.add_argument("--distributed-flush-s", type=float, nargs="+", default=[1.0],
                        help="MEDHASH_INDEX_FLUSH_S values for the distributed runs (default 1.0)")
    parser.add_argument("--no-embedded", dest="embedded", action="store_false",
                        help="skip the embedded runs")
    parser.add_argument("--distributed", action="store_true",
                        help="also run the distributed local stack on test stand-ins")
    parser.add_argument("--image-size", type=int, default=64, help="MEDHASH_IMAGE_SIZE and picture side (default 64)")
    parser.add_argument("--model", type=Path, default=None,
                        help="checkpoint to use (default: testbed/lsh_model.py's, built here)")
    parser.add_argument("--seed", type=int, default=0, help="pictures and gaps (default 0)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    run = Run(machine(), versions=["python"])
    run.print_start()
    results: list[ConfigResult] = []
    failures: list[str] = []
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medhash-bench-fresh-")))
        workdir = args.workdir or tmp
        workdir.mkdir(parents=True, exist_ok=True)
        model = args.model
        if model is None:
            from testbed.lsh_model import build_lsh_checkpoint

            model = build_lsh_checkpoint(workdir / "lsh-model.pt")
        print(f"model: {model}", flush=True)
        runs: list[tuple[str, float]] = []
        if args.embedded:
            runs += [(EMBEDDED, f) for f in args.flush_s]
        if args.distributed:
            runs += [(DISTRIBUTED, f) for f in args.distributed_flush_s]
        servers = StandIns(stack, workdir, "bench_fresh") if args.distributed else None
        for number, (label, flush_s) in enumerate(runs, 1):
            run_dir = workdir / f"run-{number}"
            print(f"-> {label}, MEDHASH_INDEX_FLUSH_S={flush_s:g}: starting ...", flush=True)
            try:
                if label == EMBEDDED:
                    topology = embedded(run_dir, model, args.image_size, flush_s)
                else:
                    assert servers is not None
                    topology = distributed(run_dir, model, args.image_size, flush_s, servers)
                up = time.perf_counter()
                with topology as running:
                    print(f"   up after {time.perf_counter() - up:.1f} s", flush=True)
                    result = measure(running, args, run_dir, label, flush_s)
                results.append(result)
                s = result.stats("searchable_s")
                print(f"   searchable p50 {fmt(s['p50'])} s, p90 {fmt(s['p90'])} s, max {fmt(s['max'])} s",
                      flush=True)
            except Exception as exc:  # noqa: BLE001 - reported; the other configurations still run
                failures.append(f"{label} flush {flush_s:g}: {exc}")
                print(f"   FAILED: {exc}", flush=True)
    print()
    print(table(results))
    for failure in failures:
        print(f"FAILED: {failure}")
    print()
    run.finish()
    print(f"Polled every {args.poll_s:g} s: each number is late by up to one poll plus one request.")
    if args.distributed:
        print(f"The distributed rows {StandIns.NOTE}")
    run.write_json(args.json, failures=failures, results=[
        {**asdict(r), "searchable": r.stats("searchable_s"), "encoded": r.stats("encoded_s")}
        for r in results])
    return 0 if results and not failures and all(
        r.stats("searchable_s")["n"] == r.count for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
