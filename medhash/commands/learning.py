"""``medhash train`` and ``medhash evaluate``: train a hashing method, measure its retrieval.

Plain functions with ``Annotated`` typer options, so the benchmark (bench/table3.py) calls
exactly what the command line runs.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

if TYPE_CHECKING:  # torch-heavy; the commands import it when they run
    from shared.learning.datasets import ImageSet

console = Console(stderr=True)
app = typer.Typer(help="Train and evaluate hash models.", no_args_is_help=True)


def train(
    out: Annotated[Path, typer.Option("--out", help="Checkpoint file to write (rewritten every epoch).")],
    data: Annotated[Path | None, typer.Argument(
        help="Folder with a sub-folder of images per class; omit it with --labels.")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="Train on the catalog's preprocessed slices (the MEDHASH_* settings name it) labelled by "
             "this CSV: a label column and one of PatientID, StudyInstanceUID, SeriesInstanceUID.")] = None,
    method: Annotated[str, typer.Option(help="dafh, saliency_fusion (sf), hashnet, dsh, dpsh or dpn.")] = "dafh",
    bits: Annotated[int, typer.Option(help="Hash code length.")] = 32,
    epochs: Annotated[int, typer.Option(help="Training epochs (DAFH paper: 50).")] = 50,
    image_size: Annotated[int, typer.Option(help="Square input size in pixels (paper: 224).")] = 224,
    backbone: Annotated[str | None, typer.Option(help="timm model name; default per method.")] = None,
    batch_size: Annotated[int, typer.Option(help="Images per class-balanced batch.")] = 32,
    lr: Annotated[float, typer.Option(help="Adam learning rate.")] = 1e-4,
    lr_schedule: Annotated[str, typer.Option(help="constant, or cosine decay to 0 over the run.")] = "constant",
    weight_decay: Annotated[float, typer.Option(help="Adam weight decay.")] = 1e-4,
    seed: Annotated[int, typer.Option(help="Seed of weights, batches, augmentation (and split).")] = 0,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    resume: Annotated[Path | None, typer.Option(help="Continue from a checkpoint of this command.")] = None,
    log_dir: Annotated[Path | None, typer.Option(help="Write train_log.csv (and TensorBoard) here.")] = None,
    tensorboard: Annotated[bool, typer.Option(help="Also write TensorBoard events to --log-dir.")] = False,
    pretrained: Annotated[bool, typer.Option(help="Start from timm's ImageNet weights (needs network).")] = False,
    split_seed: Annotated[int | None, typer.Option(
        help="Train on the seeded stratified 80% of DATA only (the rest are the queries of "
             "`evaluate --split-of DATA --seed S`).")] = None,
    per_class: Annotated[int | None, typer.Option(help="Use a seeded class-balanced subset of N per class.")] = None,
    attention: Annotated[bool, typer.Option(help="DAFH: CBAM attention (ablation AT).")] = True,
    fusion: Annotated[bool, typer.Option(help="DAFH: inter-layer fusion (ablation LF).")] = True,
    ptanh: Annotated[bool, typer.Option(help="DAFH: learnable-alpha tanh (ablation Ptanh).")] = True,
    beta: Annotated[float, typer.Option(help="DAFH: weight of the triplet loss.")] = 1.0,
    triplet_mining: Annotated[str, typer.Option(
        help="DAFH: in-batch triplets: random (the paper's), semihard (FaceNet), hard (batch-hard) or all.")
    ] = "random",
    triplet_distance: Annotated[str, typer.Option(
        help="DAFH: triplet distance: normalized_sq (FaceNet) or euclidean (Balntas et al., the paper's [40]).")
    ] = "normalized_sq",
    classifier_input: Annotated[str, typer.Option(
        help="DAFH: the classifier reads linear1 (sec. 3.3.2) or codes (the paper's Algorithm 1).")] = "linear1",
    c2l_epochs: Annotated[int, typer.Option(help="Saliency fusion: epochs of C2L pre-training.")] = 0,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads (default: torch's choice).")] = None,
    augment: Annotated[bool, typer.Option(help="Noise/blur/brightness/rotation/scaling augmentation.")] = True,
) -> None:
    """Train a hashing method on a class-per-folder image set (or the archive's labelled slices)
    and write one checkpoint file."""
    from shared.hashing.models import resolve_name
    from shared.learning.datasets import (
        balanced_subset,
        load_folder,
        split_folder,
        split_set,
    )
    from shared.learning.training import TrainConfig, fit

    if threads:
        import torch  # torch loads only for the commands that need it

        torch.set_num_threads(threads)
    method = resolve_name(method)
    model_kwargs: dict[str, Any] = {}
    loss_kwargs: dict[str, Any] = {}
    if method == "dafh":
        model_kwargs = {"attention": attention, "fusion": fusion, "ptanh": ptanh, "classifier_input": classifier_input}
        loss_kwargs = {"beta": beta, "mining": triplet_mining, "distance": triplet_distance}
    elif not (attention and fusion and ptanh) or classifier_input != "linear1":
        raise typer.BadParameter("--no-attention/--no-fusion/--no-ptanh/--classifier-input apply to dafh only")
    if (data is None) == (labels is None):
        raise typer.BadParameter("give a DATA folder or --labels CSV (the catalog's slices), not both")
    source = Path(data) if data is not None else _archive_set(labels, image_size)
    if split_seed is not None:
        train_set = (split_folder(source, image_size, seed=split_seed, per_class=per_class)[0]
                     if isinstance(source, Path) else split_set(source, split_seed, per_class=per_class)[0])
    else:
        train_set = load_folder(source, image_size) if isinstance(source, Path) else source
        if per_class is not None:
            train_set = train_set.subset(balanced_subset(train_set.labels, per_class, seed))
    config = TrainConfig(method=method, bits=bits, epochs=epochs, image_size=image_size, backbone=backbone,
                         batch_size=batch_size, lr=lr, lr_schedule=lr_schedule, weight_decay=weight_decay, seed=seed, pretrained=pretrained,
                         augment=augment, model_kwargs=model_kwargs, loss_kwargs=loss_kwargs, c2l_epochs=c2l_epochs)
    console.print(f"training {method} ({bits} bits) on {len(train_set)} images, {len(train_set.class_names)} classes")
    t0 = time.time()
    result = fit(config, train_set, out, device=device, resume=resume, log_dir=log_dir, tensorboard=tensorboard)
    console.print(f"wrote {out} (version {result.version[:12]}) in {time.time() - t0:.0f}s; "
                  f"epoch losses {[round(v, 4) for v in result.epoch_losses]}")


def _archive_set(labels: Path, image_size: int) -> ImageSet:
    """The catalog's slices that ``labels`` labels, from the store the settings name."""
    from shared.config import get_settings
    from shared.learning.archive import CatalogSlices
    from shared.learning.datasets import load_labelled_slices
    from shared.storage.catalog import open_catalog
    from shared.storage.objectstore import open_object_store

    settings = get_settings()
    catalog = open_catalog(settings)
    try:
        images = load_labelled_slices(CatalogSlices(catalog, open_object_store(settings)), labels, image_size)
    finally:
        catalog.close()
    console.print(f"archive: {len(images)} labelled slices from the catalog, classes {images.class_names}")
    return images


def evaluate(
    model: Annotated[Path, typer.Argument(help="Checkpoint written by `medhash train`.")],
    json_out: Annotated[Path, typer.Option("--json", help="Write all metrics here (and a .md table beside).")],
    database: Annotated[Path | None, typer.Option(help="Class-per-folder images to search in.")] = None,
    queries: Annotated[Path | None, typer.Option(help="Class-per-folder query images.")] = None,
    split_of: Annotated[Path | None, typer.Option(
        help="Instead of --database/--queries: seeded stratified 8:2 split of one folder "
             "(80% database, 20% queries).")] = None,
    labels: Annotated[Path | None, typer.Option(
        help="Instead of folders: the same 8:2 split of the catalog's slices labelled by this CSV "
             "(what `train --labels CSV --split-seed S` trained on).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of the --split-of split.")] = 0,
    per_class: Annotated[int | None, typer.Option(help="With --split-of: class-balanced subset first.")] = None,
    plots: Annotated[Path | None, typer.Option(help="Folder for PR curve, per-class AP, confusion PNGs.")] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or cuda:N.")] = "auto",
    tie_aware: Annotated[bool, typer.Option(help="Also compute the exact tie-aware expected mAP.")] = True,
    threads: Annotated[int | None, typer.Option(help="torch CPU threads.")] = None,
) -> None:
    """Encode database and queries, compute mAP@1/@10/@100/all and the rest, write JSON."""
    import numpy as np

    from shared.hashing.checkpoint import load_checkpoint, update_metrics
    from shared.hashing.inference import resolve_device
    from shared.learning.datasets import load_folder, split_folder, split_set
    from shared.learning.evaluation import retrieval_metrics, save_report

    if threads:
        import torch  # torch loads only for the commands that need it

        torch.set_num_threads(threads)
    ckpt = load_checkpoint(model, device=resolve_device(device))
    size = ckpt.image_size
    if labels is not None:
        db_set, q_set = split_set(_archive_set(labels, size), seed, per_class=per_class)
        source = {"labels": str(labels), "seed": seed, "per_class": per_class}
    elif split_of is not None:
        db_set, q_set = split_folder(split_of, size, seed=seed, per_class=per_class)
        source = {"split_of": str(split_of), "seed": seed, "per_class": per_class}
    elif database is not None and queries is not None:
        database, queries = Path(database), Path(queries)  # also when called with str, as bench/ does
        names = sorted({p.name for d in (database, queries) for p in d.iterdir() if p.is_dir()})
        db_set, q_set = load_folder(database, size, names), load_folder(queries, size, names)
        source = {"database": str(database), "queries": str(queries)}
    else:
        raise typer.BadParameter("give --database and --queries, --split-of, or --labels")
    t0 = time.time()
    db_codes = ckpt.encode(db_set.images)
    q_codes, predicted = ckpt.encode_and_predict(q_set.images)
    encode_s = time.time() - t0
    metrics = retrieval_metrics(q_codes, q_set.labels.numpy(), db_codes, db_set.labels.numpy(),
                                db_set.class_names, tie_aware=tie_aware)
    if predicted is not None:  # DAFH, saliency fusion: how far the backbone itself got
        metrics["classifier_top1"] = float(np.mean(predicted == q_set.labels.numpy()))
    metrics.update({"model": str(model), "model_version": ckpt.version, "method": ckpt.meta["method"],
                    "backbone": ckpt.meta["backbone"], "image_size": size, "encode_seconds": round(encode_s, 2),
                    "data": source})
    save_report(metrics, json_out, plots)
    update_metrics(model, {k: metrics[k] for k in metrics if k.startswith(("map", "tie_aware_"))} | {"data": source})
    console.print(json.dumps({k: round(v, 4) for k, v in metrics.items()
                              if k.startswith(("map", "tie_aware_map", "classifier")) and isinstance(v, float)}))


app.command()(train)
app.command()(evaluate)
