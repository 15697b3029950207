"""Model surgery: find every ReLU of a model with torch.fx and swap in ChannelActivation.

Activation *sites* are found in the traced graph, whether written as ``nn.ReLU`` modules,
``F.relu``/``torch.relu`` calls or ``x.relu()``, and clipped ReLUs (``nn.ReLU6``,
``Hardtanh(0, m)``, ``F.relu6``, ``clamp(x, 0, m)``, which keep their bound); each becomes a
:class:`ChannelActivation` named after the module it replaces (or ``act_<node>`` for
functional calls), so a saved configuration can be re-applied to a freshly built model of
the same architecture.

The rest works on the converted model: :func:`set_layers` picks each layer's ReLU channels
(:func:`keep_mask`) and degree, :func:`activation_config` / :func:`apply_config` save and
restore that choice, :func:`calibrate` fits the polynomials to ReLU on sample batches, and
:func:`set_blend` sets the ReLU-to-polynomial blend of fine-tuning.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from safenet.nn.activation import ChannelActivation, _reset

__all__ = [
    "LayerSpec",
    "activation_config",
    "activations",
    "apply_config",
    "convert",
    "keep_mask",
    "set_blend",
    "set_layers",
    "calibrate",
    "clip_bounds",
    "relu_site",
]

_RELU_FUNCS = {F.relu, torch.relu, torch.relu_}
_RELU_METHODS = {"relu", "relu_"}
_CLIP_FUNCS = {F.relu6, F.hardtanh, torch.clamp, torch.clip}


@dataclass(frozen=True)
class LayerSpec:
    """Per-layer approximation choice: fraction of channels replaced, polynomial degree."""

    ratio: float
    degree: int = 2

    def __post_init__(self) -> None:
        if not 0.0 <= self.ratio <= 1.0:
            raise ValueError(f"replacement ratio must be in [0, 1], got {self.ratio}")
        if self.degree not in (2, 3):
            raise ValueError(f"degree must be 2 or 3, got {self.degree}")


class _Tracer(fx.Tracer):
    """torch.fx tracer that keeps ChannelActivation as one opaque module call."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, ChannelActivation) or super().is_leaf_module(m, qualname)


def trace(model: nn.Module) -> fx.GraphModule:
    """Symbolically trace ``model``, treating ChannelActivation modules as leaves."""
    tracer = _Tracer()
    tracer.record_stack_traces = True  # nodes remember their source line, for error messages
    graph = tracer.trace(model)
    return fx.GraphModule(model, graph, type(model).__name__)


def is_relu(node: fx.Node, gm: fx.GraphModule) -> bool:
    """Whether a traced node applies ReLU (module, function or method spelling)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(str(node.target)), nn.ReLU)
    if node.op == "call_function":
        return node.target in _RELU_FUNCS
    return node.op == "call_method" and node.target in _RELU_METHODS


def clip_bounds(node: fx.Node, gm: fx.GraphModule) -> tuple[Any, Any] | None:
    """``(min, max)`` of a ReLU6 / Hardtanh module or a relu6 / hardtanh / clamp call (as
    written: numbers or None); ``None`` for any other node."""
    if node.op == "call_module":
        m = gm.get_submodule(str(node.target))
        return (m.min_val, m.max_val) if isinstance(m, nn.Hardtanh) else None  # ReLU6 included
    t, args, kw = node.target, node.args[1:], node.kwargs
    if node.op == "call_function" and t is F.relu6:
        return 0.0, 6.0
    if node.op == "call_function" and t is F.hardtanh:
        lo = args[0] if args else kw.get("min_val", -1.0)
        return lo, args[1] if len(args) > 1 else kw.get("max_val", 1.0)
    if (node.op == "call_function" and t in _CLIP_FUNCS) or (
        node.op == "call_method" and t in ("clamp", "clip")
    ):
        return (args[0] if args else kw.get("min")), (args[1] if len(args) > 1 else kw.get("max"))
    return None


def relu_site(node: fx.Node, gm: fx.GraphModule) -> tuple[bool, float | None]:
    """``(is an activation site, clip)``: ReLU in any spelling (clip ``None``, also
    ``clamp(x, min=0)``) or a clipped ReLU ``min(max(x, 0), m)`` (ReLU6, Hardtanh(0, m),
    clamp(x, 0, m): clip ``m``)."""
    if is_relu(node, gm):
        return True, None
    b = clip_bounds(node, gm)
    if b is None or not isinstance(b[0], int | float) or b[0] != 0:
        return False, None
    if b[1] is None:  # clamp(x, min=0): a plain ReLU
        return True, None
    return (True, float(b[1])) if isinstance(b[1], int | float) and b[1] > 0 else (False, None)


def convert(
    model: nn.Module, example_input: torch.Tensor, per_channel: bool = False
) -> fx.GraphModule:
    """Trace ``model`` and replace every ReLU (clipped ones too, :func:`relu_site`) by an
    all-ReLU :class:`ChannelActivation`.

    The result computes exactly what ``model`` computes until ratios are set with
    :func:`set_layers`. ``example_input`` (a batch) gives the channel count of each site.
    Models already converted are returned re-traced with their activations untouched.
    """
    gm = model if isinstance(model, fx.GraphModule) else trace(model)
    was_training = gm.training
    gm.eval()
    ShapeProp(gm).propagate(example_input)
    gm.train(was_training)
    clips = {node: relu_site(node, gm) for node in gm.graph.nodes}
    sites = [node for node, (site, _) in clips.items() if site]
    targets = [str(n.target) for n in sites if n.op == "call_module"]
    shared = sorted({t for t in targets if targets.count(t) > 1})
    if shared:
        raise ValueError(
            f"ReLU module(s) {shared} used at several sites; give each site its own nn.ReLU "
            "so each can be approximated separately"
        )
    for node in sites:
        meta = node.meta.get("tensor_meta")
        if meta is None or len(meta.shape) < 2:
            raise ValueError(f"cannot find the channel count of activation {node.name}")
        act = ChannelActivation(int(meta.shape[1]), per_channel=per_channel, clip=clips[node][1])
        if node.op == "call_module":
            name = str(node.target)
            gm.add_submodule(name, act)
        else:
            name = f"act_{node.name}"
            gm.add_submodule(name, act)
            with gm.graph.inserting_after(node):
                new = gm.graph.call_module(name, (node.args[0],))
            node.replace_all_uses_with(new)
            gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    return gm


def activations(model: nn.Module) -> dict[str, ChannelActivation]:
    """The model's ChannelActivation modules in execution-definition order, by name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, ChannelActivation)}


def keep_mask(scores: torch.Tensor, ratio: float) -> torch.Tensor:
    """Bool mask keeping ReLU on the ``round(C * (1 - ratio))`` highest-scoring channels."""
    c = len(scores)
    keep = round(c * (1.0 - ratio))
    mask = torch.zeros(c, dtype=torch.bool)
    if keep > 0:
        mask[torch.argsort(scores.float(), descending=True, stable=True)[:keep]] = True
    return mask


def set_layers(
    model: nn.Module,
    specs: Mapping[str, LayerSpec] | LayerSpec,
    scores: Mapping[str, torch.Tensor] | None = None,
) -> None:
    """Set each layer's replacement ratio and degree, keeping ReLU on top-scored channels.

    ``specs`` maps layer names to :class:`LayerSpec` (layers not named stay as they are) or
    is one spec for all layers. Without ``scores`` the first channels are kept. Coefficients
    restart and should be refitted with :func:`calibrate`.
    """
    acts = activations(model)
    if isinstance(specs, LayerSpec):
        specs = dict.fromkeys(acts, specs)
    unknown = set(specs) - set(acts)
    if unknown:
        raise KeyError(f"no activation layer named {sorted(unknown)}; known: {list(acts)}")
    for name, spec in specs.items():
        act = acts[name]
        if scores is not None and name not in scores:
            raise KeyError(f"no channel scores for layer {name!r}")
        s = scores[name] if scores is not None else -torch.arange(act.num_channels).float()
        _reset(act, keep_mask(s, spec.ratio), spec.degree)


def activation_config(model: nn.Module) -> dict[str, dict]:
    """Every activation layer's configuration (mask, degree), JSON-serialisable."""
    return {name: act.config() for name, act in activations(model).items()}


def apply_config(
    model: nn.Module, config: Mapping[str, Mapping], example_input: torch.Tensor
) -> fx.GraphModule:
    """Convert ``model`` and restore a saved :func:`activation_config` (masks and degrees)."""
    gm = convert(model, example_input, per_channel=any(c["per_channel"] for c in config.values()))
    acts = activations(gm)
    if set(acts) != set(config):
        raise ValueError(
            "activation configuration does not fit this model: "
            f"model has {sorted(acts)}, configuration has {sorted(config)}"
        )
    for name, c in config.items():
        act = acts[name]
        if act.num_channels != c["channels"]:
            raise ValueError(
                f"{name}: {act.num_channels} channels, configuration says {c['channels']}"
            )
        if act.clip != c.get("clip"):
            raise ValueError(f"{name}: clip {act.clip}, configuration says {c.get('clip')}")
        act.per_channel = bool(c["per_channel"])
        _reset(act, torch.tensor(c["relu_mask"], dtype=torch.bool), int(c["degree"]))
    return gm


def set_blend(model: nn.Module, blend: float) -> None:
    """Set the ReLU-to-polynomial blend of every activation layer (1 = pure polynomial)."""
    for act in activations(model).values():
        act.blend.fill_(float(blend))


@torch.no_grad()
def calibrate(
    model: nn.Module,
    batches: Iterable[torch.Tensor],
    max_samples: int = 200_000,
    refit: bool = True,
) -> dict[str, torch.Tensor]:
    """Fit every activation's coefficients to ReLU on pre-activations seen on ``batches``
    (with ``refit=False``, only their ``input_bound``: for fixed polynomials).

    The pre-activations are those of the ReLU network (blend 0 during the pass), the
    distribution the polynomials must imitate; fitting under the unfitted polynomials would
    see activations that have already drifted. Returns the samples per layer, (N, C, ...).
    """
    acts = activations(model)
    seen: dict[str, list[torch.Tensor]] = {n: [] for n in acts}
    count = dict.fromkeys(acts, 0)
    hooks = []
    for name, act in acts.items():

        def hook(_m: nn.Module, inp: tuple, _out: torch.Tensor, name: str = name) -> None:
            if count[name] < max_samples:
                seen[name].append(inp[0].detach())
                count[name] += inp[0].numel()

        hooks.append(act.register_forward_hook(hook))
    was = model.training
    blends = {n: float(a.blend) for n, a in acts.items()}
    model.eval()
    set_blend(model, 0.0)
    try:
        for x in batches:
            model(x)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
        for n, a in acts.items():
            a.blend.fill_(blends[n])
    out = {}
    for name, act in acts.items():
        if not seen[name]:
            raise ValueError("calibrate needs at least one batch")
        out[name] = torch.cat(seen[name])
        if refit:
            act.fit(out[name])
        elif not bool(act.relu_mask.all()):
            act.set_bound(out[name])
    return out
