"""``safenet demo``: the built-in models side by side, in float and in the Plan's fixed point.

At this stage of the project the demo is plaintext: it shows what the secure protocol will
compute (``Plan.reference``) next to the float model, and how many ReLUs SAFENet's
channel-wise approximation removes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from safenet import checkpoint
from safenet.data import ImageDataset
from safenet.evaluate import evaluate_plan
from safenet.plan import compile_model


def run_demo(limit: int = 1000, show: int = 8, data_dir: str | Path | None = None) -> None:
    """Evaluate ``default`` and ``default-approx`` on the first ``limit`` test images."""
    rows = []
    for name in ("default", "default-approx"):
        ck = checkpoint.load(name)
        model = ck.build()
        ds = ImageDataset(ck.dataset, "test", data_dir, limit)
        c, s = ck.arch_kwargs["in_channels"], ck.arch_kwargs["image_size"]
        plan = compile_model(model, (c, s, s))
        r = evaluate_plan(model, plan, ds) | plan.counts()
        rows.append((name, ck, r))
        if name == "default-approx":
            x, y = next(ds.batches(show))
            with torch.no_grad():
                pf = model(x).argmax(1).numpy()
            pq = np.asarray(plan.reference(x.numpy())).argmax(1)
            names = ds.info.classes
            print(f"\nFirst {show} test images, {name} ({ck.arch}, {ck.dataset}):")
            print(f"  {'true':12s} {'float':12s} {'fixed point':12s}")
            for t, a, b in zip(y.numpy(), pf, pq, strict=True):
                print(f"  {names[t]:12s} {names[a]:12s} {names[b]:12s}")
    base_relu = rows[0][2]["relu_count"]
    print(f"\n{rows[0][2]['images']} Fashion-MNIST test images, float model vs fixed-point Plan:")
    head = ("model", "ReLUs", "polys", "ReLU share", "float acc", "fixed acc", "agreement")
    print("  " + " ".join(f"{h:>11s}" if i else f"{h:15s}" for i, h in enumerate(head)))
    for name, _ck, r in rows:
        share = r["relu_count"] / base_relu
        vals = (
            r["relu_count"],
            r["poly_count"],
            f"{share:.0%}",
            f"{r['accuracy']:.4f}",
            f"{r['accuracy_fixed_point']:.4f}",
            f"{r['agreement']:.4f}",
        )
        print(f"  {name:15s} " + " ".join(f"{v!s:>11s}" for v in vals))
    print(
        "\nThe fixed-point Plan is what the two-party protocol computes; every ReLU costs a "
        "garbled circuit,\nevery polynomial a few multiplications on secret shares."
    )
