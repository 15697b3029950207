"""Benchmark one layer of polynomial activations: the HE-made tuples offline, the opening online.

For ``--n`` elements (default 16,384: a ResNet-32 activation layer at 32x32x16), degree 2
and 3, each prime: client encryption of ``a_c^l``, server answer (products, masks,
re-randomisation, flooding), client decryption, then the online steps of both parties
(opening ``v + R1``, the client's ``e`` and masked share, the server's exact truncation);
bytes are the serialised ciphertexts offline and, online, the 8-byte opening, 8-byte ``e``
and 8-byte masked share per element. Checked against ``round(P(round(v/2^k))/2^q)`` (up
to the carries of two exact truncations) on every run. Prints JSON.
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


def run_once(he, keys, n, degree, rng, k=12, q=16):
    p = he.params.plain_modulus
    # activation inputs at scale 2^k above X; every sum below B = trunc_bound(p) for both
    # primes (2^37 for the 41-bit one), where the exact truncation promises its bound
    v = rng.integers(-(2**20), 2**20, n)
    coef = rng.integers(-(2**12), 2**12, (n, degree + 1))
    c = A.uniform(n, p)  # the client's share of v, known offline
    s = A.sub(A.to_residues(v, p), c, p)
    a_c, r2 = A.uniform(n, p), A.bounded_mask(n, p)
    t0 = time.perf_counter()
    rp = P.reply_params(he, degree * -(-n // he.slots), degree)
    cts = P.client_encrypt(keys, a_c, degree, rp)
    t1 = time.perf_counter()
    srv = P.PolyServer(he, coef, rp, k)
    replies = srv.respond(cts, keys.public_key)
    t2 = time.perf_counter()
    g_c = P.client_decrypt(keys, replies, n, degree)
    t3 = time.perf_counter()
    r1, g_s = srv.take()
    w = P.server_open(s, r1, p)
    t4 = time.perf_counter()
    e, z = P.client_step(w, c, a_c, g_c, r2, k, p)
    t5 = time.perf_counter()
    out = A.add(P.server_finish(e, z, g_s, q, p), A.mask_trunc(r2, q, p), p)
    t6 = time.perf_counter()
    got = np.where(out > p // 2, out - p, out).astype(object)
    x = (v.astype(object) + (1 << (k - 1))) >> k
    ok = np.zeros(n, dtype=bool)
    for dx in (0, 1):  # a carry into X, then one into the result
        y = sum(coef[:, j].astype(object) * (x + dx) ** j for j in range(degree + 1))
        base = (y + (1 << (q - 1))) >> q
        ok |= (got == base) | (got == base + 1)
    if not ok.all():
        raise AssertionError(f"{int((~ok).sum())} polynomial outputs off the exact value")
    return {
        "client_encrypt_s": t1 - t0,
        "server_respond_s": t2 - t1,
        "client_decrypt_s": t3 - t2,
        "online_server_s": (t4 - t3) + (t6 - t5),
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
                    "online_bytes_per_element": 24,
                }
            )
    print(json.dumps({"python": platform.python_version(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
