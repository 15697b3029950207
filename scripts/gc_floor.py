"""The floor of garbled-circuit evaluation on this machine, for one inference of a plan.

Counts what the client must do in the online phase of an all-ReLU ResNet-32 (3x32x32) or any
zoo architecture: AND gates (two tweakable hashes each, two AES blocks per hash with the
current hash), output bits read through rows (one hash each), table bytes read from memory;
measures single-core AES-128-ECB throughput (``cryptography``, AES-NI) and memory read
bandwidth; and prints the floor: AES time spread over the cores, and table bytes over
bandwidth. Where the CPU has VAES it also times safenet's own hash kernel (four blocks per
512-bit register, ``aesni.hash_blocks_wide``) and prints the floor at that rate.

    python scripts/gc_floor.py [--arch resnet32] [--input-shape 3,32,32]
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from safenet.approx.cost import count
from safenet.benchmark import random_plan
from safenet.crypto import aesni

AES_PER_HASH = 2  # H(x, i) = pi(pi(x) ^ i) ^ pi(x)


def aes_ns_per_block(blocks: int = 1 << 16, repeats: int = 40) -> float:
    enc = Cipher(algorithms.AES(os.urandom(16)), modes.ECB()).encryptor()
    src = os.urandom(16 * blocks)
    dst = bytearray(16 * blocks + 16)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        enc.update_into(src, dst)
        best = min(best, time.perf_counter() - t)
    return best / blocks * 1e9


def hash_ns_per_block(blocks: int = 1 << 16, repeats: int = 40) -> float | None:
    """ns per AES block of safenet's own hash kernel (VAES, four blocks per register; two AES
    blocks per hash), or None where the CPU has no VAES."""
    if aesni.step_lanes() < 4:
        return None
    x = np.frombuffer(os.urandom(16 * blocks), dtype=np.uint64).reshape(blocks, 2).copy()
    tw, out = np.arange(blocks, dtype=np.uint64), np.empty_like(x)
    aesni.hash_blocks_wide(aesni.FIXED_ROUND_KEYS, x, tw, out, lanes=4)  # compile
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        aesni.hash_blocks_wide(aesni.FIXED_ROUND_KEYS, x, tw, out, lanes=4)
        best = min(best, time.perf_counter() - t)
    return best / blocks / AES_PER_HASH * 1e9


def read_gb_per_s(nbytes: int = 1 << 30, repeats: int = 3) -> float:
    a = np.ones(nbytes // 8, dtype=np.uint64)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        np.bitwise_xor.reduce(a)
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="resnet32")
    ap.add_argument("--input-shape", default="3,32,32")
    args = ap.parse_args()
    shape = tuple(int(v) for v in args.input_shape.split(","))
    c = count(random_plan(args.arch, shape))  # type: ignore[arg-type]
    cores = os.cpu_count() or 1
    aes_ns = aes_ns_per_block()
    gbs = read_gb_per_s()
    blocks = AES_PER_HASH * (2 * c.ands + c.gc_rows)
    table_bytes = 32 * c.ands + 16 * c.gc_rows  # two 8-byte rows per output bit
    aes_s = blocks * aes_ns * 1e-9
    mem_s = table_bytes / gbs / 1e9
    vaes_ns = hash_ns_per_block()
    vaes_s = None if vaes_ns is None else blocks * vaes_ns * 1e-9
    print(json.dumps({
        "arch": args.arch, "relus": c.relu, "and_gates": c.ands, "rows": c.gc_rows,
        "aes_blocks": blocks, "aes_ns_per_block_1core": round(aes_ns, 3),
        "aes_s_1core": round(aes_s, 3), "cores": cores, "aes_s_all_cores": round(aes_s / cores, 3),
        "table_bytes": table_bytes, "read_gb_per_s": round(gbs, 2),
        "tables_read_s": round(mem_s, 3),
        "floor_s": round(max(aes_s / cores, mem_s), 3),
        "vaes_ns_per_block_1core": None if vaes_ns is None else round(vaes_ns, 3),
        "vaes_floor_s": None if vaes_s is None else round(max(vaes_s / cores, mem_s), 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
