"""Expected local-truncation wraps per inference of a model, for each candidate prime.

A polynomial channel truncates its shares locally twice (the activation input ``v`` and the
polynomial sum ``Y``); each truncation of a value ``u`` wraps with probability about
``|u| / p`` (docs/protocol.md). This runs the plaintext fixed-point reference on test images
and sums ``(|v| + |Y|) / p`` over every polynomial element, averaged per image: the figure
behind the choice of the 48-bit prime for models with polynomial channels.

    python scripts/wrap_rates.py [--model default-approx] [--images 500]
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from safenet.checkpoint import load
from safenet.data.torchdata import ImageDataset
from safenet.field import DELPHI_PRIME, POLY_PRIME, Field
from safenet.plan.compiler import compile_model
from safenet.plan.reference import apply_op


def expected_wraps(model: torch.nn.Module, x: torch.Tensor, p: int) -> tuple[int, float]:
    """(polynomial elements per image, expected wraps per image) under prime ``p``."""
    plan = compile_model(model, tuple(x.shape[1:]), Field(p=p))
    xi = torch.from_numpy(plan.field.encode(x.double().numpy()))
    vals: list[torch.Tensor] = []
    total, n_poly = 0.0, 0
    for i, op in enumerate(plan.ops):
        ins = [vals[j] for j in op.inputs] if op.kind != "input" else [xi]
        vals.append(apply_op(op, ins, p, i=i))
        if op.kind != "activation" or "coefficients" not in op.arrays:
            continue
        mask = op.arrays["relu_mask"].astype(bool)
        v = ins[0].double().numpy()[:, ~mask]
        k = op.attrs["shift"]
        X = np.floor((v + 2 ** (k - 1)) / 2**k)
        coef = op.arrays["coefficients"].astype(np.float64)
        coef = (np.repeat(coef, len(mask), 0) if len(coef) == 1 else coef)[~mask]
        shape = (1, -1) + (1,) * (v.ndim - 2)
        Y = sum(coef[:, j].reshape(shape) * X**j for j in range(coef.shape[1]))
        total += float(np.abs(v).sum() + np.abs(Y).sum()) / p
        n_poly += int(v[0].size)
    return n_poly, total / len(x)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default-approx")
    ap.add_argument("--images", type=int, default=500)
    ap.add_argument("--data-dir", default=None)
    args = ap.parse_args()
    ck = load(args.model)
    model = ck.build().eval()
    ds = ImageDataset(ck.dataset, "test", args.data_dir, args.images)
    x = ds.normalize(ds.images)
    rows = []
    for p in (DELPHI_PRIME, POLY_PRIME):
        n_poly, wraps = expected_wraps(model, x, p)
        rows.append({"prime_bits": p.bit_length(), "poly_elements": n_poly,
                     "expected_wraps_per_inference": wraps})  # fmt: skip
    print(json.dumps({"model": args.model, "images": len(x), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
