"""Ingest benchmark (issue 2): instances/s received *and durably stored* by the listener,
against dcmtk's ``storescp`` writing to disk on the same machine in the same run.

What is measured, and why this way:

* The same client for every target: dcmtk's ``storescu`` (``/usr/bin/storescu``, never
  pynetdicom's same-named script), proposing Explicit VR Little Endian (the files' own
  syntax, so nobody converts anything). The ratio therefore compares servers, not clients.
  ``TCP_NODELAY=1`` is set for every dcmtk process: without it dcmtk leaves Nagle on and
  crawls at ~12 files/s.
* One association = one ``storescu`` process over all files. N parallel associations = N
  ``storescu`` processes, one per series folder, started together. The clock runs from the
  first start to the last exit, so client start-up and the header scan of ``+sd`` are in
  every number alike.
* Reference: ``/usr/bin/storescp -od DIR +B`` (bit-preserving, the closest to medhash's
  "store the bytes as received"). dcmtk 3.6.x ``storescp`` serves one association at a
  time in its default single-process mode, so the parallel runs use ``--fork`` (one child
  per association). storescp does NOT fsync: its "stored" means "in the page cache",
  whereas medhash answers Success only after fsync of the file, its folder and the
  SQLite commit (WAL, synchronous=FULL). The ratio is thus conservative for medhash.
* medhash: ``medhash listener`` as its own process (the embedded default: SQLite + local
  folder). After every run the catalog must hold exactly N instances
  (``medhash status --json``) and storescp's folder exactly N files; a run that lost files
  is reported as failed, not as a number.
* ``--distributed`` adds medhash on PostgreSQL + Redis + an S3 API, started with the test
  suite's server classes (``testbed/servers.py``). Those are *test stand-ins*: PostgreSQL with
  fsync off and moto (an in-memory, pure-Python S3) instead of MinIO, so that row measures
  the code path and the stand-ins, not a production deployment.

A benchmark measures; it never asserts timings. Example::

    /work/main/.venv/bin/python bench/ingest.py                      # 2,000 files, ~1 GB
    /work/main/.venv/bin/python bench/ingest.py --count 400 --json /tmp/ingest.json
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:  # `python bench/ingest.py` puts bench/, not the repo, on the path
    sys.path.insert(0, str(REPO_ROOT))

from bench.common import Run, add_ct_options, run_folders, StandIns, load, load_change, markdown_table, number, ratio_text, ratios_to_reference, stop_process  # noqa: E402
from bench.common import machine as common_machine  # noqa: E402
from bench.common import parser as common_parser  # noqa: E402
from testbed.servers import free_port  # noqa: E402

DCMTK_BIN = Path("/usr/bin")
STORESCU = DCMTK_BIN / "storescu"
STORESCP = DCMTK_BIN / "storescp"
ECHOSCU = DCMTK_BIN / "echoscu"
MEDHASH = Path(sys.executable).parent / "medhash"
MANIFEST = "bench-manifest.json"
CALLING_AE = "BENCHSCU"
MEDHASH_AE = "MEDHASH"
STORESCP_AE = "STORESCP"


def dcmtk_env() -> dict[str, str]:
    """dcmtk leaves Nagle's algorithm on unless told otherwise, and then crawls."""
    return {**os.environ, "TCP_NODELAY": "1"}


# --------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------


def generate(folder: Path, count: int, series: int, rows: int, columns: int) -> list[Path]:
    """``count`` CT slices split over ``series`` folders (``series_0`` ...), made once.

    One folder per parallel sender; each folder is its own series with its own UIDs. A
    folder that already holds the same set (see the manifest) is reused, so repeated runs
    with ``--files`` skip the ~1 GB generation.
    """
    from tqdm import tqdm

    from shared.dicom.synthetic import StudyIds, make_ct, write

    wanted = {"count": count, "series": series, "rows": rows, "columns": columns}
    manifest = folder / MANIFEST
    if manifest.is_file() and json.loads(manifest.read_text()) == wanted:
        paths = sorted(folder.glob("series_*/*.dcm"))
        if len(paths) == count:
            print(f"reusing {count} files in {folder}")
            return paths
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sizes = [count // series + (1 if i < count % series else 0) for i in range(series)]
    paths: list[Path] = []
    with tqdm(total=count, desc="generating CT files", unit="file") as bar:
        for index, size in enumerate(sizes):
            ids = StudyIds.new(patient_id=f"BENCH{index:04d}")
            for number in range(1, size + 1):
                ds = make_ct(ids, number, rows=rows, columns=columns, seed=index)
                paths.append(write(ds, folder / f"series_{index}" / f"ct_{number:05d}.dcm"))
                bar.update()
    manifest.write_text(json.dumps(wanted))
    return paths


# --------------------------------------------------------------------------------------------
# Targets: a server we can start, point storescu at, check and stop
# --------------------------------------------------------------------------------------------


class Target:
    """One storage SCP under test. Subclasses start it fresh for every run."""

    name: str
    called_ae: str
    port: int
    process: subprocess.Popen[bytes] | None = None

    def start(self, associations: int) -> None:
        raise NotImplementedError

    def stored_count(self) -> int:
        """How many instances the target really holds after a run."""
        raise NotImplementedError

    def stop(self) -> None:
        """Stop our server process by its PID (SIGTERM, then SIGKILL after 10 s)."""
        proc, self.process = self.process, None
        stop_process(proc, timeout=10)

    def cpu_seconds(self) -> float | None:
        """User+system CPU of the server process so far (and of children it has reaped)."""
        if self.process is None or self.process.poll() is not None:
            return None
        try:
            fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return None
        ticks = sum(int(v) for v in fields[11:15])  # utime stime cutime cstime
        return ticks / os.sysconf("SC_CLK_TCK")

    def note(self, associations: int) -> str:
        return ""

    def wait_ready(self, log_path: Path, timeout: float = 60.0) -> None:
        """Return once the server answers C-ECHO, or raise with the tail of its log."""
        deadline = time.monotonic() + timeout
        argv = [str(ECHOSCU), "-aet", CALLING_AE, "-aec", self.called_ae, "127.0.0.1", str(self.port)]
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                break
            if subprocess.run(argv, env=dcmtk_env(), capture_output=True, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        tail = log_path.read_text(errors="replace")[-3000:] if log_path.exists() else ""
        raise RuntimeError(f"{self.name} did not answer C-ECHO on port {self.port}:\n{tail}")


class StorescpTarget(Target):
    """dcmtk storescp writing every instance bit-preserved into a fresh folder (no fsync)."""

    name = "dcmtk storescp"
    called_ae = STORESCP_AE

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.out_dir = workdir / "storescp-out"
        self.fork = False

    def start(self, associations: int) -> None:
        shutil.rmtree(self.out_dir, ignore_errors=True)
        self.out_dir.mkdir(parents=True)
        # Single-process storescp serves associations one after another; --fork gives each
        # parallel association its own process, which is what the comparison needs.
        self.fork = associations > 1
        self.port = free_port()
        argv = [str(STORESCP), "-aet", STORESCP_AE, "-od", str(self.out_dir), "+B"]
        argv += ["--fork"] if self.fork else []
        argv += [str(self.port)]
        log_path = self.workdir / "storescp.log"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(argv, env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT)
        self.wait_ready(log_path)

    def stored_count(self) -> int:
        return sum(1 for p in self.out_dir.iterdir() if p.is_file())

    def note(self, associations: int) -> str:
        return "+B, --fork, no fsync" if associations > 1 else "+B, single process, no fsync"


class MedhashTarget(Target):
    """``medhash listener`` as its own process, on a fresh data dir (and database) per run."""

    def __init__(self, workdir: Path, name: str, extra_env: dict[str, str] | None = None,
                 new_database: Callable[[int], dict[str, str]] | None = None,
                 src: Path | None = None) -> None:
        self.workdir = workdir
        self.name = name
        self.called_ae = MEDHASH_AE
        self.extra_env = dict(extra_env or {})
        if src is not None:
            # PathFinder on PYTHONPATH comes before the editable install's finder.
            self.extra_env["PYTHONPATH"] = os.pathsep.join(
                [str(src.resolve()), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        self.new_database = new_database  # run number -> env overrides (a fresh database)
        self.runs = 0
        self.env: dict[str, str] = {}
        self.data_dir: Path | None = None

    def start(self, associations: int) -> None:
        self.runs += 1
        data_dir = self.workdir / f"medhash-{self.name.split()[1]}-{self.runs}"
        shutil.rmtree(data_dir, ignore_errors=True)
        self.data_dir = data_dir
        self.port = free_port()
        # A MEDHASH_* variable from the caller's shell (a database URL, say) must not turn
        # the embedded run into something else.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("MEDHASH_")}
        self.env = {
            **inherited,
            "MEDHASH_DATA_DIR": str(data_dir),
            "MEDHASH_DICOM_HOST": "127.0.0.1",
            "MEDHASH_DICOM_PORT": str(self.port),
            "MEDHASH_METRICS_PORT": "0",
            "MEDHASH_LOG_LEVEL": "WARNING",
            "MEDHASH_AE_TITLE": MEDHASH_AE,
            **self.extra_env,
        }
        if self.new_database is not None:
            self.env.update(self.new_database(self.runs))
        log_path = self.workdir / "medhash-listener.log"
        with log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [str(MEDHASH), "listener"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        self.wait_ready(log_path)

    def stored_count(self) -> int:
        result = subprocess.run(
            [str(MEDHASH), "status", "--json"], env=self.env, capture_output=True, text=True,
            timeout=120,
        )
        if result.returncode != 0:
            raise RuntimeError(f"medhash status failed: {result.stderr[-2000:]}")
        return int(json.loads(result.stdout)["total"])

    def stop(self) -> None:
        """Stop the listener and drop its data dir: ~1 GB per run would pile up otherwise."""
        super().stop()
        if self.data_dir is not None:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def note(self, associations: int) -> str:
        note = "SQLite+folder, fsync before Success"
        processes = int(self.extra_env.get("MEDHASH_LISTENER_PROCESSES", "1"))
        if processes > 1:
            note += f", {processes} listener processes"
        if "MEDHASH_DATABASE_URL" in self.extra_env:
            note = "PostgreSQL(fsync off)+Redis+moto S3: test stand-ins"
        if "PYTHONPATH" in self.extra_env:
            note += f"; code from {self.extra_env['PYTHONPATH'].split(os.pathsep)[0]}"
        return note


# --------------------------------------------------------------------------------------------
# One run
# --------------------------------------------------------------------------------------------


@dataclass
class RunResult:
    target: str
    associations: int
    files: int
    stored: int
    seconds: float
    instances_per_s: float
    mb_per_s: float
    server_cpu_s: float | None
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    note: str
    ok: bool
    error: str = ""
    ratio_vs_storescp: float | None = None
    repeat: int = 1


def storescu_argv(called_ae: str, port: int, folders: Sequence[Path]) -> list[str]:
    """One storescu over ``folders``, proposing only the files' SOP class in Explicit VR LE."""
    return [
        str(STORESCU), "-aet", CALLING_AE, "-aec", called_ae,
        "-R", "-xe",  # required contexts only, Explicit VR Little Endian first
        "+sd", "+r",  # the folders' files, recursively
        "127.0.0.1", str(port), *map(str, folders),
    ]


def run_once(target: Target, folders: Sequence[Path], files: int, total_bytes: int,
             associations: int, logdir: Path, repeat: int) -> RunResult:
    """Start the target fresh, send over ``associations`` storescu processes, check, stop."""
    target.start(associations)
    try:
        cpu_before = target.cpu_seconds()
        before = load()
        groups = split(folders, associations)
        started = time.perf_counter()
        procs = []
        for index, group in enumerate(groups):
            log = (logdir / f"storescu-{index}.log").open("wb")
            argv = storescu_argv(target.called_ae, target.port, group)
            procs.append((subprocess.Popen(argv, env=dcmtk_env(), stdout=log, stderr=subprocess.STDOUT), log))
        codes = []
        for proc, log in procs:
            codes.append(proc.wait())
            log.close()
        seconds = time.perf_counter() - started
        after = load()
        time.sleep(0.5)  # let a forked storescp child finish writing its last file and exit
        cpu_after = target.cpu_seconds()
        stored = target.stored_count()
    finally:
        target.stop()
    errors = []
    if any(codes):
        errors.append(f"storescu exit codes {codes} (logs in {logdir})")
    if stored != files:
        errors.append(f"target holds {stored} of {files} instances")
    cpu = None if cpu_before is None or cpu_after is None else cpu_after - cpu_before
    return RunResult(
        target=target.name, associations=associations, files=files, stored=stored,
        seconds=seconds, instances_per_s=files / seconds, mb_per_s=total_bytes / seconds / 1e6,
        server_cpu_s=cpu, load_before=before, load_after=after, note=target.note(associations),
        ok=not errors, error="; ".join(errors), repeat=repeat,
    )


def split(folders: Sequence[Path], parts: int) -> list[list[Path]]:
    """Deal the series folders out to ``parts`` senders (one folder each when parts == 8)."""
    groups: list[list[Path]] = [[] for _ in range(min(parts, len(folders)))]
    for index, folder in enumerate(folders):
        groups[index % len(groups)].append(folder)
    return groups


# --------------------------------------------------------------------------------------------
# Distributed stand-ins
# --------------------------------------------------------------------------------------------


def distributed_target(servers: StandIns, workdir: Path, label: str = "",
                       src: Path | None = None) -> MedhashTarget:
    """medhash on the stand-ins, with a fresh database and bucket per run."""
    return MedhashTarget(workdir, f"medhash distributed{label}", src=src,
                         extra_env=servers.env(), new_database=lambda _run: servers.env())


# --------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------


def attach_ratios(results: list[RunResult]) -> None:
    """Ratio of each run's instances/s to storescp's with the same association count.

    With ``--repeat`` > 1 each run is compared with the storescp run of the same repeat,
    which ran right before it, so a burst of load from elsewhere hits both alike.
    """
    values = ratios_to_reference(results, group=lambda r: (r.associations, r.repeat),
                                 is_reference=lambda r: r.target == StorescpTarget.name,
                                 ok=lambda r: r.ok, rate=lambda r: r.instances_per_s)
    for r, value in zip(results, values, strict=True):
        r.ratio_vs_storescp = value


def table(results: list[RunResult]) -> str:
    """A Markdown table, printable and pasteable into docs/benchmarks.md as is."""
    columns = ["target", "assoc.:", "files:", "seconds:", "instances/s:", "MB/s:", "ratio vs storescp:",
               "server CPU s:", "load before→after", "notes"]
    return markdown_table(columns, (
        # A run that lost files has no rate: printing one would invite quoting it.
        [r.target if r.repeat == 1 else f"{r.target} (#{r.repeat})", r.associations, r.files,
         f"{r.seconds:.1f}", number(r.instances_per_s if r.ok else None),
         number(r.mb_per_s if r.ok else None), ratio_text(r.ratio_vs_storescp),
         number(r.server_cpu_s), load_change(r.load_before, r.load_after),
         r.note if r.ok else f"FAILED: {r.error}"]
        for r in results))


def fsync_latency(folder: Path, size: int, samples: int = 50) -> dict[str, float]:
    """Median ms to write+fsync a new file of ``size`` bytes, and to fsync its folder after.

    medhash's per-instance latency on one association is bounded below by about three such
    device flushes (object, folder, SQLite WAL); on a virtual disk they cost milliseconds,
    on an NVMe drive with power-loss protection tens of microseconds. Measuring it here lets
    a reader tell "slow code" from "slow disk".
    """
    folder.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    files_ms, dirs_ms = [], []
    for index in range(samples):
        path = folder / f"probe-{index}"
        started = time.perf_counter()
        with path.open("wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        middle = time.perf_counter()
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        files_ms.append((middle - started) * 1000)
        dirs_ms.append((time.perf_counter() - middle) * 1000)
    shutil.rmtree(folder, ignore_errors=True)
    return {"file_write_fsync_ms": sorted(files_ms)[samples // 2],
            "dir_fsync_ms": sorted(dirs_ms)[samples // 2]}


def machine() -> dict[str, Any]:
    dcmtk = subprocess.run([str(STORESCP), "--version"], capture_output=True, text=True).stdout.split("\n")[0]
    return common_machine(dcmtk=dcmtk.strip())


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = common_parser("Ingest benchmark: medhash listener vs dcmtk storescp, fed by dcmtk "
                           "storescu over 1 and N parallel associations.")
    add_ct_options(parser, 2000, "synthetic CT instances")
    parser.add_argument("--parallel", type=int, default=8,
                        help="parallel associations / series folders (default 8)")
    parser.add_argument("--associations", type=int, nargs="+", default=None,
                        help="association counts to run (default: 1 and --parallel)")
    parser.add_argument("--repeat", type=int, default=1, help="repeat every run this many times")
    parser.add_argument("--targets", nargs="+", default=["storescp", "medhash"],
                        choices=["storescp", "medhash"], help="targets to run (default both)")
    parser.add_argument("--distributed", action="store_true",
                        help="also run medhash on PostgreSQL+Redis+moto S3 (test stand-ins)")
    parser.add_argument("--medhash-src", type=Path, default=None,
                        help="run the medhash listener from this source tree (put first on "
                        "PYTHONPATH) instead of the installed one: to compare a branch or an "
                        "experiment against the same storescp in the same run")
    parser.add_argument("--listener-processes", type=int, default=1,
                        help="MEDHASH_LISTENER_PROCESSES for the medhash listener (SO_REUSEPORT "
                        "processes sharing the port; default 1)")
    parser.add_argument("--label", default="",
                        help="suffix for the medhash rows' names (e.g. the branch measured)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    for tool in (STORESCU, STORESCP, ECHOSCU, MEDHASH):
        if not tool.exists():
            sys.exit(f"{tool} not found (dcmtk: apt-get install dcmtk; medhash: pip install -e .)")
    run = Run(machine(), versions=["dcmtk"])
    run.print_start()

    with contextlib.ExitStack() as stack:
        where = run_folders(stack, args, "medhash-bench-ingest-")
        files_dir, workdir, logdir = where.files, where.work, where.logs

        paths = generate(files_dir, args.count, args.parallel, args.rows, args.columns)
        folders = sorted(p for p in files_dir.glob("series_*") if p.is_dir())
        total_bytes = sum(p.stat().st_size for p in paths)
        print(f"{len(paths)} files, {total_bytes / 1e6:.0f} MB, in {len(folders)} series folders")

        disk = fsync_latency(workdir / "fsync-probe", total_bytes // max(len(paths), 1))
        print(f"disk under {workdir}: write+fsync of one file {disk['file_write_fsync_ms']:.2f} ms, "
              f"folder fsync {disk['dir_fsync_ms']:.2f} ms (medians)")

        targets: list[Target] = []
        if "storescp" in args.targets:
            targets.append(StorescpTarget(workdir))
        if "medhash" in args.targets:
            processes = {"MEDHASH_LISTENER_PROCESSES": str(args.listener_processes)}
            label = f"{args.label} x{args.listener_processes}" if args.listener_processes > 1 else args.label
            targets.append(MedhashTarget(workdir, f"medhash embedded{label}", extra_env=processes,
                                         src=args.medhash_src))
        if args.distributed:
            servers = StandIns(stack, workdir, "bench")
            targets.append(distributed_target(servers, workdir, args.label, args.medhash_src))

        results: list[RunResult] = []
        for associations in args.associations or [1, args.parallel]:
            for repeat in range(1, args.repeat + 1):
                for target in targets:  # storescp first: the ratio's reference runs just before
                    print(f"-> {target.name}, {associations} association(s), run {repeat} ...", flush=True)
                    try:
                        result = run_once(target, folders, len(paths), total_bytes, associations,
                                          logdir, repeat)
                    except Exception as exc:  # a failed target is reported, the others still run
                        target.stop()
                        print(f"   FAILED: {exc}")
                        continue
                    results.append(result)
                    status = "ok" if result.ok else f"FAILED: {result.error}"
                    print(f"   {result.seconds:.1f} s, {result.instances_per_s:.1f} instances/s, "
                          f"{result.mb_per_s:.1f} MB/s ({status})", flush=True)
                    # Written-back dirty pages of one run must not slow the next one down.
                    os.sync()

        attach_ratios(results)
        print()
        print(table(results))
        print()
        run.finish()
        print("storescp does not fsync (its Success means 'in the page cache'); medhash embedded "
              "fsyncs file, folder and the SQLite commit before answering Success.")
        if args.distributed:
            print(f"medhash distributed {StandIns.NOTE}")
        run.write_json(args.json, fsync_probe=disk, count=len(paths), bytes=total_bytes,
                       rows=args.rows, columns=args.columns, results=[asdict(r) for r in results])
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
