"""Encode benchmark (issue 5): slices/s through the encode worker path against the bare model
forward at the same batch size, in the same process and run. Goal: at least 0.9x the bare
forward.

What is measured, and why this way:

* Model: a real checkpoint made here (``create_model("dafh", backbone="efficientnet_b0",
  bits=32, num_classes=4, image_size=S)`` + ``save_checkpoint``) and loaded with
  ``load_checkpoint`` exactly as a worker does (channels-last on CPU). The weights are
  untrained: a forward pass costs the same whatever the weights are. One loaded model serves
  both sides, so they share PyTorch's thread pool and oneDNN's primitive cache.
* Data: ``--count`` Secondary Captures of ``testbed.lsh_model.picture`` pixels at S x S, stored
  with ``Ingestor.store_instance`` into a fresh embedded runtime (SQLite WAL + local folder)
  and preprocessed with ``Preprocessor.run`` (both untimed), so every instance is
  ``preprocessed`` with one S x S slice PNG in the object store, as the encode stage finds it.
* Bare forward ("bare"): the same slices, decoded beforehand (untimed) into the uint8 tensor
  (N, 1, S, S) the model takes, then ``LoadedCheckpoint.encode`` in chunks of the batch size
  under ``torch.inference_mode`` -- the model and nothing else.
* Worker path ("worker"): ``EncodeStage(store, catalog, host, BatchEncoder(checkpoint,
  batch_size, max_wait_s)).run(id)`` over every id, fed by ``--threads`` threads pulling ids
  from one queue -- what ``medhash worker --queues encode --pool threads --concurrency T``
  does per task minus the broker, and what ``medhash serve`` does (it registers
  ``encode_batch_size`` threads). Per instance the stage reads the catalog, gets and decodes
  the slice PNG, waits for its shared batch, and commits the codes with the state change.
  The clock runs from releasing the threads until the last one is done; every id must end
  ``encoded`` with one code, else the row is FAILED with no rate. A wrapper on the
  encoder's ``forward`` (two clock reads per batch) records the batch sizes and the time
  spent in forward passes.
* Warm-up: before any timed run, one untimed forward at the batch size (cold oneDNN
  primitives cost ~0.1 s per new input shape). The worker path also forms *partial* batches
  of other sizes; each first occurrence of a size is cold. ``--repeat`` interleaves bare and
  worker runs; the first worker run pays for those cold shapes, later ones are warm (a
  long-running worker's steady state). Each worker run uses a fresh runtime of new
  instances (prepared untimed) and a new ``BatchEncoder`` around the same loaded model.
* ``--breakdown`` adds one untimed worker run with a timer around each step of the stage
  (catalog reads, object get, PNG decode, waiting in ``BatchEncoder.encode``, the commit),
  summed over threads and divided by slices: where the worker's time goes.
* PyTorch threads: ``--torch-threads 1`` is the setting to compare with on a shared box.
  With PyTorch's default (one OpenMP thread per core), a forward pass on a loaded 2-core
  machine spends most of its CPU spin-waiting at OpenMP barriers for a thread the scheduler
  parked: the same 128-slice bare run took 0.75 s CPU at one moment and 4-5 s at another,
  which makes ratios between two runs seconds apart meaningless. Both sides always use the
  same setting (``torch.set_num_threads`` is process-wide, also for the encoder thread).
* Device: CPU only here (the box has no GPU). On CUDA the code path is the same, with
  ``torch.autocast`` (AMP) inside ``BatchEncoder.forward``; the bare side here does not
  autocast, which on CPU changes nothing (``enabled`` is false off CUDA).

A benchmark measures; it never asserts timings. Example::

    /work/main/.venv/bin/python bench/encode.py --torch-threads 1          # S=64, 256 slices, 32 threads
    /work/main/.venv/bin/python bench/encode.py --torch-threads 1 --image-size 64 224 \
        --threads 32 16 --repeat 3 --breakdown --json /tmp/encode.json
"""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/encode.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO_ROOT))

import numpy as np
import torch

from bench.common import Run, load, load_change, markdown_table, ratio_text  # noqa: E402
from bench.common import machine as common_machine  # noqa: E402
from bench.common import parser as common_parser  # noqa: E402

BARE = "bare: LoadedCheckpoint.encode"
WORKER = "worker: EncodeStage.run + BatchEncoder"

# --------------------------------------------------------------------------------------------
# Set-up (untimed)
# --------------------------------------------------------------------------------------------


def make_checkpoint(path: Path, image_size: int) -> Path:
    """An untrained DAFH/EfficientNet-B0 checkpoint: a forward costs the same as a trained one."""
    from shared.hashing.checkpoint import save_checkpoint
    from shared.hashing.models import create_model
    from shared.hashing.transform import DEFAULT_NORMALIZATION

    torch.manual_seed(0)
    model = create_model("dafh", backbone="efficientnet_b0", bits=32, num_classes=4,
                         image_size=image_size).eval()
    save_checkpoint(path, model, ["a", "b", "c", "d"], DEFAULT_NORMALIZATION, {})
    return path


@dataclass
class Prepared:
    """A fresh embedded runtime whose ``ids`` are all ``preprocessed`` with one slice each."""

    runtime: Any
    ids: list[int]
    seconds: float


@contextlib.contextmanager
def prepared_runtime(data_dir: Path, count: int, image_size: int, seed: int) -> Iterator[Prepared]:
    """Ingest ``count`` Secondary Captures and preprocess them, untimed; close on exit."""
    import io

    from shared.config import Settings
    from shared.dicom.synthetic import StudyIds, make_secondary_capture
    from shared.pipeline.wiring import Runtime
    from testbed.lsh_model import picture

    shutil.rmtree(data_dir, ignore_errors=True)
    settings = Settings(data_dir=data_dir, dicom_port=0, metrics_port=0, image_size=image_size,
                        database_url=None, broker_url=None, s3_endpoint=None)
    runtime = Runtime.from_settings(settings)
    try:
        started = time.perf_counter()
        ingestor, preprocessor = runtime.ingestor, runtime.preprocessor
        ids = []
        study = StudyIds.new(patient_id="BENCHENC")
        for number in range(count):
            ds = make_secondary_capture(study, number + 1, picture(seed + number, image_size))
            buffer = io.BytesIO()
            ds.save_as(buffer, enforce_file_format=True)
            outcome = ingestor.store_instance(
                buffer.getvalue(), sop_instance_uid=str(ds.SOPInstanceUID),
                sop_class_uid=str(ds.SOPClassUID),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            )
            if outcome.instance_id is None:
                raise RuntimeError(f"ingest refused {ds.SOPInstanceUID}: {outcome.reason}")
            preprocessor.run(int(outcome.instance_id))
            ids.append(int(outcome.instance_id))
        counts = runtime.catalog.counts_by_state()
        if counts.get("preprocessed", 0) != count:
            raise RuntimeError(f"set-up: expected {count} preprocessed, got {counts}")
        os.sync()  # the set-up's dirty pages must not be written back inside a timed loop
        yield Prepared(runtime, ids, time.perf_counter() - started)
    finally:
        runtime.close()


def model_inputs(prepared: Prepared, image_size: int) -> np.ndarray:
    """The uint8 (N, S, S) images the worker will feed the model, for the bare side."""
    from shared.hashing.transform import to_model_uint8
    from shared.storage.slice_format import decode_slice

    catalog, store = prepared.runtime.catalog, prepared.runtime.store
    images = [to_model_uint8(decode_slice(store.get(item.object_key)), image_size)
              for instance_id in prepared.ids for item in catalog.slices(instance_id)]
    return np.stack(images)


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    image_size: int
    path: str
    batch_size: int
    threads: int | None
    slices: int
    seconds: float
    slices_per_s: float
    cpu_s: float
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    repeat: int
    ok: bool = True
    error: str = ""
    forward_s: float | None = None
    batches: dict[int, int] = field(default_factory=dict)
    ratio_vs_bare: float | None = None
    codes: np.ndarray | None = field(default=None, repr=False)
    code_mismatches: int | None = None

    @property
    def mean_batch(self) -> float | None:
        total = sum(self.batches.values())
        return sum(size * n for size, n in self.batches.items()) / total if total else None


def run_bare(checkpoint: Any, images: np.ndarray, batch_size: int, repeat: int) -> RunResult:
    """The model and nothing else: ``LoadedCheckpoint.encode`` in batch-size chunks."""
    tensor = torch.from_numpy(images)[:, None]
    before = load()
    cpu0, started = time.process_time(), time.perf_counter()
    with torch.inference_mode():
        codes = checkpoint.encode(tensor, batch_size=batch_size)
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    full, rest = divmod(len(images), batch_size)
    batches = {**({batch_size: full} if full else {}), **({rest: 1} if rest else {})}
    return RunResult(checkpoint.image_size, BARE, batch_size, None, len(images), seconds,
                     len(images) / seconds, cpu, before, load(), repeat, forward_s=seconds,
                     batches=batches, codes=codes)


class ForwardRecorder:
    """Wraps one ``BatchEncoder``'s ``forward``: batch sizes and seconds in forward passes."""

    def __init__(self, encoder: Any) -> None:
        self.sizes: Counter[int] = Counter()
        self.seconds = 0.0
        inner = encoder.forward

        def forward(images: np.ndarray) -> np.ndarray:
            started = time.perf_counter()
            try:
                return inner(images)
            finally:
                self.seconds += time.perf_counter() - started
                self.sizes[len(images)] += 1

        encoder.forward = forward  # _run (the encoder thread) calls self.forward


class StepTimer:
    """Thread-seconds per named step, for ``--breakdown``: wraps bound methods in place."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self._lock = threading.Lock()

    def wrap(self, owner: Any, attribute: str, name: str) -> None:
        inner: Callable[..., Any] = getattr(owner, attribute)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return inner(*args, **kwargs)
            finally:
                elapsed = time.perf_counter() - started
                with self._lock:
                    self.seconds[name] += elapsed

        setattr(owner, attribute, timed)


def run_worker(checkpoint: Any, prepared: Prepared, batch_size: int, max_wait_s: float,
               threads: int, repeat: int, timer: StepTimer | None = None) -> RunResult:
    """``EncodeStage.run`` over every prepared id from ``threads`` threads (timed)."""
    import shared.pipeline.encode as encode_module
    from shared.hashing.inference import BatchEncoder
    from shared.pipeline.encode import EncodeStage

    runtime = prepared.runtime
    encoder = BatchEncoder(checkpoint, batch_size, max_wait_s)
    recorder = ForwardRecorder(encoder)
    stage = EncodeStage(runtime.store, runtime.catalog, runtime.host, encoder)
    restore: list[tuple[Any, str, Any]] = []
    if timer is not None:
        for owner, attribute, name in (
            (runtime.catalog, "get", "catalog.get"),
            (runtime.catalog, "slices", "catalog.slices"),
            (runtime.catalog, "transition", "catalog.transition (codes + state, commit)"),
            (runtime.store, "get", "object store get (slice PNG)"),
            (encode_module, "decode_slice", "decode_slice (PNG -> float32)"),
            (encoder, "encode", "BatchEncoder.encode (queue + wait for batch + forward)"),
            (runtime.host, "enqueue", "host.enqueue (index)"),
        ):
            restore.append((owner, attribute, getattr(owner, attribute)))
            timer.wrap(owner, attribute, name)
    work: queue.Queue[int] = queue.Queue()
    for instance_id in prepared.ids:
        work.put(instance_id)
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)

    def feed() -> None:
        barrier.wait()
        while True:
            try:
                instance_id = work.get_nowait()
            except queue.Empty:
                return
            try:
                stage.run(instance_id)
            except BaseException as exc:  # noqa: BLE001 - reported in the row, not swallowed
                errors.append(exc)

    pool = [threading.Thread(target=feed, name=f"bench-encode-{n}") for n in range(threads)]
    for thread in pool:
        thread.start()
    before = load()
    cpu0 = time.process_time()
    barrier.wait()
    started = time.perf_counter()
    for thread in pool:
        thread.join()
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    after = load()
    encoder.close()
    for owner, attribute, original in restore:
        if owner is encode_module:
            setattr(owner, attribute, original)
    problems = [f"{type(e).__name__}: {e}" for e in errors[:3]]
    counts = runtime.catalog.counts_by_state()
    if counts.get("encoded", 0) != len(prepared.ids):
        problems.append(f"states { {k: v for k, v in counts.items() if v} }")
    rows = runtime.catalog.codes_of_instances(prepared.ids, checkpoint.version)
    if len(rows) != len(prepared.ids):
        problems.append(f"{len(rows)} codes for {len(prepared.ids)} slices")
    # slice ids follow the ids' order (one slice each, made in id order)
    codes = np.stack([np.frombuffer(code, np.uint8) for _, _, code in rows]) if rows else None
    return RunResult(checkpoint.image_size, WORKER, batch_size, threads, len(rows), seconds,
                     len(rows) / seconds, cpu, before, after, repeat, ok=not problems,
                     error="; ".join(problems), forward_s=recorder.seconds,
                     batches=dict(sorted(recorder.sizes.items())), codes=codes)


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def compare(bare: RunResult, worker: RunResult) -> None:
    """Worker slices/s over the bare run on the same slices just before; codes compared too.

    A differing code would mean the worker fed the model something else than the slices
    (or batch composition changed the arithmetic enough to flip a bit): reported, not hidden.
    """
    if not worker.ok:
        return
    worker.ratio_vs_bare = worker.slices_per_s / bare.slices_per_s
    if worker.codes is not None and bare.codes is not None and worker.codes.shape == bare.codes.shape:
        worker.code_mismatches = int(np.any(worker.codes != bare.codes, axis=1).sum())


def batches_text(batches: dict[int, int]) -> str:
    """'32×8' or, for the worker's mixed sizes, the most common sizes and the count."""
    if len(batches) <= 3:
        return ", ".join(f"{size}×{n}" for size, n in sorted(batches.items(), reverse=True))
    top = sorted(batches.items(), key=lambda kv: -kv[1])[:3]
    return ", ".join(f"{size}×{n}" for size, n in top) + f", … ({sum(batches.values())} batches)"


def table(results: Sequence[RunResult]) -> str:
    """A Markdown table, printable and pasteable into docs/benchmarks.md as is."""
    columns = ["S:", "path", "batch:", "threads:", "slices:", "seconds:", "slices/s:", "ratio vs bare:",
               "in forward:", "mean batch (sizes×count)", "CPU s:", "codes = bare", "load before→after"]
    return markdown_table(columns, (
        [r.image_size, r.path if r.repeat == 1 else f"{r.path} (#{r.repeat})", r.batch_size,
         r.threads or "—", r.slices, f"{r.seconds:.2f}",
         f"{r.slices_per_s:.1f}" if r.ok else f"— FAILED: {r.error}", ratio_text(r.ratio_vs_bare),
         f"{100 * r.forward_s / r.seconds:.0f} %" if r.forward_s is not None else "—",
         f"{r.mean_batch:.1f} ({batches_text(r.batches)})" if r.mean_batch else "—",
         f"{r.cpu_s:.1f}",
         "—" if r.code_mismatches is None else (
             "yes" if r.code_mismatches == 0 else f"{r.code_mismatches} differ"),
         load_change(r.load_before, r.load_after)]
        for r in results))


def breakdown_table(timer: StepTimer, slices: int, seconds: float, threads: int,
                    forward_s: float) -> str:
    """Thread-ms per slice of every wrapped step (threads overlap: the sum exceeds wall)."""
    lines = ["| step (per slice, summed over feeding threads) | thread-ms |", "| --- | ---: |"]
    for name, total in sorted(timer.seconds.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {1000 * total / slices:.1f} |")
    lines.append(f"| (wall per slice: {1000 * seconds / slices:.1f} ms with {threads} threads; "
                 f"forward passes {1000 * forward_s / slices:.1f} ms of it) | |")
    return "\n".join(lines)


def machine() -> dict[str, Any]:
    return common_machine(torch=torch.__version__, torch_threads=torch.get_num_threads(), cuda_available=torch.cuda.is_available(), mkldnn=torch.backends.mkldnn.is_available(), numpy=np.__version__)


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = common_parser(
        "Encode benchmark: slices/s through medhash's encode stage (EncodeStage + BatchEncoder, "
        "fed by worker threads) against the bare model forward (LoadedCheckpoint.encode) at the "
        "same batch size, same process, same run. CPU.")
    parser.add_argument("--image-size", type=int, nargs="+", default=[64],
                        help="model input side(s), one model and one set of runs each "
                        "(default 64; 224 is the paper's)")
    parser.add_argument("--count", type=int, default=None,
                        help="slices per run (default 256 at S<=64, 64 above)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per forward (default: Settings' encode_batch_size, 32)")
    parser.add_argument("--max-wait-s", type=float, default=None,
                        help="BatchEncoder's wait for a batch to fill (default: Settings' "
                        "encode_max_wait_s, 0.02)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="feeding threads, one worker run each (default: the batch size, as "
                        "`medhash serve` registers; the local stack's encode worker uses 16)")
    parser.add_argument("--repeat", type=int, default=2,
                        help="interleaved bare/worker repetitions (default 2: the first worker "
                        "run meets cold partial-batch shapes, the second is warm)")
    parser.add_argument("--breakdown", action="store_true",
                        help="one more untimed worker run per size with a timer on each step")
    parser.add_argument("--torch-threads", type=int, default=None,
                        help="torch.set_num_threads (default: PyTorch's, = cores)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from shared.config import Settings
    from shared.hashing.checkpoint import load_checkpoint

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    batch_size = args.batch_size or Settings.model_fields["encode_batch_size"].default
    max_wait_s = (args.max_wait_s if args.max_wait_s is not None
                  else Settings.model_fields["encode_max_wait_s"].default)
    thread_counts = args.threads or [batch_size]
    run = Run(machine(), versions=["python", "torch", "torch_threads", "cuda_available", "numpy"])
    run.print_start()
    print("device: CPU (the same code path runs on CUDA with AMP inside BatchEncoder.forward)")
    print(f"batch size {batch_size}, max wait {max_wait_s} s, feeding threads {thread_counts}",
          flush=True)

    results: list[RunResult] = []
    breakdowns: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        tmp = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="medhash-bench-enc-")))
        workdir = args.workdir or tmp
        workdir.mkdir(parents=True, exist_ok=True)
        for size in args.image_size:
            count = args.count or (256 if size <= 64 else 64)
            path = make_checkpoint(workdir / f"dafh-{size}.pt", size)
            checkpoint = load_checkpoint(path, device="cpu")
            print(f"\n== S={size}: model {checkpoint.version[:12]}, {count} slices per run", flush=True)
            with torch.inference_mode():  # cold oneDNN primitives for the full batch shape
                checkpoint.encode(torch.zeros((batch_size, 1, size, size), dtype=torch.uint8),
                                  batch_size=batch_size)
            seed = 0

            def record(result: RunResult) -> None:
                results.append(result)
                status = "ok" if result.ok else f"FAILED: {result.error}"
                print(f"   {result.seconds:.2f} s, {result.slices_per_s:.1f} slices/s, "
                      f"mean batch {result.mean_batch or 0:.1f} ({status})", flush=True)

            for repeat in range(1, args.repeat + 1):
                for threads in thread_counts:
                    seed += 1000
                    with prepared_runtime(workdir / f"rt-{size}-{repeat}-{threads}", count, size,
                                          seed) as prepared:
                        print(f"-> prepared {count} instances in {prepared.seconds:.1f} s (untimed)")
                        images = model_inputs(prepared, size)
                        print(f"-> {BARE}, batch {batch_size}, run {repeat}", flush=True)
                        bare = run_bare(checkpoint, images, batch_size, repeat)
                        record(bare)
                        print(f"-> {WORKER}, {threads} threads, run {repeat}", flush=True)
                        worker = run_worker(checkpoint, prepared, batch_size, max_wait_s,
                                            threads, repeat)
                        record(worker)
                        compare(bare, worker)
            if args.breakdown:
                for threads in thread_counts:
                    seed += 1000
                    with prepared_runtime(workdir / f"rt-{size}-breakdown-{threads}", count, size,
                                          seed) as prepared:
                        print(f"-> breakdown: worker, {threads} threads (untimed)", flush=True)
                        timer = StepTimer()
                        worker = run_worker(checkpoint, prepared, batch_size, max_wait_s,
                                            threads, 0, timer)
                        text = breakdown_table(timer, max(worker.slices, 1), worker.seconds,
                                               threads, worker.forward_s or 0.0)
                        print(text)
                        breakdowns[f"S={size} threads={threads}"] = {
                            "thread_ms_per_slice": {k: 1000 * v / max(worker.slices, 1)
                                                    for k, v in timer.seconds.items()},
                            "wall_ms_per_slice": 1000 * worker.seconds / max(worker.slices, 1),
                            "forward_ms_per_slice": 1000 * (worker.forward_s or 0) / max(worker.slices, 1),
                            "batches": worker.batches,
                        }

    print()
    print(table(results))
    print()
    for size in args.image_size:
        ratios = [r.ratio_vs_bare for r in results if r.image_size == size and r.ratio_vs_bare]
        if ratios:
            print(f"S={size}: worker/bare ratio median {statistics.median(ratios):.2f}x "
                  f"(runs: {', '.join(f'{x:.2f}' for x in ratios)})")
    run.finish()
    print("CPU only; 'in forward' is the share of the run's wall time spent in model forward "
          "passes; CPU s is the whole process (all threads).")
    rows = [{**{k: v for k, v in asdict(r).items() if k != "codes"}, "mean_batch": r.mean_batch}
            for r in results]
    run.write_json(args.json, batch_size=batch_size, max_wait_s=max_wait_s, threads=thread_counts,
                   results=rows, breakdowns=breakdowns)
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
