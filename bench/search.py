"""Search benchmark (issue 5): one query's latency and throughput of the sharded index through
:class:`shared.index.Searcher`, against ONE bare faiss ``IndexBinaryFlat`` holding every code,
in the same process, with the same queries, in the same run.

What is measured, and why this way:

* Codes: ``--count`` uniform random 64-bit codes, ids 0..n-1. The medhash index is built by
  the real writer (``IndexWriter.add`` + ``compact`` into ``--shards`` base shards in a
  ``LocalObjectStore`` in a temporary folder) and loaded with ``Searcher.open``: the searched
  structure is exactly what the search service loads. Build and open times are printed.
* Bare reference: ``faiss.IndexBinaryFlat(64)`` with all n codes, searched directly. It runs
  twice: with one OpenMP thread, and with faiss's default OpenMP thread count (= cores). For
  one query the default only adds barriers (faiss opens an OpenMP region per 64k-code block
  although there is one query to parallelize), and on a loaded machine each barrier waits
  for a thread the scheduler parked: the one-thread row is the fair reference for latency,
  ratios are given against both. OpenMP settings are per thread, so every client thread sets
  its own. medhash and the one-thread bare index are interleaved; the default-OpenMP bare
  index runs on its own afterwards (its idle OpenMP threads spin and would slow whatever
  runs right after them).
* Latency: ``--queries`` single queries (k=10), interleaved query by query so a burst of
  load from elsewhere hits both alike; p50/p99 over those.
* Batch QPS: one ``search`` call with ``--batch`` queries, repeated ``--repeat`` times
  (interleaved), median.
* Concurrent QPS: ``--clients`` threads issuing single queries back to back for
  ``--seconds`` per target.
* Correctness: every latency query's medhash result must equal bare faiss's (ids are
  storage positions in the bare index, and faiss keeps ties in storage order, so even the
  tie order must match); mismatches are reported, not hidden.

A benchmark measures; it never asserts timings. Example::

    /work/main/.venv/bin/python bench/search.py                          # 1M and 10M codes
    /work/main/.venv/bin/python bench/search.py --count 1000000 --json /tmp/search.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/search.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import load  # noqa: E402
from shared.index import IndexWriter, Searcher  # noqa: E402
from shared.storage.objectstore import LocalObjectStore  # noqa: E402

BITS = 64
K = 10
MODEL_VERSION = "bench"

# A target answers a (nq, 8) uint8 batch with per-query [(id, distance)] lists.
SearchFn = Callable[[np.ndarray], list[list[tuple[int, int]]]]




@dataclass
class Target:
    """One way to answer queries; ``omp_threads`` is set in every thread that calls it."""

    name: str
    search: SearchFn
    omp_threads: int | None  # None: leave faiss's OpenMP setting alone (medhash sets its own)

    def prepare_thread(self) -> None:
        if self.omp_threads is not None:
            faiss.omp_set_num_threads(self.omp_threads)


@dataclass
class Row:
    count: int
    target: str
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    batch_qps: float = 0.0
    concurrent_qps: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    mismatches: int | None = None
    notes: list[str] = field(default_factory=list)


def bare_target(codes: np.ndarray, omp_threads: int, label: str) -> Target:
    index = faiss.IndexBinaryFlat(BITS)
    index.add(codes)

    def search(queries: np.ndarray) -> list[list[tuple[int, int]]]:
        distances, labels = index.search(queries, K)
        return [list(zip(ids.tolist(), dist.tolist())) for ids, dist in zip(labels, distances)]

    return Target(label, search, omp_threads)


def medhash_target(codes: np.ndarray, shards: int, workdir: Path) -> tuple[Target, list[str]]:
    """Build through the real writer, load through the real reader; notes say how long."""
    store = LocalObjectStore(workdir / "objects")
    started = time.perf_counter()
    writer = IndexWriter(store, MODEL_VERSION, BITS, shards=shards)
    writer.add(np.arange(len(codes), dtype=np.int64), codes)
    writer.compact()
    built = time.perf_counter()
    searcher = Searcher.open(store, MODEL_VERSION)
    assert searcher is not None and len(searcher) == len(codes)
    opened = time.perf_counter()
    notes = [f"{shards} shards; build (IndexWriter.compact) {built - started:.1f} s, "
             f"Searcher.open {opened - built:.1f} s"]
    return Target(f"medhash Searcher ({shards} shards)", lambda q: searcher.search(q, K), None), notes


def measure_latency(targets: Sequence[Target], queries: np.ndarray) -> dict[str, list[float]]:
    """Seconds per single query for every target, interleaved query by query."""
    samples: dict[str, list[float]] = {target.name: [] for target in targets}
    for query in queries:
        for target in targets:
            target.prepare_thread()
            started = time.perf_counter()
            target.search(query[None, :])
            samples[target.name].append(time.perf_counter() - started)
    return samples


def measure_batch(targets: Sequence[Target], batch: np.ndarray, repeat: int) -> dict[str, float]:
    """Median queries/s of one call with the whole batch, interleaved across targets."""
    rates: dict[str, list[float]] = {target.name: [] for target in targets}
    for _ in range(repeat):
        for target in targets:
            target.prepare_thread()
            started = time.perf_counter()
            target.search(batch)
            rates[target.name].append(len(batch) / (time.perf_counter() - started))
    return {name: statistics.median(values) for name, values in rates.items()}


def measure_concurrent(target: Target, queries: np.ndarray, clients: int, seconds: float) -> float:
    """Queries/s of ``clients`` threads issuing single queries back to back."""
    done = [0] * clients
    barrier = threading.Barrier(clients + 1)
    stop = threading.Event()

    def client(slot: int) -> None:
        target.prepare_thread()
        barrier.wait()
        position = slot
        while not stop.is_set():
            target.search(queries[position % len(queries)][None, :])
            position += clients
            done[slot] += 1

    threads = [threading.Thread(target=client, args=(slot,)) for slot in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    time.sleep(seconds)
    stop.set()
    for thread in threads:
        thread.join()
    return sum(done) / (time.perf_counter() - started)


def percentile_ms(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000


def measure(targets: Sequence[Target], args: argparse.Namespace, queries: np.ndarray,
            batch: np.ndarray, rows: dict[str, Row]) -> None:
    """Latency, batch and concurrent throughput of ``targets``, interleaved where possible."""
    measure_latency(targets, queries[:10])  # warm-up: page faults, thread pools
    before = load()[0]
    print(f"   latency: {len(queries)} single queries, interleaved: "
          + ", ".join(target.name for target in targets))
    latency = measure_latency(targets, queries)
    batch_qps = measure_batch(targets, batch, args.repeat)
    for target in targets:
        print(f"   concurrent: {args.clients} clients x {args.seconds:.0f} s, {target.name}")
        rows[target.name].concurrent_qps = measure_concurrent(target, queries, args.clients,
                                                              args.seconds)
    after = load()[0]
    for target in targets:
        row = rows[target.name]
        row.p50_ms = percentile_ms(latency[target.name], 50)
        row.p99_ms = percentile_ms(latency[target.name], 99)
        row.batch_qps = batch_qps[target.name]
        row.load_before, row.load_after = before, after


def run_count(count: int, args: argparse.Namespace, workdir: Path) -> list[Row]:
    """Both bare configurations and medhash over the same ``count`` codes and queries.

    medhash is interleaved with the one-thread bare index only: after a call with several
    OpenMP threads, faiss's idle OpenMP threads keep spinning for a while and would take the
    cores from whatever runs next, so the default-OpenMP bare index is measured on its own,
    last.
    """
    rng = np.random.default_rng(args.seed)
    print(f"\n== {count:,} codes: generating and building")
    codes = rng.integers(0, 256, size=(count, BITS // 8), dtype=np.uint8)
    queries = rng.integers(0, 256, size=(args.queries, BITS // 8), dtype=np.uint8)
    batch = rng.integers(0, 256, size=(args.batch, BITS // 8), dtype=np.uint8)
    medhash, notes = medhash_target(codes, args.shards, workdir / f"n{count}")
    print(f"   {notes[0]}")
    cores = os.cpu_count() or 1
    bare_one = bare_target(codes, 1, "bare faiss IndexBinaryFlat (1 OpenMP thread)")
    bare_default = bare_target(codes, cores,
                               f"bare faiss IndexBinaryFlat (default: {cores} OpenMP threads)")
    del codes
    targets = [bare_one, medhash, bare_default]
    rows = {target.name: Row(count, target.name) for target in targets}
    rows[medhash.name].notes += notes
    measure([bare_one, medhash], args, queries, batch, rows)
    bare_one.prepare_thread()
    expected = [bare_one.search(q[None, :])[0] for q in queries]
    rows[medhash.name].mismatches = sum(
        medhash.search(q[None, :])[0] != want for q, want in zip(queries, expected))
    measure([bare_default], args, queries, batch, rows)
    return [rows[target.name] for target in targets]


def ratio_lines(rows: list[Row]) -> list[str]:
    """medhash against each bare row: latency ratio (<1 is faster) and QPS ratio (>1 is more)."""
    lines = []
    medhash = next(row for row in rows if row.target.startswith("medhash"))
    for bare in (row for row in rows if row.target.startswith("bare")):
        lines.append(
            f"| {medhash.count:,} | medhash ÷ {bare.target} | {medhash.p50_ms / bare.p50_ms:.2f}x | "
            f"{medhash.p99_ms / bare.p99_ms:.2f}x | {medhash.batch_qps / bare.batch_qps:.2f}x | "
            f"{medhash.concurrent_qps / bare.concurrent_qps:.2f}x |"
        )
    return lines


def table(rows: list[Row], clients: int) -> str:
    """Markdown, printable and pasteable into docs/benchmarks.md as is."""
    lines = [
        f"| codes | target | p50 ms (1 query) | p99 ms | batch QPS | {clients}-client QPS | "
        "load before→after | results = bare |",
        "| ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        same = "—" if row.mismatches is None else (
            "yes" if row.mismatches == 0 else f"NO: {row.mismatches} differ")
        lines.append(
            f"| {row.count:,} | {row.target} | {row.p50_ms:.2f} | {row.p99_ms:.2f} | "
            f"{row.batch_qps:,.0f} | {row.concurrent_qps:,.0f} | "
            f"{row.load_before:.2f}→{row.load_after:.2f} | {same} |"
        )
    lines += ["", "| codes | ratio | p50 | p99 | batch QPS | concurrent QPS |",
              "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for count in dict.fromkeys(row.count for row in rows):
        lines += ratio_lines([row for row in rows if row.count == count])
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Search benchmark: medhash's sharded Searcher vs one bare faiss "
        "IndexBinaryFlat, same queries, same process. Prints a Markdown table; numbers are "
        "measured, never asserted.",
    )
    parser.add_argument("--count", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="codes in the index, one run each (default 1000000 10000000)")
    parser.add_argument("--shards", type=int, default=8, help="medhash base shards (default 8)")
    parser.add_argument("--queries", type=int, default=300,
                        help="single queries for the latency percentiles (default 300)")
    parser.add_argument("--batch", type=int, default=1000, help="queries per batch (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="batch repetitions (default 3)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent client threads (default 8)")
    parser.add_argument("--seconds", type=float, default=5.0,
                        help="duration of each concurrent run (default 5)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of codes and queries")
    parser.add_argument("--json", type=Path, default=None, help="write results and context here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    context: dict[str, Any] = {
        "command": command, "started_at": started_at, "nproc": os.cpu_count(),
        "python": platform.python_version(), "faiss": faiss.__version__, "numpy": np.__version__,
        "load_start": load(),
    }
    print(f"command: {command}")
    print(f"machine: nproc={context['nproc']} python={context['python']} "
          f"faiss={context['faiss']} numpy={context['numpy']}")
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*context["load_start"]))
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="medhash-bench-search-") as tmp:
        for count in args.count:
            rows += run_count(count, args, Path(tmp))
    context["load_end"] = load()
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*context["load_end"]))
    print()
    print(table(rows, args.clients))
    for row in rows:
        for note in row.notes:
            print(f"- {row.count:,} {row.target}: {note}")
    if args.json is not None:
        args.json.write_text(json.dumps({**context, "rows": [asdict(r) for r in rows]}, indent=1))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
