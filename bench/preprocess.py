"""Preprocess benchmark (issue 3): slices/s of one worker process for 512x512 CT, uncompressed
and JPEG 2000 lossless, against the limit -- bare pydicom decode + the same resize of the same
files in one process -- measured in the same run. Goal: at least 0.8x the limit.

What is measured, and why this way:

* Data: ``--count`` synthetic 512x512 CT instances (``shared.dicom.synthetic.make_ct``,
  Explicit VR Little Endian, 12 bits stored) and a JPEG 2000 lossless copy of each
  (``Dataset.compress(JPEG2000Lossless)``, encoded by pylibjpeg-openjpeg), with the same
  SOP Instance UIDs. Both sets are held in memory as Part 10 bytes, so neither side of the
  ratio reads a file during its timed loop (the worker reads its raw objects from the
  object store, i.e. from the page cache: that is part of the worker's own cost).
* The limit: in one process, for every file's bytes ``pydicom.dcmread`` + ``ds.pixel_array``
  + ``resize_keep_aspect(pixels.astype(float32), image_size)`` -- the decode any worker has
  to do and the one resize a hash model needs, nothing else. It uses the same pydicom decoder
  plugins as the worker, so the ratio compares pipelines, not codecs.
* The worker path ("in-process"): the files are first ingested into a fresh embedded runtime
  (``Runtime.from_settings`` with SQLite + a local folder; ``Ingestor.store_instance``),
  untimed. Then ``Preprocessor.run(id)`` is timed over all ids in this one process: what a
  Celery worker process does per task, minus the broker. Logging stays unconfigured
  (the real worker also writes one INFO line per instance).
* ``--celery`` adds the real thing: ``medhash worker --queues preprocess --concurrency 1`` as
  its own process on PostgreSQL + Redis + an S3 API started with the test suite's server
  classes (``testbed/servers.py``). Those are *test stand-ins*: PostgreSQL with fsync off and
  moto (in-memory, pure-Python S3) instead of MinIO, all sharing the same cores. The files
  are ingested first (untimed, no messages sent); one extra warm-up instance is sent and
  waited for so that worker start-up is not timed; then the clock runs from enqueueing all
  ids until the catalog shows them all ``preprocessed`` (polled every 0.1 s).
* Every run must end with exactly N instances ``preprocessed`` and N slices; otherwise the
  row is reported as FAILED and has no rate. The limit runs right before the worker runs of
  the same syntax (and ``--repeat`` interleaves them), so a burst of load from elsewhere
  hits both alike; the CPU-seconds column (process CPU during the timed loop) is the number
  least disturbed by a shared machine.
* ``--profile OUT`` additionally runs the in-process worker path once more per syntax under
  cProfile (untimed, not in the table), prints the top functions and writes ``OUT.<syntax>``.

A benchmark measures; it never asserts timings. Example::

    /work/main/.venv/bin/python bench/preprocess.py                     # 300 slices per syntax
    /work/main/.venv/bin/python bench/preprocess.py --count 100 --celery --json /tmp/pre.json
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import io
import json
import os
import pstats
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


def _medhash_src_from_argv(argv: Sequence[str]) -> Path | None:
    """``--medhash-src`` must act before ``shared`` is imported, so it is read this early."""
    for index, arg in enumerate(argv):
        if arg == "--medhash-src" and index + 1 < len(argv):
            return Path(argv[index + 1]).resolve()
        if arg.startswith("--medhash-src="):
            return Path(arg.split("=", 1)[1]).resolve()
    return None


REPO_ROOT = Path(__file__).resolve().parent.parent
MEDHASH_SRC = _medhash_src_from_argv(sys.argv[1:])
for _path in (REPO_ROOT, MEDHASH_SRC):  # `python bench/x.py` puts bench/, not the repo, on the path
    if _path is not None and str(_path) not in sys.path[:1]:
        sys.path.insert(0, str(_path))

import numpy as np  # noqa: E402
from pydicom import dcmread  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEG2000Lossless  # noqa: E402

from bench.common import Run, add_ct_options, run_folders, StandIns, load, load_change, markdown_table, number, ratio_text, ratios_to_reference, stop_process, wait_until  # noqa: E402
from bench.common import machine as common_machine  # noqa: E402
from bench.common import parser as common_parser  # noqa: E402

MEDHASH = Path(sys.executable).parent / "medhash"
MANIFEST = "bench-manifest.json"
SYNTAXES: dict[str, str] = {
    "uncompressed": str(ExplicitVRLittleEndian),
    "j2k-lossless": str(JPEG2000Lossless),
}
LIMIT = "limit: dcmread + pixel_array + resize"
IN_PROCESS = "worker, in-process (embedded)"
CELERY = "worker, Celery process (stand-ins)"




# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Instance:
    """One Part 10 file in memory, with what ``Ingestor.store_instance`` needs beside it."""

    data: bytes
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str


def generate(folder: Path, count: int, rows: int, columns: int) -> dict[str, list[Path]]:
    """``count`` CT slices per syntax under ``folder/<syntax>/``, made once and reused.

    JPEG 2000 encoding costs ~0.1 s per slice, so a folder whose manifest matches is reused
    (``--files``); the compressed copy carries the same UIDs as its uncompressed twin.
    """
    from tqdm import tqdm

    from shared.dicom.synthetic import StudyIds, make_ct, write

    wanted = {"count": count, "rows": rows, "columns": columns, "syntaxes": list(SYNTAXES)}
    manifest = folder / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        paths = {name: sorted((folder / name).glob("*.dcm")) for name in SYNTAXES}
        if all(len(p) == count for p in paths.values()):
            print(f"reusing {count} files per syntax in {folder}")
            return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    ids = StudyIds.new(patient_id="BENCHPRE")
    paths = {name: [] for name in SYNTAXES}
    with tqdm(total=count, desc="generating CT files (+ JPEG 2000 copies)", unit="file") as bar:
        for number in range(1, count + 1):
            ds = make_ct(ids, number, rows=rows, columns=columns)
            name = f"ct_{number:05d}.dcm"
            paths["uncompressed"].append(write(ds, folder / "uncompressed" / name))
            ds.compress(JPEG2000Lossless)  # pylibjpeg-openjpeg; lossless is reversible 5/3
            paths["j2k-lossless"].append(write(ds, folder / "j2k-lossless" / name))
            bar.update()
    manifest.write_text(json.dumps(wanted))
    return paths


def read_instances(paths: Sequence[Path]) -> list[Instance]:
    """Files into memory with their file-meta UIDs, so no timed loop touches the disk."""
    from pydicom.filereader import read_file_meta_info

    instances = []
    for path in paths:
        meta = read_file_meta_info(path)
        instances.append(Instance(
            data=path.read_bytes(),
            sop_instance_uid=str(meta.MediaStorageSOPInstanceUID),
            sop_class_uid=str(meta.MediaStorageSOPClassUID),
            transfer_syntax_uid=str(meta.TransferSyntaxUID),
        ))
    return instances


def decoder_plugins(transfer_syntax: str) -> str:
    """The pydicom decoder plugins available for a syntax (both paths use the same ones)."""
    from pydicom.pixels.decoders.base import get_decoder

    decoder = get_decoder(transfer_syntax)
    return ", ".join(decoder.available_plugins) or "pydicom native"


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    syntax: str
    path: str
    slices: int
    seconds: float
    slices_per_s: float
    cpu_s: float | None
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    ok: bool = True
    error: str = ""
    repeat: int = 1
    ratio_vs_limit: float | None = None
    note: str = ""


def run_limit(syntax: str, instances: Sequence[Instance], image_size: int, repeat: int) -> RunResult:
    """Bare decode + the same resize, nothing else: what no worker can beat in one process."""
    from shared.dicom.pixels import resize_keep_aspect

    before = load()
    cpu0, started = time.process_time(), time.perf_counter()
    slices = 0
    for item in instances:
        ds = dcmread(io.BytesIO(item.data))
        pixels = ds.pixel_array
        resize_keep_aspect(pixels.astype(np.float32), image_size)
        slices += 1
    seconds = time.perf_counter() - started
    cpu = time.process_time() - cpu0
    return RunResult(syntax, LIMIT, slices, seconds, slices / seconds, cpu, before, load(),
                     repeat=repeat, note="one process, bytes in memory")


@contextlib.contextmanager
def embedded_pipeline(data_dir: Path, image_size: int) -> Iterator[tuple[Any, Any, Any]]:
    """A fresh embedded runtime (SQLite + folder): (ingestor, preprocessor, runtime)."""
    from shared.config import Settings
    from shared.pipeline.wiring import Runtime

    shutil.rmtree(data_dir, ignore_errors=True)
    settings = Settings(data_dir=data_dir, image_size=image_size, database_url=None,
                        broker_url=None, s3_endpoint=None)
    runtime = Runtime.from_settings(settings)
    try:
        yield runtime.ingestor, runtime.preprocessor, runtime
    finally:
        runtime.close()


def ingest_all(ingestor: Any, instances: Sequence[Instance]) -> list[int]:
    """Store every instance (untimed); a refused one is a broken benchmark, not a data point."""
    ids = []
    for item in instances:
        outcome = ingestor.store_instance(
            item.data, sop_instance_uid=item.sop_instance_uid, sop_class_uid=item.sop_class_uid,
            transfer_syntax_uid=item.transfer_syntax_uid,
        )
        if outcome.instance_id is None:
            raise RuntimeError(f"ingest refused {item.sop_instance_uid}: {outcome.reason}")
        ids.append(int(outcome.instance_id))
    return ids


def check_preprocessed(catalog: Any, ids: Sequence[int]) -> tuple[int, list[str]]:
    """(slices made, problems): every id must be ``preprocessed`` with exactly one slice."""
    counts = catalog.counts_by_state()
    problems = []
    if counts.get("preprocessed", 0) < len(ids):
        problems.append(f"states {dict((k, v) for k, v in counts.items() if v)}")
    slices = sum(len(catalog.slices(i)) for i in ids)
    if slices != len(ids):
        problems.append(f"{slices} slices for {len(ids)} instances")
    return slices, problems


def run_in_process(syntax: str, instances: Sequence[Instance], image_size: int, workdir: Path,
                   repeat: int, profile_out: Path | None = None) -> RunResult:
    """Ingest (untimed), then ``Preprocessor.run`` over every id in this process (timed)."""
    with embedded_pipeline(workdir / f"embedded-{syntax}-{repeat}", image_size) as parts:
        ingestor, preprocessor, runtime = parts
        ids = ingest_all(ingestor, instances)
        os.sync()  # the ingest's dirty pages must not be written back inside the timed loop
        profiler = cProfile.Profile() if profile_out is not None else None
        before = load()
        cpu0, started = time.process_time(), time.perf_counter()
        if profiler is not None:
            profiler.enable()
        for instance_id in ids:
            preprocessor.run(instance_id)
        if profiler is not None:
            profiler.disable()
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu0
        after = load()
        slices, problems = check_preprocessed(runtime.catalog, ids)
    if profiler is not None and profile_out is not None:
        profiler.dump_stats(profile_out)
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).strip_dirs()
        stats.sort_stats("tottime").print_stats(25)
        stats.sort_stats("cumulative").print_stats(30)
        print(text.getvalue())
    return RunResult(syntax, IN_PROCESS, slices, seconds, slices / seconds, cpu, before, after,
                     ok=not problems, error="; ".join(problems), repeat=repeat,
                     note="SQLite (WAL, synchronous=FULL) + local folder")


# --------------------------------------------------------------------------------------------
# The real worker: a Celery process on test stand-ins
# --------------------------------------------------------------------------------------------


def process_tree_cpu(pid: int) -> float | None:
    """User+system CPU of a process and its live children (Celery's prefork pool child)."""
    def one(p: int) -> tuple[float, list[int]]:
        fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        children: list[int] = []
        with contextlib.suppress(OSError):
            for task in Path(f"/proc/{p}/task").iterdir():
                children += [int(c) for c in (task / "children").read_text().split()]
        return sum(int(v) for v in fields[11:15]) / os.sysconf("SC_CLK_TCK"), children

    try:
        total, pending = 0.0, [pid]
        while pending:
            cpu, children = one(pending.pop())
            total += cpu
            pending += children
        return total
    except OSError:
        return None


def run_celery(syntax: str, instances: Sequence[Instance], warmup: Instance, image_size: int,
               servers: StandIns, logdir: Path, repeat: int) -> RunResult:
    """One ``medhash worker --concurrency 1`` process; clock from enqueue to all preprocessed."""
    from shared.config import Settings
    from shared.pipeline.ingest import Ingestor
    from shared.pipeline.queues import CeleryHost, ThreadHost, create_celery_app
    from shared.pipeline.states import Stage
    from shared.storage.catalog import open_catalog
    from shared.storage.objectstore import open_object_store

    env = {**servers.env(), "MEDHASH_DATA_DIR": str(logdir.parent / f"data-{servers.runs}"),
           "MEDHASH_IMAGE_SIZE": str(image_size), "MEDHASH_METRICS_PORT": "0"}
    settings = Settings(**{k.removeprefix("MEDHASH_").lower(): v for k, v in env.items()})
    store, catalog = open_object_store(settings), open_catalog(settings)
    # Ingest with a host that sends nothing: the timed enqueue below is the only one.
    ids = ingest_all(Ingestor(store, catalog, ThreadHost()), instances)
    (warm_id,) = ingest_all(Ingestor(store, catalog, ThreadHost()), [warmup])
    log_path = logdir / f"worker-{syntax}-{repeat}.log"
    argv = [str(MEDHASH), "worker", "--queues", "preprocess", "--concurrency", "1"]
    pythonpath = os.pathsep.join(str(p) for p in (MEDHASH_SRC, REPO_ROOT) if p is not None)
    with log_path.open("wb") as log:
        proc = subprocess.Popen(argv, env={**os.environ, **env, "PYTHONPATH": pythonpath},
                                stdout=log, stderr=subprocess.STDOUT)
    host = CeleryHost(create_celery_app(settings))
    try:
        def state(instance_id: int) -> str | None:
            row = catalog.get(instance_id)
            return row.state.value if row is not None else None

        alive = lambda: proc.poll() is None  # noqa: E731
        # Start-up, broker connection and the task's lazily built runtime stay out of the clock.
        host.enqueue(Stage.PREPROCESS, warm_id)
        wait_until(lambda: state(warm_id) == "preprocessed", 180, "warm-up instance", alive)
        cpu0 = process_tree_cpu(proc.pid)
        before = load()
        started = time.perf_counter()
        for instance_id in ids:
            host.enqueue(Stage.PREPROCESS, instance_id)
        target = len(ids) + 1
        wait_until(lambda: catalog.counts_by_state().get("preprocessed", 0) >= target,
                   60 + 2 * len(ids), "all instances preprocessed", alive)
        seconds = time.perf_counter() - started
        after = load()
        cpu1 = process_tree_cpu(proc.pid)
        slices, problems = check_preprocessed(catalog, ids)
    except Exception as exc:
        tail = log_path.read_text(errors="replace")[-2000:]
        raise RuntimeError(f"{exc}\n--- worker log tail ---\n{tail}") from exc
    finally:
        host.close()
        stop_process(proc)
        catalog.close()
    cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
    return RunResult(syntax, CELERY, slices, seconds, slices / seconds, cpu, before, after,
                     ok=not problems, error="; ".join(problems), repeat=repeat,
                     note="PostgreSQL(fsync off)+Redis+moto S3; CPU = worker processes")


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def attach_ratios(results: list[RunResult]) -> None:
    """Each run's slices/s over the limit's for the same syntax and repeat (run just before)."""
    values = ratios_to_reference(results, group=lambda r: (r.syntax, r.repeat),
                                 is_reference=lambda r: r.path == LIMIT, ok=lambda r: r.ok,
                                 rate=lambda r: r.slices_per_s)
    for r, value in zip(results, values, strict=True):
        r.ratio_vs_limit = value


def table(results: Sequence[RunResult]) -> str:
    """A Markdown table, printable and pasteable into docs/benchmarks.md as is."""
    columns = ["syntax", "path", "slices:", "seconds:", "slices/s:", "ratio vs limit:", "CPU s:",
               "CPU ms/slice:", "load before→after"]
    return markdown_table(columns, (
        [r.syntax, r.path if r.repeat == 1 else f"{r.path} (#{r.repeat})", r.slices,
         f"{r.seconds:.1f}", f"{r.slices_per_s:.1f}" if r.ok else f"— FAILED: {r.error}",
         ratio_text(r.ratio_vs_limit), number(r.cpu_s),
         number(1000 * r.cpu_s / r.slices if r.cpu_s is not None and r.slices else None),
         load_change(r.load_before, r.load_after)]
        for r in results))


def machine() -> dict[str, Any]:
    import PIL
    import pydicom

    return common_machine(pydicom=pydicom.__version__, numpy=np.__version__, pillow=PIL.__version__, decoders={name: decoder_plugins(uid) for name, uid in SYNTAXES.items()}, medhash_src=str(MEDHASH_SRC or REPO_ROOT))


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = common_parser(
        "Preprocess benchmark: slices/s of one medhash preprocess worker process against bare "
        "pydicom decode + resize of the same files in one process (the limit), for uncompressed "
        "and JPEG 2000 lossless 512x512 CT.")
    add_ct_options(parser, 300, "CT instances per syntax")
    parser.add_argument("--image-size", type=int, default=None,
                        help="slice size the resize produces (default: Settings' image_size, 224)")
    parser.add_argument("--syntaxes", nargs="+", default=list(SYNTAXES), choices=list(SYNTAXES),
                        help="transfer syntaxes to run (default both)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="repeat every run this many times (limit and worker interleaved)")
    parser.add_argument("--celery", action="store_true",
                        help="also run a real `medhash worker --concurrency 1` process on "
                        "PostgreSQL+Redis+moto S3 (test stand-ins)")
    parser.add_argument("--no-in-process", dest="in_process", action="store_false",
                        help="skip the in-process worker path (e.g. with --celery only)")
    parser.add_argument("--profile", type=Path, default=None,
                        help="also profile the in-process worker path once per syntax with "
                        "cProfile (untimed); writes OUT.<syntax> and prints the top functions")
    parser.add_argument("--medhash-src", type=Path, default=None,
                        help="import medhash (shared/, workers/) from this source tree instead "
                        "of the repository: to compare a branch or an experiment copy against "
                        "the same limit in the same run")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    from shared.config import Settings

    image_size = args.image_size or Settings.model_fields["image_size"].default
    run = Run(machine(), versions=["python", "pydicom", "numpy", "pillow"])
    run.print_start()
    print(f"decoder plugins: {run.machine['decoders']}; medhash from {run.machine['medhash_src']}")
    if args.celery and not MEDHASH.exists():
        sys.exit(f"{MEDHASH} not found (pip install -e .)")

    results: list[RunResult] = []
    with contextlib.ExitStack() as stack:
        where = run_folders(stack, args, "medhash-bench-pre-")
        files_dir, workdir, logdir = where.files, where.work, where.logs
        paths = generate(files_dir, args.count, args.rows, args.columns)
        data = {name: read_instances(paths[name]) for name in args.syntaxes}
        for name, instances in data.items():
            size = sum(len(i.data) for i in instances)
            print(f"{name}: {len(instances)} files, {size / 1e6:.0f} MB ({size / len(instances) / 1e3:.0f} KB each)")
        servers = StandIns(stack, workdir, "bench_pre") if args.celery else None
        if servers is not None:
            from shared.dicom.synthetic import StudyIds, make_ct

            warm = make_ct(StudyIds.new(patient_id="BENCHWARM"), 1, rows=args.rows, columns=args.columns)
        print(f"image size {image_size}; every run measures {args.count} slices", flush=True)

        def record(result: RunResult) -> None:
            results.append(result)
            status = "ok" if result.ok else f"FAILED: {result.error}"
            cpu = f", CPU {result.cpu_s:.1f} s" if result.cpu_s is not None else ""
            print(f"   {result.seconds:.2f} s, {result.slices_per_s:.1f} slices/s{cpu} ({status})", flush=True)

        for repeat in range(1, args.repeat + 1):
            for name in args.syntaxes:
                instances = data[name]
                print(f"-> {name}: {LIMIT}, run {repeat} ...", flush=True)
                record(run_limit(name, instances, image_size, repeat))
                if args.in_process:
                    print(f"-> {name}: {IN_PROCESS}, run {repeat} ...", flush=True)
                    record(run_in_process(name, instances, image_size, workdir, repeat))
                if servers is not None:
                    print(f"-> {name}: {CELERY}, run {repeat} ...", flush=True)
                    if name == "j2k-lossless":
                        warm_ds = warm.copy()
                        warm_ds.compress(JPEG2000Lossless)
                    else:
                        warm_ds = warm
                    buffer = io.BytesIO()
                    warm_ds.save_as(buffer, enforce_file_format=True)
                    warmup = Instance(buffer.getvalue(), str(warm_ds.SOPInstanceUID),
                                      str(warm_ds.SOPClassUID), str(warm_ds.file_meta.TransferSyntaxUID))
                    try:
                        record(run_celery(name, instances, warmup, image_size, servers, logdir, repeat))
                    except Exception as exc:  # reported; the other runs still go on
                        print(f"   FAILED: {exc}", flush=True)
        if args.profile is not None:
            for name in args.syntaxes:
                out = args.profile.with_name(f"{args.profile.name}.{name}")
                print(f"-> {name}: profiling the in-process worker path (untimed) -> {out}", flush=True)
                run_in_process(name, data[name], image_size, workdir, 0, profile_out=out)

    attach_ratios(results)
    print()
    print(table(results))
    print()
    run.finish()
    if args.celery:
        print(f"The Celery rows {StandIns.NOTE}")
    run.write_json(args.json, count=args.count, rows=args.rows, columns=args.columns,
                   image_size=image_size, results=[asdict(r) for r in results])
    return 0 if results and all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
