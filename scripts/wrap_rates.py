"""Truncation figures per inference of a model, for each candidate prime.

Polynomial channels truncate exactly by opening ``u + R`` with a bounded mask ``R``
(docs/fixed-point.md): they fail only where some ``|u|`` reaches ``B ~ p/16`` and each
opening hides ``u`` up to a statistical distance ``|u| / (p - 2B)``. ``truncate`` ops (a
linear layer fed straight by another) still truncate shares locally and wrap with
probability about ``|u| / p``. This runs the plaintext fixed-point reference on test images
and reports, from :class:`safenet.plan.reference.RangeStats`: ``failure_rate`` (the share
of inferences that may leave the error bound: what the search charges against a member's
accuracy), ``leak_bound`` (the mean per-inference statistical distance of the openings) and
``expected_wraps`` (local truncations only).

    python scripts/wrap_rates.py [--model default-approx] [--images 500]
"""

from __future__ import annotations

import argparse
import json

from safenet.checkpoint import load
from safenet.data.torchdata import ImageDataset
from safenet.field import DELPHI_PRIME, POLY_PRIME, Field
from safenet.plan.compiler import compile_model
from safenet.plan.reference import RangeStats


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
        plan = compile_model(model, tuple(x.shape[1:]), Field(p=p))
        stats = RangeStats()
        plan.reference(x.numpy(), stats=stats)
        rows.append({"prime_bits": p.bit_length(), "poly_elements": plan.counts()["poly_count"],
                     "expected_wraps_per_inference": stats.expected_wraps,
                     "failure_rate": stats.failure_rate,
                     "leak_bound_per_inference": stats.leak_bound})  # fmt: skip
    print(json.dumps({"model": args.model, "images": len(x), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
