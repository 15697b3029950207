"""The AES-NI path: the compiled hash against ``cryptography``, and the fused garbling and
evaluation kernels against the buffer path, bit for bit."""

import numpy as np
import pytest

from safenet.crypto import aesni
from safenet.crypto.aes import FixedKeyAES
from safenet.crypto.gc import (
    CircuitBuilder,
    decode,
    evaluate,
    garble,
    relu_circuit,
    tables_from_bytes,
)
from safenet.crypto.gc.evaluate import evaluate_shares
from safenet.field import DELPHI_PRIME

P = DELPHI_PRIME

needs_aesni = pytest.mark.skipif(not aesni.supported(), reason="no AES-NI on this CPU")


@pytest.fixture
def rng():
    return np.random.default_rng(7)


def test_key_schedule_matches_fips197():
    """FIPS-197 appendix A.1: key 2b7e1516..., round key 10 d014f9a8 c9ee2589 e13f0cc8 b6630ca6."""
    k = aesni.round_keys(bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"))
    assert len(k) == 22
    assert np.array(k[:2], dtype="<u8").tobytes().hex() == "2b7e151628aed2a6abf7158809cf4f3c"
    assert np.array(k[20:], dtype="<u8").tobytes().hex() == "d014f9a8c9ee2589e13f0cc8b6630ca6"
    with pytest.raises(ValueError, match="16-byte"):
        aesni.round_keys(b"short")


@needs_aesni
def test_compiled_hash_matches_cryptography(rng):
    x = rng.integers(0, 2**64, (1000, 2), dtype=np.uint64)
    tweaks = rng.integers(0, 2**63, 1000, dtype=np.uint64)
    out = np.empty_like(x)
    aesni.hash_blocks(aesni.FIXED_ROUND_KEYS, x, tweaks, out)
    np.testing.assert_array_equal(out, FixedKeyAES().hash(x, tweaks))
    for lanes in (2, 4):  # blocks per register, and remainders
        if aesni.wide_lanes() < lanes:
            continue
        for n in (1000, 999, 998):
            wide = np.empty_like(x[:n])
            aesni.hash_blocks_wide(aesni.FIXED_ROUND_KEYS, x[:n], tweaks[:n], wide, lanes=lanes)
            np.testing.assert_array_equal(wide, out[:n])


def test_switch_off(monkeypatch):
    monkeypatch.setenv("SAFENET_AESNI", "0")
    assert not aesni.available()
    monkeypatch.setenv("SAFENET_AESNI", "1")
    assert aesni.available() == aesni.supported()


def _random_circuit(r: np.random.Generator):
    """A random XOR/AND/OR/NOT DAG over a garbler and an evaluator input group."""
    bld = CircuitBuilder()
    lits = bld.input("g", 4) + bld.input("e", 5)
    for _ in range(int(r.integers(40, 160))):
        op, (i, j) = r.integers(0, 4), r.integers(0, len(lits), 2)
        if op == 0:
            lits.append(bld.xor(lits[i], lits[j]))
        elif op == 1:
            lits.append(bld.and_(lits[i], lits[j]))
        elif op == 2:
            lits.append(bld.or_(lits[i], lits[j]))
        else:
            lits.append(bld.not_(lits[i]))
    bld.output("out", [lits[i] for i in r.integers(0, len(lits), 10)])
    return bld.build()


def _run(circuit, n, seed, chunk, tweak_base, workers):
    """Garble with a seeded generator (and output rows), evaluate on random inputs from the
    same seed; returns the tables, decode bits, output labels, rows and summed shares."""
    r, r2 = np.random.default_rng(seed), np.random.default_rng(seed)
    s = r.integers(0, P, (circuit.n_outputs, n), dtype=np.uint64)
    r2.integers(0, P, s.shape, dtype=np.uint64)  # the same state: the same Delta and labels
    rows = (s, (s + np.uint64(12345)) % np.uint64(P))
    g = garble(circuit, n, rng=r, chunk=chunk, tweak_base=tweak_base, workers=workers)
    g2 = garble(circuit, n, rng=r2, chunk=chunk, tweak_base=tweak_base, workers=workers,
                rows=rows)  # fmt: skip
    labels = {}
    for name, wires in circuit.inputs.items():
        bits = r.integers(0, 2, (len(wires), n), dtype=np.uint8)
        l0, l1 = g.label_pairs(name)
        labels[name] = np.where(bits[..., None].astype(bool), l1, l0)
    tables = tables_from_bytes(g.take_tables().tobytes(), circuit, n)  # read-only, as received
    out = evaluate(circuit, tables, labels, chunk=chunk, tweak_base=tweak_base, workers=workers)
    shares = evaluate_shares(circuit, g2.take_tables(), labels, g2.rows, P, chunk=chunk,
                             tweak_base=tweak_base, workers=workers)  # fmt: skip
    return tables, g.decode_bits, out, g2.rows, shares


@needs_aesni
@pytest.mark.parametrize("mode", ["1", "256", "128"])
@pytest.mark.parametrize("seed", range(4))
def test_fused_kernels_equal_the_buffer_path(seed, mode, monkeypatch):
    """Same tables, decode bits, output labels, rows and shares with AES-NI (four lanes where
    the CPU has VAES and AVX-512, ``1``; two lanes, ``256``; one lane, ``128``) and without
    (``0``), for random circuits (negated inputs included), chunks that leave remainders,
    threads and tweak bases."""
    need = {"1": 4, "256": 2, "128": 0}[mode]
    if aesni.wide_lanes() < need:
        pytest.skip(f"no {need}-lane VAES on this CPU")
    circuit = _random_circuit(np.random.default_rng(100 + seed))
    n, chunk, base = 301, (None, 7, 64, 1000)[seed], (0, 5, 1 << 20, 12345)[seed]
    workers = 1 + seed % 2
    monkeypatch.setenv("SAFENET_AESNI", mode)
    fused = _run(circuit, n, seed, chunk, base, workers)
    monkeypatch.setenv("SAFENET_AESNI", "0")
    buffered = _run(circuit, n, seed, chunk, base, workers)
    for a, b in zip(fused, buffered, strict=True):
        np.testing.assert_array_equal(a, b)


def test_modes(monkeypatch):
    """``SAFENET_AESNI`` picks the lanes per step: 0 (one lane) with 128, at most 2 with 256,
    the CPU's widest otherwise; never more than the CPU has."""
    monkeypatch.setenv("SAFENET_AESNI", "128")
    assert aesni.step_lanes() == 0
    monkeypatch.setenv("SAFENET_AESNI", "256")
    assert aesni.step_lanes() == min(2, aesni.wide_lanes())
    monkeypatch.setenv("SAFENET_AESNI", "1")
    assert aesni.step_lanes() == aesni.wide_lanes() in (0, 2, 4)
    monkeypatch.setenv("SAFENET_AESNI", "0")
    assert aesni.step_lanes() == 0


@needs_aesni
def test_fused_relu_is_exact(rng, monkeypatch):
    """The ReLU circuit garbled and evaluated through the fused kernels, decoded against the
    plain evaluation of the same circuit."""
    circuit = relu_circuit(DELPHI_PRIME, 9, 20)
    n = 2000
    ins = {k: rng.integers(0, 2, (len(w), n), dtype=np.uint8) for k, w in circuit.inputs.items()}
    g = garble(circuit, n)
    labels = {name: g.encode(name, bits) for name, bits in ins.items()}
    got = decode(evaluate(circuit, g.take_tables(), labels), g.decode_bits)
    want = circuit.evaluate_plain(ins)
    np.testing.assert_array_equal(got, np.concatenate([want[k] for k in circuit.outputs]))


@pytest.mark.parametrize("n", [0, 15, 4095, 4096, 100_003])
def test_random_bytes_are_fresh_and_sized(n):
    """Both branches (OS CSPRNG below 4 KiB, AES-CTR under a fresh key above): the right
    length, a fresh draw every call, and no run of zeros a keystream bug would leave."""
    from safenet.crypto.aes import random_bytes

    a, b = random_bytes(n), random_bytes(n)
    assert a.dtype == np.uint8 and a.shape == b.shape == (n,)
    if n >= 15:
        assert not np.array_equal(a, b)
        assert np.count_nonzero(a) > n // 2
    if n >= 65536:  # bytes roughly uniform (bounds about 10 standard deviations wide)
        counts = np.bincount(a, minlength=256)
        assert counts.min() > 0.5 * n / 256 and counts.max() < 1.5 * n / 256


def test_path_names_the_kernels_in_use(monkeypatch):
    monkeypatch.setenv("SAFENET_AESNI", "0")
    assert aesni.path() == "cryptography"
    monkeypatch.setenv("SAFENET_AESNI", "128")
    assert aesni.path() == ("aes-ni" if aesni.supported() else "cryptography")
    monkeypatch.setenv("SAFENET_AESNI", "1")
    want = {4: "vaes-512", 2: "vaes-256", 0: "aes-ni"}[aesni.wide_lanes()]
    assert aesni.path() == (want if aesni.supported() else "cryptography")
