"""Benchmark the garbled ReLU: circuit size, garbling and evaluation speed (``--workers``).

Prints JSON: AND gates, table and row bytes per ReLU (with the per-stage breakdown), and for
``--n`` ReLUs (one activation layer) the garbling time (Delta, labels, tables, output rows)
and the evaluation time (tables in hand, labels given; evaluation, rows opened and summed
mod p), per ReLU and in AND gates per second, and which AES path ran (``SAFENET_AESNI``).
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

from safenet.crypto import aesni
from safenet.crypto.gc import evaluate, garble, int_to_bits, relu_circuit
from safenet.crypto.gc.relu_circuit import relu_reference, relu_weights
from safenet.crypto.gc.tables import decrypt_rows, row_tweaks
from safenet.field import DELPHI_PRIME


def run_once(circuit, p, shift, n, rng, workers=1):
    """One layer as the protocol runs it: garble with output rows (uniform masks ``s`` per
    output bit), evaluate, open the rows and sum mod p; checked against the reference."""
    nb, m = p.bit_length(), circuit.n_outputs
    a, b = (rng.integers(0, p, n, dtype=np.int64) for _ in range(2))
    s = rng.integers(0, p, (m, n), dtype=np.int64)
    w = np.array([x % p for x in relu_weights(p, shift)], dtype=np.int64)[:, None]
    v1 = (s + w) % p  # p < 2^62: no overflow
    t0 = time.perf_counter()
    g = garble(circuit, n, workers=workers, rows=(s.astype(np.uint64), v1.astype(np.uint64)))
    t1 = time.perf_counter()
    labels = {"server_share": g.encode("server_share", int_to_bits(a, nb))}
    l0, l1 = g.label_pairs("client_share")
    labels["client_share"] = np.where(int_to_bits(b, nb)[..., None].astype(bool), l1, l0)
    tables = g.take_tables()
    t2 = time.perf_counter()
    out = evaluate(circuit, tables, labels, workers=workers)
    values = decrypt_rows(out, g.rows, row_tweaks(circuit.and_count * n, m, n, 0, n))
    z = np.zeros(n, dtype=np.int64)
    for row in values.astype(np.int64):
        z = (z + row) % p
    t3 = time.perf_counter()
    got = (z - s.sum(axis=0) % p) % p
    if not np.array_equal(got, relu_reference(a, b, p, shift)):
        raise AssertionError("garbled ReLU disagrees with the plaintext reference")
    return t1 - t0, t3 - t2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prime", type=int, default=DELPHI_PRIME)
    ap.add_argument("--shift", type=int, default=9)
    ap.add_argument("--n", type=int, default=16384, help="ReLUs garbled together")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, default=1, help="threads (the protocol uses all cores)")
    args = ap.parse_args()

    circuit = relu_circuit(args.prime, args.shift)
    rng = np.random.default_rng(0)
    run_once(circuit, args.prime, args.shift, min(args.n, 1024), rng, 1)  # warm-up
    times = [
        run_once(circuit, args.prime, args.shift, args.n, rng, args.workers)
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
                "aes": aesni.path(),
                "n_relus": args.n,
                "and_per_relu": circuit.and_count,
                "and_by_stage": circuit.and_count_by_stage(),
                "xor_per_relu": circuit.xor_count,
                "and_depth": circuit.schedule.depth,
                "table_bytes_per_relu": circuit.table_bytes,
                "row_bytes_per_relu": 16 * circuit.n_outputs,
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
