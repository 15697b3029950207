"""Training a model from scratch: SGD with augmentation, a schedule, checkpoints, resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from safenet.checkpoint import Checkpoint
from safenet.checkpoint import load as load_checkpoint
from safenet.data import ImageDataset, make_loader
from safenet.data.images import canonical, preprocessing
from safenet.data.registry import DatasetInfo
from safenet.nn.zoo import build_model
from safenet.options import option


@dataclass
class TrainConfig:
    """Hyper-parameters of :func:`train` (defaults suit ResNets on MNIST-sized data)."""

    arch: str = option("resnet20", "zoo architecture")
    dataset: str = option("fashion-mnist", "dataset to train on")
    epochs: int = option(15, "training epochs")
    batch_size: int = option(128, "images per step")
    lr: float = option(0.1, "peak learning rate (warm-up, then cosine decay)")
    momentum: float = 0.9
    weight_decay: float = option(5e-4, "SGD weight decay")
    warmup_epochs: float = 1.0
    width: int | None = option(None, "base channel count of the arch")
    seed: int = option(0, "seed of the training")
    limit: int | None = option(None, "use only the first N train images")
    eval_limit: int | None = option(None, "evaluate on the first N test images only")
    device: str = option("cpu", "torch device")


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up then cosine decay to zero."""
    if step < warmup:
        return base * (step + 1) / warmup
    t = (step - warmup) / max(total - warmup, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(t, 1.0)))


@torch.no_grad()
def evaluate(
    model: nn.Module,
    ds: ImageDataset,
    batch_size: int = 500,
    device: str = "cpu",
    progress: bool = False,
) -> float:
    """Top-1 accuracy of ``model`` on ``ds``."""
    model.eval()
    correct = 0
    batches = ds.batches(batch_size)
    for x, y in tqdm(
        batches,
        total=math.ceil(len(ds) / batch_size),
        disable=not progress,
        desc="eval",
        leave=False,
    ):
        correct += int((model(x.to(device)).argmax(1).cpu() == y).sum())
    return correct / max(len(ds), 1)


def run_epochs(
    model: nn.Module,
    train_ds: ImageDataset,
    test_ds: ImageDataset,
    epochs: int,
    start_epoch: int,
    batch_size: int,
    optimizer: torch.optim.Optimizer,
    lr_fn: Callable[[int], float],
    loss_fn: Callable[[nn.Module, torch.Tensor, torch.Tensor, int], torch.Tensor | None],
    on_epoch: Callable[[int, dict[str, Any]], None],
    device: str = "cpu",
    seed: int = 0,
    clip: float | None = None,
    evaluate_after: bool = True,
) -> None:
    """The loop shared by training and fine-tuning: epochs of SGD steps, eval, callback.

    ``on_epoch`` receives the epoch's row; with ``evaluate_after`` it already holds
    ``test_accuracy``, otherwise the callback measures it. A ``loss_fn`` returning None
    skips the batch (no step).
    """
    steps = math.ceil(len(train_ds) / batch_size)
    for epoch in range(start_epoch, epochs):
        model.train()
        t0, total, seen = time.time(), 0.0, 0
        bar = tqdm(
            make_loader(train_ds, batch_size, True, seed + epoch),
            total=steps,
            desc=f"epoch {epoch + 1}/{epochs}",
            leave=False,
        )
        for i, (x, y) in enumerate(bar):
            step = epoch * steps + i
            for g in optimizer.param_groups:
                g["lr"] = lr_fn(step)
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model, x, y, step)
            if loss is None:
                continue
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip is not None:
                nn.utils.clip_grad_norm_(model.parameters(), clip)
            optimizer.step()
            total += float(loss.detach()) * len(y)
            seen += len(y)
            bar.set_postfix(loss=f"{total / seen:.3f}")
        row = {"epoch": epoch + 1, "train_loss": total / max(seen, 1), "seconds": time.time() - t0}
        if evaluate_after:
            row["test_accuracy"] = evaluate(model, test_ds, device=device)
        on_epoch(epoch, row)


def epoch_summary(row: dict[str, Any]) -> str:
    """The line logged after each epoch of training or fine-tuning."""
    return (
        f"epoch {row['epoch']}: loss {row['train_loss']:.4f} "
        f"test accuracy {row['test_accuracy']:.4f} ({row['seconds']:.0f}s)"
    )


def _arch_kwargs(info: DatasetInfo, width: int | None) -> dict[str, Any]:
    """The zoo constructor's arguments for a dataset (and an optional base width)."""
    arch_kwargs: dict[str, Any] = {
        "in_channels": info.channels,
        "image_size": info.image_size,
        "num_classes": info.num_classes,
    }
    if width is not None:
        arch_kwargs["width"] = width
    return arch_kwargs


def _optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    return torch.optim.SGD(
        model.parameters(),
        lr=config.lr,
        momentum=config.momentum,
        weight_decay=config.weight_decay,
        nesterov=True,
    )


def _resume(
    out: Path,
    arch: str,
    model: nn.Module,
    opt: torch.optim.Optimizer,
    log: Callable[[str], None],
) -> tuple[int, list[dict[str, Any]]]:
    """Load the weights and optimiser state of checkpoint ``out``; (epochs done, history)."""
    ck = load_checkpoint(out)
    if ck.training.get("config", {}).get("arch") != arch:
        raise ValueError(f"{out} was trained as another architecture; refusing to resume")
    model.load_state_dict(ck.state_dict)
    opt.load_state_dict(ck.training["optimizer"])
    start, history = int(ck.training["epoch"]), ck.history
    log(f"resuming {out} after epoch {start}")
    return start, history


def _cross_entropy(m: nn.Module, x: torch.Tensor, y: torch.Tensor, _step: int) -> torch.Tensor:
    return F.cross_entropy(m(x), y)


@dataclass
class _EpochEnd:
    """The ``on_epoch`` of :func:`train`: record and log the row, checkpoint to ``out``."""

    model: nn.Module
    opt: torch.optim.Optimizer
    config: TrainConfig
    arch_kwargs: dict[str, Any]
    info: DatasetInfo
    evaluated_on: int
    history: list[dict[str, Any]]
    metrics_path: Path
    out: Path
    log: Callable[[str], None]

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        self.history.append(row)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(row) + "\n")
        self.log(epoch_summary(row))
        config = self.config
        ck = Checkpoint.from_model(
            self.model,
            config.arch,
            self.arch_kwargs,
            config.dataset,
            metrics={"accuracy": row["test_accuracy"], "evaluated_on": self.evaluated_on},
            history=self.history,
            training={
                "epoch": epoch + 1,
                "optimizer": self.opt.state_dict(),
                "config": asdict(config),
            },
            data=preprocessing(self.info),
        )
        ck.save(self.out)


def train(
    config: TrainConfig,
    out: str | Path,
    data_dir: str | Path | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
) -> Checkpoint:
    """Train ``config.arch`` on ``config.dataset``; checkpoint and log metrics every epoch.

    Writes ``out`` (the checkpoint, updated each epoch) and ``out`` + ``.metrics.jsonl``.
    With ``resume`` and an existing ``out``, training continues where it stopped.
    """
    out = Path(out)
    config = replace(config, dataset=canonical(config.dataset))  # folders: an absolute path
    torch.manual_seed(config.seed)
    train_ds = ImageDataset(config.dataset, "train", data_dir, config.limit)
    test_ds = ImageDataset(config.dataset, "test", data_dir, config.eval_limit)
    info = train_ds.info
    arch_kwargs = _arch_kwargs(info, config.width)
    model = build_model(config.arch, **arch_kwargs).to(config.device)
    opt = _optimizer(model, config)
    history: list[dict[str, Any]] = []
    start = 0
    if resume and out.is_file():
        start, history = _resume(out, config.arch, model, opt, log)
    steps = math.ceil(len(train_ds) / config.batch_size)
    total, warm = config.epochs * steps, int(config.warmup_epochs * steps)
    metrics_path = out.with_name(out.name + ".metrics.jsonl")
    out.parent.mkdir(parents=True, exist_ok=True)
    if not history:
        metrics_path.unlink(missing_ok=True)  # a new run: no rows of an earlier one
    on_epoch = _EpochEnd(model, opt, config, arch_kwargs, info, len(test_ds), history,
                         metrics_path, out, log)  # fmt: skip
    run_epochs(
        model,
        train_ds,
        test_ds,
        config.epochs,
        start,
        config.batch_size,
        opt,
        lambda s: lr_at(s, total, warm, config.lr),
        _cross_entropy,
        on_epoch,
        config.device,
        config.seed,
    )
    return load_checkpoint(out)
