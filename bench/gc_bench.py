"""Benchmark the garbled ReLU: circuit size, garbling and evaluation speed (``--workers``).

Prints JSON: AND gates and table bytes per ReLU (with the per-stage breakdown), and for
``--n`` ReLUs (one activation layer) the garbling time (Delta, labels, tables) and the
evaluation time (tables in hand, labels given), per ReLU and in AND gates per second.
Times are medians over ``--repeats`` runs after one warm-up (numba compile, page faults).
The evaluator's output is checked against the plaintext reference on every run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import numpy as np

from safenet.crypto.gc import bits_to_int, decode, evaluate, garble, int_to_bits, relu_circuit
from safenet.crypto.gc.relu import relu_reference
from safenet.field import DELPHI_PRIME


def _mask_bits(r, mbits):
    """Bits of int64 masks, zero-extended to ``mbits`` (> 64 for integer masking)."""
    out = np.zeros((mbits, len(r)), dtype=np.uint8)
    w = min(mbits, 63)
    out[:w] = int_to_bits(r.astype(np.uint64), w)
    return out


def run_once(circuit, p, shift, n, rng, workers=1, stat_bits=None):
    nb = p.bit_length()
    a, b, r = (rng.integers(0, p, n, dtype=np.int64) for _ in range(3))
    mbits = len(circuit.inputs["server_mask"])
    if stat_bits is not None:  # integer mask: keep it below 2^62 here so int64 holds it
        r = rng.integers(0, 1 << min(mbits, 62), n, dtype=np.int64)
    t0 = time.perf_counter()
    g = garble(circuit, n, workers=workers)
    t1 = time.perf_counter()
    labels = {
        "server_share": g.encode("server_share", int_to_bits(a, nb)),
        "server_mask": g.encode("server_mask", _mask_bits(r, mbits)),
    }
    l0, l1 = g.label_pairs("client_share")
    labels["client_share"] = np.where(int_to_bits(b, nb)[..., None].astype(bool), l1, l0)
    tables = g.take_tables()
    t2 = time.perf_counter()
    out = evaluate(circuit, tables, labels, workers=workers)
    t3 = time.perf_counter()
    bits = decode(out, g.decode_bits)
    if stat_bits is not None:
        z = [sum(int(x) << j for j, x in enumerate(col)) for col in bits.T]
        ok = z == list(relu_reference(a, b, r, p, shift, stat_bits))
    else:
        ok = np.array_equal(bits_to_int(bits), relu_reference(a, b, r, p, shift))
    if not ok:
        raise AssertionError("garbled ReLU disagrees with the plaintext reference")
    return t1 - t0, t3 - t2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prime", type=int, default=DELPHI_PRIME)
    ap.add_argument("--shift", type=int, default=9)
    ap.add_argument("--n", type=int, default=16384, help="ReLUs garbled together")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1, help="threads (the protocol uses all cores)")
    ap.add_argument(
        "--stat-bits",
        type=int,
        default=40,
        help="integer output mask as in the protocol (0: the circuit reducing mod p)",
    )
    args = ap.parse_args()

    stat = None if args.stat_bits <= 0 else args.stat_bits
    circuit = relu_circuit(args.prime, args.shift, stat)
    rng = np.random.default_rng(0)
    run_once(circuit, args.prime, args.shift, min(args.n, 1024), rng, 1, stat)  # warm-up
    times = [
        run_once(circuit, args.prime, args.shift, args.n, rng, args.workers, stat)
        for _ in range(args.repeats)
    ]
    tg = statistics.median(t[0] for t in times)
    te = statistics.median(t[1] for t in times)
    ands = circuit.and_count * args.n
    print(
        json.dumps(
            {
                "prime": args.prime,
                "prime_bits": args.prime.bit_length(),
                "shift": args.shift,
                "stat_bits": stat,
                "n_relus": args.n,
                "and_per_relu": circuit.and_count,
                "and_by_stage": circuit.and_count_by_stage(),
                "xor_per_relu": circuit.xor_count,
                "and_depth": circuit.schedule.depth,
                "table_bytes_per_relu": circuit.table_bytes,
                "garble_s": round(tg, 4),
                "evaluate_s": round(te, 4),
                "garble_us_per_relu": round(tg / args.n * 1e6, 3),
                "evaluate_us_per_relu": round(te / args.n * 1e6, 3),
                "garble_and_per_s": round(ands / tg),
                "evaluate_and_per_s": round(ands / te),
                "repeats": args.repeats,
                "workers": args.workers,
                "threads": os.environ.get("OMP_NUM_THREADS", "unset"),
                "cpu": platform.processor() or platform.machine(),
                "python": platform.python_version(),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
