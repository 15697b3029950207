"""``safenet eval``: float accuracy, fixed-point accuracy and their agreement on a dataset.

:func:`evaluate_plan` compares a model with its compiled plan on a dataset,
:func:`evaluate_model` does so for a checkpoint (the ``safenet eval`` report), and
:func:`secure_check` says whether a checkpoint can be served as trained (no overflows, few
truncation failures), warning otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from safenet import checkpoint
from safenet.data import ImageDataset
from safenet.field import Field
from safenet.plan import Plan, RangeStats, compile_model
from safenet.plan.analysis import exact_input_bound


def evaluate_plan(
    model: torch.nn.Module,
    plan: Plan,
    ds: ImageDataset,
    batch_size: int = 250,
    progress: bool = True,
) -> dict[str, Any]:
    """Compare ``model`` (float) and ``plan.reference`` (fixed point) on every image of ``ds``.

    Returns accuracy of both, their argmax agreement, the largest |float - fixed| logit gap,
    and the plan's range statistics (overflows must be 0 for an exact plan).
    """
    stats = RangeStats()
    n = correct_f = correct_q = agree = 0
    gap = 0.0
    model.eval()
    bar = tqdm(
        ds.batches(batch_size),
        total=math.ceil(len(ds) / batch_size),
        desc="eval (float + fixed point)",
        disable=not progress,
        leave=False,
    )
    for x, y in bar:
        with torch.no_grad():
            lf = model(x).double().numpy()
        lq = plan.reference(x.numpy(), stats=stats)
        pf, pq = lf.argmax(1), lq.argmax(1)
        yn = y.numpy()
        n += len(yn)
        correct_f += int((pf == yn).sum())
        correct_q += int((pq == yn).sum())
        agree += int((pf == pq).sum())
        gap = max(gap, float(np.abs(lf - lq).max()))
    largest = max(stats.max_abs.values(), default=0)
    return {
        "images": n,
        "accuracy": correct_f / n,
        "accuracy_fixed_point": correct_q / n,
        "agreement": agree / n,
        "max_logit_error": gap,
        "overflows": stats.total_overflows,
        "largest_value_bits": int(largest).bit_length(),
        "headroom_bits": plan.field.bits - 1 - int(largest).bit_length(),
        "expected_wraps_per_inference": stats.expected_wraps,
        "secure_failure_rate": stats.failure_rate,
        "leak_bound_per_inference": stats.leak_bound,
    }


def evaluate_model(
    model_ref: str | Path,
    dataset: str | None = None,
    split: str = "test",
    limit: int | None = None,
    data_dir: str | Path | None = None,
    field: Field | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """The ``safenet eval`` job: load a checkpoint, compile it, evaluate both ways."""
    ck = checkpoint.load(model_ref)
    dataset = dataset or ck.dataset
    model = ck.build()
    ds = ImageDataset(dataset, split, data_dir, limit)
    shape = (ds.info.channels, ds.info.image_size, ds.info.image_size)
    if shape != ck.input_shape:
        raise ValueError(f"model takes inputs of shape {ck.input_shape}, {dataset} has {shape}")
    plan = compile_model(model, shape, field)
    report: dict[str, Any] = {
        "model": str(model_ref),
        "arch": ck.arch,
        "dataset": dataset,
        "split": split,
    }
    report |= evaluate_plan(model, plan, ds, progress=progress)
    report |= plan.counts()
    report |= {
        "static_exact_input_bound": exact_input_bound(plan),
        "input_range": [  # what normalised pixels in [0, 1] can become
            min((0 - m) / sd for m, sd in zip(ds.info.mean, ds.info.std, strict=True)),
            max((1 - m) / sd for m, sd in zip(ds.info.mean, ds.info.std, strict=True)),
        ],
        "field": plan.field.to_dict(),
        "fingerprint": plan.fingerprint(),
    }
    return report


def secure_check(
    model_ref: str | Path, data_dir: str | Path | None = None, limit: int = 256
) -> tuple[dict[str, Any], str | None]:
    """Can this checkpoint be served as trained? The fixed-point figures that decide it on
    the first ``limit`` test images, and a warning (``None`` when all is well).

    A float accuracy says nothing about values that leave the field (``overflows``) or pass
    the polynomial channels' exact-truncation bound (``secure_failure_rate``): both make
    secure predictions differ from the float ones. Run after every fine-tune.
    """
    rep = evaluate_model(model_ref, split="test", limit=limit, data_dir=data_dir, progress=False)
    keys = ("secure_failure_rate", "overflows", "headroom_bits", "agreement",
            "leak_bound_per_inference")  # fmt: skip
    out = {k: rep[k] for k in keys}
    if rep["overflows"] or rep["secure_failure_rate"] > 0.01:
        return out, (
            f"warning: on {rep['images']} test images the fixed-point model overflows "
            f"{rep['overflows']} times (headroom {rep['headroom_bits']} bits) and "
            f"{100 * rep['secure_failure_rate']:.1f} % of secure inferences carry values "
            "beyond the exact-truncation bound (p/16): secure predictions will differ from "
            "the float ones (fixed-point agreement "
            f"{100 * rep['agreement']:.1f} %). Replace fewer channels, use degree 2, or "
            "fine-tune longer"
        )
    return out, None
