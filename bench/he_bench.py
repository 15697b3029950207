"""Benchmark the HE offline phase of ResNet-32's conv/linear layers (coefficient packing).

For each distinct layer shape of ResNet-32 on 3x32x32 inputs (random weights of
``--weight-bits`` bits): client encrypt, server respond and client decrypt seconds
(medians over ``--repeats`` runs after a warm-up), bytes up and down, ciphertext and
product counts, kernel memory and setup time with NTT-form kernels, respond time with
coefficient-form kernels, the smallest noise budget left in a reply and the flood the
weights require; every run is checked against :func:`linear_mod_p`. Then the totals over
all 34 conv/linear ops of ResNet-32, and, for the decision record, what a rotation-based
(Gazelle-style slot) packing of the same layers would need: measured rotation time and
Galois key size, and counted rotations. Prints a Markdown table, then JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np
import seal

from safenet.crypto.he import ClientKeys, HEContext, HEParams, flood, rerandomize
from safenet.field import DELPHI_PRIME
from safenet.plan.ops import Conv, Linear, Op
from safenet.protocol.linear import (
    FLOOD_BITS,
    LinearPacking,
    ServerLinear,
    client_decrypt,
    client_encrypt,
    linear_mod_p,
)


def conv(ci, co, k, s, pad, hw, rng, wmax):
    ho = (hw + 2 * pad - k) // s + 1
    attrs = Conv(stride=[s, s], padding=[pad, pad], groups=1, kernel=[k, k])
    w = rng.integers(-wmax, wmax + 1, (co, ci, k, k))
    arrays = {"weight": w, "bias": np.zeros(co, dtype=np.int64)}
    return Op(attrs, [0], (co, ho, ho), 0, arrays, "conv"), (ci, hw, hw)


def linear(ci, co, rng, wmax):
    arrays = {"weight": rng.integers(-wmax, wmax + 1, (co, ci)), "bias": np.zeros(co, np.int64)}
    return Op(Linear(), [0], (co,), 0, arrays, "fc"), (ci,)


#: (name, constructor args, how many ops of ResNet-32 have this shape)
LAYERS = [
    ("3->16 3x3 32x32", ("conv", 3, 16, 3, 1, 1, 32), 1),
    ("16->16 3x3 32x32", ("conv", 16, 16, 3, 1, 1, 32), 10),
    ("16->32 3x3 s2", ("conv", 16, 32, 3, 2, 1, 32), 1),
    ("16->32 1x1 s2", ("conv", 16, 32, 1, 2, 0, 32), 1),
    ("32->32 3x3 16x16", ("conv", 32, 32, 3, 1, 1, 16), 9),
    ("32->64 3x3 s2", ("conv", 32, 64, 3, 2, 1, 16), 1),
    ("32->64 1x1 s2", ("conv", 32, 64, 1, 2, 0, 16), 1),
    ("64->64 3x3 8x8", ("conv", 64, 64, 3, 1, 1, 8), 9),
    ("linear 64->10", ("linear", 64, 10), 1),
]


def timed(f, *args):
    t = time.perf_counter()
    out = f(*args)
    return out, time.perf_counter() - t


def bench_layer(he, keys, op, in_shape, repeats):
    p = he.params.plain_modulus
    server, t_setup = timed(ServerLinear, op, in_shape, he)
    coeff_server = ServerLinear(op, in_shape, he, ntt=False)
    packing = LinearPacking(op, in_shape, he)
    rng = np.random.default_rng(1)
    runs, budgets = [], []
    for i in range(repeats + 1):
        r = rng.integers(0, p, in_shape)
        cts, te = timed(client_encrypt, packing, keys, r)
        (replies, t), tr = timed(server.respond, cts, keys.public_key)
        share, td = timed(client_decrypt, packing, keys, replies)
        _, tc = timed(coeff_server.respond, cts, keys.public_key)
        if not ((share + t) % p == linear_mod_p(op, r, p)).all():
            raise AssertionError("HE reply disagrees with linear_mod_p")
        budgets += [keys.noise_budget(he.ciphertext_from_bytes(c)) for c in replies]
        if i:  # the first run is a warm-up
            runs.append((te, tr, td, tc))
    med = [statistics.median(x[k] for x in runs) for k in range(4)]
    return {
        "n_in": packing.n_in,
        "n_out": packing.n_out,
        "products": len(server.kernels) * packing.tiles,
        "layout": f"{packing.cb}x{packing.hq}x{packing.wq} in, {packing.cg} out",
        "encrypt_s": med[0],
        "respond_s": med[1],
        "decrypt_s": med[2],
        "respond_coeff_kernels_s": med[3],
        "bytes_up": sum(len(c) for c in cts),
        "bytes_down": sum(len(c) for c in replies),
        "kernel_bytes_ntt": server.kernel_bytes,
        "kernel_bytes_coeff": coeff_server.kernel_bytes,
        "setup_ntt_s": t_setup,
        "min_budget_bits": min(budgets),
        "required_flood_bits": server.required_flood_bits,
    }


def per_op(he, keys, repeats):
    """Single-op costs for the breakdown: budgets after each step, ciphertext operations."""
    p, ev = he.params.plain_modulus, he.evaluator
    rng = np.random.default_rng(2)
    ct = keys.encrypt_coeffs(rng.integers(0, p, he.slots))
    kern = np.zeros(he.slots, dtype=np.int64)
    kern[:1152] = rng.integers(-512, 513, 1152)  # a 16-channel 3x3 block's worth of taps
    pt = he.plain_from_coeffs(np.mod(kern, p))
    prod = ev.multiply_plain(ct, pt)
    fl = flood(he, rerandomize(he, prod, keys.public_key), FLOOD_BITS)
    out = {
        "budget_fresh": keys.noise_budget(ct),
        "budget_after_product": keys.noise_budget(prod),
        "budget_after_flood": keys.noise_budget(fl),
    }
    while fl.coeff_modulus_size() > 1:
        try:
            fl = ev.mod_switch_to_next(fl)
        except ValueError:  # SEAL's chain ends before the modulus gets smaller than p
            break
        out[f"budget_after_flood_{fl.coeff_modulus_size()}_primes"] = keys.noise_budget(fl)

    def med(f):
        f()
        ts = []
        for _ in range(repeats * 4):
            t = time.perf_counter()
            f()
            ts.append(time.perf_counter() - t)
        return statistics.median(ts)

    ntt_ct = ev.transform_to_ntt(ct)
    ntt_pt = seal.Plaintext(pt)
    ev.transform_to_ntt_inplace(ntt_pt, ntt_ct.parms_id())
    out["multiply_plain_coeff_s"] = med(lambda: ev.multiply_plain(ct, pt))
    out["multiply_plain_ntt_s"] = med(lambda: ev.multiply_plain(ntt_ct, ntt_pt))
    out["rerandomize_s"] = med(lambda: rerandomize(he, prod, keys.public_key))
    out["flood_s"] = med(lambda: flood(he, prod, FLOOD_BITS))
    # rotation-based packing: one row rotation with its Galois key
    kg = seal.KeyGenerator(he.context)
    enc = seal.Encryptor(he.context, kg.create_public_key())
    sct = enc.encrypt(he.encode(np.arange(he.slots)))
    gk = seal.GaloisKeys()
    kg.create_galois_keys([1], gk)
    out["rotate_rows_s"] = med(lambda: ev.rotate_rows(sct, 1, gk))
    out["galois_key_bytes_per_step"] = len(gk.to_string())
    return out


def rotation_estimate(kind, args, n):
    """Gazelle-style slot packing of one layer: ciphertexts, products, rotations, key steps.

    Channels of H*W slots each, cn per ciphertext (the N slots treated as one cycle; SEAL's
    2 x N/2 layout would add column swaps); the k*k input shifts are rotations of each input
    ciphertext (by dy*W + dx), the channel mixing is block-diagonal with one rotation (by
    d*H*W) per diagonal after summing over input ciphertexts; strided convs read the
    stride-1 result at strided slots (the client re-packs when it encrypts the next mask).
    The linear layer uses Gazelle's hybrid mat-vec. Returns counts and the rotation steps.
    """
    if kind == "linear":
        ci, co = args
        steps = {co * 2**i for i in range(max(0, (ci // co).bit_length() - 1))}
        steps |= set(range(1, co))
        return {"n_in": 1, "n_out": 1, "products": co, "rotations": len(steps), "steps": steps}
    ci, co, k, _, pad, hw = args
    per_ct = max(1, n // (hw * hw))
    cn_in, cn_out = min(ci, per_ct), min(co, per_ct)
    n_in, n_out = -(-ci // cn_in), -(-co // cn_out)
    shifts = {dy * hw + dx for dy in range(-pad, k - pad) for dx in range(-pad, k - pad)} - {0}
    steps = shifts | {d * hw * hw for d in range(1, cn_out)}
    return {
        "n_in": n_in,
        "n_out": n_out,
        "products": n_in * n_out * k * k * cn_out,
        "rotations": n_in * len(shifts) + n_out * (cn_out - 1),
        "steps": steps,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prime", type=int, default=DELPHI_PRIME)
    ap.add_argument("--weight-bits", type=int, default=10, help="weights in [-2^b, 2^b]")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()

    he = HEContext(HEParams(8192, args.prime))
    keys = ClientKeys(he)
    rng = np.random.default_rng(0)
    wmax = 2**args.weight_bits
    layers, totals = [], {}
    for name, spec, count in LAYERS:
        kind, *shape = spec
        op, in_shape = conv(*shape, rng, wmax) if kind == "conv" else linear(*shape, rng, wmax)
        row = {"layer": name, "count": count} | bench_layer(he, keys, op, in_shape, args.repeats)
        row["rotation_packing"] = rotation_estimate(kind, shape, he.slots)
        layers.append(row)
        for key in (
            "n_in", "n_out", "products", "encrypt_s", "respond_s", "decrypt_s",
            "respond_coeff_kernels_s", "bytes_up", "bytes_down", "kernel_bytes_ntt",
            "kernel_bytes_coeff", "setup_ntt_s",
        ):  # fmt: skip
            totals[key] = totals.get(key, 0) + count * row[key]
        for key in ("n_in", "n_out", "products", "rotations"):
            totals[f"rot_{key}"] = (
                totals.get(f"rot_{key}", 0) + count * row["rotation_packing"][key]
            )
    ops = per_op(he, keys, args.repeats)
    steps = set().union(*(r["rotation_packing"].pop("steps") for r in layers))
    totals["rot_galois_keys"] = len(steps)
    totals["rot_galois_key_bytes"] = len(steps) * ops["galois_key_bytes_per_step"]
    totals["rot_rotation_s"] = totals["rot_rotations"] * ops["rotate_rows_s"]
    totals["rot_products_ntt_s"] = totals["rot_products"] * ops["multiply_plain_ntt_s"]
    report = {
        "machine": f"{platform.machine()} {platform.processor()} {platform.python_version()}",
        "prime": args.prime,
        "flood_bits": FLOOD_BITS,
        "weight_bits": args.weight_bits,
        "layers": layers,
        "resnet32_total": totals,
        "per_op": ops,
    }
    mib = 2**20
    print(
        "| layer (x count) | ct in / out | products | encrypt | respond | decrypt "
        "| up / down | NTT kernels | budget left | flood needed |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in layers:
        print(
            f"| {r['layer']} (x{r['count']}) | {r['n_in']} / {r['n_out']} | {r['products']} "
            f"| {r['encrypt_s'] * 1e3:.0f} ms | {r['respond_s'] * 1e3:.0f} ms "
            f"| {r['decrypt_s'] * 1e3:.0f} ms "
            f"| {r['bytes_up'] / mib:.1f} / {r['bytes_down'] / mib:.1f} MiB "
            f"| {r['kernel_bytes_ntt'] / mib:.1f} MiB | {r['min_budget_bits']} "
            f"| {r['required_flood_bits']} |"
        )
    t = totals
    print(
        f"| **ResNet-32, 34 ops** | {t['n_in']} / {t['n_out']} | {t['products']} "
        f"| {t['encrypt_s']:.2f} s | {t['respond_s']:.2f} s | {t['decrypt_s']:.2f} s "
        f"| {t['bytes_up'] / mib:.0f} / {t['bytes_down'] / mib:.0f} MiB "
        f"| {t['kernel_bytes_ntt'] / mib:.0f} MiB | | |"
    )
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
