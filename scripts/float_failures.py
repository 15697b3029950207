"""Inputs a model blows up on: the search's float failure check on whole dataset splits.

    python scripts/float_failures.py runs/r32/safenet-b0.209-v1/best.pt [--splits test train]

Prints, per split, how many images reach the exact-truncation bound in float or give a
non-finite value (``safenet.approx.float_check``), how many of those are non-finite, the
largest range ratio (polynomial input over its layer's fitted range) of the others, and the
extrapolated share of inputs reaching a ratio of 1.5 and 2 (``tail_estimate``: an estimate,
not a count; typical images stay below 1.2, escaping ones pass 2 on their way to infinity).
"""

import argparse

from safenet import checkpoint
from safenet.approx.float_check import opening_peaks, tail_estimate
from safenet.approx.harden import measure_bounds
from safenet.data import ImageDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="checkpoint path or built-in name")
    ap.add_argument("--splits", nargs="+", default=["test", "train"])
    args = ap.parse_args()
    ck = checkpoint.load(args.model)
    model, field = ck.build().eval(), ck.plan().field
    train = ImageDataset(ck.dataset, "train")
    measure_bounds(model, train.normalize(train.images[:2048]))  # models saved without bounds
    for split in args.splits:
        ds = train if split == "train" else ImageDataset(ck.dataset, split)
        _, peaks = opening_peaks(model, ds.normalize(ds.images))
        bad = peaks.failures(field)
        r = peaks.range_ratios()
        top = float(r[~bad].max()) if bool((~bad).any()) else float("nan")
        print(f"{args.model} {split}: {int(bad.sum())} of {len(ds)} images fail "
              f"({int((~peaks.finite).sum())} non-finite); largest range ratio of the others "
              f"{top:.2f}; tail estimate P(ratio >= 1.5) {tail_estimate(r, 1.5):.1e}, "
              f"P(ratio >= 2) {tail_estimate(r, 2.0):.1e}")  # fmt: skip


if __name__ == "__main__":
    main()
