"""Benchmark oblivious transfer: base OTs and IKNP extension, two threads over a socketpair.

Prints JSON: base-OT time for ``--base`` OTs, and for m = 2^``--log2m`` OTs the extension
time, throughput and wire bytes per OT (both directions, frame headers included) for the
chosen-message, correlated (one block per OT) and random variants. Times are medians over
``--repeats`` runs after one warm-up (numba compile, buffer allocation).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from safenet.channel import connection_pair
from safenet.crypto.ot import OTReceiver, OTSender, base_ot_recv, base_ot_send

TIMEOUT = 300.0


def both(ex, f, g):
    fa, fb = ex.submit(f), ex.submit(g)
    return fa.result(TIMEOUT), fb.result(TIMEOUT)


def wire_bytes(conn) -> int:
    c = conn.stats.total()
    return c.bytes_sent + c.bytes_received


def timed(ex, conn, f, g, repeats):
    both(ex, f, g)  # warm-up
    times, sizes = [], []
    for _ in range(repeats):
        before = wire_bytes(conn)
        t0 = time.perf_counter()
        both(ex, f, g)
        times.append(time.perf_counter() - t0)
        sizes.append(wire_bytes(conn) - before)
    return statistics.median(times), sizes[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--log2m", type=int, default=20, help="extension size m = 2^log2m")
    ap.add_argument("--base", type=int, default=128, help="number of base OTs")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="seed for the test messages only")
    args = ap.parse_args()

    rng = np.random.default_rng(args.seed)
    m = 1 << args.log2m
    a, b = connection_pair(timeout=TIMEOUT)
    result: dict = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "m": m,
        "repeats": args.repeats,
    }
    with ThreadPoolExecutor(2) as ex:
        choices = rng.integers(0, 2, args.base).astype(np.uint8)
        t, size = timed(
            ex, a, lambda: base_ot_send(a, args.base), lambda: base_ot_recv(b, choices), 5
        )
        result["base_ot"] = {"count": args.base, "seconds": round(t, 4), "bytes": size}

        sender, receiver = OTSender(a), OTReceiver(b)
        t0 = time.perf_counter()
        both(ex, sender.setup, receiver.setup)
        result["setup_seconds"] = round(time.perf_counter() - t0, 4)

        choices = rng.integers(0, 2, m).astype(np.uint8)
        pairs = rng.integers(0, 2**64, size=(m, 2, 2), dtype=np.uint64)
        zero = pairs[:, 0].copy()
        cases = {
            "chosen": (lambda: sender.send(pairs), lambda: receiver.recv(choices)),
            "correlated": (
                lambda: sender.send_correlated(zero),
                lambda: receiver.recv_correlated(choices),
            ),
            "random": (lambda: sender.send_random(m), lambda: receiver.recv_random(choices)),
        }
        for name, (f, g) in cases.items():
            t, size = timed(ex, a, f, g, args.repeats)
            result[name] = {
                "seconds": round(t, 4),
                "ots_per_s": round(m / t),
                "bytes_per_ot": round(size / m, 3),
            }
    a.close()
    b.close()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
