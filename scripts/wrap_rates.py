"""Expected local-truncation wraps per inference of a model, for each candidate prime.

A polynomial channel truncates its shares locally twice (the activation input ``v`` and the
polynomial sum ``Y``); each truncation of a value ``u`` wraps with probability about
``|u| / p`` (docs/protocol.md). This runs the plaintext fixed-point reference on test images
and reports :attr:`safenet.plan.reference.RangeStats.expected_wraps`, the sum of
``min((|v| + |Y|) / p, 1)`` over every polynomial element averaged per image (the figure
behind the choice of the 48-bit prime for models with polynomial channels), and
``failure_rate``, the share of inferences expected to see at least one wrap (what the
search charges against a member's accuracy).

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
                     "failure_rate": stats.failure_rate})  # fmt: skip
    print(json.dumps({"model": args.model, "images": len(x), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
