"""Search benchmark (issue 16): one query's latency and batch throughput of the sharded index
through :class:`shared.index.Searcher` (multi-index hash with its flat fallback, and the flat
scan alone), against ONE bare faiss ``IndexBinaryFlat`` holding every code, in the same
process, with the same queries, in the same run — on codes that trained models make.

Code sets (``--real LABEL CHECKPOINT DATA`` any number of times, ``--random-bits``):

* **Real**: every image under DATA (class folders; several folders joined with ``,``) is
  encoded by CHECKPOINT at its input size (``LoadedCheckpoint.encode``, as the encode worker
  does). Then ``--augment`` augmented copies of random images (the trainer's
  ``Augmenter``: rotation ±15°, zoom 0.9–1.1, i.e. crops, blur, brightness, Gaussian noise)
  go through the same model. The encode rate is printed. Encoding millions of images on a
  2-core CPU is not feasible, so the set is grown to each ``--count`` with *synthetic* codes:
  a random original image's code XOR the flip pattern (augmented code XOR its original's
  code) of a random real augmented copy, i.e. samples from the empirical distribution of
  what augmentation does to codes. Rows are shuffled; ids are 0..n−1.
  Queries are codes of *fresh* augmented copies (another seed), never in the index.
  Encoded codes are cached in ``--cache`` (keyed by the checkpoint's version, the data and
  the augmentation count), so a re-run only measures.
* **Random**: uniform random codes and queries of ``--random-bits`` bits: the worst case.

Per set and count, the medhash index is built by the real writer (``IndexWriter.add`` +
``compact`` into ``--shards`` base shards in a ``LocalObjectStore``) and loaded with
``Searcher.open``, which builds the multi-index hash: build and open times are printed.
Targets, all over the same codes:

* ``bare``: ``faiss.IndexBinaryFlat`` with one OpenMP thread (the fair single-query
  reference: with more, faiss opens an OpenMP region per 64k-code block even for one query);
* ``medhash``: ``Searcher.search`` (strategy ``auto``);
* ``medhash flat``: ``Searcher.search(strategy="flat")``, the scan every query paid before.

Latency: ``--queries`` single queries (k = ``--k``), the three targets interleaved query by
query, each query starting with the next target (so none always runs right after another and
finds its caches warm or cold); p50/p99. Batch QPS: one call with ``--batch`` queries,
``--repeat`` times interleaved the same way, median. Correctness: every latency query's results from both medhash targets must equal
bare faiss's, ids and distances, tie order included (faiss keeps storage order, ids are
storage positions); mismatches are counted and printed, not hidden. Memory per code: the
searcher's segments plus its multi-index hash, divided by the codes. A benchmark measures; it
never asserts timings.

Example (the models of docs/benchmarks.md's run; any checkpoints work)::

    python bench/search.py --real mednist-32 /tmp/m32.pt /data/mednist-64 \\
        --real brain-32 /tmp/b32.pt /data/brain-tumor-mri/training,/data/brain-tumor-mri/testing \\
        --random-bits 32 64 --count 1000000 10000000 --json /tmp/search.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import shlex
import statistics
import sys
import tempfile
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

from bench.common import load, machine  # noqa: E402
from shared.index import IndexWriter, Searcher  # noqa: E402
from shared.storage.objectstore import LocalObjectStore  # noqa: E402

MODEL_VERSION = "bench"

Results = list[list[tuple[int, int]]]


@dataclass
class CodeSet:
    """Codes of one kind: the originals (and real augmented copies) plus what grows them."""

    label: str
    bits: int
    base: np.ndarray  # codes of the original images (random sets: empty)
    flips: np.ndarray  # augmented code XOR original code, one row per real augmented copy
    augmented: np.ndarray  # the real augmented copies' codes
    queries: np.ndarray
    notes: list[str] = field(default_factory=list)

    def grow(self, count: int, rng: np.random.Generator) -> tuple[np.ndarray, str]:
        """``count`` codes (rows shuffled) and a line saying how they were made."""
        nbytes = self.bits // 8
        if not len(self.base):
            return rng.integers(0, 256, (count, nbytes), dtype=np.uint8), "uniform random"
        real = np.concatenate([self.base, self.augmented])[:count]
        synthetic = count - len(real)
        parts = [real]
        if synthetic > 0:
            originals = self.base[rng.integers(0, len(self.base), synthetic)]
            parts.append(originals ^ self.flips[rng.integers(0, len(self.flips), synthetic)])
        codes = np.concatenate(parts)[rng.permutation(count)]
        made = (f"{min(len(self.base), count):,} encoded images + "
                f"{max(0, min(len(self.augmented), count - len(self.base))):,} encoded augmented "
                f"copies + {max(synthetic, 0):,} synthetic (original XOR an observed flip pattern)")
        return codes, made


# --- encoding ------------------------------------------------------------------------------

def encode_real(label: str, checkpoint_path: Path, data: str, augment: int, queries: int,
                seed: int, cache: Path | None) -> CodeSet:
    """Encode the images, ``augment`` augmented copies and ``queries`` fresh augmented query
    copies with the checkpoint (cached by checkpoint version, data and counts)."""
    import torch

    from shared.hashing.checkpoint import load_checkpoint
    from shared.learning.datasets import Augmenter, load_folder

    checkpoint = load_checkpoint(checkpoint_path, "cpu")
    key = hashlib.sha256(f"{checkpoint.version}|{data}|{augment}|{queries}|{seed}".encode())
    cached = None if cache is None else cache / f"{label}-{key.hexdigest()[:16]}.npz"
    if cached is not None and cached.exists():
        with np.load(cached, allow_pickle=False) as npz:
            notes = [str(line) for line in npz["notes"]]
            print(f"   {label}: codes from the cache {cached}")
            return CodeSet(label, checkpoint.model.bits, npz["base"], npz["flips"],
                           npz["augmented"], npz["queries"], notes + [f"cached in {cached}"])
    size = checkpoint.image_size
    folders = [load_folder(folder, size) for folder in data.split(",")]
    images = torch.cat([folder.images for folder in folders])
    augmenter = Augmenter()

    def encode(batch: torch.Tensor) -> np.ndarray:
        return checkpoint.encode(batch, batch_size=256)

    def augmented_codes(count: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
        picks = torch.randint(0, len(images), (count,), generator=generator)
        codes = []
        for start in range(0, count, 4096):
            chunk = images[picks[start:start + 4096]].float() / 255.0
            warped = (augmenter(chunk, generator) * 255.0).round().to(torch.uint8)
            codes.append(encode(warped))
            print(f"\r   {label}: augmented {min(start + 4096, count):,}/{count:,}", end="",
                  flush=True)
        print()
        return np.concatenate(codes), picks.numpy()

    started = time.perf_counter()
    base = encode(images)
    seconds = time.perf_counter() - started
    notes = [(f"{len(base):,} images encoded in {seconds:.0f} s ({len(base) / seconds:,.0f}/s, "
              f"{size} px, torch {torch.get_num_threads()} threads, load {load()[0]:.1f})")]
    print(f"   {label}: {notes[-1]}")
    generator = torch.Generator().manual_seed(seed)
    started = time.perf_counter()
    augmented, picks = augmented_codes(augment, generator)
    seconds = time.perf_counter() - started
    notes.append(f"{augment:,} augmented copies encoded in {seconds:.0f} s "
                 f"({augment / max(seconds, 1e-9):,.0f}/s incl. augmentation)")
    flips = augmented ^ base[picks]
    query_codes, _ = augmented_codes(queries, torch.Generator().manual_seed(seed + 1))
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cached, base=base, flips=flips, augmented=augmented, queries=query_codes,
                 notes=np.array(notes))
    return CodeSet(label, checkpoint.model.bits, base, flips, augmented, query_codes, notes)


def describe(codes: np.ndarray, queries: np.ndarray, k: int) -> str:
    """What makes a set easy or hard: distinct codes, and the k-th neighbour's distance."""
    distinct = len(np.unique(codes, axis=0)) if len(codes) <= 2_000_000 else None
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)
    sample = queries[:100]
    kth = index.search(sample, k)[0][:, -1]
    return (f"distinct codes {'n/a (not counted above 2M)' if distinct is None else f'{distinct:,}'}"
            f"; {k}th-neighbour distance over {len(sample)} queries: p50 "
            f"{np.median(kth):.0f}, p90 {np.percentile(kth, 90):.0f}, max {kth.max()}")


# --- targets and measurements ------------------------------------------------------------------

@dataclass
class Target:
    name: str
    search: Callable[[np.ndarray], Results]


@dataclass
class Row:
    codes: str
    count: int
    target: str
    p50_ms: float = 0.0
    p99_ms: float = 0.0
    batch_qps: float = 0.0
    bytes_per_code: float = 0.0
    load_before: float = 0.0
    load_after: float = 0.0
    mismatches: int | None = None
    notes: list[str] = field(default_factory=list)


def bare_target(codes: np.ndarray, k: int) -> Target:
    index = faiss.IndexBinaryFlat(codes.shape[1] * 8)
    index.add(codes)

    def search(queries: np.ndarray) -> Results:
        faiss.omp_set_num_threads(1)
        distances, labels = index.search(queries, k)
        return [list(zip(ids.tolist(), dist.tolist())) for ids, dist in zip(labels, distances)]

    return Target("bare faiss IndexBinaryFlat (1 OpenMP thread)", search)


def build_searcher(codes: np.ndarray, shards: int, workdir: Path) -> tuple[Searcher, list[str]]:
    """Write through the real writer, open through the real reader; notes say how long."""
    store = LocalObjectStore(workdir / "objects")
    started = time.perf_counter()
    writer = IndexWriter(store, MODEL_VERSION, codes.shape[1] * 8, shards=shards)
    writer.add(np.arange(len(codes), dtype=np.int64), codes)
    writer.compact()
    built = time.perf_counter()
    searcher = Searcher.open(store, MODEL_VERSION)
    assert searcher is not None and len(searcher) == len(codes)
    opened = time.perf_counter()
    memory = searcher.memory_bytes()
    index = searcher.multi_index
    assert index is not None
    notes = [(f"{shards} shards; IndexWriter.compact {built - started:.1f} s; Searcher.open "
              f"(loads the shards, builds the multi-index hash) {opened - built:.1f} s; "
              f"{index.distinct:,} distinct codes, {index.tables} tables of "
              f"{index.widths[0]} bits; memory per code: segments "
              f"{memory['segments'] / len(codes):.1f} B + multi-index hash "
              f"{memory['mih'] / len(codes):.1f} B")]
    return searcher, notes


def rotated(targets: Sequence[Target], position: int) -> list[Target]:
    """The targets starting at a different one each time: which target runs right after
    which (and finds the caches warm or cold) must not favour any of them."""
    start = position % len(targets)
    return [*targets[start:], *targets[:start]]


def measure(targets: Sequence[Target], queries: np.ndarray, batch: np.ndarray, repeat: int
            ) -> tuple[dict[str, list[float]], dict[str, float], dict[str, Results]]:
    """Per target: single-query seconds (interleaved query by query, in rotating order),
    median batch QPS (interleaved, rotating), and the single-query results."""
    for target in targets:  # warm-up: page faults, thread pools
        target.search(queries[:5])
    seconds: dict[str, list[float]] = {target.name: [] for target in targets}
    results: dict[str, Results] = {target.name: [] for target in targets}
    for position, query in enumerate(queries):
        for target in rotated(targets, position):
            started = time.perf_counter()
            found = target.search(query[None, :])
            seconds[target.name].append(time.perf_counter() - started)
            results[target.name].append(found[0])
    rates: dict[str, list[float]] = {target.name: [] for target in targets}
    for position in range(repeat):
        for target in rotated(targets, position):
            started = time.perf_counter()
            target.search(batch)
            rates[target.name].append(len(batch) / (time.perf_counter() - started))
    return seconds, {name: statistics.median(values) for name, values in rates.items()}, results


def run_count(codes_set: CodeSet, count: int, args: argparse.Namespace, workdir: Path
              ) -> list[Row]:
    rng = np.random.default_rng(args.seed)
    print(f"\n== {codes_set.label}, {count:,} codes: generating and building", flush=True)
    codes, made = codes_set.grow(count, rng)
    queries = codes_set.queries if len(codes_set.queries) else rng.integers(
        0, 256, (max(args.queries, args.batch), codes_set.bits // 8), dtype=np.uint8)
    single, batch = queries[:args.queries], queries[:args.batch]
    print(f"   {made}", flush=True)
    shape = describe(codes, single, args.k)
    print(f"   {shape}", flush=True)
    searcher, notes = build_searcher(codes, args.shards, workdir / f"{codes_set.label}-{count}")
    print(f"   {notes[0]}", flush=True)
    bare = bare_target(codes, args.k)
    del codes
    stats: dict[str, int] = {}
    k = args.k
    medhash = Target("medhash Searcher (multi-index hash, auto)",
                     lambda q: searcher.search(q, k, stats=stats))
    flat = Target("medhash Searcher (flat scan)", lambda q: searcher.search(q, k, strategy="flat"))
    targets = [bare, medhash, flat]
    before = load()[0]
    print(f"   {len(single)} single queries and {args.repeat} x {len(batch)} batched, "
          "interleaved", flush=True)
    seconds, qps, results = measure(targets, single, batch, args.repeat)
    after = load()[0]
    memory = searcher.memory_bytes()
    rows = []
    for target in targets:
        row = Row(codes_set.label, count, target.name,
                  p50_ms=float(np.percentile(seconds[target.name], 50)) * 1000,
                  p99_ms=float(np.percentile(seconds[target.name], 99)) * 1000,
                  batch_qps=qps[target.name], load_before=before, load_after=after)
        if target is bare:
            row.bytes_per_code = codes_set.bits / 8
        else:
            row.mismatches = sum(got != want for got, want in
                                 zip(results[target.name], results[bare.name]))
            row.bytes_per_code = (memory["segments"] + (memory["mih"] if target is medhash
                                                        else 0)) / count
        rows.append(row)
    answered = stats.get("queries", 0)
    scanned = stats.get("scanned", 0)
    rows[1].notes += [made, shape, *notes,
                      (f"{answered:,} queries answered by the multi-index hash, {scanned:,} "
                       f"fell back to the scan; per query (incl. the work of those that fell "
                       f"back): {stats.get('candidates', 0) / (answered + scanned):,.0f} "
                       f"candidates verified, {stats.get('probes', 0) / (answered + scanned):,.0f} "
                       f"buckets probed, {stats.get('lookups', 0) / (answered + scanned):,.0f} "
                       "exact look-ups")]
    print(f"   {rows[1].notes[-1]}", flush=True)
    return rows


# --- report ----------------------------------------------------------------------------------

def table(rows: list[Row]) -> str:
    """Markdown, printable and pasteable into docs/benchmarks.md as is."""
    lines = [
        "| codes | n | target | p50 ms | p99 ms | batch QPS | bytes/code | load | = bare |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | --- | --- |",
    ]
    for row in rows:
        same = "—" if row.mismatches is None else (
            "yes" if row.mismatches == 0 else f"NO: {row.mismatches} differ")
        lines.append(
            f"| {row.codes} | {row.count:,} | {row.target} | {row.p50_ms:.3f} | "
            f"{row.p99_ms:.3f} | {row.batch_qps:,.0f} | {row.bytes_per_code:.1f} | "
            f"{row.load_before:.1f}→{row.load_after:.1f} | {same} |")
    lines += ["", "| codes | n | ratio to bare | p50 | p99 | batch QPS |",
              "| --- | ---: | --- | ---: | ---: | ---: |"]
    for key in dict.fromkeys((row.codes, row.count) for row in rows):
        group = [row for row in rows if (row.codes, row.count) == key]
        bare = group[0]
        for row in group[1:]:
            lines.append(f"| {row.codes} | {row.count:,} | {row.target} | "
                         f"{row.p50_ms / bare.p50_ms:.2f}x | {row.p99_ms / bare.p99_ms:.2f}x | "
                         f"{row.batch_qps / bare.batch_qps:.2f}x |")
    return "\n".join(lines)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Search benchmark on real and random codes: medhash's Searcher (multi-index "
        "hash, and flat) vs one bare faiss IndexBinaryFlat, same queries, same process. Prints "
        "Markdown tables; numbers are measured, never asserted.")
    parser.add_argument("--real", nargs=3, action="append", default=[],
                        metavar=("LABEL", "CHECKPOINT", "DATA"),
                        help="a real code set: LABEL, a `medhash train` checkpoint, and class "
                        "folders of images (several joined with ','); repeatable")
    parser.add_argument("--random-bits", type=int, nargs="*", default=[32, 64],
                        help="uniform random code sets of these lengths (default 32 64)")
    parser.add_argument("--count", type=int, nargs="+", default=[1_000_000, 10_000_000],
                        help="codes in the index, one run each (default 1000000 10000000)")
    parser.add_argument("--augment", type=int, nargs="+", default=[100_000],
                        help="real augmented copies encoded per real set: one count for all, "
                        "or one per --real in order (default 100000)")
    parser.add_argument("--cache", type=Path, default=None,
                        help="folder caching encoded codes between runs")
    parser.add_argument("--shards", type=int, default=8, help="medhash base shards (default 8)")
    parser.add_argument("--k", type=int, default=10, help="neighbours per query (default 10)")
    parser.add_argument("--queries", type=int, default=300,
                        help="single queries for the latency percentiles (default 300)")
    parser.add_argument("--batch", type=int, default=300, help="queries per batch (default 300)")
    parser.add_argument("--repeat", type=int, default=3, help="batch repetitions (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of augmentation and sampling")
    parser.add_argument("--json", type=Path, default=None, help="write results and context here")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = " ".join(shlex.quote(a) for a in [sys.executable, *sys.argv])
    context: dict[str, Any] = {
        "command": command, "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(faiss=faiss.__version__, numpy=np.__version__), "load_start": load(),
    }
    print(f"command: {command}")
    print(f"machine: {context['machine']}")
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*context["load_start"]))
    if len(args.augment) not in (1, len(args.real)):
        raise SystemExit(f"--augment takes one count or one per --real ({len(args.real)})")
    augment = args.augment * len(args.real) if len(args.augment) == 1 else args.augment
    sets = [encode_real(label, Path(checkpoint), data, copies,
                        max(args.queries, args.batch), args.seed, args.cache)
            for (label, checkpoint, data), copies in zip(args.real, augment)]
    empty = np.empty((0, 0), dtype=np.uint8)
    sets += [CodeSet(f"random-{bits}", bits, empty, empty, empty, empty)
             for bits in args.random_bits]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="medhash-bench-search-") as tmp:
        for code_set in sets:
            for count in args.count:
                rows += run_count(code_set, count, args, Path(tmp))
    context["load_end"] = load()
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*context["load_end"]))
    print()
    print(table(rows))
    for code_set in sets:
        for note in code_set.notes:
            print(f"- {code_set.label}: {note}")
    for row in rows:
        for note in row.notes:
            print(f"- {row.codes} {row.count:,}: {note}")
    if args.json is not None:
        args.json.write_text(json.dumps({**context, "rows": [asdict(r) for r in rows]}, indent=1))
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
