"""The statistical terms of one session per model (docs/security.md): hidden elements, bits
each gets, the session's total distance, the polynomial reply digits, and the noise budget a
flooded polynomial reply of those parameters leaves (measured: one reply of 8,192 elements
of random coefficients, decrypted).

    .venv/bin/python scripts/session_bounds.py
"""

from __future__ import annotations

import numpy as np

from safenet import checkpoint
from safenet.benchmark import random_plan
from safenet.crypto.he import ClientKeys
from safenet.plan.ir import Plan
from safenet.plan.ops import Activation
from safenet.protocol import arith as A
from safenet.protocol import poly as P
from safenet.protocol.engine import ServerModel


def plans() -> dict[str, Plan]:
    """The shipped models and the ResNet-32 structures of the benchmarks (random weights)."""
    out = {name: checkpoint.load(name).plan() for name in ("default", "default-approx")}
    shape = (3, 32, 32)
    out["ResNet-32 all-ReLU"] = random_plan("resnet32", shape)
    out["ResNet-32 half polynomial"] = random_plan("resnet32", shape, relu_ratio=0.5)
    out["ResNet-32 25 % ReLU, degree 3"] = random_plan("resnet32", shape, 0.25, degree=3)
    return out


def reply_budget(model: ServerModel, degree: int) -> int:
    """Noise budget (bits) left in the polynomial replies of one layer of N elements."""
    he, rp, p = model.he, model.poly_params, model.he.params.plain_modulus
    keys = ClientKeys(he)
    coef = np.random.default_rng(0).integers(-(2**20), 2**20, size=(he.slots, degree + 1))
    srv = P.PolyServer(he, coef, rp, shift=8)
    cts = P.client_encrypt(keys, A.uniform(he.slots, p), degree, rp)
    replies = srv.respond(cts, keys.public_key)
    return min(keys.noise_budget(he.ciphertext_from_bytes(r)) for r in replies)


def main() -> None:
    print("| model | linear coefficients (bits over noise) "
          "| polynomial coefficients (bits over noise, digits) | session total "
          "| polynomial reply budget left |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, plan in plans().items():
        m = ServerModel(plan)
        (_, lin, lb), (_, pol, pb) = m.budget.rows()
        digits = f"{m.poly_params.digits} x {m.poly_params.base_bits} bits" if pol else "-"
        degree = max(op.attrs_as(Activation).degree for _, op in plan.activations())
        budget = f"{reply_budget(m, degree)} bits" if pol else "-"
        print(f"| {name} | {lin:,} ({lb}) | {pol:,} ({pb}, {digits}) "
              f"| {m.budget.total_distance():.1e} | {budget} |")  # fmt: skip


if __name__ == "__main__":
    main()
