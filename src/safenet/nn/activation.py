"""The channel-wise approximated activation: ReLU on some channels, a polynomial on the rest.

This is the heart of SAFENet. In the secure protocol a ReLU costs a garbled circuit while a
polynomial costs a few multiplications on secret shares, so each activation layer keeps ReLU
only on its most useful channels (``relu_mask``) and evaluates a trainable degree-2 or -3
polynomial on the others.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

__all__ = ["TRAIN_CLAMP", "ChannelActivation", "fit_relu_polynomial", "range_penalty"]

#: while range hardening trains, polynomial inputs are clamped at this many times
#: ``input_bound`` (``ChannelActivation.train_clamp``)
TRAIN_CLAMP = 2.0


def fit_relu_polynomial(
    samples: np.ndarray | torch.Tensor, degree: int, clip: float | None = None
) -> np.ndarray:
    """Least-squares coefficients ``c[0..degree]`` (constant first) of ``sum c_k x^k ~ relu(x)``
    (``min(relu(x), clip)`` for a clipped ReLU such as ReLU6).

    The fit is over the given pre-activation samples, so it is best where the data lie.
    """
    x = torch.as_tensor(samples).detach().double().flatten().cpu().numpy()
    if x.size < degree + 1 or not np.isfinite(x).all():
        raise ValueError("need finite samples, at least degree + 1 of them, to fit a polynomial")
    vander = np.vander(x, degree + 1, increasing=True)
    target = np.maximum(x, 0.0) if clip is None else np.clip(x, 0.0, clip)
    coef, *_ = np.linalg.lstsq(vander, target, rcond=None)
    return coef


class ChannelActivation(nn.Module):
    """ReLU on the channels in ``relu_mask``, a trainable polynomial on the others.

    The polynomial has ``degree`` 2 or 3 and ``coefficients`` of shape
    (groups, degree + 1), constant term first: one row for the layer, or one per channel
    with ``per_channel``. Until :meth:`fit` they hold Delphi's quadratic. The ``blend``
    buffer in [0, 1] mixes ReLU into the polynomial channels,
    ``(1 - blend) * relu + blend * poly``; fine-tuning raises it from 0 to 1 and inference
    always uses 1.

    ``input_bound`` is the largest |pre-activation| the polynomial was fitted on
    (:meth:`fit`; 0 until then). Beyond it a polynomial no longer follows ReLU and, layer
    after layer, can blow up (a cube of a cube...): in training mode ``range_excess`` holds
    ``sum (|x| / input_bound - 1)_+^2`` over the polynomial channels per image (batch mean),
    which fine-tuning adds to its loss (:func:`range_penalty`) to keep the network inside the
    range where the fixed-point protocol is exact. While ``train_clamp`` is set (range
    hardening sets it to ``TRAIN_CLAMP``, :mod:`safenet.approx.harden`) the polynomial sees
    its input clamped to that many times the bound in training mode, so an image that
    escapes the range still gives a finite loss (and the penalty's gradient) instead of a
    skipped step; typical inputs of a trained model stay below 1.2 times the bound and never
    meet the clamp. It is off otherwise: during fine-tuning and the search's trials the bound
    is fitted on the ReLU network's pre-activations and may be stale for the polynomial
    network, and a clamp there would train a function that is not the one served (and
    saturate the gradient of every input past it). Served models are never clamped (a clamp
    is a comparison, i.e. a garbled circuit).

    Args:
        num_channels: size of dimension 1 of the input (conv channels or linear features).
        degree: degree of the polynomial, 2 or 3. Default: 2.
        relu_mask: bool tensor of shape (num_channels,), True where ReLU is kept.
            Default: ReLU on every channel.
        per_channel: one coefficient row per channel instead of one for the layer.
            Default: False.
        clip: if given, the kept channels compute the clipped ReLU
            ``min(max(x, 0), clip)`` (ReLU6: 6) and the polynomials are fitted to it.
            Default: None (plain ReLU).

    Shape:
        - Input: (N, C, *) with C = ``num_channels``.
        - Output: (N, C, *), the shape of the input.

    Example:
        >>> import torch
        >>> from safenet.nn import ChannelActivation
        >>> act = ChannelActivation(4, relu_mask=torch.tensor([True, True, False, False]))
        >>> act.ratio
        0.5
        >>> act.fit(torch.randn(256, 4, 8, 8))  # least squares to ReLU on samples
        >>> act(torch.randn(2, 4, 8, 8)).shape
        torch.Size([2, 4, 8, 8])
    """

    # buffers (register_buffer), declared so that type checkers see tensors, not Module
    relu_mask: torch.Tensor
    blend: torch.Tensor
    input_bound: torch.Tensor

    def __init__(
        self,
        num_channels: int,
        degree: int = 2,
        relu_mask: torch.Tensor | None = None,
        per_channel: bool = False,
        clip: float | None = None,
    ) -> None:
        super().__init__()
        if clip is not None and not clip > 0:
            raise ValueError(f"clip must be positive, got {clip}")
        self.clip = None if clip is None else float(clip)
        if degree not in (2, 3):
            raise ValueError(f"polynomial degree must be 2 or 3, got {degree}")
        if num_channels < 1:
            raise ValueError("num_channels must be positive")
        self.num_channels = num_channels
        self.degree = degree
        self.per_channel = per_channel
        mask = torch.ones(num_channels, dtype=torch.bool) if relu_mask is None else relu_mask
        if mask.shape != (num_channels,):
            raise ValueError(
                f"relu_mask must have shape ({num_channels},), got {tuple(mask.shape)}"
            )
        self.register_buffer("relu_mask", mask.clone().bool())
        self.register_buffer("blend", torch.tensor(1.0))
        # the largest |pre-activation| the polynomial was fitted on (0: not fitted yet)
        self.register_buffer("input_bound", torch.tensor(0.0))
        self.range_excess: torch.Tensor | None = None
        #: in training mode, clamp polynomial inputs at this many times ``input_bound``
        self.train_clamp: float | None = None
        groups = num_channels if per_channel else 1
        init = torch.zeros(groups, degree + 1)
        init[:, :3] = torch.tensor([0.1992, 0.5002, 0.1997])  # Delphi's quadratic, until fitted
        self.coefficients = nn.Parameter(init)

    @property
    def ratio(self) -> float:
        """Fraction of channels replaced by the polynomial."""
        return 1.0 - float(self.relu_mask.float().mean())

    def extra_repr(self) -> str:
        return (
            f"channels={self.num_channels}, relu={int(self.relu_mask.sum())}, "
            f"degree={self.degree}, per_channel={self.per_channel}"
            + ("" if self.clip is None else f", clip={self.clip}")
        )

    def target(self, x: torch.Tensor) -> torch.Tensor:
        """What the polynomials imitate and the kept channels compute: ReLU, or the clipped
        ReLU ``min(max(x, 0), clip)``."""
        return torch.relu(x) if self.clip is None else torch.clamp(x, 0.0, self.clip)

    def polynomial(self, x: torch.Tensor) -> torch.Tensor:
        """The polynomial on every channel (Horner's rule), shape of ``x``."""
        shape = [1, -1] + [1] * (x.dim() - 2)
        c = self.coefficients
        y = c[:, self.degree].view(shape)
        for k in range(self.degree - 1, -1, -1):
            y = y * x + c[:, k].view(shape)
        return y

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() < 2 or x.shape[1] != self.num_channels:
            raise ValueError(
                f"ChannelActivation expects {self.num_channels} channels in dim 1, "
                f"got shape {tuple(x.shape)}"
            )
        relu = self.target(x)
        self.range_excess = None
        if bool(self.relu_mask.all()):
            return relu
        bound = float(self.input_bound)
        if self.training and bound > 0:
            xp = x[:, ~self.relu_mask]
            over = torch.relu(xp.abs() / bound - 1.0)
            self.range_excess = over.pow(2).flatten(1).sum(1).mean()
            if self.train_clamp is not None:  # range hardening: see the class docstring
                x = x.clamp(-self.train_clamp * bound, self.train_clamp * bound)
        poly = self.polynomial(x)
        if float(self.blend) < 1.0:
            poly = torch.lerp(relu, poly, self.blend)
        keep = self.relu_mask.view([1, -1] + [1] * (x.dim() - 2))
        return torch.where(keep, relu, poly)

    @torch.no_grad()
    def fit(self, preactivations: torch.Tensor) -> None:
        """Least-squares fit of the coefficients to ReLU on sampled pre-activations.

        ``preactivations`` has the layer's input layout (N, C, ...). Per-channel
        coefficients are fitted per channel; otherwise one fit over the replaced channels
        (all channels if none are replaced).
        """
        x = preactivations.detach().transpose(0, 1).reshape(self.num_channels, -1)
        chosen = x[~self.relu_mask] if bool((~self.relu_mask).any()) else x
        if self.per_channel:
            coef = np.stack(
                [fit_relu_polynomial(x[c], self.degree, self.clip) for c in range(len(x))]
            )
        else:
            coef = fit_relu_polynomial(chosen, self.degree, self.clip)[None]
        self.coefficients.copy_(torch.from_numpy(coef).to(self.coefficients))
        self.input_bound.fill_(float(chosen.abs().max()))

    @torch.no_grad()
    def set_bound(self, preactivations: torch.Tensor) -> None:
        """Set ``input_bound`` alone (the coefficients stay): the largest finite
        |pre-activation| of the polynomial channels in ``preactivations`` (N, C, ...), for
        fixed polynomials (Delphi's quadratic) and models saved without a bound."""
        x = preactivations.detach().transpose(0, 1)[~self.relu_mask].abs()
        x = x[torch.isfinite(x)]
        self.input_bound.fill_(float(x.max()) if x.numel() else 0.0)

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any) -> None:
        # a whole layer saved before input_bound existed: no bound, no range penalty; a
        # partial load that leaves the polynomial out (a search member whose configuration
        # changed keeps its freshly fitted coefficients and bound) must not zero the bound
        if prefix + "coefficients" in state_dict:
            state_dict.setdefault(prefix + "input_bound", torch.tensor(0.0))
        super()._load_from_state_dict(state_dict, prefix, *args)

    def config(self) -> dict:
        """The layer's activation configuration (JSON-serialisable), for checkpoints/plans."""
        out = {
            "channels": self.num_channels,
            "degree": self.degree,
            "per_channel": self.per_channel,
            "relu_mask": self.relu_mask.int().tolist(),
        }
        return out if self.clip is None else out | {"clip": self.clip}


def _reset(module: ChannelActivation, relu_mask: torch.Tensor, degree: int) -> None:
    """Give ``module`` a new mask and degree; the coefficients restart from Delphi's quadratic."""
    fresh = ChannelActivation(
        module.num_channels, degree, relu_mask, module.per_channel, module.clip
    )
    module.degree = degree
    module.relu_mask.copy_(fresh.relu_mask)
    module.coefficients = nn.Parameter(fresh.coefficients.to(module.coefficients))


def range_penalty(model: nn.Module) -> torch.Tensor | float:
    """Sum of the ``range_excess`` of every :class:`ChannelActivation` of ``model`` from its
    last training-mode forward pass (0 when no polynomial left its fitted range)."""
    terms = [m.range_excess for m in model.modules() if isinstance(m, ChannelActivation)]
    return sum((t for t in terms if t is not None), 0.0)
