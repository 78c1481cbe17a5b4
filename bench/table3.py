"""Reproduce the DAFH paper's Table 3 (methods x 16/32/48 bits) and Table 5 (ablation at
32 bits) on public data with one CPU budget for every method, plus a robustness check.

Suites (``--suites``; jobs run in the order brain 32/48 bits, ablation, mednist 32 bits,
robustness, mednist 16/48 bits, brain 16 bits, so the headline comparison lands first; each job is skipped when its
eval.json exists, so an interrupted run continues where it stopped):
  brain       Table 3 on the brain-tumour MRI set: training/ and testing/ pooled, seeded
              stratified 8:2 (80% = training set and database, 20% = queries).
  ablation    Table 5 on the same split at 32 bits: DAFH with AT / LF / Ptanh switched.
  robustness  train on the shipped training/, query testing/ against training/ (32 bits):
              another source, so this measures robustness to distribution shift.
  mednist     Table 3 on a class-balanced MedNIST subset, 8:2 split.
Extra suites (not in the default list; ``--suites seeds,selection``):
  seeds       the brain split at 32 bits again with --seed 1 and 2 for DAFH and DSH, and
              DAFH with semi-hard triplets and with beta 0: the seed-to-seed spread and two probes.
  selection   how DAFH's triplet sampling was chosen without looking at the queries: the
              brain split's 80 % split 8:2 again (seed 1), DAFH with random / semi-hard /
              batch-all triplets at seeds 0 and 1, DSH and DPN for scale, 32 bits.

Every job calls the same functions as ``medhash train`` / ``medhash evaluate`` (the exact
command lines are written to each job's command.txt and to the report). Jobs run in
``--workers`` processes with one torch thread each: at 64 px EfficientNet-B0 gains almost
nothing from a second thread, so two single-threaded jobs finish twice as many runs.

    python bench/table3.py --data-root /tmp/medhash-data --out /tmp/medhash-bench
    python bench/table3.py --out /tmp/medhash-bench --report-only
"""
from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("dafh", "saliency_fusion", "hashnet", "dsh", "dpsh", "dpn")
LABELS = {"dafh": "DAFH", "saliency_fusion": "Saliency fusion", "hashnet": "HashNet", "dsh": "DSH",
          "dpsh": "DPSH", "dpn": "DPN"}
ROW_KEYS = ("map@1", "map@10", "tie_aware_map@1", "tie_aware_map@10", "map")
BITS = (32, 48, 16)  # 32 and 48 first: they are the comparison the issue asks about
ABLATION = {  # Table 5 rows -> DAFH switches
    "EfficientNet": {"attention": False, "fusion": False, "ptanh": False},
    "EfficientNet+Ptanh": {"attention": False, "fusion": False, "ptanh": True},
    "EfficientNet+AT": {"attention": True, "fusion": False, "ptanh": False},
    "EfficientNet+LF": {"attention": False, "fusion": True, "ptanh": False},
    "EfficientNet+Ptanh+AT": {"attention": True, "fusion": False, "ptanh": True},
    "EfficientNet+Ptanh+LF": {"attention": False, "fusion": True, "ptanh": True},
    "EfficientNet+AT+LF": {"attention": True, "fusion": True, "ptanh": False},
    "Proposed": {"attention": True, "fusion": True, "ptanh": True},
}


@dataclass
class Job:
    suite: str
    name: str
    train_args: dict[str, Any]
    eval_args: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def priority(self) -> int:
        """Run order: brain 32/48, ablation, mednist 32, robustness, mednist 16/48, brain 16."""
        if self.suite == "brain":
            return 5 if self.meta["bits"] == 16 else 0
        if self.suite == "mednist":
            return 2 if self.meta["bits"] == 32 else 4
        return {"ablation": 1, "robustness": 3, "seeds": 6, "selection": 7}[self.suite]


def _cli(command: str, positional: str, args: dict[str, Any]) -> str:
    """The equivalent ``medhash`` command line for a call of train()/evaluate()."""
    parts = ["medhash", command, positional]
    for key, value in args.items():
        flag = "--json" if key == "json_out" else "--" + key.replace("_", "-")
        if isinstance(value, bool):
            parts.append(flag if value else "--no-" + key.replace("_", "-"))
        elif value is not None:
            parts += [flag, str(value)]
    return " ".join(parts)


def pooled_brain(data_root: Path, out: Path) -> Path:
    """training/ and testing/ of the brain set pooled per class, as symlinks under ``out``."""
    pooled = out / "brain-pooled"
    if not pooled.exists():
        tmp = out / "brain-pooled.tmp"
        for split in ("training", "testing"):
            for class_dir in sorted((data_root / "brain-tumor-mri" / split).iterdir()):
                (tmp / class_dir.name).mkdir(parents=True, exist_ok=True)
                for f in sorted(class_dir.iterdir()):
                    os.symlink(f.resolve(), tmp / class_dir.name / f"{split}_{f.name}")
        tmp.rename(pooled)
    return pooled


def training_part(pooled: Path, out: Path, seed: int) -> Path:
    """The brain split's training part (its 80 %) as symlinks under ``out``: the data of the
    selection suite, which splits it again so choices never see the real queries."""
    from shared.learning.datasets import list_folder, stratified_split

    part = out / "brain-train80"
    if not part.exists():
        paths, labels, names = list_folder(pooled)
        tmp = out / "brain-train80.tmp"
        for i in stratified_split(labels, 0.8, seed)[0]:
            (tmp / names[labels[i]]).mkdir(parents=True, exist_ok=True)
            os.symlink(paths[i].resolve(), tmp / names[labels[i]] / paths[i].name)
        tmp.rename(part)
    return part


SEED_RUNS = {  # seeds suite: job name -> (method, train-argument overrides)
    "dafh-s1": ("dafh", {"seed": 1}), "dafh-s2": ("dafh", {"seed": 2}),
    "dsh-s1": ("dsh", {"seed": 1}), "dsh-s2": ("dsh", {"seed": 2}),
    "dafh-semihard": ("dafh", {"triplet_mining": "semihard"}), "dafh-beta0": ("dafh", {"beta": 0.0}),
}
SELECTION_RUNS = {f"dafh-{mining}-s{seed}": ("dafh", {"triplet_mining": mining, "seed": seed})
                  for mining in ("random", "semihard", "all") for seed in (0, 1)}
SELECTION_RUNS.update({"dsh-s0": ("dsh", {}), "dpn-s0": ("dpn", {})})


def plan(args: argparse.Namespace) -> list[Job]:
    common = {"epochs": args.epochs, "image_size": args.image_size, "backbone": args.backbone,
              "batch_size": args.batch_size, "lr": args.lr, "seed": args.seed, "device": "cpu", "threads": 1}
    jobs: list[Job] = []
    out: Path = args.out
    brain = (str(pooled_brain(args.data_root, out))
             if {"brain", "ablation", "seeds", "selection"} & set(args.suites) else "")

    def split_job(suite: str, name: str, data: str, method: str, bits: int, split_seed: int,
                  train_extra: dict[str, Any], meta: dict[str, Any], per_class: int | None = None) -> Job:
        """A job trained on a seeded 8:2 split of ``data`` and evaluated on the same split."""
        subset = {"per_class": per_class} if per_class is not None else {}
        return Job(suite, name, {"data": data, "method": method, "bits": bits, "split_seed": split_seed, **subset,
                                 **common, **train_extra},
                   {"split_of": data, "seed": split_seed, **subset}, meta)

    for suite in args.suites:
        if suite == "brain":
            for bits in BITS:
                for m in METHODS:
                    jobs.append(split_job(suite, f"{m}-{bits}", brain, m, bits, args.seed, {},
                                          {"method": m, "bits": bits}))
        elif suite == "ablation":
            for row, switches in ABLATION.items():
                if row == "Proposed":  # identical to the brain suite's dafh-32 run
                    continue
                jobs.append(split_job(suite, row, brain, "dafh", 32, args.seed, switches, {"row": row}))
        elif suite == "seeds":
            for name, (m, overrides) in SEED_RUNS.items():
                jobs.append(split_job(suite, name, brain, m, 32, args.seed, overrides, {"method": m, "bits": 32}))
        elif suite == "selection":
            inner = str(training_part(Path(brain), out, args.seed))
            for name, (m, overrides) in SELECTION_RUNS.items():
                jobs.append(split_job(suite, name, inner, m, 32, args.seed + 1, overrides,
                                      {"method": m, "bits": 32}))
        elif suite == "robustness":
            train_dir = str(args.data_root / "brain-tumor-mri" / "training")
            test_dir = str(args.data_root / "brain-tumor-mri" / "testing")
            for m in METHODS:
                jobs.append(Job(suite, f"{m}-32", {"data": train_dir, "method": m, "bits": 32, **common},
                                {"database": train_dir, "queries": test_dir}, {"method": m, "bits": 32}))
        elif suite == "mednist":
            data = str(args.data_root / "mednist-64")
            for bits in BITS:
                for m in METHODS:
                    jobs.append(split_job(suite, f"{m}-{bits}", data, m, bits, args.seed,
                                          {"epochs": args.mednist_epochs}, {"method": m, "bits": bits},
                                          per_class=args.mednist_per_class))
    return sorted(jobs, key=lambda j: j.priority)


def run_job(job: Job, out: Path) -> str:
    """Train and evaluate one job in this process, logging to its folder."""
    import torch

    from medhash.commands.learning import evaluate, train

    torch.set_num_threads(1)
    folder = out / job.suite / job.name
    folder.mkdir(parents=True, exist_ok=True)
    model = folder / "model.pt"
    train_args = {**job.train_args, "out": str(model), "log_dir": str(folder)}
    eval_args = {**job.eval_args, "json_out": str(folder / "eval.json"), "plots": str(folder / "plots"),
                 "device": "cpu", "threads": 1}
    train_pos, eval_pos = train_args.pop("data"), str(model)
    (folder / "command.txt").write_text(_cli("train", train_pos, train_args) + "\n" +
                                        _cli("evaluate", eval_pos, eval_args) + "\n")
    t0 = time.time()
    with open(folder / "run.log", "w") as log, contextlib.redirect_stderr(log), contextlib.redirect_stdout(log):
        train(data=train_pos, **train_args)
        t_train = time.time() - t0
        evaluate(eval_pos, **eval_args)
    metrics = json.loads((folder / "eval.json").read_text())
    metrics.update({"train_seconds": round(t_train, 1), "total_seconds": round(time.time() - t0, 1), **job.meta})
    (folder / "eval.json").write_text(json.dumps(metrics, indent=2))
    return f"{job.suite}/{job.name}: map@10={metrics['map@10']:.4f} in {metrics['total_seconds']:.0f}s"


def _fmt(results: dict[str, Any], key: str) -> str:
    return f"{results[key]:.3f}" if results else "–"


def report(out: Path) -> str:
    """Markdown tables of whatever has finished."""
    def load(suite: str, name: str) -> dict[str, Any]:
        p = out / suite / name / "eval.json"
        return json.loads(p.read_text()) if p.exists() else {}

    lines: list[str] = []
    for suite, title in (("brain", "Brain tumour MRI, pooled 8:2 split"), ("mednist", "MedNIST subset, 8:2 split")):
        if not (out / suite).exists():
            continue
        for key in ("tie_aware_map@10", "tie_aware_map@1", "map@10", "map@1", "map"):
            lines += [f"### {title} — {key}", "", "| Model | 16-bit | 32-bit | 48-bit |", "| --- | --- | --- | --- |"]
            for m in METHODS:
                lines.append(f"| {LABELS[m]} | " + " | ".join(_fmt(load(suite, f"{m}-{b}"), key) for b in (16, 32, 48))
                             + " |")
            lines.append("")
    if (out / "ablation").exists():
        lines += ["### Ablation (Table 5), brain tumour, 32 bits", "",
                  "| Model | MAP@1 | MAP@10 | tie-aware MAP@1 | tie-aware MAP@10 | MAP |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for row in ABLATION:
            r = load("brain", "dafh-32") if row == "Proposed" else load("ablation", row)
            lines.append(f"| {row} | " + " | ".join(_fmt(r, k) for k in ROW_KEYS) + " |")
        lines.append("")
    if (out / "robustness").exists():
        lines += ["### Robustness: shipped testing/ queried against training/, 32 bits", "",
                  "| Model | MAP@1 | MAP@10 | tie-aware MAP@1 | tie-aware MAP@10 | MAP |",
                  "| --- | --- | --- | --- | --- | --- |"]
        for m in METHODS:
            r = load("robustness", f"{m}-32")
            lines.append(f"| {LABELS[m]} | " + " | ".join(_fmt(r, k) for k in ROW_KEYS) + " |")
        lines.append("")
    for suite, title, runs in (("seeds", "Seed spread and probes, brain split, 32 bits", SEED_RUNS),
                               ("selection", "Triplet sampling chosen on the training part only "
                                             "(its own 8:2 split, seed 1), 32 bits", SELECTION_RUNS)):
        if not (out / suite).exists():
            continue
        lines += [f"### {title}", "", "| run | tie-aware MAP@10 | tie-aware MAP@1 | MAP@10 | classifier top-1 |",
                  "| --- | --- | --- | --- | --- |"]
        for name in runs:
            r = load(suite, name)
            top1 = f"{r['classifier_top1']:.3f}" if "classifier_top1" in r else "–"
            lines.append(f"| {name} | " + " | ".join(_fmt(r, k) for k in ("tie_aware_map@10", "tie_aware_map@1",
                                                                            "map@10")) + f" | {top1} |")
        lines.append("")
    text = "\n".join(lines)
    (out / "results.md").write_text(text)
    plot(out, load)
    return text


def plot(out: Path, load: Any) -> None:
    """table3.png: tie-aware MAP@10 against code length per method, one panel per data set."""
    suites = [(s, t) for s, t in (("brain", "Brain tumour MRI (8:2)"), ("mednist", "MedNIST subset (8:2)"))
              if (out / s).exists()]
    if not suites:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(suites), figsize=(5.5 * len(suites), 4), squeeze=False)
    for ax, (suite, title) in zip(axes[0], suites):
        for m in METHODS:
            points = [(b, load(suite, f"{m}-{b}").get("tie_aware_map@10")) for b in (16, 32, 48)]
            points = [(b, v) for b, v in points if v is not None]
            if points:
                ax.plot(*zip(*points), marker="o", label=LABELS[m], linewidth=2.5 if m == "dafh" else 1.2)
        ax.set(title=title, xlabel="bits", ylabel="tie-aware MAP@10", xticks=(16, 32, 48))
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "table3.png", dpi=110)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=Path("/tmp/medhash-data"),
                   help="holds brain-tumor-mri/ and mednist-64/ (extracted from ../shared/data)")
    p.add_argument("--out", type=Path, default=Path("/tmp/medhash-bench"))
    p.add_argument("--suites", default="brain,ablation,robustness,mednist")
    p.add_argument("--epochs", type=int, default=5, help="brain-tumour suites (72-80 steps per epoch)")
    p.add_argument("--mednist-epochs", type=int, default=10, help="MedNIST subset (15 steps per epoch)")
    p.add_argument("--mednist-per-class", type=int, default=100)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--backbone", default="efficientnet_b0")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3,
                   help="1e-3, not the paper's 1e-4: from-scratch weights and a 5-epoch budget")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--report-only", action="store_true")
    args = p.parse_args()
    args.suites = [s for s in args.suites.split(",") if s]
    args.out.mkdir(parents=True, exist_ok=True)
    if not args.report_only:
        os.environ.setdefault("TQDM_DISABLE", "1")  # per-step progress is in each job's train_log.csv
        jobs = [j for j in plan(args) if not (args.out / j.suite / j.name / "eval.json").exists()]
        print(f"{len(jobs)} jobs to run with {args.workers} workers", flush=True)
        t0 = time.time()
        with mp.get_context("spawn").Pool(args.workers, maxtasksperchild=1) as pool:
            pending = [pool.apply_async(run_job, (j, args.out)) for j in jobs]
            for job, res in zip(jobs, pending):
                try:
                    line = res.get()
                except Exception as exc:  # one failed job must not stop the table
                    line = f"{job.suite}/{job.name} FAILED: {exc!r}"
                print(f"[{time.time() - t0:6.0f}s] {line}", flush=True)
                report(args.out)
        print(f"{len(jobs)} jobs in {(time.time() - t0) / 60:.1f} min", flush=True)
    print(report(args.out))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    main()
