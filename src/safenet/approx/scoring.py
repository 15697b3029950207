"""Channel usefulness: which channels of an activation layer should keep their ReLU.

Criteria (a higher score means "keep ReLU"):

``approx-error``
    Mean squared gap between ReLU and the layer's least-squares polynomial on the channel's
    pre-activations, E[(relu(x) - p(x))^2]. Channels whose inputs the polynomial already
    follows well (mostly positive, or small) lose little when replaced. Needs no labels.
``taylor``
    First-order Taylor estimate of the change in loss if the channel's ReLU were replaced by
    the polynomial, E_n |sum_{h,w} dL/dy * (p(x) - relu(x))| (as in Taylor pruning,
    Molchanov et al. 2019). Accounts for how much the rest of the network cares about the
    channel. Needs labels and a backward pass.
``random``
    Uniform random scores: the ablation baseline.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.hooks import RemovableHandle

from safenet.nn.activation import ChannelActivation, fit_relu_polynomial
from safenet.nn.surgery import activations

CRITERIA = ("taylor", "approx-error", "random")


def _layer_poly(x: torch.Tensor, degree: int, clip: float | None = None) -> torch.Tensor:
    sample = x.flatten()
    if sample.numel() > 200_000:
        idx = torch.randperm(sample.numel(), generator=torch.Generator().manual_seed(0))
        sample = sample[idx[:200_000]]
    return torch.from_numpy(fit_relu_polynomial(sample, degree, clip)).to(x.dtype)


def _poly_eval(c: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    y = torch.full_like(x, float(c[-1]))
    for k in range(len(c) - 2, -1, -1):
        y = y * x + float(c[k])
    return y


def _record(
    acts: dict[str, ChannelActivation],
) -> tuple[dict[str, list[torch.Tensor]], dict[str, torch.Tensor], list[RemovableHandle]]:
    """Forward hooks on ``acts``: (inputs per layer, each layer's latest output with its
    gradient retained when it has one, the hooks' handles)."""
    inputs: dict[str, list[torch.Tensor]] = {n: [] for n in acts}
    outputs: dict[str, torch.Tensor] = {}
    hooks = []
    for name, act in acts.items():

        def hook(_m: ChannelActivation, inp: tuple, out: torch.Tensor, name: str = name) -> None:
            inputs[name].append(inp[0].detach())
            if out.requires_grad:
                out.retain_grad()
                outputs[name] = out

        hooks.append(act.register_forward_hook(hook))
    return inputs, outputs, hooks


def _collect(
    model: nn.Module,
    acts: dict[str, ChannelActivation],
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    with_grads: bool,
) -> tuple[dict[str, list[torch.Tensor]], dict[str, list[torch.Tensor]]]:
    """Run ``batches`` through ``model`` in eval mode: (inputs, loss gradients at the
    outputs) of every layer of ``acts``, per batch; gradients only ``with_grads``."""
    inputs, outputs, hooks = _record(acts)
    was = model.training
    model.eval()
    grads: dict[str, list[torch.Tensor]] = {n: [] for n in acts}
    try:
        for x, y in batches:
            if with_grads:
                with torch.enable_grad():
                    x = x.clone().requires_grad_(True)
                    loss = F.cross_entropy(model(x), y)
                    loss.backward()
                for n in acts:
                    grad = outputs[n].grad
                    assert grad is not None  # the hook retained it on the backward pass
                    grads[n].append(grad.detach())
                model.zero_grad(set_to_none=True)
            else:
                with torch.no_grad():
                    model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return inputs, grads


def _score_layer(
    act: ChannelActivation,
    inputs: list[torch.Tensor],
    grads: list[torch.Tensor],
    criterion: str,
    degree: int,
) -> torch.Tensor:
    """One layer's (C,) scores from its recorded inputs (and output gradients, "taylor")."""
    x = torch.cat(inputs)
    gap = _poly_eval(_layer_poly(x, degree, act.clip), x) - act.target(x)
    dims = tuple(range(2, x.dim()))
    if criterion == "approx-error":
        s = (gap**2).mean(dim=(0, *dims))
    else:
        dy = torch.cat(grads)
        per = (dy * gap).sum(dim=dims) if dims else dy * gap
        s = per.abs().mean(0)
    return s.float()


def score_channels(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: str = "taylor",
    degree: int = 2,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Score every channel of every :class:`ChannelActivation` of ``model``.

    ``batches`` yields (inputs, labels). Returns one (C,) tensor per layer name. Layer
    polynomials are least-squares fits of ``degree`` over the layer's pre-activations.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
    acts = activations(model)
    if not acts:
        raise ValueError("model has no ChannelActivation layers; convert it first")
    if criterion == "random":
        g = torch.Generator().manual_seed(seed)
        return {n: torch.rand(a.num_channels, generator=g) for n, a in acts.items()}
    inputs, grads = _collect(model, acts, batches, with_grads=criterion == "taylor")
    return {
        name: _score_layer(act, inputs[name], grads[name], criterion, degree)
        for name, act in acts.items()
    }


def ranking_agreement(a: torch.Tensor, b: torch.Tensor, ratio: float = 0.5) -> float:
    """Fraction of the kept channels two score vectors agree on at a replacement ratio."""
    k = max(round(len(a) * (1 - ratio)), 1)
    ta = set(np.argsort(-a.numpy(), kind="stable")[:k].tolist())
    tb = set(np.argsort(-b.numpy(), kind="stable")[:k].tolist())
    return len(ta & tb) / k
