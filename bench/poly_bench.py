"""Benchmark one layer of polynomial activations: the HE-made tuples offline, the opening online.

For ``--n`` elements (default 16,384: a ResNet-32 activation layer at 32x32x16), degree 2
and 3, each prime: client encryption of X_c^l, server answer (products, masks,
re-randomisation, flooding), client decryption, then the online share computation of both
parties; bytes are the serialised ciphertexts offline and the 8-byte opening plus 8-byte
reshare per element online. Checked against the exact polynomial on every run. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from safenet.crypto.he import ClientKeys, HEContext, HEParams
from safenet.field import DELPHI_PRIME, POLY_PRIME
from safenet.protocol import arith as A
from safenet.protocol import poly as P


def run_once(he, keys, n, degree, rng):
    p = he.params.plain_modulus
    X = rng.integers(-2000, 2000, n)
    coef = rng.integers(-(2**20), 2**20, (n, degree + 1))
    xc = A.uniform(n, p)
    xs = A.sub(A.to_residues(X, p), xc, p)
    t0 = time.perf_counter()
    cts = P.client_encrypt(keys, xc, degree)
    t1 = time.perf_counter()
    srv = P.PolyServer(he, coef, P.flood_bits(he))
    replies = srv.respond(cts, keys.public_key)
    t2 = time.perf_counter()
    g_c = P.client_decrypt(keys, replies, n, degree)
    t3 = time.perf_counter()
    a_s, g_s = srv.take()
    e = A.sub(xs, a_s, p)
    y_s = P.evaluate_share(e, g_s, p)
    t4 = time.perf_counter()
    y_c = P.evaluate_share(e, g_c, p)
    t5 = time.perf_counter()
    want = sum(coef[:, j].astype(object) * X.astype(object) ** j for j in range(degree + 1))
    if [int(v) for v in A.add(y_s, y_c, p)] != [int(w) % p for w in want]:
        raise AssertionError("polynomial shares disagree with the exact value")
    return {
        "client_encrypt_s": t1 - t0,
        "server_respond_s": t2 - t1,
        "client_decrypt_s": t3 - t2,
        "online_server_s": t4 - t3,
        "online_client_s": t5 - t4,
        "offline_bytes": sum(map(len, cts)) + sum(map(len, replies)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    rows = []
    for p in (DELPHI_PRIME, POLY_PRIME):
        he = HEContext(HEParams(8192, p))
        keys = ClientKeys(he)
        for degree in (2, 3):
            run_once(he, keys, 1024, degree, rng)  # warm-up
            runs = [run_once(he, keys, args.n, degree, rng) for _ in range(args.repeats)]
            med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
            offline = med["client_encrypt_s"] + med["server_respond_s"] + med["client_decrypt_s"]
            online = med["online_server_s"] + med["online_client_s"]
            rows.append(
                {
                    "prime_bits": p.bit_length(),
                    "degree": degree,
                    "n": args.n,
                    **{k: round(v, 4) for k, v in med.items()},
                    "offline_us_per_element": round(offline / args.n * 1e6, 2),
                    "online_us_per_element": round(online / args.n * 1e6, 3),
                    "offline_bytes_per_element": round(med["offline_bytes"] / args.n, 1),
                    "online_bytes_per_element": 16,
                }
            )
    print(json.dumps({"python": platform.python_version(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
