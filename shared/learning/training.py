"""The one training loop for every hashing method.

Why one loop: the comparison in Table 3 is only fair if every method sees the same batches,
augmentation, optimiser and budget; methods differ only in the model and criterion the
registry returns. The loop is seeded, shows progress (epoch, step, loss, ETA via tqdm),
saves a resumable checkpoint at epoch ends (at most every ``checkpoint_every_s`` seconds, and
always after the last epoch, so tiny epochs do not spend their time writing files), uses AMP on CUDA only (fp16 CPU kernels are
slow or missing) and channels-last on CPU (faster depthwise convolutions in oneDNN), and
logs every step to CSV and optionally TensorBoard. After the last epoch BatchNorm statistics
are recomputed with the final weights (``recalibrate_batchnorm``).
"""
from __future__ import annotations

import contextlib
import csv
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from tqdm import tqdm

from shared.hashing.checkpoint import save_checkpoint
from shared.hashing.inference import resolve_device
from shared.hashing.models import (
    HashModel,
    create_criterion,
    create_model,
    resolve_name,
)
from shared.hashing.transform import DEFAULT_NORMALIZATION, to_model_input
from shared.learning.datasets import Augmenter, ImageSet, balanced_batches

__all__ = ["TrainConfig", "TrainResult", "LR_SCHEDULES", "learning_rate", "fit", "recalibrate_batchnorm"]


@dataclass
class TrainConfig:
    """Everything that defines a training run; stored in the checkpoint."""

    method: str
    bits: int
    epochs: int
    image_size: int
    backbone: str | None = None
    batch_size: int = 32
    lr: float = 1e-4
    lr_schedule: str = "constant"
    weight_decay: float = 1e-4
    seed: int = 0
    pretrained: bool = False
    augment: bool = True
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    loss_kwargs: dict[str, Any] = field(default_factory=dict)
    c2l_epochs: int = 0


@dataclass
class TrainResult:
    model: HashModel
    version: str
    epoch_losses: list[float]


LR_SCHEDULES = ("constant", "cosine")


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """The rate for optimiser step ``step`` (0-based) of ``total_steps``.

    "cosine" decays from ``lr`` to 0 over the run (Loshchilov & Hutter 2017, no restarts):
    with a budget of a few epochs the last steps at full rate leave the weights, and so the
    codes, wherever the last noisy batches put them. A pure function of the step, so a run
    resumed with the same ``epochs`` continues on the same curve.
    """
    if config.lr_schedule == "constant":
        return config.lr
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)))
    raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {config.lr_schedule!r}")



def _seed_everything(seed: int) -> torch.Generator:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


class _StepLog:
    """Per-step CSV rows (header from the first row) and optional TensorBoard scalars."""

    def __init__(self, log_dir: Path | None, tensorboard: bool) -> None:
        self.path = log_dir / "train_log.csv" if log_dir else None
        self.writer: Any = None
        if log_dir is not None:
            log_dir.mkdir(parents=True, exist_ok=True)
            if tensorboard:
                from torch.utils.tensorboard import SummaryWriter

                self.writer = SummaryWriter(str(log_dir))

    def __call__(self, row: dict[str, float]) -> None:
        if self.path is not None:
            new = not self.path.exists()
            with open(self.path, "a", newline="") as fh:
                w = csv.DictWriter(fh, fieldnames=list(row))
                if new:
                    w.writeheader()
                w.writerow(row)
        if self.writer is not None:
            for k, v in row.items():
                if k not in ("epoch", "step"):
                    self.writer.add_scalar(f"train/{k}", v, int(row["step"]))

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def _batches(data: ImageSet, idx: torch.Tensor, augmenter: Augmenter | None, gen: torch.Generator,
             device: torch.device) -> torch.Tensor:
    """uint8 images -> (augmented) normalised 3-channel input on ``device``."""
    x = data.images[idx].float() / 255.0
    if augmenter is not None:
        x = augmenter(x, gen)
    x = to_model_input(x).to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if device.type == "cpu" else x


def fit(
    config: TrainConfig,
    train_set: ImageSet,
    out: Path | str,
    device: str = "auto",
    resume: Path | str | None = None,
    log_dir: Path | str | None = None,
    tensorboard: bool = False,
    progress: bool = True,
    checkpoint_every_s: float = 120.0,
) -> TrainResult:
    """Train ``config.method`` on ``train_set``; the checkpoint goes to ``out`` at epoch ends.

    ``resume`` continues from a checkpoint written by this function (weights, optimiser,
    epoch, sampler RNG) up to ``config.epochs``; its method, backbone and bits must match.
    """
    out = Path(out)
    learning_rate(config, 0, 1)  # refuse an unknown schedule before any work
    dev = resolve_device(device)
    config.method = resolve_name(config.method)
    gen = _seed_everything(config.seed)
    num_classes = len(train_set.class_names)
    model = create_model(config.method, backbone=config.backbone, bits=config.bits, num_classes=num_classes,
                         image_size=config.image_size, pretrained=config.pretrained, **config.model_kwargs)
    config.backbone = model.config["backbone"]
    criterion = create_criterion(config.method, bits=config.bits, num_classes=num_classes, **config.loss_kwargs)
    model.to(dev)
    if dev.type == "cpu":
        model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    augmenter = Augmenter() if config.augment else None
    start_epoch = step = 0
    epoch_losses: list[float] = []

    if resume is not None:
        state = torch.load(resume, map_location="cpu", weights_only=True)
        for key in ("method", "backbone", "bits"):
            if state[key] != model.config[key]:
                raise ValueError(f"cannot resume: checkpoint {key}={state[key]!r}, run {key}={model.config[key]!r}")
        model.load_state_dict(state["state_dict"])
        ts = state["training_state"]
        optimizer.load_state_dict(ts["optimizer"])
        start_epoch, step, epoch_losses = int(ts["epoch"]), int(ts["step"]), list(ts["epoch_losses"])
        gen.set_state(ts["generator"])
        model.on_train_step(step)
    elif config.c2l_epochs > 0:
        _c2l(model, train_set, config, augmenter or Augmenter(), gen, dev)

    steps_per_epoch = -(-len(train_set) // config.batch_size)
    use_amp = dev.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    log = _StepLog(Path(log_dir) if log_dir else None, tensorboard)
    # ``disable`` only when asked: passing False would override tqdm's TQDM_DISABLE variable
    bar = tqdm(total=config.epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch,
               desc=f"{config.method}/{config.bits}b", unit="step", dynamic_ncols=True,
               **({} if progress else {"disable": True}))
    t0 = last_save = time.time()
    version = ""
    model.train()
    try:
        for epoch in range(start_epoch, config.epochs):
            total = 0.0
            for idx in balanced_batches(train_set.labels, config.batch_size, gen):
                for group in optimizer.param_groups:
                    group["lr"] = learning_rate(config, step, config.epochs * steps_per_epoch)
                x = _batches(train_set, idx, augmenter, gen, dev)
                y = train_set.labels[idx].to(dev)
                ctx = torch.autocast("cuda", dtype=torch.float16) if use_amp else contextlib.nullcontext()
                with ctx:
                    result = criterion(model(x), y)
                optimizer.zero_grad(set_to_none=True)
                scaler.scale(result.total).backward()
                scaler.step(optimizer)
                scaler.update()
                step += 1
                model.on_train_step(step)
                loss = result.total.item()
                total += loss
                bar.update(1)
                bar.set_postfix(epoch=f"{epoch + 1}/{config.epochs}", loss=f"{loss:.4f}")
                log({"epoch": epoch + 1, "step": step, "loss": loss, **result.parts,
                     "lr": optimizer.param_groups[0]["lr"], "elapsed_s": round(time.time() - t0, 3)})
            epoch_losses.append(total / steps_per_epoch)
            if epoch + 1 < config.epochs and time.time() - last_save < checkpoint_every_s:
                continue
            last_save = time.time()
            if epoch + 1 == config.epochs:
                recalibrate_batchnorm(model, train_set, config.batch_size, dev, config.seed)
            version = save_checkpoint(
                out, model, train_set.class_names, DEFAULT_NORMALIZATION, asdict(config),
                training_state={"optimizer": optimizer.state_dict(), "epoch": epoch + 1, "step": step,
                                "epoch_losses": epoch_losses, "generator": gen.get_state()})
    finally:
        bar.close()
        log.close()
    model.eval()
    return TrainResult(model, version, epoch_losses)


def recalibrate_batchnorm(model: HashModel, data: ImageSet, batch_size: int, device: torch.device, seed: int,
                          max_batches: int = 50) -> None:
    """Precise BatchNorm (Wu & Johnson 2021): recompute every BN layer's running statistics
    as the plain average over up to ``max_batches`` batches of unaugmented training images,
    with the final weights.

    Why: the exponential moving average lags weights that still move fast (from-scratch
    training, lr 1e-3, a few epochs), so eval-mode codes drift from the ones the loss
    optimised; on a tiny set every method reached zero loss with train-mode mAP 1.0 but
    eval-mode mAP 0.83-0.95 before this step.
    """
    norms = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in norms]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None  # None = cumulative average
    gen = torch.Generator().manual_seed(seed + 1)
    order = torch.randperm(len(data), generator=gen)[: max_batches * batch_size]
    chunks = list(order.split(batch_size))
    if len(chunks) > 1 and len(chunks[-1]) < batch_size:
        chunks.pop()  # drop_last: a 1-image remainder has no batch statistics to take
    model.train()
    with torch.no_grad():
        for chunk in chunks:
            model(_batches(data, chunk, None, gen, device))
    for bn, momentum in zip(norms, momenta):
        bn.momentum = momentum


def _c2l(model: HashModel, data: ImageSet, config: TrainConfig, augmenter: Augmenter, gen: torch.Generator,
         dev: torch.device) -> None:
    """Unlabelled C2L pre-training for methods that offer it (saliency fusion)."""
    pretrain: Callable[..., list[float]] | None = getattr(model, "pretrain_c2l", None)
    if pretrain is None:
        raise ValueError(f"method {config.method} has no C2L pre-training")

    def views() -> torch.Tensor:
        idx = torch.randint(len(data), (config.batch_size,), generator=gen)
        return torch.stack([_batches(data, idx, augmenter, gen, dev) for _ in range(2)])

    pretrain(views, steps=config.c2l_epochs * -(-len(data) // config.batch_size), lr=config.lr)

