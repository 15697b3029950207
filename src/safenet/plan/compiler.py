"""Lowering a PyTorch model to a Plan: trace with torch.fx, fold batch-norm, quantise.

Supported: Conv2d (any stride/padding/groups, zero padding), Linear, BatchNorm after a conv
or linear (folded) or alone (a per-channel affine), ReLU in any spelling, clipped ReLUs
(ReLU6, Hardtanh(0, m), relu6, hardtanh, clamp(0, m): an activation op with attribute
``clip``, the bound at the output scale) and ChannelActivation, AvgPool2d without padding,
AdaptiveAvgPool2d to sizes that divide the input (modules, or ``F.avg_pool2d`` /
``F.adaptive_avg_pool2d``; ``x.mean((2, 3))`` of a square image), MaxPool2d (any kernel,
stride, padding, dilation, ceil_mode) and AdaptiveMaxPool2d (modules or functions: a
``maxpool`` op, one garbled max per window; an all-ReLU activation that only feeds a max pool
is moved after it, exactly), ``torch.cat`` along
channels (a local ``concat`` op), Flatten / torch.flatten / view(N, -1), residual ``+``,
Identity and Dropout. Any other layer is an :class:`UnsupportedLayerError` naming it.

Scales: the input is at ``frac_bits``; a linear layer adds its weight bits; an activation
truncates back to ``frac_bits``. An average pool becomes a sum pool; its 1/k^2 is folded into
the next linear layer (with log2(k^2) more weight bits, so no precision is lost) or, when no
linear layer follows, exact for powers of two (scale grows) or a ``rescale`` by an integer.
"""

from __future__ import annotations

import copy
import math
import operator
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from safenet.field import POLY_PRIME, Field
from safenet.nn.activation import ChannelActivation
from safenet.nn.surgery import clip_bounds, is_relu, trace
from safenet.plan.ir import Plan, UnsupportedLayerError
from safenet.plan.ops import (
    Activation,
    Add,
    Concat,
    Conv,
    Flatten,
    Input,
    Linear,
    MaxPool,
    Op,
    OpAttrs,
    Rescale,
    SumPool,
    Truncate,
)
from safenet.plan.pooling import adaptive_axis, pool_axis

_ADD_FUNCS = {operator.add, operator.iadd, torch.add}
_FLATTEN_FUNCS = {torch.flatten}
_CAT_FUNCS = {torch.cat, torch.concat}
_POOL_FUNCS: dict[Any, type[nn.Module]] = {
    F.avg_pool2d: nn.AvgPool2d,
    F.adaptive_avg_pool2d: nn.AdaptiveAvgPool2d,
}
_MAX_FUNCS: dict[Any, type[nn.Module]] = {
    F.max_pool2d: nn.MaxPool2d,
    F.adaptive_max_pool2d: nn.AdaptiveMaxPool2d,
}
SUPPORTED = (
    "Conv2d (grouped, depthwise), Linear, BatchNorm1d/2d, ReLU, ReLU6 / Hardtanh(0, m) / "
    "clamp(0, m), ChannelActivation, AvgPool2d, AdaptiveAvgPool2d, MaxPool2d, "
    "AdaptiveMaxPool2d (modules or functions), "
    "torch.cat on channels, mean over (2, 3), "
    "Flatten, Identity, Dropout, residual add"
)


@dataclass
class _Val:
    """A lowered tensor: the op producing it, and a pending average-pool divisor."""

    op: int
    divisor: int = 1


@dataclass
class _Affine:
    """A conv/linear layer in float, possibly with a batch-norm folded in."""

    module: nn.Module
    weight: torch.Tensor
    bias: torch.Tensor
    label: str = ""


def _t(x: Any) -> torch.Tensor:
    """A module's parameter or buffer, typed (torch types them ``Tensor | Module | None``)."""
    return cast(torch.Tensor, x)


def _fold_bn(aff: _Affine, bn: nn.modules.batchnorm._BatchNorm) -> _Affine:
    scale = _t(bn.weight).detach().double() / torch.sqrt(_t(bn.running_var).double() + bn.eps)
    shift = _t(bn.bias).detach().double() - _t(bn.running_mean).double() * scale
    w = aff.weight * scale.view([-1] + [1] * (aff.weight.dim() - 1))
    return _Affine(aff.module, w, aff.bias * scale + shift, aff.label)


def _affine_of(m: nn.Conv2d | nn.Linear) -> _Affine:
    w = m.weight.detach().double()
    out = w.shape[0]
    b = m.bias.detach().double() if m.bias is not None else torch.zeros(out, dtype=torch.float64)
    return _Affine(m, w, b)


def _clip_bound(node: fx.Node, lo: Any, hi: Any) -> float:
    """The upper bound of a clipped ReLU ``min(max(x, 0), hi)``; anything else is refused."""
    if not isinstance(lo, int | float) or float(lo) != 0.0:
        raise UnsupportedLayerError(
            f"{_label(node)}: only clipped ReLUs (lower bound 0, e.g. ReLU6) are supported, "
            f"got lower bound {lo!r}"
        )
    if not isinstance(hi, int | float) or not float(hi) > 0:
        raise UnsupportedLayerError(
            f"{_label(node)}: clip needs a positive upper bound, got {hi!r}"
        )
    return float(hi)


def _pair(v: Any) -> tuple[int, int]:
    """A pooling parameter as (height, width)."""
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[-1]))


def _where(node: fx.Node) -> str:
    """`` at FILE:LINE: code`` of the model's source line that made ``node`` (fx records it
    while tracing), or nothing when fx has none."""
    lines = (node.stack_trace or "").splitlines()
    torch_dir = str(Path(torch.__file__).parent)
    for i, line in enumerate(lines):
        m = re.match(r'\s*File "(?P<file>[^"]+)", line (?P<line>\d+)', line)
        if m and not m["file"].startswith(torch_dir):
            code = lines[i + 1].strip() if i + 1 < len(lines) else ""
            return f" at {m['file']}:{m['line']}: {code}"
    return ""


def _label(node: fx.Node) -> str:
    """A readable name for a graph node: the module path where there is one."""
    return str(node.target) if node.op == "call_module" else node.name


def _is_method(node: fx.Node, *names: str) -> bool:
    """Whether ``node`` calls a tensor method named in ``names`` (``x.add(y)``, ...)."""
    return node.op == "call_method" and node.target in names


def _affine_attrs(node: fx.Node, m: nn.Module, wbits: int) -> OpAttrs:
    """The op attributes of a conv (numeric zero padding, no dilation) or linear layer."""
    if not isinstance(m, nn.Conv2d):
        return Linear(weight_bits=wbits)
    if m.padding_mode != "zeros" or m.dilation != (1, 1) or isinstance(m.padding, str):
        raise UnsupportedLayerError(
            f"{_label(node)}: Conv2d needs numeric zero padding and no dilation"
        )
    return Conv(
        stride=list(m.stride),
        padding=list(m.padding),
        groups=m.groups,
        kernel=list(m.kernel_size),
        weight_bits=wbits,
    )


def _unsupported_operation(node: fx.Node) -> UnsupportedLayerError:
    """The error for a function or method the compiler cannot lower, naming where it is."""
    name = getattr(node.target, "__name__", node.target)
    return UnsupportedLayerError(
        f"unsupported operation {name} ({node.op} {_label(node)}){_where(node)}; "
        f"supported: {SUPPORTED}"
    )


class _Lowering:
    def __init__(self, gm: fx.GraphModule, field: Field, reorder_pools: bool = True) -> None:
        self.gm = gm
        self.field = field
        self.reorder_pools = reorder_pools
        self._done: set[fx.Node] = set()  # lowered ahead of their turn (a reordered pool)
        self.ops: list[Op] = []
        self.env: dict[fx.Node, _Val | _Affine] = {}
        self.modules = dict(gm.named_modules())

    # -- helpers ---------------------------------------------------------------------------
    def emit(self, op: Op) -> _Val:
        self.ops.append(op)
        return _Val(len(self.ops) - 1)

    def shape_of(self, node: fx.Node) -> tuple[int, ...]:
        meta = node.meta.get("tensor_meta")
        if meta is None:
            raise UnsupportedLayerError(f"{_label(node)}: not a tensor (unsupported Python op?)")
        return tuple(int(s) for s in meta.shape[1:])

    def value(self, node: Any) -> _Val:
        """The lowered tensor of ``node``, materialising a pending conv/linear."""
        if not isinstance(node, fx.Node) or node not in self.env:
            raise UnsupportedLayerError(f"unsupported operand {node!r}")
        v = self.env[node]
        if isinstance(v, _Affine):
            v = self.materialise(node, v)
            self.env[node] = v
        return v

    def settle(self, v: _Val, name: str) -> _Val:
        """Resolve a pending pool divisor without a linear layer to absorb it."""
        if v.divisor == 1:
            return v
        src = self.ops[v.op]
        d = v.divisor
        if d & (d - 1) == 0:  # power of two: exact, just a larger scale
            op = Op(Rescale(1), [v.op], src.shape, src.scale + d.bit_length() - 1, name=name)
        else:
            bits = self.field.weight_bits + math.ceil(math.log2(d))
            op = Op(Rescale(round(2**bits / d)), [v.op], src.shape, src.scale + bits, name=name)
        return self.emit(op)

    def materialise(self, node: fx.Node, aff: _Affine) -> _Val:
        """A pending conv/linear (batch norms folded in) as an op: the input truncated first
        if its scale is too high, a pending pool divisor folded into the weights (with its
        log2 more weight bits), weights and bias rounded to fixed point."""
        inp = self._truncated_input(node)
        f = self.field
        scale_in = self.ops[inp.op].scale
        wbits = f.weight_bits + math.ceil(math.log2(inp.divisor))
        weight = aff.weight / inp.divisor
        w_int = np.rint(weight.numpy() * 2.0**wbits).astype(np.int64)
        b_int = np.rint(aff.bias.numpy() * 2.0 ** (scale_in + wbits)).astype(np.int64)
        attrs = _affine_attrs(node, aff.module, wbits)
        if np.abs(w_int).max(initial=0) > f.half or np.abs(b_int).max(initial=0) > f.half:
            raise OverflowError(f"{_label(node)}: weights do not fit the field at {wbits} bits")
        return self.emit(
            Op(
                attrs,
                [inp.op],
                self.shape_of(node),
                scale_in + wbits,
                {"weight": w_int, "bias": b_int},
                name=aff.label or _label(node),
            )
        )

    def _truncated_input(self, node: fx.Node) -> _Val:
        """The input of the conv/linear ``node``, truncated to ``frac_bits`` when its scale
        exceeds ``frac_bits + weight_bits``; a pending pool divisor survives the truncation."""
        inp = self.value(self._affine_input[node])  # lowered before the conv/linear itself
        f = self.field
        src = self.ops[inp.op]
        if src.scale <= f.frac_bits + f.weight_bits:
            return inp
        truncated = self.emit(
            Op(
                Truncate(src.scale - f.frac_bits),
                [inp.op],
                src.shape,
                f.frac_bits,
                name=f"{_label(node)}.truncate",
            )
        )
        truncated.divisor = inp.divisor
        return truncated

    def relu_site(
        self, node: fx.Node, act: ChannelActivation | None, clip: float | None = None
    ) -> None:
        """Lower a ReLU (clipped or channel-wise) site. When it is all ReLU and feeds only a
        max pool, the pool goes first and the ReLU runs on the pooled tensor: the rounding
        shift and ReLU are monotone, so ``max(ReLU(round(v)))`` equals
        ``ReLU(round(max(v)))`` exactly, and a k x k pool with stride k leaves 1/k^2 of the
        ReLUs (garbled circuits) to evaluate."""
        pool = self._pool_after(node, act)
        if pool is None:
            self.env[node] = self.activation(node, act, clip)
            return
        pool_node, module = pool
        pooled = self.maxpool(pool_node, module, _label(pool_node), src=self.value(node.args[0]))
        self.env[pool_node] = self.activation(node, act, clip, src=pooled)
        self._done.add(pool_node)

    def _pool_after(
        self, node: fx.Node, act: ChannelActivation | None
    ) -> tuple[fx.Node, nn.Module] | None:
        """The max pool that alone consumes this all-ReLU site, if any (and reordering is on)."""
        if not self.reorder_pools or len(node.users) != 1:
            return None
        if act is not None and not bool(_t(act.relu_mask).all()):
            return None  # polynomials are not monotone
        (user,) = node.users
        if not user.args or user.args[0] is not node:
            return None
        if user.op == "call_module":
            m = self.modules[str(user.target)]
            ok = isinstance(m, nn.MaxPool2d | nn.AdaptiveMaxPool2d)
        else:
            ok = user.op == "call_function" and user.target in _MAX_FUNCS
            m = _MAX_FUNCS[user.target](*user.args[1:], **user.kwargs) if ok else None
        return (user, m) if ok and m is not None else None

    def activation(
        self,
        node: fx.Node,
        act: ChannelActivation | None,
        clip: float | None = None,
        src: _Val | None = None,
    ) -> _Val:
        v = self.settle(src or self.value(node.args[0]), f"{_label(node)}.pool")
        before = self.ops[v.op]
        f = self.field
        shape = before.shape
        channels = shape[0]
        if act is None:
            mask = np.ones(channels, dtype=np.uint8)
            degree, coef = 0, None
        else:
            blend = float(_t(act.blend))
            if blend != 1.0:
                raise UnsupportedLayerError(
                    f"{_label(node)}: activation blend is {blend}, finish fine-tuning "
                    "(blend 1) before compiling"
                )
            if act.num_channels != channels:
                raise UnsupportedLayerError(f"{_label(node)}: channel count mismatch")
            mask = _t(act.relu_mask).numpy().astype(np.uint8)
            degree = act.degree
            c = _t(act.coefficients).detach().double().numpy()
            scales = np.array(
                [2.0 ** (f.coef_bits + (degree - j) * f.poly_bits) for j in range(degree + 1)]
            )
            coef = np.rint(c * scales).astype(np.int64)
        if act is not None and act.clip is not None:
            clip = act.clip
        arrays = {"relu_mask": mask}
        if coef is not None and not mask.all():
            arrays["coefficients"] = coef.copy()
        else:  # no polynomial channels: no degree
            degree = 0
        attrs = Activation(
            shift=before.scale - f.frac_bits,
            degree=degree,
            poly_shift=degree * f.poly_bits + f.coef_bits - f.frac_bits if degree else 0,
            poly_in_shift=before.scale - f.poly_bits
            if degree and f.poly_bits != f.frac_bits
            else None,
            # a clipped ReLU: min(max(x, 0), clip) at the output scale
            clip=None if clip is None else int(round(clip * 2**f.frac_bits)),
        )
        return self.emit(Op(attrs, [v.op], shape, f.frac_bits, arrays, name=_label(node)))

    # -- main walk ---------------------------------------------------------------------------
    def run(self, input_shape: tuple[int, ...]) -> list[Op]:
        self._affine_input: dict[fx.Node, fx.Node] = {}
        for node in self.gm.graph.nodes:
            if node in self._done:
                continue
            if node.op == "placeholder":
                if self.ops:
                    raise UnsupportedLayerError(f"{_label(node)}: models must take one input")
                self.env[node] = self.emit(
                    Op(Input(), [], tuple(input_shape), self.field.frac_bits, name=_label(node))
                )
            elif node.op == "output":
                out = node.args[0]
                if not isinstance(out, fx.Node):
                    raise UnsupportedLayerError("the model must return a single tensor")
                v = self.settle(self.value(out), "output.pool")
                if v.op != len(self.ops) - 1:  # make the output the last op
                    src = self.ops[v.op]
                    self.emit(Op(Rescale(1), [v.op], src.shape, src.scale, name="output"))
            elif node.op == "call_module":
                self.call_module(node, self.modules[str(node.target)])
            elif node.op in ("call_function", "call_method"):
                self.call_function(node)
            else:
                raise UnsupportedLayerError(f"{_label(node)}: unsupported graph node {node.op}")
        return self.ops

    def _pass(self, node: fx.Node, src: Any) -> None:
        self.env[node] = self.env[src]
        if src in self._affine_input:
            self._affine_input[node] = self._affine_input[src]

    def call_module(self, node: fx.Node, m: nn.Module) -> None:
        name = f"{node.target} ({type(m).__name__})"
        arg: Any = node.args[0] if node.args else None
        if isinstance(m, nn.Conv2d | nn.Linear):
            self.value(arg)  # lower the input first (keeps ops in execution order)
            aff = _affine_of(m)
            aff.label = _label(node)
            self.env[node] = aff
            self._affine_input[node] = arg
        elif isinstance(m, nn.BatchNorm2d | nn.BatchNorm1d):
            prev = self.env.get(arg)
            if isinstance(prev, _Affine) and len(arg.users) == 1:
                aff = _fold_bn(prev, m)
                aff.label = f"{prev.label}+{_label(node)}"
                self.env[node] = aff
                self._affine_input[node] = self._affine_input[arg]
            elif isinstance(m, nn.BatchNorm2d):
                c = m.num_features
                ident = nn.Conv2d(c, c, 1, groups=c, bias=True)
                self.value(arg)
                w = torch.ones(c, 1, 1, 1, dtype=torch.float64)
                self.env[node] = _fold_bn(_Affine(ident, w, torch.zeros(c, dtype=torch.float64)), m)
                self._affine_input[node] = arg
            else:
                raise UnsupportedLayerError(f"{name}: BatchNorm1d must follow a Linear layer")
        elif isinstance(m, nn.Hardtanh):  # nn.ReLU6 included
            self.relu_site(node, None, _clip_bound(node, m.min_val, m.max_val))
        elif isinstance(m, nn.ReLU):
            self.relu_site(node, None)
        elif isinstance(m, ChannelActivation):
            self.relu_site(node, m)
        elif isinstance(m, nn.AvgPool2d | nn.AdaptiveAvgPool2d):
            self.pool(node, m, name)
        elif isinstance(m, nn.MaxPool2d | nn.AdaptiveMaxPool2d):
            self.maxpool(node, m, name)
        elif isinstance(m, nn.Flatten):
            if m.start_dim != 1 or m.end_dim != -1:
                raise UnsupportedLayerError(f"{name}: only flatten(start_dim=1) is supported")
            self.flatten(node)
        elif isinstance(m, nn.Identity | nn.Dropout):
            self._pass(node, arg)
        else:
            raise UnsupportedLayerError(
                f"unsupported layer {type(m).__name__} {_label(node)}{_where(node)}; "
                f"supported: {SUPPORTED}"
            )

    def pool(self, node: fx.Node, m: nn.Module, name: str) -> None:
        v = self.value(node.args[0])
        src = self.ops[v.op]
        _, h, w = src.shape
        if isinstance(m, nn.AdaptiveAvgPool2d):
            size = m.output_size if isinstance(m.output_size, tuple) else (m.output_size,) * 2
            oh, ow = (h if size[0] is None else size[0]), (w if size[1] is None else size[1])
            if h % oh or w % ow or h // oh != w // ow:
                raise UnsupportedLayerError(f"{name}: input {h}x{w} not divisible to {oh}x{ow}")
            k = s = h // oh
        else:
            kp, sp, pp = (_pair(getattr(m, a)) for a in ("kernel_size", "stride", "padding"))
            if (
                any(pp)
                or m.ceil_mode
                or kp[0] != kp[1]
                or sp[0] != sp[1]
                or getattr(m, "divisor_override", None)
            ):
                raise UnsupportedLayerError(
                    f"{name}: only square, unpadded average pools without divisor_override"
                )
            k, s = kp[0], sp[0]
        shape = self.shape_of(node)
        if v.divisor != 1:
            v = self.settle(v, f"{_label(node)}.pre")
        out = self.emit(Op(SumPool(k, s), [v.op], shape, self.ops[v.op].scale, name=_label(node)))
        out.divisor = k * k
        self.env[node] = out

    def maxpool(self, node: fx.Node, m: nn.Module, name: str, src: _Val | None = None) -> _Val:
        """MaxPool2d / AdaptiveMaxPool2d: a ``maxpool`` op (a garbled max per window) holding
        each output row's and column's input positions (:mod:`safenet.plan.pooling`). The
        scale is unchanged, and a pending pool divisor passes through (max commutes with it)."""
        if getattr(m, "return_indices", False):
            raise UnsupportedLayerError(f"{name}: return_indices=True is not supported")
        v = src or self.value(node.args[0])
        before = self.ops[v.op]
        if len(before.shape) != 3:
            raise UnsupportedLayerError(f"{name}: max pooling needs a (C, H, W) input")
        _, h, w = before.shape
        shape = self.shape_of(node)
        oh, ow = shape[1:]
        if isinstance(m, nn.AdaptiveMaxPool2d):
            rows, cols = adaptive_axis(h, oh), adaptive_axis(w, ow)
        else:
            k, s, pad, dil = (_pair(getattr(m, a)) for a in ("kernel_size", "stride", "padding",
                                                             "dilation"))  # fmt: skip
            rows = pool_axis(h, oh, k[0], s[0], pad[0], dil[0])
            cols = pool_axis(w, ow, k[1], s[1], pad[1], dil[1])
        if not all(rows) or not all(cols):
            raise UnsupportedLayerError(f"{name}: a pooling window lies wholly in the padding")
        out = self.emit(Op(MaxPool(rows, cols), [v.op], shape, before.scale, name=_label(node)))
        out.divisor = v.divisor
        self.env[node] = out
        return out

    def flatten(self, node: fx.Node) -> None:
        v = self.value(node.args[0])
        src = self.ops[v.op]
        if len(src.shape) == 1:
            self.env[node] = v
            return
        out = self.emit(
            Op(Flatten(), [v.op], (int(np.prod(src.shape)),), src.scale, name=_label(node))
        )
        out.divisor = v.divisor
        self.env[node] = out

    def global_mean(self, node: fx.Node) -> None:
        """``x.mean((2, 3))``: global average pooling to (N, C), as a sum pool over the
        whole (square) image plus a flatten; the 1/(H W) is pending like any pool's."""
        dim_arg = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
        v = self.value(node.args[0])
        shape = self.ops[v.op].shape
        dims = {int(d) % 4 for d in dim_arg} if isinstance(dim_arg, list | tuple) else None
        keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim")
        if dims != {2, 3} or keep or len(shape) != 3 or shape[1] != shape[2]:
            raise UnsupportedLayerError(
                f"{_label(node)}: only mean over (2, 3) of a square image (global pooling)"
            )
        c, h, w = shape
        v = self.settle(v, f"{_label(node)}.pre")
        scale = self.ops[v.op].scale
        pool = Op(SumPool(h, h), [v.op], (c, 1, 1), scale, name=f"{_label(node)}.pool")
        pooled = self.emit(pool)
        out = self.emit(Op(Flatten(), [pooled.op], (c,), scale, name=_label(node)))
        out.divisor = h * w
        self.env[node] = out

    def concat(self, node: fx.Node) -> None:
        """``torch.cat`` along channels: a local op, inputs shifted to their highest scale."""
        parts = node.args[0] if node.args else node.kwargs.get("tensors")
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        shape = self.shape_of(node)
        if dim not in (1, -len(shape) - 1) or not isinstance(parts, list | tuple):
            raise UnsupportedLayerError(f"{_label(node)}: only torch.cat along channels (dim=1)")
        vals = [self.settle(self.value(a), f"{_label(node)}.{k}") for k, a in enumerate(parts)]
        top = max(self.ops[v.op].scale for v in vals)
        shifts = [top - self.ops[v.op].scale for v in vals]
        op = Op(Concat(shifts), [v.op for v in vals], shape, top, name=_label(node))
        self.env[node] = self.emit(op)

    def call_function(self, node: fx.Node) -> None:
        """A function or tensor-method call, lowered by what it calls."""
        t = node.target
        if is_relu(node, self.gm):
            self.relu_site(node, None)
        elif (bounds := clip_bounds(node, self.gm)) is not None:
            plain = bounds[1] is None and isinstance(bounds[0], int | float) and bounds[0] == 0
            self.relu_site(node, None, None if plain else _clip_bound(node, *bounds))
        elif t in _ADD_FUNCS or _is_method(node, "add", "add_", "__add__"):
            self.add(node)
        elif t in _CAT_FUNCS:
            self.concat(node)
        elif t is torch.mean or _is_method(node, "mean"):
            self.global_mean(node)
        elif t in _POOL_FUNCS:  # functional pooling: the module it spells, then as above
            self.pool(node, _POOL_FUNCS[t](*node.args[1:], **node.kwargs), _label(node))
        elif t in _MAX_FUNCS:
            self.maxpool(node, _MAX_FUNCS[t](*node.args[1:], **node.kwargs), _label(node))
        elif t in _FLATTEN_FUNCS or _is_method(node, "flatten", "view", "reshape"):
            self.flatten_call(node)
        elif _is_method(node, "size"):
            pass  # x.size(0) feeding view(N, -1): a shape query, no tensor to lower
        else:
            raise _unsupported_operation(node)

    def add(self, node: fx.Node) -> None:
        """Residual ``a + b`` of two tensors: an ``add`` op, inputs shifted to the higher
        scale."""
        a, b = node.args[:2]
        if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)) or node.kwargs:
            raise UnsupportedLayerError(f"{_label(node)}: only tensor + tensor adds")
        va = self.settle(self.value(a), f"{_label(node)}.a")
        vb = self.settle(self.value(b), f"{_label(node)}.b")
        sa, sb = self.ops[va.op].scale, self.ops[vb.op].scale
        top = max(sa, sb)
        self.env[node] = self.emit(
            Op(
                Add([top - sa, top - sb]),
                [va.op, vb.op],
                self.shape_of(node),
                top,
                name=_label(node),
            )
        )

    def flatten_call(self, node: fx.Node) -> None:
        """``torch.flatten(x, 1)``, ``x.flatten(1)``, or ``x.view`` / ``x.reshape`` to
        ``(N, -1)``: a flatten; any other shape is refused."""
        t = node.target
        rest = list(node.args[1:]) + list(node.kwargs.values())
        if t == torch.flatten or t == "flatten":
            if rest not in ([1], [1, -1]):
                raise UnsupportedLayerError(f"{_label(node)}: only flatten(x, 1) is supported")
        elif len(self.shape_of(node)) != 1:
            raise UnsupportedLayerError(f"{_label(node)}: only view/reshape to (N, -1)")
        self.flatten(node)


def _poly_degrees(model: nn.Module) -> list[int]:
    """Degrees of the activations of ``model`` that replace ReLU on some channel."""
    return [m.degree for m in model.modules()
            if isinstance(m, ChannelActivation) and not bool(_t(m.relu_mask).all())]  # fmt: skip


def has_polynomial_channels(model: nn.Module) -> bool:
    """Whether any activation of ``model`` replaces ReLU by a polynomial on some channel."""
    return bool(_poly_degrees(model))


#: default cap on the fractional bits of a polynomial sum (``degree * poly_bits + coef_bits``)
POLY_SUM_BITS = 26


def default_field(model: nn.Module, **given: Any) -> Field:
    """The default field for ``model``, with the parameters in ``given`` (``None`` = default)
    as set: Delphi's 41-bit prime for all-ReLU models, the 48-bit
    :data:`~safenet.field.POLY_PRIME` when polynomial channels need the headroom.

    With polynomial channels the sum carries ``degree * poly_bits + coef_bits`` fractional
    bits, and the opening of that sum hides it up to ``|sum| / p``: polynomial inputs get
    as many of ``frac_bits`` as keep it within :data:`POLY_SUM_BITS` (8 for degree 2, 6 for
    degree 3 at the default bits; docs/fixed-point.md measures what that costs and saves).
    """
    given = {k: v for k, v in given.items() if v is not None}
    degrees = _poly_degrees(model)
    base = Field(**({"p": POLY_PRIME} if degrees else {}) | given)
    if not degrees or "poly_frac_bits" in given:
        return base
    bits = min(base.frac_bits, (POLY_SUM_BITS - base.coef_bits) // max(degrees))
    return replace(base, poly_frac_bits=None if bits == base.frac_bits else max(bits, 0))


def _check_input_shape(shape: object) -> tuple[int, ...]:
    """``shape`` as a tuple of positive ints without the batch dimension, or a clear error."""
    try:
        out = tuple(int(v) for v in shape)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        msg = f"input_shape must be a tuple of ints such as (3, 32, 32), got {shape!r}"
        raise ValueError(msg) from None
    if len(out) == 4 and out[0] == 1:
        raise ValueError(
            f"input_shape is (C, H, W) without the batch dimension; got {out}: pass {out[1:]}"
        )
    if not out or min(out) < 1:
        raise ValueError(f"input_shape must be positive sizes such as (3, 32, 32), got {out}")
    return out


def compile_model(
    model: nn.Module,
    input_shape: tuple[int, ...] | list[int],
    field: Field | None = None,
    *,
    reorder_pools: bool = True,
) -> Plan:
    """Lower ``model`` (eval mode) to an integer :class:`Plan` over ``field``.

    Batch norms fold into the convolution or linear layer before them, weights round to
    fixed point, pools and shifts become integer ops (:mod:`safenet.plan.ops`). The model
    itself is not modified (a float64 copy is traced).

    Args:
        model: a torch module of supported layers (conv, linear, batch norm, ReLU and
            clipped ReLU, :class:`~safenet.nn.activation.ChannelActivation`, average and max
            pools, flatten, residual add, channel concat).
        input_shape: ``(C, H, W)`` without the batch dimension.
        field: the prime field and fixed-point bits; :func:`default_field` when omitted.
        reorder_pools: run an all-ReLU activation that only feeds a max pool after the pool
            (exactly the same result, fewer ReLUs).

    Returns:
        The :class:`Plan`; ``plan.info`` holds the architecture name and ReLU counts.

    Raises:
        UnsupportedLayerError: naming the first layer that cannot be lowered.

    Shape:
        - Input of the plan: ``(C, H, W)`` (or batched ``(N, C, H, W)`` in
          :meth:`Plan.reference`).
        - Output: the model's output without the batch dimension.

    Example::

        >>> model = safenet.nn.zoo.build_model("resnet20").eval()
        >>> plan = compile_model(model, (3, 32, 32))
        >>> plan.counts()["relu_count"] > 0
        True
    """
    input_shape = _check_input_shape(input_shape)
    field = field or default_field(model)
    model = copy.deepcopy(model).eval().double()
    example = torch.zeros((1, *input_shape), dtype=torch.float64)
    try:  # the model's own shape error in a sentence, before fx wraps it in 40 lines
        with torch.no_grad():
            model(example)
    except RuntimeError as e:
        raise ValueError(
            f"the model does not run on an input of shape {input_shape} (C, H, W; the batch "
            f"dimension is added here): {str(e).strip().splitlines()[0]}"
        ) from None
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    ShapeProp(gm).propagate(example)
    ops = _Lowering(gm, field, reorder_pools).run(input_shape)
    plan = Plan(field, input_shape, ops)
    plan.info = {"architecture": type(model).__name__} | plan.counts()
    return plan
