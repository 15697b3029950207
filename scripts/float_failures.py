"""Inputs a model blows up on: the search's float failure check on whole dataset splits.

    python scripts/float_failures.py runs/r32/safenet-b0.209-v1/best.pt [--splits test train]

Prints, per split, how many images reach the exact-truncation bound in float or give a
non-finite value (``safenet.approx.float_check``), and how many of those are non-finite.
"""

import argparse

from safenet import checkpoint
from safenet.approx.float_check import opening_peaks
from safenet.data import ImageDataset


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="checkpoint path or built-in name")
    ap.add_argument("--splits", nargs="+", default=["test", "train"])
    args = ap.parse_args()
    ck = checkpoint.load(args.model)
    model, field = ck.build().eval(), ck.plan().field
    for split in args.splits:
        ds = ImageDataset(ck.dataset, split)
        _, peaks = opening_peaks(model, ds.normalize(ds.images))
        fails = int(peaks.failures(field).sum())
        print(f"{args.model} {split}: {fails} of {len(ds)} images fail "
              f"({int((~peaks.finite).sum())} non-finite)")  # fmt: skip


if __name__ == "__main__":
    main()
