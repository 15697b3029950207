"""Range hardening: fine-tune until no training image takes the polynomials out of range.

A network whose polynomial channels follow one another (few ReLUs left, or none) is a
polynomial of high degree in its input. Typical images keep every polynomial input within
about 1.2 times the range it was fitted on (``ChannelActivation.input_bound``); a rare one
goes past it in one layer, the next layers square (or cube) the excess, and the values end
far beyond the exact-truncation bound, or non-finite: the secure result on that image is
garbage. Such images are a few in 10,000 (a ResNet-20 with no ReLU left: 2 of 10,000 test
images, 5 of 60,000 training images), too rare for a search's held-out check to see, and
distillation never learns from them: their loss is not finite and the step is skipped.

:func:`harden` finds them among all training images with the float check
(:func:`~safenet.approx.float_check.opening_peaks`) and trains on them: each step mixes a
random batch with images drawn from the failures (of this round and every earlier one: fixing
some can push others out) and the images nearest to failing (the largest
:meth:`~safenet.approx.float_check.OpeningPeaks.range_ratios`), under distillation
plus a strong range penalty (:func:`~safenet.nn.activation.range_penalty`); while it trains,
polynomial inputs are clamped at ``TRAIN_CLAMP`` times their bound
(``ChannelActivation.train_clamp``), so the loss stays finite. Batch-norm statistics stay
frozen: the outliers must not move the normalisation
every other image is served with. Rounds repeat until a pass over the training set finds no
failure, or the rounds run out (then the caller refuses the model). The last pass also gives
the largest |logit| of the training images: 4x that (``OUTPUT_MARGIN``) is the checkpoint's
``output_bound``, which clients hold every secure result to
(:func:`safenet.secure.check_output`).

:func:`harden_dataset` runs it on a dataset and measures test accuracy after;
fine-tuning and the search's final fine-tune call it, and :func:`harden_checkpoint` (``safenet
harden``) applies it to a checkpoint written without it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from safenet.approx.distill import CLIP, KD_WEIGHT, TEMPERATURE, distillation_loss
from safenet.approx.float_check import opening_peaks
from safenet.data import ImageDataset
from safenet.field import Field
from safenet.nn.activation import TRAIN_CLAMP, ChannelActivation, range_penalty
from safenet.nn.surgery import activations
from safenet.options import option

if TYPE_CHECKING:
    from safenet.checkpoint import Checkpoint

__all__ = [
    "OUTPUT_MARGIN",
    "HardenConfig",
    "HardenReport",
    "harden",
    "harden_checkpoint",
    "measure_bounds",
]

#: a served model's ``output_bound`` is this many times the largest |logit| seen in training
OUTPUT_MARGIN = 4.0


class UnsafeModelError(RuntimeError):
    """Training images still blow the network up after range hardening: its
    secure results on such inputs would be wrong (the checkpoint is written all the same,
    with the count in its ``hardening`` metrics)."""


@dataclass
class HardenConfig:
    """Settings of :func:`harden` (the ``--harden-*`` flags of fine-tuning and the search)."""

    rounds: int = option(4, "hardening rounds at most (0: no hardening, no check)")
    steps: int = option(150, "training steps per hardening round")
    batch_size: int = 64
    hard_batch: int = 32
    #: besides the failures, this many images with the largest range ratios are trained on
    hard_pool: int = 512
    lr: float = 0.002
    range_weight: float = option(10.0, "weight of the range penalty while hardening")
    temperature: float = TEMPERATURE
    kd_weight: float = KD_WEIGHT
    clip: float = CLIP
    seed: int = 0


@dataclass
class HardenReport:
    """What :func:`harden` saw: training-set failures and the largest range ratio before
    each round and after the last (``failures[-1]`` is the final count)."""

    images: int
    failures: list[int] = field(default_factory=list)
    max_ratio: list[float] = field(default_factory=list)
    #: the largest |logit| of the images that do not fail, at the last check
    max_output: float = 0.0

    @property
    def output_bound(self) -> float:
        """``OUTPUT_MARGIN`` times :attr:`max_output`: the largest |logit| a client accepts
        (:func:`safenet.secure.check_output`); 0 when nothing was checked."""
        return OUTPUT_MARGIN * self.max_output

    @property
    def ok(self) -> bool:
        """No training image fails any more."""
        return bool(self.failures) and self.failures[-1] == 0

    def to_dict(self) -> dict[str, object]:
        return {"images": self.images, "failures": self.failures, "max_ratio": self.max_ratio,
                "rounds": max(len(self.failures) - 1, 0), "ok": self.ok,
                "max_output": self.max_output, "output_bound": self.output_bound}  # fmt: skip


@torch.no_grad()
def measure_bounds(model: nn.Module, x: torch.Tensor) -> int:
    """Give every polynomial layer without an ``input_bound`` (models saved before it
    existed) the largest finite |input| it sees on ``x``, served as it is; returns how many
    layers were set."""
    acts = [a for a in activations(model).values() if not bool(a.relu_mask.all())]
    todo = [a for a in acts if float(a.input_bound) <= 0]
    if not todo:
        return 0
    top = dict.fromkeys(map(id, todo), 0.0)  # running maxima: the inputs are not kept

    def hook(act: nn.Module, inputs: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        assert isinstance(act, ChannelActivation)
        v = inputs[0].transpose(0, 1)[~act.relu_mask].abs()
        v = v[torch.isfinite(v)]
        if v.numel():
            top[id(act)] = max(top[id(act)], float(v.max()))

    hooks = [a.register_forward_hook(hook) for a in todo]
    was = model.training
    model.eval()
    try:
        for i in range(0, len(x), 256):
            model(x[i : i + 256])
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    for a in todo:
        a.input_bound.fill_(top[id(a)])
    return len(todo)


def harden(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    field_: Field,
    cfg: HardenConfig | None = None,
    log: Callable[[str], None] = print,
) -> HardenReport:
    """Fine-tune ``student`` (in place) until none of the training images ``x`` (normalised)
    reaches ``field_``'s exact-truncation bound or blows up in float, for at most
    ``cfg.rounds`` rounds; returns the :class:`HardenReport` (``ok`` when none does)."""
    cfg = cfg or HardenConfig()
    rep = HardenReport(len(x))
    polynomial = any(not bool(a.relu_mask.all()) for a in activations(student).values())
    if cfg.rounds <= 0 or not polynomial:
        return rep
    set_ = measure_bounds(student, x[:2048])
    if set_:
        log(f"hardening: {set_} polynomial layers had no input bound; measured on 2,048 images")
    gen = torch.Generator().manual_seed(cfg.seed)
    failed = torch.zeros(len(x), dtype=torch.bool)  # every image that failed in some round
    for r in range(cfg.rounds + 1):
        _, peaks = opening_peaks(student, x)
        bad = peaks.failures(field_)
        ratio = peaks.range_ratios()
        rep.failures.append(int(bad.sum()))
        good = ~bad
        rep.max_ratio.append(float(ratio[good].max()) if bool(good.any()) else 0.0)
        rep.max_output = float(peaks.outputs[good].max()) if bool(good.any()) else 0.0
        log(f"hardening check {r}: {rep.failures[-1]} of {len(x)} training images fail, "
            f"largest range ratio of the others {rep.max_ratio[-1]:.2f}")  # fmt: skip
        if rep.failures[-1] == 0 or r == cfg.rounds:
            break
        # the pool keeps the failures of earlier rounds: fixing some images can push others
        # (or the same ones again) out, and the pool must not forget the first lot
        failed |= bad
        k = min(cfg.hard_pool, len(x))
        hard = torch.unique(torch.cat([failed.nonzero().flatten(), ratio.topk(k).indices]))
        _train_round(student, teacher, x, y, hard, cfg, gen)
    student.eval()
    return rep


def _train_round(
    student: nn.Module,
    teacher: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    hard: torch.Tensor,
    cfg: HardenConfig,
    gen: torch.Generator,
) -> None:
    """``cfg.steps`` steps of distillation plus range penalty on random batches mixed with
    images drawn from ``hard``; batch-norm layers keep their running statistics."""
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, nesterov=True)
    student.train()
    for m in student.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()
    acts = list(activations(student).values())
    for a in acts:
        a.train_clamp = TRAIN_CLAMP
    teacher.eval()
    try:
        for _ in range(cfg.steps):
            pick = torch.randint(0, len(hard), (cfg.hard_batch,), generator=gen)
            rand = torch.randint(0, len(x), (cfg.batch_size,), generator=gen)
            idx = torch.cat([rand, hard[pick]])
            with torch.no_grad():
                t = teacher(x[idx])
            loss = distillation_loss(student(x[idx]), t, y[idx], cfg.temperature, cfg.kd_weight)
            loss = loss + cfg.range_weight * range_penalty(student)
            if not torch.isfinite(loss):
                continue  # an image beyond even the clamp's reach: its neighbours still train
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, cfg.clip)
            opt.step()
    finally:
        for a in acts:
            a.train_clamp = None


def harden_dataset(
    student: nn.Module,
    teacher: nn.Module,
    train: ImageDataset,
    test: ImageDataset,
    field_: Field,
    cfg: HardenConfig | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """:func:`harden` on every image of ``train``; returns the report as a dict with
    ``test_accuracy`` on ``test`` afterwards (None when nothing was trained)."""
    from safenet.training import evaluate

    x, y = train.normalize(train.images), train.labels.long()
    rep = harden(student, teacher, x, y, field_, cfg, log)
    acc = None
    if len(rep.failures) > 1:  # trained: measure again
        acc = evaluate(student, test)
        log(f"after hardening: test accuracy {acc:.4f}")
    return rep.to_dict() | {"test_accuracy": acc}


def harden_checkpoint(
    model: str,
    out: str | Path,
    cfg: HardenConfig | None = None,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> Checkpoint:
    """The ``safenet harden`` job: range-harden an approximated checkpoint (a search's or a
    fine-tune's, e.g. one written before hardening existed) against its ReLU parent, on its
    dataset's training images; writes it to ``out`` with its ``hardening`` metrics, test
    accuracy and ``output_bound``. Raises :class:`UnsafeModelError`
    (after writing) when training images still fail."""
    from safenet.checkpoint import load

    ck = load(model)
    if ck.activation is None or ck.parent is None:
        raise ValueError(f"{model} is not an approximated checkpoint with a ReLU parent")
    student, teacher = ck.build(), load(ck.parent).build()
    train = ImageDataset(ck.dataset, "train", data_dir)
    test = ImageDataset(ck.dataset, "test", data_dir)
    hard = harden_dataset(student, teacher, train, test, ck.plan().field, cfg, log)
    ck.state_dict = {k: v.detach().cpu().clone() for k, v in student.state_dict().items()}
    if hard["test_accuracy"] is not None:
        ck.metrics = {**ck.metrics, "accuracy": hard["test_accuracy"], "evaluated_on": len(test)}
    ck.metrics = {**ck.metrics, "hardening": hard, "output_bound": hard["output_bound"]}
    ck.training = {**ck.training, "hardened_from": str(model)}
    ck.save(out)
    if not hard["ok"]:
        raise UnsafeModelError(
            f"{hard['failures'][-1]} of {hard['images']} training images still fail after "
            f"{hard['rounds']} rounds ({out} is written all the same)"
        )
    return ck
