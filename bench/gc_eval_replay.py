"""Replay the client's garbled-circuit evaluation of one all-ReLU inference, without the rest.

The online phase of a ReLU-heavy model is mostly ``evaluate`` over the layers in turn, each on
tables received offline (cold in memory by then). This garbles one layer per distinct size,
copies the tables once per layer (as many fresh, cold arrays as the model has layers), then
times evaluating every layer in order, ``--repeats`` times (fresh copies each time), and
reports the minimum and median in seconds and ns per AND gate. It times the AND gates only:
no output rows are garbled or opened, and the input labels of same-sized layers are
shared (warm); only the tables are cold. Default: ResNet-32's 31 ReLU
layers on 3x32x32 (11 x 16,384, 10 x 8,192, 10 x 4,096 ReLUs) under the 41-bit prime.

    python bench/gc_eval_replay.py [--layers 16384x11,8192x10,4096x10] [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np

from safenet.crypto.gc import evaluate, garble, relu_circuit
from safenet.field import DELPHI_PRIME


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default="16384x11,8192x10,4096x10", help="SIZExCOUNT,...")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--shift", type=int, default=9)
    args = ap.parse_args()
    layers = [(int(a), int(b)) for a, b in (part.split("x") for part in args.layers.split(","))]
    total = sum(n * k for n, k in layers)
    circuit = relu_circuit(DELPHI_PRIME, args.shift)
    rng = np.random.default_rng(0)
    material = {}
    for n, _ in layers:
        g = garble(circuit, n)
        labels = {
            name: g.encode(name, rng.integers(0, 2, (len(w), n), dtype=np.uint8))
            for name, w in circuit.inputs.items()
        }
        material[n] = (g.take_tables(), labels)
    evaluate(circuit, *material[layers[-1][0]])  # numba compile and thread start
    times = []
    for _ in range(args.repeats):
        cold = [(material[n][0].copy(), material[n][1]) for n, k in layers for _ in range(k)]
        t = time.perf_counter()
        for tables, labels in cold:
            evaluate(circuit, tables, labels)
        times.append(time.perf_counter() - t)
        del cold
    ands = circuit.and_count * total
    print(json.dumps({
        "relus": total, "and_per_relu": circuit.and_count, "table_bytes": 32 * ands,
        "eval_min_s": round(min(times), 4), "eval_median_s": round(statistics.median(times), 4),
        "ns_per_and_median": round(statistics.median(times) / ands * 1e9, 2),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
