"""``safenet bench``: one secure inference of a zoo architecture with random weights (or of
any checkpoint, :func:`bench_plan`), measured.

The model is built with random weights, its batch-norm statistics calibrated on random
inputs (so activations keep a realistic range through deep nets), optionally approximated
(a fraction of each activation layer's channels turned into polynomials), compiled, and run
with :func:`safenet.secure.run_local`: server and client in two processes over loopback TCP.
The secure output is compared with the plaintext reference of the same plan.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
from torch import nn

from safenet.nn import surgery
from safenet.nn.zoo import build_model
from safenet.plan.compiler import compile_model
from safenet.plan.ir import Plan
from safenet.plan.ops import MaxPool

__all__ = ["bench_plan", "random_plan", "randomize", "run_bench"]


def random_plan(
    arch: str,
    input_shape: tuple[int, int, int],
    relu_ratio: float = 1.0,
    degree: int = 2,
    num_classes: int = 10,
    width: int | None = None,
    seed: int = 0,
    relu_layers: int | None = None,
) -> Plan:
    """Compile ``arch`` with random (seeded) weights; ``relu_ratio`` of channels keep ReLU.

    With ``relu_layers`` = n instead, whole layers are chosen as Delphi's planner does: the
    first n - 1 activation layers and the last keep ReLU, every other is polynomial."""
    if not 0.0 <= relu_ratio <= 1.0:
        raise ValueError(f"relu_ratio must be in [0, 1], got {relu_ratio}")
    if degree not in (2, 3):
        raise ValueError(f"degree must be 2 or 3, got {degree}")
    c, h, w = input_shape
    if h != w:
        raise ValueError(f"square inputs only, got {input_shape}")
    torch.manual_seed(seed)
    kwargs: dict[str, Any] = {"in_channels": c, "image_size": h, "num_classes": num_classes}
    if width is not None:
        kwargs["width"] = width
    model = randomize(build_model(arch, **kwargs), input_shape, relu_ratio, degree, relu_layers)
    plan = compile_model(model, input_shape)
    plan.info |= {"arch": arch, "relu_ratio": relu_ratio, "degree": degree, "seed": seed,
                  "relu_layers": relu_layers}  # fmt: skip
    return plan


def randomize(
    model: nn.Module,
    input_shape: tuple[int, int, int],
    relu_ratio: float = 1.0,
    degree: int = 2,
    relu_layers: int | None = None,
) -> nn.Module:
    """``model`` (random weights) with batch-norm statistics from random inputs, then frozen
    (so activations keep a realistic range through deep nets), and, with ``relu_ratio`` < 1
    or ``relu_layers``, approximated (the first channels of each layer keep ReLU):
    polynomials fitted on random inputs (blend 1)."""
    c, h, w = input_shape
    with torch.no_grad():
        model.train()
        for _ in range(4):
            model(torch.randn(16, c, h, w))
    model.eval()
    if relu_layers is None and relu_ratio >= 1.0:
        return model
    model = surgery.convert(model, torch.randn(4, c, h, w))
    specs: dict[str, surgery.LayerSpec] | surgery.LayerSpec
    if relu_layers is not None:
        names = list(surgery.activations(model))
        if not 1 <= relu_layers <= len(names):
            raise ValueError(f"relu_layers must be in 1..{len(names)}, got {relu_layers}")
        keep = set(names[: relu_layers - 1]) | {names[-1]}
        specs = {n: surgery.LayerSpec(0.0 if n in keep else 1.0, degree) for n in names}
    else:
        specs = surgery.LayerSpec(1.0 - relu_ratio, degree)
    surgery.set_layers(model, specs)
    surgery.calibrate(model, [torch.randn(16, c, h, w) for _ in range(2)])
    surgery.set_blend(model, 1.0)
    return model.eval()


def run_bench(
    arch: str, input_shape: tuple[int, int, int], seed: int = 0, **kwargs: Any
) -> dict[str, Any]:
    """Build, compile (``kwargs`` as :func:`random_plan`) and securely run one inference;
    returns the merged report of :func:`safenet.secure.run_local` plus a reference check."""
    t0 = time.perf_counter()
    plan = random_plan(arch, input_shape, seed=seed, **kwargs)
    head = {
        "arch": arch,
        "relu_ratio": plan.info["relu_ratio"],
        "degree": plan.info["degree"] if plan.counts()["poly_count"] else None,
        "compile_s": round(time.perf_counter() - t0, 3),
    }
    return head | bench_plan(plan, seed)


def bench_plan(plan: Plan, seed: int = 0) -> dict[str, Any]:
    """Securely run one inference of ``plan`` (two processes over TCP) on a random input;
    returns the merged report of :func:`safenet.secure.run_local` plus a reference check."""
    from safenet.secure import run_local

    shape = tuple(plan.input_shape)
    x = np.random.default_rng(seed).normal(size=shape)
    y, report = run_local(plan, x, decode=False)
    ref = plan.reference(x, decode=False)
    diff = np.abs(y - ref)
    head = {
        "input_shape": list(shape),
        "maxpool_outputs": sum(
            int(np.prod(op.shape)) for op in plan.ops if isinstance(op.attrs, MaxPool)
        ),
        "matches_reference": bool((diff == 0).all()),
        "max_abs_error_ulp": int(diff.max()),
        "max_abs_error": float(diff.max()) / 2.0**plan.output_scale,
        "argmax_agrees": bool(y.argmax() == ref.argmax()),
    }
    return head | report
