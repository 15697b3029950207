"""The statistical terms of one session per model (docs/security.md): hidden elements, bits
each gets, the session's total distance, and the polynomial reply digits.

    .venv/bin/python scripts/session_bounds.py
"""

from __future__ import annotations

from safenet import checkpoint
from safenet.benchmark import random_plan
from safenet.plan.ir import Plan
from safenet.protocol.engine import ServerModel


def plans() -> dict[str, Plan]:
    """The shipped models and the ResNet-32 structures of the benchmarks (random weights)."""
    out = {name: checkpoint.load(name).plan() for name in ("default", "default-approx")}
    shape = (3, 32, 32)
    out["ResNet-32 all-ReLU"] = random_plan("resnet32", shape)
    out["ResNet-32 half polynomial"] = random_plan("resnet32", shape, relu_ratio=0.5)
    out["ResNet-32 25 % ReLU, degree 3"] = random_plan("resnet32", shape, 0.25, degree=3)
    return out


def main() -> None:
    print("| model | ReLU masks (bits) | linear coefficients (bits over noise) "
          "| polynomial coefficients (bits over noise, digits) | session total |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, plan in plans().items():
        m = ServerModel(plan)
        (_, lin, lb), (_, pol, pb), (_, rel, rb) = m.budget.rows()
        digits = f"{m.poly_params.digits} x {m.poly_params.base_bits} bits" if pol else "-"
        print(f"| {name} | {rel:,} ({rb}) | {lin:,} ({lb}) | {pol:,} ({pb}, {digits}) "
              f"| {m.budget.total_distance():.1e} |")  # fmt: skip


if __name__ == "__main__":
    main()
