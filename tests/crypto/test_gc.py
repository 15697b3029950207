"""Garbled circuits: builder arithmetic, half-gates garbling/evaluation, the ReLU circuit."""

import copy
import pickle

import numpy as np
import pytest

from safenet.crypto.aes import FixedKeyAES, random_blocks
from safenet.crypto.gc import (
    FALSE,
    TRUE,
    CircuitBuilder,
    and_tweaks,
    bits_to_int,
    decode,
    evaluate,
    garble,
    int_to_bits,
    relu_circuit,
    relu_reference,
    relu_weights,
    tables_from_bytes,
)
from safenet.field import DELPHI_PRIME, POLY_PRIME, is_probable_prime

# -- helpers ----------------------------------------------------------------------------------


def run_garbled(circuit, values, rng=None, evaluator=()):
    """Garble, hand labels over (evaluator groups through label pairs), evaluate, decode."""
    n = len(next(iter(values.values())))
    g = garble(circuit, n, rng=rng)
    labels = {}
    for name, v in values.items():
        bits = int_to_bits(np.asarray(v, dtype=np.uint64), len(circuit.inputs[name]))
        if name in evaluator:
            l0, l1 = g.label_pairs(name)
            labels[name] = np.where(bits[..., None].astype(bool), l1, l0)
        else:
            labels[name] = g.encode(name, bits)
    out = evaluate(circuit, g.take_tables(), labels)
    return {k: bits_to_int(v) for k, v in circuit.split_outputs(decode(out, g.decode_bits)).items()}


def run_plain(circuit, values):
    bits = {
        k: int_to_bits(np.asarray(v, dtype=np.uint64), len(circuit.inputs[k]))
        for k, v in values.items()
    }
    return {k: bits_to_int(v) for k, v in circuit.evaluate_plain(bits).items()}


def check(circuit, values, expected, rng):
    got = run_garbled(circuit, values, rng, evaluator=tuple(values)[1:])
    plain = run_plain(circuit, values)
    for name, want in expected.items():
        want = np.asarray(want, dtype=np.uint64)
        np.testing.assert_array_equal(plain[name], want, err_msg=f"plain {name}")
        np.testing.assert_array_equal(got[name], want, err_msg=f"garbled {name}")


def edge_values(w, rng, m):
    top = (1 << w) - 1
    v = rng.integers(0, top, m, dtype=np.uint64, endpoint=True)
    special = np.array([0, 1, 2, top, top - 1, 1 << (w - 1), (1 << (w - 1)) - 1], np.uint64)
    v[: len(special)] = special & np.uint64(top)
    return v


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


# -- bits and builder arithmetic ----------------------------------------------------------------


def test_bits_roundtrip(rng):
    v = rng.integers(0, 2**63, (3, 50), dtype=np.uint64)
    b = int_to_bits(v, 64)
    assert b.shape == (64, 3, 50) and b.dtype == np.uint8
    np.testing.assert_array_equal(bits_to_int(b), v)
    np.testing.assert_array_equal(int_to_bits([5], 4)[:, 0], [1, 0, 1, 0])
    with pytest.raises(ValueError):
        int_to_bits(np.array([-1]), 8)


def test_constants_and_folding_are_free():
    bld = CircuitBuilder()
    x = bld.input("x", 4)
    assert bld.and_(x[0], FALSE) == FALSE and bld.and_(x[0], TRUE) == x[0]
    assert bld.and_(x[0], x[0] ^ 1) == FALSE and bld.xor(x[1], x[1]) == FALSE
    assert bld.xor(x[1], TRUE) == x[1] ^ 1 and bld.or_(x[2], TRUE) == TRUE
    assert bld.and_(x[0], x[1]) == bld.and_(x[1], x[0])  # hash-consed
    # shifts and constant outputs cost nothing; constant outputs decode correctly
    bld.output("y", [*bld.shl(bld.shr(x, 1), 2), TRUE, FALSE, x[3] ^ 1])
    c = bld.build()
    assert c.and_count == 0 and c.xor_count == 0
    xs = np.arange(16, dtype=np.uint64)
    want = ((xs >> 1) << 2) | (1 << 5) | (((xs >> 3) & 1) ^ 1) << 7
    got = run_garbled(c, {"x": xs}, np.random.default_rng(0))["y"]
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize("w", [1, 5, 16, 41])
def test_adder_and_subtractor(w, rng):
    bld = CircuitBuilder()
    x, y = bld.input("x", w), bld.input("y", w)
    s, c = bld.add(x, y)
    d, ge = bld.sub(x, y)
    bld.output("sum", [*s, c])
    bld.output("diff", d)
    bld.output("ge", [ge])
    bld.output("lt", [bld.lt(x, y)])
    circuit = bld.build()
    assert circuit.and_count_by_stage()[""] == circuit.and_count
    xs, ys = edge_values(w, rng, 300), edge_values(w, rng, 300)[::-1].copy()
    mask = np.uint64((1 << w) - 1)
    check(
        circuit,
        {"x": xs, "y": ys},
        {"sum": xs + ys, "diff": (xs - ys) & mask, "ge": xs >= ys, "lt": xs < ys},
        rng,
    )


def test_adder_costs_one_and_per_bit():
    bld = CircuitBuilder()
    x, y = bld.input("x", 32), bld.input("y", 32)
    s, c = bld.add(x, y)
    bld.output("s", [*s, c])
    assert bld.build().and_count == 32
    bld = CircuitBuilder()
    x = bld.input("x", 32)
    bld.output("s", bld.add_const(x, 0x10000))  # bits below 16 pass through for free
    assert bld.build().and_count == 14  # carries into bits 18..31


@pytest.mark.parametrize("w", [3, 12, 41])
def test_constant_comparators(w, rng):
    consts = sorted({1, 2, 3, (1 << w) - 1, 1 << (w - 1), int(rng.integers(1, 1 << w))})
    bld = CircuitBuilder()
    x = bld.input("x", w)
    for i, c in enumerate(consts):
        bld.output(f"ge{i}", [bld.ge_const(x, c)])
        bld.output(f"gt{i}", [bld.gt_const(x, c)])
        bld.output(f"le{i}", [bld.le_const(x, c)])
        bld.output(f"lt{i}", [bld.lt_const(x, c)])
        bld.output(f"eq{i}", [bld.eq_const(x, c)])
        bld.output(f"add{i}", bld.add_const(x, c))
        bld.output(f"sub{i}", bld.sub_const(x, c))
    bld.output("ge_zero", [bld.ge_const(x, 0)])
    bld.output("big", [bld.ge_const(x, 1 << w)])
    circuit = bld.build()
    xs = edge_values(w, rng, 400)
    xs[10 : 10 + 3 * len(consts)] = [
        (c + d) % (1 << w) for c in consts for d in (-1, 0, 1)
    ]  # around every constant
    mask = np.uint64((1 << w) - 1)
    want = {"ge_zero": np.ones_like(xs), "big": np.zeros_like(xs)}
    for i, c in enumerate(consts):
        cu = np.uint64(c)
        want |= {
            f"ge{i}": xs >= cu,
            f"gt{i}": xs > cu,
            f"le{i}": xs <= cu,
            f"lt{i}": xs < cu,
            f"eq{i}": xs == cu,
            f"add{i}": (xs + cu) & mask,
            f"sub{i}": (xs - cu) & mask,
        }
    check(circuit, {"x": xs}, want, rng)


def test_comparison_with_constant_costs_at_most_one_and_per_bit():
    bld = CircuitBuilder()
    x = bld.input("x", 40)
    bld.output("a", [bld.ge_const(x, 3 << 30)])  # low 30 bits of the constant are zero
    assert bld.build().and_count == 9


def test_mux_and_select(rng):
    w = 20
    bld = CircuitBuilder()
    s, x, y = bld.input("s", 1), bld.input("x", w), bld.input("y", w)
    bld.output("mux", bld.mux_vec(s[0], x, y))
    bld.output("and", bld.and_vec(s[0], x))
    bld.output("max", bld.mux_vec(bld.ge(x, y), x, y))
    circuit = bld.build()
    ss = rng.integers(0, 2, 500, dtype=np.uint64)
    xs, ys = edge_values(w, rng, 500), edge_values(w, rng, 500)
    check(
        circuit,
        {"s": ss, "x": xs, "y": ys},
        {"mux": np.where(ss == 1, xs, ys), "and": xs * ss, "max": np.maximum(xs, ys)},
        rng,
    )


@pytest.mark.parametrize("seed", range(6))
def test_random_circuits_match_plain_bit_evaluator(seed):
    """Random XOR/AND/OR/NOT DAGs over 2 groups, built gate by gate, vs numpy on bits."""
    r = np.random.default_rng(seed)
    m, n_in = 300, (3, 5)
    bld = CircuitBuilder()
    lits = bld.input("g", n_in[0]) + bld.input("e", n_in[1])
    ins = {"g": r.integers(0, 2, (n_in[0], m)), "e": r.integers(0, 2, (n_in[1], m))}
    vals = [*ins["g"].astype(bool), *ins["e"].astype(bool)]
    for _ in range(int(r.integers(30, 120))):
        op = r.integers(0, 4)
        i, j = r.integers(0, len(lits), 2)
        if op == 0:
            lits.append(bld.xor(lits[i], lits[j]))
            vals.append(vals[i] ^ vals[j])
        elif op == 1:
            lits.append(bld.and_(lits[i], lits[j]))
            vals.append(vals[i] & vals[j])
        elif op == 2:
            lits.append(bld.or_(lits[i], lits[j]))
            vals.append(vals[i] | vals[j])
        else:
            lits.append(bld.not_(lits[i]))
            vals.append(~vals[i])
    picks = r.integers(0, len(lits), 12)
    bld.output("out", [lits[i] for i in picks])
    circuit = bld.build()
    g = garble(circuit, m, rng=r)
    labels = {"g": g.encode("g", ins["g"])}
    l0, l1 = g.label_pairs("e")
    labels["e"] = np.where(ins["e"][..., None].astype(bool), l1, l0)
    got = decode(evaluate(circuit, g.take_tables(), labels, chunk=97), g.decode_bits)
    want = np.array([vals[i] for i in picks], dtype=np.uint8)
    np.testing.assert_array_equal(got, want)
    np.testing.assert_array_equal(circuit.evaluate_plain(ins)["out"], want)


# -- garbling mechanics ---------------------------------------------------------------------------


def _adder(w=16):
    bld = CircuitBuilder()
    s, c = bld.add(bld.input("x", w), bld.input("y", w))
    bld.output("s", [*s, c])
    return bld.build()


def test_table_size_and_serialisation(rng):
    circuit, n = _adder(), 37
    g = garble(circuit, n, rng=rng)
    assert g.table_bytes == 32 * circuit.and_count * n
    raw = g.take_tables().tobytes()
    assert len(raw) == 32 * circuit.and_count * n
    tables = tables_from_bytes(raw, circuit, n)
    xs, ys = rng.integers(0, 1 << 16, n), rng.integers(0, 1 << 16, n)
    labels = {"x": g.encode("x", int_to_bits(xs, 16)), "y": g.encode("y", int_to_bits(ys, 16))}
    out = bits_to_int(decode(evaluate(circuit, tables, labels), g.decode_bits))
    np.testing.assert_array_equal(out, xs + ys)


def test_chunking_does_not_change_results(rng):
    circuit, n = _adder(), 100
    xs, ys = rng.integers(0, 1 << 16, n), rng.integers(0, 1 << 16, n)
    g = garble(circuit, n, chunk=7)
    labels = {"x": g.encode("x", int_to_bits(xs, 16)), "y": g.encode("y", int_to_bits(ys, 16))}
    tables = g.take_tables()
    a = evaluate(circuit, tables, labels, chunk=13)
    b = evaluate(circuit, tables, labels)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(bits_to_int(decode(a, g.decode_bits)), xs + ys)


def test_wrong_labels_or_tables_give_garbage(rng):
    circuit, n = _adder(), 200
    xs, ys = rng.integers(0, 1 << 16, n), rng.integers(0, 1 << 16, n)
    bx, by = int_to_bits(xs, 16), int_to_bits(ys, 16)
    g1, g2 = garble(circuit, n), garble(circuit, n)
    t1, t2 = g1.take_tables(), g2.take_tables()
    assert not np.array_equal(t1, t2)  # fresh Delta and labels every time
    l1 = {"x": g1.encode("x", bx), "y": g1.encode("y", by)}
    l2 = {"x": g2.encode("x", bx), "y": g2.encode("y", by)}
    right = bits_to_int(decode(evaluate(circuit, t1, l1), g1.decode_bits))
    np.testing.assert_array_equal(right, xs + ys)
    for tables, labels in ((t2, l1), (t1, l2)):  # the other garbling's tables or labels
        wrong = bits_to_int(decode(evaluate(circuit, tables, labels), g1.decode_bits))
        assert np.mean(wrong == xs + ys) < 0.05
    random_labels = {k: rng.integers(0, 2**64, v.shape, dtype=np.uint64) for k, v in l1.items()}
    wrong = bits_to_int(decode(evaluate(circuit, t1, random_labels), g1.decode_bits))
    assert np.mean(wrong == xs + ys) < 0.05


def test_label_structure(rng):
    circuit = _adder()
    g = garble(circuit, 5, rng=rng)
    l0, l1 = g.label_pairs("x")
    delta = l0 ^ l1
    assert (delta == delta[0, 0]).all() and delta[0, 0, 0] & 1 == 1  # global Delta, lsb 1
    assert ((l0[..., 0] ^ l1[..., 0]) & 1 == 1).all()  # permute bits differ


def test_single_use(rng):
    circuit = _adder()
    g = garble(circuit, 4, rng=rng)
    g.take_tables()
    with pytest.raises(RuntimeError):
        g.take_tables()
    g.encode("x", np.zeros((16, 4), np.uint8))
    with pytest.raises(RuntimeError):
        g.encode("x", np.ones((16, 4), np.uint8))
    with pytest.raises(RuntimeError):
        g.label_pairs("x")
    g.label_pairs("y")
    with pytest.raises(RuntimeError):
        g.encode("y", np.zeros((16, 4), np.uint8))
    assert g._delta is None and not g._input_zero  # nothing secret left
    with pytest.raises(TypeError):
        copy.copy(g)
    with pytest.raises(TypeError):
        copy.deepcopy(g)
    with pytest.raises(TypeError):
        pickle.dumps(g)


def test_every_and_tweak_is_unique():
    circuit = relu_circuit(DELPHI_PRIME, 9)
    for n, chunk in ((3, None), (50, 16)):
        tw = and_tweaks(circuit, n, chunk=chunk)
        assert len(tw) == 2 * circuit.and_count * n
        assert len(np.unique(tw)) == len(tw)


# -- ReLU -----------------------------------------------------------------------------------------


def relu_int(a, b, p, k):
    v = (a + b) % p
    x = (v - p if v > p // 2 else v) >> k  # Python >> floors negatives
    return max(x, 0)


def relu_cases(p, k, m, rng):
    """Random shares (a, b) plus edge cases for v, the truncation boundaries and s = a + b."""
    h = p // 2
    vs = [0, 1, 2, h - 1, h, h + 1, h + 2, p - 1, p - 2]
    for base in (0, h - h % (1 << k), p):  # multiples of 2^k near 0, h, and just below p
        for j in (-2, -1, 0, 1, 2):
            for d in (-1, 0, 1):
                vs.append((base + j * (1 << k) + d) % p)
    n_edge = len(vs)
    a = [int(x) for x in rng.integers(0, p, m)]
    b = [int(x) for x in rng.integers(0, p, m)]
    for i, v in enumerate(vs):  # random split of each special v
        b[i] = (v - a[i]) % p
    # extreme splits: s = a + b at 0, h, h+1, p-1, p, p+h, p+h+1, 2p-2
    for i, (x, y) in enumerate(
        [(0, 0), (0, h), (h, 1), (p - 1, 0), (1, p - 1), (p - 1, 1), (h, p - 1), (p - 1, p - 1),
         (h + 1, p - 1), (p - 1, h + 2), (0, p - 1), (h, h), (h + 1, h)]
    ):  # fmt: skip
        a[n_edge + i], b[n_edge + i] = x, y
    return a, b


def weighted(circuit, outputs, weights):
    """The weighted sum of a circuit's output bits (dict of ``(nbits, n)`` arrays), as ints."""
    bits = np.concatenate([outputs[k] for k in circuit.outputs]).astype(object)
    return [int(x) for x in np.asarray(weights, dtype=object) @ bits]


RELU_PARAMS = [
    (DELPHI_PRIME, 9),
    (DELPHI_PRIME, 0),
    (DELPHI_PRIME, 1),
    (DELPHI_PRIME, 13),
    (DELPHI_PRIME, 38),
    (POLY_PRIME, 9),
    (POLY_PRIME, 17),
    (5, 0),
    (7, 1),
    (97, 3),
    (65537, 8),
    (2**31 - 1, 12),
    (2**61 - 1, 20),
]


def _ntt_prime(bits, two_adicity):
    c = (1 << (bits - two_adicity)) - 1
    while not is_probable_prime(c * (1 << two_adicity) + 1):
        c -= 2
    return c * (1 << two_adicity) + 1


def _share_bits(p, a, b):
    nb = p.bit_length()
    return {"server_share": int_to_bits(np.array(a, np.uint64), nb),
            "client_share": int_to_bits(np.array(b, np.uint64), nb)}  # fmt: skip


@pytest.mark.parametrize("p, k", RELU_PARAMS + [(_ntt_prime(52, 14), 16)])
def test_relu_circuit_plain(p, k):
    """Exact semantics against Python ints, in plaintext over many cases: the weighted output
    bits sum to the truncated ReLU, and ``delta`` is set only on positive inputs."""
    rng = np.random.default_rng(p % 1000 + k)
    circuit = relu_circuit(p, k)
    a, b = relu_cases(p, k, 3000, rng)
    out = circuit.evaluate_plain(_share_bits(p, a, b))
    want = [relu_int(x, y, p, k) for x, y in zip(a, b, strict=True)]
    assert weighted(circuit, out, relu_weights(p, k)) == want
    assert list(relu_reference(a, b, p, k)) == want


@pytest.mark.parametrize("p, k", [(DELPHI_PRIME, 9), (POLY_PRIME, 9), (97, 3), (2**31 - 1, 12)])
def test_relu_garbled(p, k):
    rng = np.random.default_rng(k)
    circuit = relu_circuit(p, k)
    a, b = relu_cases(p, k, 4000 if p == DELPHI_PRIME else 1000, rng)
    got = run_garbled(circuit, {"server_share": a, "client_share": b}, evaluator=("client_share",))
    bits = {name: int_to_bits(np.asarray(v, np.uint64), len(circuit.outputs[name]))
            for name, v in got.items()}  # fmt: skip
    want = [relu_int(x, y, p, k) for x, y in zip(a, b, strict=True)]
    assert weighted(circuit, bits, relu_weights(p, k)) == want


def test_relu_cost():
    """129 ANDs for the default prime (Delphi's circuit: about 533), with no mask input."""
    circuit = relu_circuit(DELPHI_PRIME, 9)
    assert circuit.and_count == 129
    assert relu_circuit(POLY_PRIME, 9).and_count == 150
    assert circuit.table_bytes == 32 * circuit.and_count
    assert sum(circuit.and_count_by_stage().values()) == circuit.and_count
    assert set(circuit.inputs) == {"server_share", "client_share"}
    assert all(len(v) == 41 for v in circuit.inputs.values())
    assert {k: len(v) for k, v in circuit.outputs.items()} == {"y": 31, "delta": 1}
    assert relu_weights(DELPHI_PRIME, 9) == [1 << j for j in range(31)] + [-1]


class _RefusesOverlap:
    """An encryptor that, like cryptography >= 51, refuses overlapping buffers."""

    def __init__(self, enc):
        self.enc = enc

    def update_into(self, data, buf):
        if np.shares_memory(np.asarray(data), np.asarray(buf)):
            raise ValueError("data and buf must not overlap")
        return self.enc.update_into(data, buf)


@pytest.mark.parametrize("in_place", [None, False, "refused"])
def test_permute_words_in_place_matches_permute(in_place):
    """``permute_words(x, x)`` is AES of every block, whether the installed ``cryptography``
    encrypts in place, refuses to (as >= 51 does: the first call finds out and copies), or
    the copy fallback is already known to be needed (``_in_place=False``)."""
    aes = FixedKeyAES()
    if in_place == "refused":
        aes._enc = _RefusesOverlap(aes._enc)
    else:
        aes._in_place = in_place
    blocks = random_blocks((37,), np.random.default_rng(1))
    want = aes.permute(blocks).reshape(-1)
    buf = np.zeros(2 * 37 + 2, dtype=np.uint64)
    buf[: 2 * 37] = blocks.reshape(-1)
    aes.permute_words(buf, buf, 2 * 37)
    assert np.array_equal(buf[: 2 * 37], want)
    if in_place == "refused":
        assert aes._in_place is False  # found out on the first overlapping call
    out = np.zeros_like(buf)
    aes.permute_words(blocks.reshape(-1), out, 2 * 37)
    assert np.array_equal(out[: 2 * 37], want)


@pytest.mark.parametrize("p, k, c", [(DELPHI_PRIME, 9, 6 << 8), (POLY_PRIME, 9, 6 << 8),
                                     (POLY_PRIME, 12, 1), (DELPHI_PRIME, 9, 0),
                                     (POLY_PRIME, 17, (1 << 10) - 1)])  # fmt: skip
def test_clipped_relu_is_exact_at_its_bound(p, k, c):
    """ReLU6-style clipping: ``min(max(x, 0), c)``, exact on every side of the bound and
    whatever the hidden ``delta`` (values near c, both share orders), garbled and in the
    clear."""
    circuit = relu_circuit(p, k, clip=c)
    rng = np.random.default_rng(c + k)
    ys = np.repeat(np.arange(max(c - 3, -3), c + 4), 300)
    v = ys * (1 << k) + rng.integers(0, 1 << k, len(ys))  # every low part, both signs
    a = rng.integers(0, p, len(ys))
    b = (v - a) % p
    want = list(np.clip(np.floor_divide(v, 1 << k), 0, c))
    assert list(relu_reference(a, b, p, k, clip=c)) == want
    inputs = _share_bits(p, a, b)
    weights = relu_weights(p, k)
    assert weighted(circuit, circuit.evaluate_plain(inputs), weights) == want
    g = garble(circuit, len(ys))
    labels = {"server_share": g.encode("server_share", inputs["server_share"])}
    l0, l1 = g.label_pairs("client_share")
    labels["client_share"] = np.where(inputs["client_share"][..., None].astype(bool), l1, l0)
    bits = circuit.split_outputs(decode(evaluate(circuit, g.take_tables(), labels), g.decode_bits))
    assert weighted(circuit, bits, weights) == want


def test_clipped_relu_cost_and_no_op_bound():
    base = relu_circuit(DELPHI_PRIME, 9).and_count
    assert relu_circuit(DELPHI_PRIME, 9, clip=6 << 8).and_count == base + 92
    poly = relu_circuit(POLY_PRIME, 9).and_count
    assert relu_circuit(POLY_PRIME, 9, clip=6 << 8).and_count == poly + 113
    big = DELPHI_PRIME // 2 >> 9  # no output exceeds it: no clipping stage at all
    assert relu_circuit(DELPHI_PRIME, 9, clip=big).and_count == base
    with pytest.raises(ValueError, match="clip needs a bound"):
        relu_circuit(DELPHI_PRIME, 9, clip=-1)


def test_output_rows_give_the_value_of_the_held_bit_only():
    """Two garbled rows per output bit and instance: the evaluator holding the label of bit b
    reads v_b; with the other label (which it never has) it would read v_{1-b}; a wrong tweak
    reads noise."""
    from safenet.crypto.gc.tables import decrypt_rows, encrypt_rows, row_tweaks

    rng = np.random.default_rng(5)
    k, n = 3, 500
    delta = random_blocks((1,), rng)[0]
    delta[0] |= np.uint64(1)
    zero = random_blocks((k, n), rng)
    v0, v1 = (rng.integers(0, 2**63, (k, n), dtype=np.uint64) for _ in range(2))
    tw = row_tweaks(1000, k, n, 0, n)
    assert len(np.unique(tw)) == k * n and (tw % 2 == 0).all()
    rows = encrypt_rows(zero, delta, v0, v1, tw)
    assert rows.shape == (k, n, 2)
    bits = rng.integers(0, 2, (k, n)).astype(bool)
    held = np.where(bits[..., None], zero ^ delta, zero)
    assert np.array_equal(decrypt_rows(held, rows, tw), np.where(bits, v1, v0))
    other = np.where(bits[..., None], zero, zero ^ delta)
    assert np.array_equal(decrypt_rows(other, rows, tw), np.where(bits, v0, v1))
    assert not (decrypt_rows(held, rows, tw + np.uint64(2)) == np.where(bits, v1, v0)).any()


def _relu_layer_with_rows(n_cases, seed, tweak_base, chunk=None):
    """A garbled ReLU layer with output rows as the protocol makes them (row masks ``s``,
    values ``w_j b + s_j mod p``) and the evaluator's labels; returns what tests need."""
    p, k = DELPHI_PRIME, 9
    circuit = relu_circuit(p, k)
    rng = np.random.default_rng(seed)
    a, b = relu_cases(p, k, n_cases, rng)
    n, m = len(a), circuit.n_outputs
    s = rng.integers(0, p, (m, n), dtype=np.uint64)
    w = np.array([x % p for x in relu_weights(p, k)], dtype=object)[:, None]
    v1 = ((s.astype(object) + w) % p).astype(np.uint64)
    g = garble(circuit, n, tweak_base=tweak_base, rows=(s, v1), chunk=chunk)
    bits = _share_bits(p, a, b)
    labels = {"server_share": g.encode("server_share", bits["server_share"])}
    l0, l1 = g.label_pairs("client_share")
    labels["client_share"] = np.where(bits["client_share"][..., None].astype(bool), l1, l0)
    want = [relu_int(x, y, p, k) for x, y in zip(a, b, strict=True)]
    return circuit, g, labels, s, v1, want


def test_garble_rows_turn_every_output_bit_into_its_value_and_no_decode_leaks_it():
    """``garble(rows=...)``: each output bit reaches the evaluator only as its row's value;
    the rows use the tweaks after the AND gates' (tweak_span), chunks and threads change
    nothing, and no decode bits are kept."""
    from safenet.crypto.gc.tables import decrypt_rows, row_tweaks
    from safenet.crypto.gc.walk import tweak_span

    p = DELPHI_PRIME
    circuit, g, labels, s, v1, want = _relu_layer_with_rows(401, 9, 77, chunk=37)
    n, m = g.n_instances, circuit.n_outputs
    assert tweak_span(circuit, n, rows=True) == (circuit.and_count + m) * n
    assert not g.decode_bits.any()
    out = evaluate(circuit, g.take_tables(), labels, tweak_base=77)
    tw = row_tweaks(77 + circuit.and_count * n, m, n, 0, n)
    got = decrypt_rows(out, g.rows, tw).astype(object)
    assert list((got.sum(axis=0) - s.astype(object).sum(axis=0)) % p) == want
    with pytest.raises(ValueError, match="row values"):
        garble(circuit, 4, rows=(s[:, :4], v1[:, :3]))


@pytest.mark.parametrize("chunk", [None, 7, 64])
def test_evaluate_shares_sums_the_rows_mod_p(chunk):
    """``evaluate_shares`` opens every output bit's row and sums mod p per instance (odd
    chunks included); a row that opens outside [0, p) is refused, not summed."""
    from safenet.crypto.gc.evaluate import evaluate_shares

    p = DELPHI_PRIME
    circuit, g, labels, s, _, want = _relu_layer_with_rows(301, 3, 5)
    tables = g.take_tables()
    z = evaluate_shares(circuit, tables, labels, g.rows, p, chunk=chunk, tweak_base=5)
    assert list((z.astype(object) - s.astype(object).sum(axis=0)) % p) == want
    bad = g.rows.copy()
    bad[3, 17] ^= np.uint64(1 << 63)  # both rows: whichever the evaluator opens
    with pytest.raises(ValueError, match="outside"):
        evaluate_shares(circuit, tables, labels, bad, p, chunk=chunk, tweak_base=5)
