"""Private inferences of a model compiled under another prime: does a larger field stop the
local-truncation wraps of a polynomial-heavy plan, and what does it cost online?

Takes the largest prime k * 2^44 + 1 below 2^bits (= 1 mod 2^44, so BFV batching works),
compiles the model over it, runs ``safenet.secure.run_local`` (server and client processes
over loopback) on the first test images and prints, per image, the secure and reference
argmax, the label, the largest logit error in ulp and the online seconds.

    python scripts/secure_with_prime.py --model runs/r32/safenet-b1.10-nowrap/best.pt --bits 55
"""

from __future__ import annotations

import argparse

import numpy as np

from safenet import checkpoint
from safenet.data import ImageDataset
from safenet.field import Field, is_probable_prime
from safenet.plan import compile_model
from safenet.secure import run_local


def prime_below(bits: int) -> int:
    """The largest prime k * 2^44 + 1 below 2^bits."""
    k = (2**bits - 1) >> 44
    while not is_probable_prime(k * 2**44 + 1):
        k -= 1
    return k * 2**44 + 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--bits", type=int, default=55)
    ap.add_argument("--images", type=int, default=4)
    args = ap.parse_args()
    p = prime_below(args.bits)
    ck = checkpoint.load(args.model)
    model = ck.build().eval()
    ds = ImageDataset(ck.dataset, "test", limit=args.images)
    plan = compile_model(model, tuple(ds.images.shape[1:]), Field(p=p))
    print(f"p = {p} ({p.bit_length()} bits)")
    print("image secure reference label max_error_ulp online_s")
    for i in range(len(ds)):
        x = ds.normalize(ds.images[i : i + 1]).numpy()[0]
        y, rep = run_local(plan, x)
        ref = plan.reference(x, decode=False)
        err = int(np.abs(np.rint(y * 2.0**plan.output_scale) - ref).max())
        print(i, int(y.argmax()), int(ref.argmax()), int(ds.labels[i]), err,
              round(rep["online_s"], 3))  # fmt: skip


if __name__ == "__main__":
    main()
