"""Fine-tuning an approximated model: distillation, ReLU-to-polynomial blend, clipping.

Polynomial activations compound: a few bad steps blow activations up and the loss turns to
NaN. The recipe guards against it on three levels: the polynomial is blended in gradually
(``blend`` rises 0 -> 1 over ``blend_epochs``), gradients are clipped (norm ``clip``), and a
step whose loss is not finite or explodes is rolled back to the last good state with the
learning rate halved (:class:`DivergenceGuard`); after ``max_rollbacks`` it gives up with
:class:`FinetuneDiverged` instead of saving a broken model.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from safenet.approx.distill import CLIP, KD_WEIGHT, TEMPERATURE, distillation_loss
from safenet.approx.harden import HardenConfig, UnsafeModelError, harden_dataset
from safenet.approx.scoring import score_channels
from safenet.checkpoint import Checkpoint
from safenet.data import ImageDataset
from safenet.nn.activation import range_penalty
from safenet.nn.surgery import LayerSpec, activations, calibrate, convert, set_blend, set_layers
from safenet.options import option
from safenet.plan.compiler import compile_model
from safenet.training import epoch_summary, evaluate, lr_at, run_epochs


class FinetuneDiverged(RuntimeError):
    """Fine-tuning kept diverging even after rolling back and lowering the learning rate."""


@dataclass
class FinetuneConfig:
    """Hyper-parameters of :func:`finetune` (and the ``safenet finetune`` flags)."""

    epochs: int = option(5, "training epochs")
    batch_size: int = option(128, "images per step")
    lr: float = option(0.01, "learning rate")
    weight_decay: float = 5e-4
    temperature: float = option(TEMPERATURE, "distillation temperature")
    kd_weight: float = option(
        KD_WEIGHT, "weight of the distillation loss (the rest: cross-entropy)"
    )
    blend_epochs: float = option(1.0, "epochs over which polynomials blend in from ReLU")
    clip: float = option(CLIP, "gradient norm clipping")
    #: weight of :func:`safenet.nn.activation.range_penalty` (pre-activations of polynomial
    #: channels beyond their fitted range; keeps degree 3 from blowing up); 0 turns it off
    range_weight: float = option(
        1.0, "penalty on polynomial inputs beyond their fitted range (0: off)"
    )
    #: rounds of :func:`safenet.approx.harden.harden` after training; 0 skips it (and the
    #: check of every training image, and the checkpoint's ``output_bound``)
    harden_rounds: int = option(
        4, "range hardening rounds after training: until no training image blows up (0: off)"
    )
    max_rollbacks: int = 8
    seed: int = option(0, "seed of the training")
    limit: int | None = option(None, "use only the first N train images")
    eval_limit: int | None = option(None, "evaluate on the first N test images only")
    device: str = option("cpu", "torch device")


class DivergenceGuard:
    """Owns the blend schedule and rolls the model back when the loss goes bad.

    Every ``every`` good steps it snapshots model, optimiser and blend. A non-finite or
    exploding loss restores the snapshot and halves both the learning rate and the speed at
    which the blend approaches 1, so the next attempt is gentler (but the blend still
    reaches 1 by ``deadline``, when one is given). When the restored weights
    give the same batch an exploding or non-finite loss too, the batch is at fault (an input
    the polynomials blow up on, e.g. a cube overflowing float32 deep in an all-polynomial
    network), not the training: :meth:`forgive` takes the rollback back and the batch is
    skipped. More than ``max_rollbacks`` batches skipped in a row is divergence after all.
    """

    def __init__(
        self,
        model: nn.Module,
        opt: torch.optim.Optimizer,
        blend_steps: int,
        max_rollbacks: int,
        every: int = 50,
        deadline: int | None = None,
    ) -> None:
        self.model, self.opt, self.max_rollbacks, self.every = model, opt, max_rollbacks, every
        self.deadline = deadline
        self.rollbacks, self.good, self.skipped, self.steps = 0, 0, 0, 0
        self.skipped_in_a_row = 0
        self.lr_scale = 1.0
        self.blend, self.rate = 0.0, 1.0 / max(blend_steps, 1)
        self.avg: float | None = None
        self.snapshot()

    def snapshot(self) -> None:
        self.state = copy.deepcopy((self.model.state_dict(), self.opt.state_dict(), self.blend))

    def advance(self) -> float:
        """Move the blend one step towards 1 and apply it; returns the new blend. However
        rollbacks slowed the ramp, it reaches 1 by step ``deadline``: the model must be
        trained as it will be served."""
        self.steps += 1
        rate = self.rate
        if self.deadline is not None:
            rate = max(rate, (1.0 - self.blend) / max(self.deadline - self.steps + 1, 1))
        self.blend = min(1.0, self.blend + rate)
        set_blend(self.model, self.blend)
        return self.blend

    def bad(self, loss: torch.Tensor) -> bool:
        v = float(loss.detach())
        return not math.isfinite(v) or (self.avg is not None and v > 20 * self.avg + 5)

    def accept(self, loss: torch.Tensor) -> None:
        v = float(loss.detach())
        self.avg = v if self.avg is None else 0.98 * self.avg + 0.02 * v
        self.good += 1
        self.skipped_in_a_row = 0
        if self.good % self.every == 0:
            self.snapshot()

    def rollback(self) -> None:
        self.rollbacks += 1
        if self.rollbacks > self.max_rollbacks:
            raise FinetuneDiverged(
                f"loss diverged {self.rollbacks} times; try a lower --lr, a larger "
                "--blend-epochs or a smaller replacement ratio"
            )
        model_state, opt_state, self.blend = copy.deepcopy(self.state)
        self.model.load_state_dict(model_state)
        self.opt.load_state_dict(opt_state)
        self.lr_scale /= 2
        self.rate /= 2
        set_blend(self.model, self.blend)

    def forgive(self) -> None:
        """Undo the last rollback's count and slow-down (its weights stay restored): the
        batch, not the training, was bad; count it as skipped. The retry's forward pass on
        that batch has updated batch-norm running statistics: they are restored too, or
        one exploding batch poisons every later evaluation."""
        self.model.load_state_dict(copy.deepcopy(self.state[0]))
        self.rollbacks -= 1
        self.lr_scale *= 2
        self.rate *= 2
        self.skipped += 1
        self.skipped_in_a_row += 1
        if self.skipped_in_a_row > self.max_rollbacks:
            raise FinetuneDiverged(
                f"{self.skipped_in_a_row} batches in a row diverged even under the last good "
                "weights; try a lower --lr, a larger --blend-epochs or a smaller replacement ratio"
            )


def prepare(
    teacher: nn.Module,
    train_ds: ImageDataset,
    specs: Mapping[str, LayerSpec] | LayerSpec,
    criterion: str = "taylor",
    per_channel: bool = False,
    score_batches: int = 8,
    batch_size: int = 128,
) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """Convert a ReLU model, rank channels, apply per-layer ratios/degrees, fit polynomials."""
    example = train_ds.normalize(train_ds.images[:2])
    student = convert(copy.deepcopy(teacher).eval(), example, per_channel=per_channel)

    def batches() -> Any:
        for i, b in enumerate(
            train_ds.batches(batch_size, shuffle=True, generator=torch.Generator().manual_seed(1))
        ):
            if i >= score_batches:
                return
            yield b

    degree = specs.degree if isinstance(specs, LayerSpec) else 2
    scores = score_channels(student, batches(), criterion, degree)
    set_layers(student, specs, scores)
    calibrate(student, (x for x, _ in batches()))
    return student, scores


def _optimizer(student: nn.Module, config: FinetuneConfig) -> torch.optim.Optimizer:
    """Nesterov SGD; weight decay on the network's weights, none on polynomial coefficients."""
    poly = [p for n, p in student.named_parameters() if n.endswith("coefficients")]
    rest = [p for n, p in student.named_parameters() if not n.endswith("coefficients")]
    return torch.optim.SGD(
        [
            {"params": rest, "weight_decay": config.weight_decay},
            {"params": poly, "weight_decay": 0.0},
        ],
        lr=config.lr,
        momentum=0.9,
        nesterov=True,
    )


def _guard(
    student: nn.Module, opt: torch.optim.Optimizer, n_train: int, config: FinetuneConfig
) -> tuple[DivergenceGuard, int]:
    """The run's :class:`DivergenceGuard` and its total number of steps."""
    steps = math.ceil(n_train / config.batch_size)
    total, blend_steps = config.epochs * steps, max(int(config.blend_epochs * steps), 1)
    # snapshots ten times per blend ramp (at most every 50 steps): a rollback late in a short
    # ramp must not throw the whole ramp away
    every = max(1, min(50, blend_steps // 10))
    deadline = max(blend_steps, int(0.8 * total))  # the last fifth trains at blend 1
    guard = DivergenceGuard(student, opt, blend_steps, config.max_rollbacks, every, deadline)
    return guard, total


@dataclass
class _GuardedLoss:
    """The ``loss_fn`` of :func:`finetune`: distillation from ``teacher``, each step's blend
    advanced by ``guard``, bad losses rolled back (or their batch skipped)."""

    teacher: nn.Module
    guard: DivergenceGuard
    config: FinetuneConfig
    log: Callable[[str], None]

    def loss(self, m: nn.Module, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        c = self.config
        loss = distillation_loss(m(x), t, y, c.temperature, c.kd_weight)
        return loss + c.range_weight * range_penalty(m) if c.range_weight else loss

    def __call__(
        self, m: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int
    ) -> torch.Tensor | None:
        self.guard.advance()
        with torch.no_grad():
            t = self.teacher(x)
        loss = self.loss(m, x, t, y)
        if self.guard.bad(loss):
            recovered = self.recover(m, x, t, y, loss, step)
            if recovered is None:
                return None
            loss = recovered
        self.guard.accept(loss)
        return loss

    def recover(
        self,
        m: nn.Module,
        x: torch.Tensor,
        t: torch.Tensor,
        y: torch.Tensor,
        loss: torch.Tensor,
        step: int,
    ) -> torch.Tensor | None:
        """Roll back until the batch's loss is good; None when the batch is at fault."""
        guard, first_try = self.guard, True
        while guard.bad(loss):
            bad = float(loss.detach())
            guard.rollback()
            loss = self.loss(m, x, t, y)
            if first_try and guard.bad(loss):
                guard.forgive()  # the last good weights fail here too: the batch is at fault
                self.log(f"step {step}: loss {bad:.3g}, and {float(loss.detach()):.3g} with "
                         "the last good weights too: batch skipped")  # fmt: skip
                return None
            first_try = False
            self.log(f"step {step}: loss {bad:.3g}, rolled back, lr x{guard.lr_scale:g}")
        return loss


@dataclass
class _EpochEnd:
    """The ``on_epoch`` of :func:`finetune`: evaluate (at blend 1), record, log and save."""

    student: nn.Module
    test_ds: ImageDataset
    guard: DivergenceGuard
    history: list[dict[str, Any]]
    config: FinetuneConfig
    save: Callable[[nn.Module, list[dict[str, Any]]], None] | None
    metrics_path: str | Path | None
    log: Callable[[str], None]

    def __call__(self, epoch: int, row: dict[str, Any]) -> None:
        if self.guard.good == 0:  # every batch skipped: nothing was trained, nothing is saved
            raise FinetuneDiverged(
                f"all {self.guard.skipped} batches diverged even under the starting weights; "
                "try a lower --lr, a larger --blend-epochs or a smaller replacement ratio"
            )
        # measured and saved as it will be served (blend 1), whatever the training blend
        set_blend(self.student, 1.0)
        row["test_accuracy"] = evaluate(self.student, self.test_ds, device=self.config.device)
        row["rollbacks"], row["blend"] = self.guard.rollbacks, self.guard.blend
        row["skipped_batches"] = self.guard.skipped
        self.history.append(row)
        if self.metrics_path is not None:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")
        self.log(epoch_summary(row))
        if self.save is not None:
            self.save(self.student, self.history)
        set_blend(self.student, self.guard.blend)


def finetune(
    student: nn.Module,
    teacher: nn.Module,
    train_ds: ImageDataset,
    test_ds: ImageDataset,
    config: FinetuneConfig,
    save: Callable[[nn.Module, list[dict[str, Any]]], None] | None = None,
    metrics_path: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> tuple[nn.Module, list[dict[str, Any]]]:
    """Fine-tune ``student`` against ``teacher`` by distillation; returns (model, history).

    The blend ramps from 0 (pure ReLU) to 1 (pure polynomial on replaced channels) over the
    first ``blend_epochs``; evaluation and ``save`` always see blend 1, the model that will be
    served, even where divergence rollbacks kept the training blend below 1.
    """
    torch.manual_seed(config.seed)
    teacher = teacher.eval().to(config.device)
    student = student.to(config.device)
    opt = _optimizer(student, config)
    guard, total = _guard(student, opt, len(train_ds), config)
    history: list[dict[str, Any]] = []
    run_epochs(
        student,
        train_ds,
        test_ds,
        config.epochs,
        0,
        config.batch_size,
        opt,
        lambda s: lr_at(s, total, 0, config.lr) * guard.lr_scale,
        _GuardedLoss(teacher, guard, config, log),
        _EpochEnd(student, test_ds, guard, history, config, save, metrics_path, log),
        config.device,
        config.seed,
        clip=config.clip,
        evaluate_after=False,
    )
    set_blend(student, 1.0)
    if guard.blend < 1.0:
        log(f"note: training reached blend {guard.blend:.2f} only (each divergence "
            "rollback halves the ramp); the model is saved and scored as served, fully "
            "polynomial (blend 1): more --epochs or a larger --blend-epochs let training "
            "get there")  # fmt: skip
    return student.eval(), history


def _specs_json(specs: Mapping[str, LayerSpec] | LayerSpec) -> dict[str, Any]:
    if isinstance(specs, LayerSpec):
        return asdict(specs)
    return {k: asdict(v) for k, v in specs.items()}


@dataclass
class _SaveCheckpoint:
    """The ``save`` of :func:`finetune_checkpoint`: the model as an approximated child
    checkpoint of ``parent`` at ``out``."""

    parent: Checkpoint
    parent_name: str
    parent_accuracy: float
    evaluated_on: int
    config: FinetuneConfig
    specs: dict[str, Any]
    criterion: str
    extra: Mapping[str, Any] | None
    out: Path
    #: the report of :func:`_harden`, once it ran
    hardening: dict[str, Any] | None = None

    def hardening_metrics(self) -> dict[str, Any]:
        """The report, the accuracy after it, and the ``output_bound`` clients hold results
        to (:func:`safenet.secure.check_output`); nothing before hardening ran."""
        hard = self.hardening
        if hard is None:
            return {}
        out: dict[str, Any] = {"hardening": hard}
        if hard["test_accuracy"] is not None:
            out["accuracy"] = hard["test_accuracy"]
        if hard["output_bound"]:
            out["output_bound"] = hard["output_bound"]
        return out

    def __call__(self, model: nn.Module, history: list[dict[str, Any]]) -> None:
        acts = activations(model)
        kept = sum(int(a.relu_mask.sum().item()) for a in acts.values())
        total = sum(a.num_channels for a in acts.values())
        parent = self.parent
        ck = Checkpoint.from_model(
            model,
            parent.arch,
            parent.arch_kwargs,
            parent.dataset,
            metrics={
                "accuracy": history[-1]["test_accuracy"],
                "evaluated_on": self.evaluated_on,
                "parent_accuracy": self.parent_accuracy,
                "relu_channel_fraction": kept / total,
            }
            | self.hardening_metrics(),
            history=history,
            training={
                "finetune": asdict(self.config),
                "specs": self.specs,
                "criterion": self.criterion,
            }
            | dict(self.extra or {}),
            parent=self.parent_name,
            shape=parent.shape,
            data=parent.data,
        )
        ck.save(self.out)


def finetune_checkpoint(
    parent: Checkpoint,
    parent_name: str,
    specs: Mapping[str, LayerSpec] | LayerSpec,
    config: FinetuneConfig,
    out: str | Path,
    criterion: str = "taylor",
    per_channel: bool = False,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
    student: nn.Module | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Checkpoint:
    """The ``safenet finetune`` job: approximate a ReLU checkpoint and fine-tune it.

    With ``student`` (an already approximated model, e.g. a search's winner) the
    approximation step is skipped and that model is trained further; ``extra`` is merged
    into the checkpoint's ``training`` record.
    """
    if parent.activation is not None:
        raise ValueError("the model is already approximated; start from its ReLU parent")
    train_ds = ImageDataset(parent.dataset, "train", data_dir, config.limit)
    test_ds = ImageDataset(parent.dataset, "test", data_dir, config.eval_limit)
    teacher = parent.build()
    base_acc = evaluate(teacher, test_ds)
    if student is None:
        student, _ = prepare(
            teacher, train_ds, specs, criterion, per_channel, batch_size=config.batch_size
        )
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    save = _SaveCheckpoint(parent, parent_name, base_acc, len(test_ds), config,
                           _specs_json(specs), criterion, extra, out)  # fmt: skip
    metrics = out.with_name(out.name + ".metrics.jsonl")
    metrics.unlink(missing_ok=True)  # a new run: no rows of an earlier one
    log(f"parent accuracy {base_acc:.4f} on {len(test_ds)} test images")
    _, history = finetune(student, teacher, train_ds, test_ds, config, save, metrics, log)
    if config.harden_rounds > 0:
        hard = _harden(student, teacher, train_ds, test_ds, parent.input_shape, config, log)
        save.hardening = hard
        save(student, history)
        if not hard["ok"]:
            raise UnsafeModelError(
                f"{hard['failures'][-1]} of {hard['images']} training images still reach the "
                f"exact-truncation bound or blow up after {hard['rounds']} hardening rounds: "
                f"secure results on such inputs would be wrong ({out} is written all the same). "
                "Keep more ReLU channels (a lower ratio), use degree 2, or raise --harden-rounds"
            )
    from safenet.checkpoint import load

    return load(out)


def _harden(
    student: nn.Module,
    teacher: nn.Module,
    train_ds: ImageDataset,
    test_ds: ImageDataset,
    shape: tuple[int, ...],
    config: FinetuneConfig,
    log: Callable[[str], None],
) -> dict[str, Any]:
    """Range-harden ``student`` on every training image (:mod:`safenet.approx.harden`)."""
    student.cpu()
    teacher.cpu()
    field = compile_model(student, shape).field
    cfg = HardenConfig(rounds=config.harden_rounds, seed=config.seed)
    return harden_dataset(student, teacher, train_ds, test_ds, field, cfg, log)
