"""A float stand-in for the fixed-point reference's failure check, cheap enough to run on
every held-out image of every search trial.

The secure protocol opens two values per polynomial channel under bounded masks
(docs/protocol.md): the activation input ``v`` at ``frac_bits`` fractional bits, and the
polynomial's sum at ``d * poly_frac_bits + coef_bits`` bits. Either at or beyond the
exact-truncation bound ``B`` (:func:`safenet.field.trunc_bound`) may break the result
(:class:`safenet.plan.reference.RangeStats` counts that exactly, but the reference is ~100x
slower than torch). Here the float model's own values (:func:`opening_peaks`, one forward
pass that also gives the predictions) are held against the same bounds
(:meth:`OpeningPeaks.failures`), and a
non-finite logit counts as a failure too: an input that blows a degree-3 network up in float
does so in the field. An input is flagged when any polynomial channel of any layer is; one
image in a few hundred doing so is invisible to a 64-image reference check but makes a plan
unservable (a ResNet-32 searched all-polynomial at degree 3 blew up on about one training
image in a thousand).

The same pass gives each image's largest polynomial input over its layer's fitted range
(:meth:`OpeningPeaks.range_ratios`: how close an image is to escaping, which range hardening
trains on) and its largest |logit| (the output bound's basis); :func:`tail_estimate`
extrapolates the ratios' tail to rates no test set can show.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from safenet.field import Field, trunc_bound
from safenet.nn.activation import ChannelActivation
from safenet.nn.surgery import activations


def opening_limits(field: Field, degree: int) -> tuple[float, float]:
    """Float magnitudes at which a polynomial channel's input and its sum reach ``B``."""
    b = float(trunc_bound(field.p))
    return b / 2.0**field.frac_bits, b / 2.0 ** (degree * field.poly_bits + field.coef_bits)


@dataclass
class OpeningPeaks:
    """Per image, the largest float magnitude of each polynomial layer's input and sum (over
    its polynomial channels), and whether every value and logit was finite."""

    degrees: list[int]
    inputs: torch.Tensor  # (images, polynomial layers)
    sums: torch.Tensor
    finite: torch.Tensor  # (images,)
    #: each polynomial layer's ``input_bound`` (0 where the model has none)
    bounds: torch.Tensor = field(default_factory=lambda: torch.zeros(0))
    #: per image, the largest |logit|
    outputs: torch.Tensor = field(default_factory=lambda: torch.zeros(0))

    def range_ratios(self) -> torch.Tensor:
        """Per image, the largest polynomial input over its layer's ``input_bound`` (inf for
        an image that blows up; layers without a bound are left out). Typical images stay
        near 1; one that goes past about 2 is escaping: layer after layer the polynomials
        square it, and it ends non-finite."""
        has = self.bounds > 0
        r = self.inputs[:, has] / self.bounds[has]
        out = r.amax(1) if r.shape[1] else torch.zeros(len(self.finite))
        return torch.where(self.finite, torch.nan_to_num(out, nan=math.inf), math.inf)

    def failures(self, field: Field) -> torch.Tensor:
        """Per image: whether a value would reach the exact-truncation bound of ``field``."""
        bad = ~self.finite
        for j, d in enumerate(self.degrees):
            lim_in, lim_sum = opening_limits(field, d)
            bad = bad | (self.inputs[:, j] >= lim_in) | (self.sums[:, j] >= lim_sum)
        return bad


@torch.no_grad()
def opening_peaks(
    model: nn.Module, x: torch.Tensor, batch: int = 256
) -> tuple[torch.Tensor, OpeningPeaks]:
    """Predicted classes of ``model`` (put in eval mode) on ``x``, and its
    :class:`OpeningPeaks`; compare them with a field's bounds by
    :meth:`OpeningPeaks.failures` (the field comes from compiling the model)."""
    acts = [a for a in activations(model).values() if not bool(a.relu_mask.all())]
    peaks: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def hook(act: nn.Module, inputs: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
        assert isinstance(act, ChannelActivation)
        poly = ~act.relu_mask
        v, s = inputs[0][:, poly].flatten(1), out[:, poly].flatten(1)
        finite = torch.isfinite(v).all(1) & torch.isfinite(s).all(1)
        peaks[id(act)] = (v.abs().amax(1), s.abs().amax(1), finite)

    handles = [a.register_forward_hook(hook) for a in acts]
    preds, ins, sums, finite, outs = [], [], [], [], []
    try:
        model.eval()
        for i in range(0, len(x), batch):
            logits = model(x[i : i + batch])
            preds.append(logits.argmax(1))
            outs.append(logits.abs().amax(1))
            got = [peaks[id(a)] for a in acts]
            ok = torch.isfinite(logits).all(1)
            for _, _, f in got:
                ok = ok & f
            finite.append(ok)
            ins.append(torch.stack([g[0] for g in got], 1) if got else logits[:, :0])
            sums.append(torch.stack([g[1] for g in got], 1) if got else logits[:, :0])
    finally:
        for h in handles:
            h.remove()
    degrees = [a.degree for a in acts]
    bounds = torch.tensor([float(a.input_bound) for a in acts])
    return torch.cat(preds), OpeningPeaks(
        degrees, torch.cat(ins), torch.cat(sums), torch.cat(finite), bounds, torch.cat(outs)
    )


def tail_estimate(ratios: torch.Tensor, threshold: float, top: float = 0.01) -> float:
    """Extrapolated share of inputs whose range ratio (:meth:`OpeningPeaks.range_ratios`)
    reaches ``threshold``: peaks over a threshold with an exponential tail (the generalised
    Pareto with shape 0) fitted to the largest ``top`` share of ``ratios``,
    ``P(R >= t) ~ top * exp(-(t - u) / mean excess)`` with ``u`` the tail's lowest ratio.
    An estimate for rates far below what the data can show (0 of 10,000 only says <= 3e-4),
    not a measurement; inputs at or past ``threshold`` in the data are counted as they are."""
    r = ratios[torch.isfinite(ratios)].double()
    n = len(ratios)
    if n == 0:
        return 0.0
    seen = int((ratios >= threshold).sum())  # inf counts too
    k = max(int(top * n), 10)
    if len(r) < k or seen:
        return seen / n
    tail = r.topk(k).values
    u, scale = float(tail[-1]), float((tail - tail[-1]).mean())
    if scale <= 0:
        return 0.0
    return (k / n) * math.exp(-(threshold - u) / scale)
