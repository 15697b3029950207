"""Choosing per-layer replacement ratios and degrees: SAFENet's BTPBT and Delphi's planner.

**BTPBT as implemented here** (our reading of SAFENet's "population-based training arranged
as a binary tree over the layers"). The activation layers, in network order, are the leaves
of a binary tree: level 0 is one group holding every layer, each further level halves every
group, the last level has one layer per group (:func:`layer_tree`). A population of students
(each a copy of the ReLU teacher with a per-layer configuration: the fraction of channels
replaced by polynomials, on the grid 0, 1/8, ..., 1, and the degree, 2 or 3) trains by
knowledge distillation from the teacher. The search walks the tree from the root: at level
``t`` members explore by moving the ratio of one level-``t`` group by one grid step (and
sometimes switching its degree), so early generations settle a coarse network-wide ratio and
later ones refine halves, quarters, ... down to single layers. After every generation each
member is scored on held-out training images (accuracy, float) and by the calibrated cost
model (predicted online latency of its compiled plan); the bottom quarter copies the weights
and configuration of the top quarter (exploit) and then explores. Reward: a member meeting
the accuracy threshold scores ``teacher latency / (teacher latency + latency)``, in (0, 1)
(lower latency is better); one that misses it scores below -1, under every feasible member,
by how much it misses. With a latency
budget instead, feasible means within the budget and the reward is accuracy.

The accuracy a member is judged by (:meth:`_Search.score`) is its float accuracy minus
``failure_weight`` (20) times the share of inferences that may leave the secure protocol's
error bound
(:attr:`~safenet.plan.reference.RangeStats.failure_rate`, measured with the plaintext
fixed-point reference on ``wrap_images`` held-out images: a polynomial value at or beyond
the exact-truncation bound ``B ~ p/16``, or a wrap of a local ``truncate`` op; and, on all
``eval_images``, the share whose float values reach the same bounds or whose logits are not
finite, :func:`~safenet.approx.float_check.opening_peaks`; the larger of the two). A failure
can change one prediction, and it marks a fragile member that range hardening
(:mod:`safenet.approx.harden`) must repair after the search: hence the weight. A member whose
rate exceeds ``max_failure_rate`` (1 %) is infeasible, whatever its accuracy. Without a
charge, a ResNet-32 search on 2026-12-06 kept an all-polynomial degree-3 member that blew up
on about one input in a thousand, which 64 reference images did not see; with every member
failing once in 2,000 infeasible (the rule until the hardening), a ResNet-20 search from an
all-polynomial start ranked a 10 % member, which cannot fail, above every learning one and
collapsed to it. Before exact
truncation (December 2026) local truncation wrapped with probability |u|/p, and without the
charge a ResNet-32 search chose degree 3 everywhere, 0.70 expected
failures per inference, and got 4 of 10 secure predictions right (docs/results.md).

Channels kept as ReLU inside a layer are the teacher's highest-scored ones
(:func:`~safenet.approx.scoring.score_channels`, computed once); a member whose ratio or
degree changes is re-fitted (:func:`~safenet.nn.surgery.calibrate`) and keeps its weights.
In a trial the layers whose configuration is new to the member's weights blend from ReLU to
their polynomials over the first half of the steps (``ramp_fraction``), and a non-finite loss
puts the last finite weights back and ends the trial: a network switched to polynomials all
at once diverges (degree 3, high ratios), which without this stalls the whole population.

**Delphi's planner** (``method="delphi"``), the baseline: whole layers are either ReLU or the
fixed quadratic 0.1992 + 0.5002 x + 0.1997 x^2 (not trained), the first and last activation
layers stay ReLU, exploration flips one eligible layer, and the reward is Delphi's
``accuracy x (1 + replaced / total)``. It runs as many generations as BTPBT would on the same
network (one per tree level and ``generations_per_level``), so both train for the same number
of steps. With a latency budget, members over it are infeasible
for both methods (scored below every feasible one); that is how "Delphi at several budgets"
is run. With a budget, Delphi's members start from random whole-layer replacements added
until they fit, and a flip back to ReLU that breaks the budget becomes a swap; SAFENet's
population starts at the smallest uniform ratio that fits.

The search checkpoints its whole state after every generation (``search.pt`` in the output
folder, written atomically) and resumes from it; a wall-time or epoch budget stops it
between generations (budgets are no part of the saved settings: raise one to go on).
A generation's trials (one per member) run through a runner
(:mod:`safenet.approx.runners`): one after another in this process (the default), or in
parallel as Ray Tune trials, locally or on a cluster. Each member's training seed is drawn in
the driver before dispatch, so the runner changes where members train, not what the search
does; the runner is no part of the saved settings, and a search started with one resumes
with the other.

In code: :class:`SearchConfig` holds the settings; a :class:`Strategy` per planner
(:class:`SafenetStrategy`, :class:`DelphiStrategy`, chosen once from ``method`` through
:data:`STRATEGIES`) decides the layer groups, the first members, exploration, how a student's
polynomials are set and the reward; ``_Search`` builds, trains and scores members the same
for both; members' configurations are :class:`~safenet.nn.surgery.LayerSpec` per layer
(``[ratio, degree]`` lists in ``search.pt``); :func:`search` returns a :class:`SearchReport`.
"""

from __future__ import annotations

import copy
import math
import os
import random
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, ClassVar, NamedTuple

import torch
from torch import nn

from safenet.approx.cost import Calibration, count, predict
from safenet.approx.distill import distillation_loss
from safenet.approx.finetune import FinetuneConfig
from safenet.approx.float_check import opening_peaks
from safenet.approx.runners import Runner, SequentialRunner
from safenet.approx.scoring import CRITERIA, score_channels
from safenet.data.torchdata import ImageDataset
from safenet.nn.activation import range_penalty
from safenet.nn.surgery import LayerSpec, activations, calibrate, convert, set_blend, set_layers
from safenet.options import option
from safenet.plan.compiler import compile_model
from safenet.plan.ir import Plan
from safenet.plan.reference import RangeStats

__all__ = [
    "DELPHI_QUADRATIC",
    "RATIOS",
    "STRATEGIES",
    "DelphiStrategy",
    "SafenetStrategy",
    "SearchConfig",
    "SearchReport",
    "Strategy",
    "Trial",
    "layer_tree",
    "search",
]

RATIOS = tuple(i / 8 for i in range(9))
#: distillation settings (temperature, weight, weight decay, clipping) as in fine-tuning
_KD = FinetuneConfig()
DELPHI_QUADRATIC = (0.1992, 0.5002, 0.1997)


@dataclass
class SearchConfig:
    """What to search and how hard: the single source of the search's settings (the
    ``safenet approximate`` flags and :func:`safenet.approximate`'s keywords come from these
    fields, their defaults and their ``help``).

    ``eval_images``: 2,000 by default, the standard error of an accuracy near 0.94 is then
    about 0.5 points. Budgets (``time_budget_s``, ``epoch_budget``) may change between runs
    of one search; every other setting must not.
    """

    method: str = option("safenet", "safenet: BTPBT over per-layer ratios and degrees; "
                       "delphi: whole layers, Delphi's planner",
                       choices=("safenet", "delphi"))  # fmt: skip
    population: int = option(4, "students trained side by side")
    generations_per_level: int = option(2, "generations spent at each level of the layer tree")
    steps: int = option(40, "distillation steps per generation")
    batch_size: int = option(64, "images per distillation step")
    lr: float = option(0.005, "learning rate of the distillation steps")
    max_drop: float = option(0.5, "accuracy points allowed to go")
    min_accuracy: float | None = option(None, "absolute threshold instead (fraction, e.g. 0.92)")
    latency_budget: float | None = option(None, "online seconds: over it a member is infeasible; "
                                        "within it the reward is accuracy (safenet) or "
                                        "Delphi's reward (delphi)")  # fmt: skip
    eval_images: int = option(2000, "held-out images scoring members")
    degrees: tuple[int, ...] = option((2, 3), "polynomial degrees to choose from")
    init_ratio: float = option(0.5, "replaced fraction the population starts near")
    ramp_fraction: float = option(0.5, "in a trial, layers whose configuration changed since "
                                "the member's weights were trained blend from ReLU to their "
                                "polynomials over this fraction of the steps")  # fmt: skip
    wrap_images: int = option(64, "held-out images measuring truncation failures with the "
                            "fixed-point reference (charged to accuracy; 0: off)")  # fmt: skip
    max_failure_rate: float = option(0.01, "held-out failure rate above which a member is "
                                   "infeasible (one image in 2,000 is 5e-4)")  # fmt: skip
    failure_weight: float = option(20.0, "how many wrong images one held-out failure costs "
                                 "a member (20: one in 2,000 costs a point)")  # fmt: skip
    criterion: str = option("taylor", "channel scoring: which channels stay ReLU",
                          choices=CRITERIA)  # fmt: skip
    seed: int = option(0, "seed of the search (exploration and trials)")
    time_budget_s: float | None = option(None, "seconds of search (this run; a rerun resumes "
                                       "and gets the budget again)")  # fmt: skip
    epoch_budget: float | None = option(None, "training epochs of all members in all (counted "
                                      "across resumes)")  # fmt: skip

    def __post_init__(self) -> None:
        if self.method not in STRATEGIES:
            raise ValueError(f"method must be one of {sorted(STRATEGIES)}, got {self.method!r}")
        if self.population < 2:
            raise ValueError("population must be at least 2")
        if not set(self.degrees) <= {2, 3} or not self.degrees:
            raise ValueError("degrees must be a non-empty subset of (2, 3)")


def layer_tree(n: int) -> list[list[list[int]]]:
    """Levels of groups of layer indices: ``[[0..n-1]]``, then halves, ..., singletons."""
    levels = [[list(range(n))]]
    while any(len(g) > 1 for g in levels[-1]):
        nxt = []
        for g in levels[-1]:
            if len(g) > 1:
                h = (len(g) + 1) // 2
                nxt += [g[:h], g[h:]]
            else:
                nxt.append(g)
        levels.append(nxt)
    return levels


#: a member's configuration: layer name -> ratio replaced and degree
Config = dict[str, LayerSpec]


def as_config(raw: Mapping[str, LayerSpec | Sequence[float]]) -> Config:
    """A configuration from specs or from ``[ratio, degree]`` pairs (as saved and reported)."""
    return {k: v if isinstance(v, LayerSpec) else LayerSpec(float(v[0]), int(v[1]))
            for k, v in raw.items()}  # fmt: skip


def config_lists(config: Mapping[str, LayerSpec]) -> dict[str, list[float]]:
    """``{layer: [ratio, degree]}``: a configuration as saved in ``search.pt`` and reports."""
    return {k: [s.ratio, s.degree] for k, s in config.items()}


@dataclass
class _Member:
    config: Config
    state: dict[str, torch.Tensor] | None = None
    state_config: Config | None = None  # the configuration ``state`` was trained in
    accuracy: float = math.nan
    latency: float = math.nan
    failure_rate: float = 0.0  # share of inferences that may leave the secure error bound
    reward: float = -math.inf

    def __post_init__(self) -> None:  # saved members hold [ratio, degree] lists
        self.config = as_config(self.config)
        if self.state_config is not None:
            self.state_config = as_config(self.state_config)

    def saved(self) -> dict[str, Any]:
        """The member as ``search.pt`` holds it (configurations as lists)."""
        out = asdict(self)
        out["config"] = config_lists(self.config)
        if self.state_config is not None:
            out["state_config"] = config_lists(self.state_config)
        return out


class Trial(NamedTuple):
    """What one trial returns: trained weights, held-out accuracy (float), predicted online
    seconds and the compiled plan's local-truncation failure rate."""

    state: dict[str, torch.Tensor]
    accuracy: float
    latency: float
    failure_rate: float


class Strategy(ABC):
    """What one planner decides: its generations' layer groups, its starting members, how a
    member explores, how a built student's polynomials are set, and its reward. The search
    (:class:`_Search`) does the rest, the same for every planner."""

    method: ClassVar[str]

    def __init__(self, s: _Search) -> None:
        self.s = s

    def prepare(self) -> None:  # noqa: B027 (an optional hook: nothing to do by default)
        """Called once the search holds its layers, scores and thresholds."""

    @abstractmethod
    def tree(self, n: int) -> list[list[list[int]]]:
        """The layer groups of each level; ``generations_per_level`` generations each."""

    @abstractmethod
    def fit(self, student: nn.Module) -> None:
        """Set the polynomials of a freshly configured student."""

    @abstractmethod
    def initial(self, k: int) -> _Member:
        """The ``k``-th member of the first generation."""

    @abstractmethod
    def explore(self, m: _Member, level: list[list[int]]) -> None:
        """Change ``m``'s configuration (after it copied a winner's)."""

    @abstractmethod
    def reward(self, m: _Member) -> float:
        """The reward of a member within the latency budget (or without one)."""

    @abstractmethod
    def feasible(self, m: _Member) -> bool:
        """Whether ``m`` is acceptable when no latency budget is set."""


class SafenetStrategy(Strategy):
    """BTPBT: per-layer ratios and degrees, explored group by group down the layer tree."""

    method = "safenet"
    init_ratio = 0.0

    def prepare(self) -> None:
        self.init_ratio = self.start_ratio()

    def start_ratio(self) -> float:
        """The initial replaced fraction: ``init_ratio``, or with a latency budget the
        smallest grid ratio whose uniform configuration the cost model puts within it."""
        s, cfg = self.s, self.s.cfg
        if cfg.latency_budget is None:
            return cfg.init_ratio
        d = max(cfg.degrees)
        for r in RATIOS:
            if s.latency_of(_Member({n: LayerSpec(r, d) for n in s.layers})) <= cfg.latency_budget:
                return r
        return 1.0

    def tree(self, n: int) -> list[list[list[int]]]:
        return layer_tree(n)

    def fit(self, student: nn.Module) -> None:
        calibrate(student, [self.s.train_x[:256]])

    def initial(self, k: int) -> _Member:
        s, cfg = self.s, self.s.cfg
        step = s.rng.choice((0, 1) if cfg.latency_budget is not None else (-1, 0, 1)) if k else 0
        i = min(max(round(self.init_ratio * 8) + step, 0), 8)
        d = cfg.degrees[k % len(cfg.degrees)]
        return _Member({n: LayerSpec(RATIOS[i], d) for n in s.layers})

    def explore(self, m: _Member, level: list[list[int]]) -> None:
        s = self.s
        group = s.rng.choice(level)
        names = [s.layers[i] for i in group]
        step = s.rng.choice((-1, 1))
        for n in names:
            i = min(max(round(m.config[n].ratio * 8) + step, 0), 8)
            m.config[n] = replace(m.config[n], ratio=RATIOS[i])
        if len(s.cfg.degrees) > 1 and s.rng.random() < 0.2:
            d = s.rng.choice(s.cfg.degrees)
            for n in names:
                m.config[n] = replace(m.config[n], degree=d)

    def reward(self, m: _Member) -> float:
        s, acc = self.s, self.s.score(m)
        if s.cfg.latency_budget is not None:
            return acc
        if acc >= s.threshold:
            return s.teacher_latency / (s.teacher_latency + m.latency)
        return -1.0 - (s.threshold - acc) * 100

    def feasible(self, m: _Member) -> bool:
        return self.s.score(m) >= self.s.threshold


class DelphiStrategy(Strategy):
    """Delphi's planner: whole layers ReLU or its fixed quadratic, one flip at a time."""

    method = "delphi"

    def tree(self, n: int) -> list[list[list[int]]]:
        # no levels, but as many generations as BTPBT (the same training compute)
        return [[list(range(n))]] * len(layer_tree(n))

    def fit(self, student: nn.Module) -> None:
        calibrate(student, [self.s.train_x[:256]], refit=False)  # the range penalty's bounds
        for act in activations(student).values():
            if not bool(act.relu_mask.all()):
                c = torch.tensor(DELPHI_QUADRATIC, dtype=act.coefficients.dtype)
                act.coefficients.data.copy_(c.expand_as(act.coefficients))
                act.coefficients.requires_grad_(False)

    def initial(self, k: int) -> _Member:
        s = self.s
        eligible = s.layers[1:-1]
        if s.cfg.latency_budget is None:
            chosen = s.rng.sample(eligible, k=min(len(eligible), k % (len(eligible) + 1)))
            return _Member({n: LayerSpec(1.0 if n in chosen else 0.0, 2) for n in s.layers})
        m = _Member({n: LayerSpec(0.0, 2) for n in s.layers})
        s.fit_budget(m, s.rng.sample(eligible, k=len(eligible)))
        return m

    def explore(self, m: _Member, level: list[list[int]]) -> None:
        s = self.s
        if len(s.layers) <= 2:  # the first and last layers always stay ReLU
            return
        name = s.rng.choice(s.layers[1:-1])
        m.config[name] = replace(m.config[name], ratio=0.0 if m.config[name].ratio > 0 else 1.0)
        if s.cfg.latency_budget is not None:  # a flip back to ReLU becomes a swap
            relu = [n for n in s.layers[1:-1] if m.config[n].ratio == 0 and n != name]
            s.fit_budget(m, s.rng.sample(relu, k=len(relu)))

    def reward(self, m: _Member) -> float:
        replaced = sum(1 for spec in m.config.values() if spec.ratio > 0)
        return self.s.score(m) * (1 + replaced / len(m.config))

    def feasible(self, m: _Member) -> bool:
        return True


#: the planner of each ``SearchConfig.method``
STRATEGIES: dict[str, type[Strategy]] = {"safenet": SafenetStrategy, "delphi": DelphiStrategy}


class _Search:
    """The search's fixed state (data, teacher, channel scores, thresholds), its random
    generator and what every planner shares: building, training and scoring members."""

    def __init__(
        self, teacher: nn.Module, train: ImageDataset, cfg: SearchConfig, calibration: Calibration
    ) -> None:
        self.cfg, self.cal = cfg, calibration
        self.teacher = teacher.eval()
        n = len(train)
        k = min(cfg.eval_images, n // 5)
        self.train_x = train.normalize(train.images[: n - k])
        self.train_y = train.labels[: n - k]
        self.eval_x = train.normalize(train.images[n - k :])
        self.eval_y = train.labels[n - k :]
        self.shape = tuple(self.train_x.shape[1:])
        base = convert(copy.deepcopy(teacher), self.train_x[:4])
        self.layers = list(activations(base))
        batches = [(self.train_x[i : i + 64], self.train_y[i : i + 64]) for i in range(0, 512, 64)]
        self.scores = score_channels(base, batches, cfg.criterion)
        self.teacher_acc = float(
            (opening_peaks(teacher, self.eval_x)[0] == self.eval_y).float().mean()
        )
        self.teacher_latency = predict(count(compile_model(teacher, self.shape)), calibration)[
            "online_s"
        ]
        self.threshold = (
            cfg.min_accuracy
            if cfg.min_accuracy is not None
            else self.teacher_acc - cfg.max_drop / 100
        )
        self.rng = random.Random(cfg.seed)
        self.strategy = STRATEGIES[cfg.method](self)
        self.strategy.prepare()

    # -- members ---------------------------------------------------------------------------
    def build(self, m: _Member) -> nn.Module:
        """``m``'s student: the teacher converted, configured, fitted, with ``m``'s weights."""
        student = convert(copy.deepcopy(self.teacher), self.train_x[:4])
        set_layers(student, m.config, self.scores)
        self.strategy.fit(student)
        if m.state is not None and m.state_config == m.config:  # as trained: everything
            student.load_state_dict(m.state)
        elif m.state is not None:  # configuration changed since: keep weights, refit activations
            own = student.state_dict()
            refit = (".coefficients", ".relu_mask", ".input_bound")  # calibrate's, kept
            keep = {k: v for k, v in m.state.items() if k in own and own[k].shape == v.shape
                    and not k.endswith(refit)}  # fmt: skip
            student.load_state_dict(keep, strict=False)
        set_blend(student, 1.0)
        return student

    def train(self, m: _Member, seed: int) -> Trial:
        """One trial: distil ``m``'s student for ``cfg.steps`` steps from ``seed``; returns its
        state dict, held-out accuracy, predicted online latency and expected truncation
        failures. Leaves ``m`` and the search untouched, so it may run in another process."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self._train(m, seed)

    def _train(self, m: _Member, seed: int) -> Trial:
        cfg = self.cfg
        student = self.build(m)
        params = [p for p in student.parameters() if p.requires_grad]
        opt = torch.optim.SGD(
            params, lr=cfg.lr, momentum=0.9, nesterov=True, weight_decay=_KD.weight_decay
        )
        # layers whose configuration is new to these weights blend in from ReLU over the
        # first ``ramp_fraction`` of the steps (as fine-tuning does); the others stay at 1
        acts = activations(student)
        trained = (m.state_config or {}) if m.state is not None else {}
        fresh = [a for n, a in acts.items() if trained.get(n) != m.config[n]]
        ramp = max(1, round(cfg.ramp_fraction * cfg.steps))
        g = torch.Generator().manual_seed(seed)
        student.train()
        good = copy.deepcopy(student.state_dict())  # last state with a finite loss
        for step in range(cfg.steps):
            for a in fresh:
                a.blend.fill_(min(1.0, (step + 1) / ramp))
            idx = torch.randint(0, len(self.train_x), (cfg.batch_size,), generator=g)
            x, y = self.train_x[idx], self.train_y[idx]
            with torch.no_grad():
                t = self.teacher(x)
            loss = distillation_loss(student(x), t, y, _KD.temperature, _KD.kd_weight)
            loss = loss + _KD.range_weight * range_penalty(student)
            if not torch.isfinite(loss):  # diverged: back to the last good weights, stop
                student.load_state_dict(good)
                break
            if step and step % 10 == 0:  # (step 0's state is the copy taken above)
                good = copy.deepcopy(student.state_dict())
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, _KD.clip)
            opt.step()
        set_blend(student, 1.0)  # scored and kept as it will be served
        state = {k: v.detach().clone() for k, v in student.state_dict().items()}
        pred, peaks = opening_peaks(student, self.eval_x)
        accuracy = float((pred == self.eval_y).float().mean())
        plan = compile_model(student, self.shape)
        latency = predict(count(plan), self.cal)["online_s"]
        fails = float(peaks.failures(plan.field).float().mean())
        failures = max(fails, self.failure_rate(plan))
        return Trial(state, accuracy, float(latency), failures)

    def failure_rate(self, plan: Plan) -> float:
        """Share of ``plan``'s inferences on the first ``wrap_images`` held-out images expected
        to see a truncation failure (the fixed-point reference's count)."""
        k = min(self.cfg.wrap_images, len(self.eval_x))
        if k <= 0:
            return 0.0
        stats = RangeStats()
        plan.reference(self.eval_x[:k].numpy(), stats=stats)
        return stats.failure_rate

    def score(self, m: _Member) -> float:
        """The accuracy ``m`` is judged by: float accuracy less ``failure_weight`` times its
        failure rate (at least 0). A failure may cost one prediction, but a member that blows
        up on held-out images is fragile, and range hardening after the search has to fix
        every such input in the training set: weighted, a rare failure still ranks a learning
        member above a broken one (a 10 % member cannot fail), and a frequent one loses."""
        return max(m.accuracy - self.cfg.failure_weight * m.failure_rate, 0.0)

    def reward(self, m: _Member) -> float:
        """Higher is better; every infeasible member scores below -1, under every feasible one
        (one that fails too often by its failure rate, one over the budget lower still)."""
        budget = self.cfg.latency_budget
        if budget is not None and m.latency > budget:
            return -2.0 - m.latency / budget
        if m.failure_rate > self.cfg.max_failure_rate:
            return -1.0 - m.failure_rate
        return self.strategy.reward(m)

    def feasible(self, m: _Member) -> bool:
        """Failing rarely enough, and within the latency budget (when one is set), else as the
        planner judges it (SAFENet: at or above the accuracy bar; Delphi: always)."""
        if m.failure_rate > self.cfg.max_failure_rate:
            return False
        if self.cfg.latency_budget is not None:
            return m.latency <= self.cfg.latency_budget
        return self.strategy.feasible(m)

    def latency_of(self, m: _Member) -> float:
        """Predicted online seconds of ``m``'s student as configured (weights aside)."""
        plan = compile_model(self.build(m).eval(), self.shape)
        return float(predict(count(plan), self.cal)["online_s"])

    def fit_budget(self, m: _Member, order: list[str]) -> None:
        """Replace whole layers from ``order`` until ``m`` is within the latency budget."""
        assert self.cfg.latency_budget is not None
        for name in order:
            if self.latency_of(m) <= self.cfg.latency_budget:
                return
            m.config[name] = replace(m.config[name], ratio=1.0)


def _rank(m: _Member) -> tuple[float, float]:
    """Sort key, best last: reward, and at equal reward the lower predicted latency (under a
    budget the reward is accuracy alone, and two members can tie on held-out images)."""
    return (m.reward, -m.latency)


def _member(saved: dict[str, Any]) -> _Member:
    """A member from its saved fields (fields saved by other versions are left out; the mean
    expected wraps of an earlier version stand in for the failure rate as 1 - exp(-wraps))."""
    known = {f.name for f in fields(_Member)}
    m = _Member(**{k: v for k, v in saved.items() if k in known})
    if "wraps" in saved and "failure_rate" not in saved:
        m.failure_rate = -math.expm1(-float(saved["wraps"]))
    return m


def _fixed(config: dict[str, Any]) -> dict[str, Any]:
    """The settings a resumed search must share with the saved one (budgets may change;
    settings added since a search was saved count as their defaults)."""
    full = asdict(SearchConfig()) | config
    return {k: v for k, v in full.items() if k not in ("time_budget_s", "epoch_budget")}


def _save(path: Path, state: dict[str, Any]) -> None:
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


@dataclass
class SearchReport:
    """What a search returns: the best member's per-layer ``config``, its held-out accuracy,
    predicted online latency and expected truncation failure rate (``failure_rate``), the
    teacher's figures, the per-generation ``history``, and ``model``, the best student
    (trained, ready to save or compile).

    :meth:`to_dict` is the JSON of ``report.json`` (``config`` as ``[ratio, degree]`` pairs,
    no ``model``); keys added after the search (the final fine-tune's, the checkpoint's) are
    kept in ``extra`` and written after the search's own. ``report[key]`` and ``key in
    report`` read that dict (or ``"model"``), as when the report was one.
    """

    method: str
    config: Config
    accuracy: float
    predicted_online_s: float
    failure_rate: float
    teacher_accuracy: float
    teacher_online_s: float
    threshold: float
    feasible: bool
    generations: int
    complete: bool
    epochs_trained: float
    history: list[dict[str, Any]]
    layers: list[str]
    model: nn.Module | None = field(default=None, repr=False, compare=False)
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready report (what ``report.json`` holds)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("model", "extra")}  # fmt: skip
        return out | {"config": config_lists(self.config)} | self.extra

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SearchReport:
        """A report from :meth:`to_dict`'s JSON (other keys go to ``extra``)."""
        own = {f.name for f in fields(cls)} - {"model", "extra"}
        kw = {k: v for k, v in data.items() if k in own}
        extra = {k: v for k, v in data.items() if k not in own}
        return cls(**kw | {"config": as_config(data["config"])}, extra=extra)

    def layers_json(self) -> dict[str, dict[str, float]]:
        """``{layer: {"ratio", "degree"}}``: the winner as ``finetune --layers`` reads it."""
        return {k: {"ratio": s.ratio, "degree": int(s.degree)} for k, s in self.config.items()}

    def __getitem__(self, key: str) -> Any:
        return self.model if key == "model" else self.to_dict()[key]

    def __contains__(self, key: object) -> bool:
        return key == "model" or key in self.to_dict()


def _start(
    s: _Search, state_path: Path, total_gens: int, log: Callable[[str], None]
) -> tuple[list[_Member], int, list[Any], int]:
    """Members, generations done, history and training images seen: saved in ``state_path``
    (the settings checked, the random generator restored), else a first generation."""
    if not state_path.exists():
        return [s.strategy.initial(k) for k in range(s.cfg.population)], 0, [], 0
    saved = torch.load(state_path, weights_only=False)
    if _fixed(saved["config"]) != _fixed(asdict(s.cfg)):
        raise ValueError(f"{state_path} belongs to a search with other settings")
    s.rng.setstate(saved["rng"])
    members = [_member(m) for m in saved["members"]]
    log(f"resuming at generation {saved['generation']} of {total_gens}")
    return members, saved["generation"], saved["history"], saved.get("images_seen", 0)


def _exploit_and_explore(s: _Search, members: list[_Member], level: list[list[int]]) -> None:
    """The bottom quarter of ``members`` (ranked, best first) copies the top quarter's
    configurations and weights, then explores."""
    n_swap = max(1, len(members) // 4)
    for loser, winner in zip(members[-n_swap:], members[:n_swap], strict=True):
        loser.config = dict(winner.config)
        loser.state = winner.state
        loser.state_config = None if winner.state_config is None else dict(winner.state_config)
        s.strategy.explore(loser, level)


def search(
    teacher: nn.Module,
    train: ImageDataset,
    cfg: SearchConfig,
    out_dir: str | Path,
    calibration: Calibration,
    log: Callable[[str], None] = print,
    runner: Runner | None = None,
) -> SearchReport:
    """Run (or resume) a search; returns its :class:`SearchReport`.

    ``runner`` runs each generation's trials (:mod:`safenet.approx.runners`; default: one
    after another here); the caller opens and closes it.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state_path = out / "search.pt"
    torch.manual_seed(cfg.seed)
    s = _Search(teacher, train, cfg, calibration)
    tree = s.strategy.tree(len(s.layers))
    total_gens = len(tree) * cfg.generations_per_level
    members, gen, history, seen = _start(s, state_path, total_gens, log)
    per_gen = cfg.population * cfg.steps * cfg.batch_size  # training images per generation
    runner = runner if runner is not None else SequentialRunner()
    log(f"runner: {runner.describe()}")
    t0 = time.perf_counter()
    start_gen = gen
    while gen < total_gens:
        if cfg.epoch_budget is not None and seen >= cfg.epoch_budget * len(s.train_x):
            log(f"epoch budget reached before generation {gen + 1}; raise it to go on")
            break
        level = tree[gen // cfg.generations_per_level]
        seeds = [s.rng.randrange(2**31) for _ in members]  # here, whatever the runner
        trained = runner.map(s.train, list(zip(members, seeds, strict=True)))
        for m, (state, accuracy, latency, fails) in zip(members, trained, strict=True):
            m.state, m.state_config = state, dict(m.config)
            m.accuracy, m.latency, m.failure_rate = accuracy, latency, fails
            m.reward = s.reward(m)
        members.sort(key=_rank, reverse=True)
        best = members[0]
        history.append({"generation": gen, "level_groups": len(level),
                        "best_reward": best.reward, "best_accuracy": best.accuracy,
                        "best_latency": best.latency, "best_failure_rate": best.failure_rate,
                        "rewards": [m.reward for m in members]})  # fmt: skip
        seen += per_gen
        spent = time.perf_counter() - t0
        left = spent / (gen + 1 - start_gen) * (total_gens - gen - 1)
        log(f"generation {gen + 1}/{total_gens} ({len(level)} groups): best accuracy "
            f"{best.accuracy:.4f} (secure failure rate {best.failure_rate:.4f}), predicted online "
            f"{best.latency:.3f} s "
            f"(teacher {s.teacher_acc:.4f}, {s.teacher_latency:.3f} s); "
            f"{seen / len(s.train_x):.1f} epochs, ~{left / 60:.0f} min left")  # fmt: skip
        _exploit_and_explore(s, members, level)
        gen += 1
        _save(state_path, {"config": asdict(cfg), "generation": gen, "history": history,
                           "rng": s.rng.getstate(), "images_seen": seen,
                           "members": [m.saved() for m in members]})  # fmt: skip
        if cfg.time_budget_s is not None and time.perf_counter() - t0 > cfg.time_budget_s:
            log(f"time budget reached after generation {gen}; rerun to resume")
            break
    best = max(members, key=_rank)
    return SearchReport(
        method=cfg.method, config=dict(best.config), accuracy=best.accuracy,
        predicted_online_s=best.latency, failure_rate=best.failure_rate,
        teacher_accuracy=s.teacher_acc, teacher_online_s=s.teacher_latency,
        threshold=s.threshold, feasible=s.feasible(best), generations=gen,
        complete=gen >= total_gens, epochs_trained=seen / len(s.train_x), history=history,
        layers=s.layers, model=s.build(best).eval(),
    )  # fmt: skip
