"""HE offline phase of conv/linear layers (coefficient packing) and the exact mod-p layer."""

import numpy as np
import pytest
import seal

from safenet.crypto.he import ClientKeys, HEContext, HEError, HEParams
from safenet.field import DELPHI_PRIME
from safenet.plan.ops import Conv, Linear, Op
from safenet.protocol.linear import (
    LinearPacking,
    ServerLinear,
    _blocks,
    client_decrypt,
    client_encrypt,
    linear_mod_p,
)

P49 = 2**49 - 2**41 + 1
PRIMES = [DELPHI_PRIME, P49]


@pytest.fixture(scope="module", params=PRIMES, ids=["p41", "p49"])
def party(request):
    he = HEContext(HEParams(8192, request.param))
    return he, ClientKeys(he)


def conv(ci, co, k, s, pad, h, w=None, groups=1, wmax=600, seed=0):
    """A conv op with random integer weights; k, s, pad may be (h, w) pairs."""
    k, s, pad = ((v, v) if isinstance(v, int) else v for v in (k, s, pad))
    w = h if w is None else w
    ho, wo = (h + 2 * pad[0] - k[0]) // s[0] + 1, (w + 2 * pad[1] - k[1]) // s[1] + 1
    rng = np.random.default_rng(seed)
    weight = rng.integers(-wmax, wmax + 1, (co, ci // groups, *k))
    attrs = Conv(stride=list(s), padding=list(pad), groups=groups, kernel=list(k))
    arrays = {"weight": weight, "bias": np.zeros(co, dtype=np.int64)}
    return Op(attrs, [0], (co, ho, wo), 0, arrays, "conv"), (ci, h, w)


def linear(ci, co, wmax=600, seed=0):
    weight = np.random.default_rng(seed).integers(-wmax, wmax + 1, (co, ci))
    arrays = {"weight": weight, "bias": np.zeros(co, dtype=np.int64)}
    return Op(Linear(), [0], (co,), 0, arrays, "fc"), (ci,)


def exact(op, x, p):
    """The conv/linear mod p with Python integers (slow; small shapes)."""
    w = op.arrays["weight"].astype(object)
    x = np.asarray(x).astype(object)
    if op.kind == "linear":
        return w.dot(x) % p
    (sh, sw), (ph, pw), g = op.attrs.stride, op.attrs.padding, op.attrs.groups
    c, h, wd = x.shape
    xp = np.zeros((c, h + 2 * ph, wd + 2 * pw), dtype=object)
    xp[:, ph : ph + h, pw : pw + wd] = x
    co, ho, wo = op.shape
    cpg, opg = c // g, co // g
    out = np.zeros((co, ho, wo), dtype=object)
    for o in range(co):
        gi = o // opg
        for dy in range(w.shape[2]):
            for dx in range(w.shape[3]):
                patch = xp[gi * cpg : (gi + 1) * cpg, dy : dy + sh * (ho - 1) + 1 : sh]
                patch = patch[:, :, dx : dx + sw * (wo - 1) + 1 : sw]
                out[o] += (w[o, :, dy, dx][:, None, None] * patch).sum(0)
    return out % p


def mask(shape, p, seed=1):
    """Uniform residues with the extremes 0, 1, p - 1, (p - 1) / 2, (p + 1) / 2 planted."""
    r = np.random.default_rng(seed).integers(0, p, shape)
    flat = r.reshape(-1)
    flat[:5] = [0, 1, p - 1, (p - 1) // 2, (p + 1) // 2]
    flat[-3:] = p - 1
    return r


CASES = {
    "3x3-s1-p1": conv(3, 5, 3, 1, 1, 8),
    "blocks-and-groups": conv(24, 20, 3, 1, 1, 16),  # several input blocks and output groups
    "3x3-s2-p1-odd": conv(12, 10, 3, 2, 1, 15),
    "1x1-s2": conv(10, 8, 1, 2, 0, 14),
    "5x5-s2-p2": conv(4, 6, 5, 2, 2, 13),
    "2x2-s3": conv(3, 4, 2, 3, 0, 11),  # kernel smaller than the stride
    "rect": conv(5, 7, (3, 1), (2, 1), (1, 0), 9, 12),
    "groups2": conv(8, 6, 3, 1, 0, 11, groups=2),
    "depthwise": conv(6, 6, 3, 1, 1, 9, groups=6),
    "tiles": conv(1, 2, 3, 1, 1, 100),  # one channel is too tall for one polynomial
    "linear": linear(300, 200),
    "linear-small": linear(64, 10),
}


@pytest.mark.parametrize("case", list(CASES))
def test_offline_reply_plus_mask_is_the_layer(party, case):
    he, keys = party
    p = he.params.plain_modulus
    op, in_shape = CASES[case]
    packing = LinearPacking(op, in_shape, he)
    server = ServerLinear(op, in_shape, he)
    r = mask(in_shape, p)
    replies, t = server.respond(client_encrypt(packing, keys, r), keys.public_key_bytes)
    share = client_decrypt(packing, keys, replies)
    want = linear_mod_p(op, r, p)
    assert t.shape == share.shape == want.shape == op.shape
    assert t.dtype == share.dtype == np.int64
    assert t.min() >= 0 and share.min() >= 0 and t.max() < p and share.max() < p
    assert ((share + t) % p == want).all()
    # the client learns the layer only through the reply: enough budget left, never near 0
    budgets = [keys.noise_budget(he.ciphertext_from_bytes(c)) for c in replies]
    assert min(budgets) >= 20
    assert all(he.ciphertext_from_bytes(c).coeff_modulus_size() == 2 for c in replies)
    if case in ("blocks-and-groups", "tiles", "linear"):
        assert packing.n_in > 1 and packing.n_out > 1
    if case == "tiles":
        assert packing.tiles > 1


def test_linear_mod_p_is_exact_on_every_case():
    for p in PRIMES + [2**61 - 1]:
        for case, (op, in_shape) in CASES.items():
            if case == "tiles":
                continue
            x = mask(in_shape, p, seed=3)
            got = linear_mod_p(op, x, p)
            assert got.dtype == np.int64 and got.shape == op.shape
            assert (got.astype(object) == exact(op, x, p)).all(), (p, case)


def test_linear_mod_p_large_weights_and_batches():
    p = P49
    for op, in_shape in (conv(6, 4, 3, 2, 1, 9, wmax=p // 2), linear(50, 7, wmax=2**45)):
        x = mask((3, *in_shape), p, seed=4)
        got = linear_mod_p(op, x, p)
        assert got.shape == (3, *op.shape)
        for i in range(3):
            assert (got[i].astype(object) == exact(op, x[i], p)).all()
            assert (linear_mod_p(op, x[i], p) == got[i]).all()


def test_resnet32_widest_layer(party):
    """16 -> 16 channels, 3x3, 32x32: the largest ResNet-32 layer (14 ciphertexts)."""
    he, keys = party
    p = he.params.plain_modulus
    op, in_shape = conv(16, 16, 3, 1, 1, 32, wmax=2**9)
    packing = LinearPacking(op, in_shape, he)
    assert packing.n_in + packing.n_out == 14
    server = ServerLinear(op, in_shape, he)
    r = mask(in_shape, p)
    replies, t = server.respond(client_encrypt(packing, keys, r), keys.public_key)
    share = client_decrypt(packing, keys, replies)
    want = linear_mod_p(op, r, p)
    assert ((share + t) % p == want).all()
    if p == DELPHI_PRIME:
        assert (want.astype(object) == exact(op, r, p)).all()


def test_fresh_mask_every_response(party):
    he, keys = party
    p = he.params.plain_modulus
    op, in_shape = CASES["3x3-s1-p1"]
    packing = LinearPacking(op, in_shape, he)
    server = ServerLinear(op, in_shape, he)
    cts = client_encrypt(packing, keys, mask(in_shape, p))
    (a, ta), (b, tb) = server.respond(cts, keys.public_key), server.respond(cts, keys.public_key)
    assert (ta != tb).mean() > 0.99 and a[0] != b[0]
    want = linear_mod_p(op, mask(in_shape, p), p)
    for replies, t in ((a, ta), (b, tb)):
        assert ((client_decrypt(packing, keys, replies) + t) % p == want).all()


def test_all_zero_weights_still_answer(party):
    he, keys = party
    p = he.params.plain_modulus
    op, in_shape = conv(3, 4, 3, 1, 1, 6)
    op.arrays["weight"][:] = 0
    packing = LinearPacking(op, in_shape, he)
    replies, t = ServerLinear(op, in_shape, he).respond(
        client_encrypt(packing, keys, mask(in_shape, p)), keys.public_key
    )
    assert ((client_decrypt(packing, keys, replies) + t) % p == 0).all()


def test_block_choice_is_minimal():
    for cv, co, m in [(16, 16, 7), (64, 32, 28), (3, 16, 7), (300, 200, 8192), (5, 1, 3)]:
        cb, cg, nb, ng = _blocks(cv, co, m)
        assert cb * cg <= m and nb * cb >= cv and ng * cg >= co
        brute = min(
            -(-cv // b) + -(-co // g) for b in range(1, m + 1) for g in range(1, m // b + 1)
        )
        assert nb + ng == brute


def test_bad_ciphertexts_are_clear_errors():
    he = HEContext()
    keys = ClientKeys(he)
    p = he.params.plain_modulus
    op, in_shape = CASES["blocks-and-groups"]
    packing = LinearPacking(op, in_shape, he)
    server = ServerLinear(op, in_shape, he)
    cts = client_encrypt(packing, keys, mask(in_shape, p))
    pk = keys.public_key
    with pytest.raises(ValueError, match=f"expected {packing.n_in} input ciphertexts"):
        server.respond(cts[:-1], pk)
    with pytest.raises(HEError, match="malformed ciphertext"):
        server.respond(cts[:-1] + [cts[-1][:1000]], pk)
    with pytest.raises(HEError, match="malformed ciphertext"):
        server.respond([b"garbage"] + cts[1:], pk)
    with pytest.raises(HEError, match="too large"):
        server.respond(cts[:-1] + [cts[-1] * 3], pk)
    ct = he.ciphertext_from_bytes(cts[0])
    ntt = he.evaluator.transform_to_ntt(ct)
    with pytest.raises(HEError, match="NTT"):
        server.respond([ntt.to_string()] + cts[1:], pk)
    low = he.evaluator.mod_switch_to_next(ct)
    with pytest.raises(HEError, match="at 4 coefficient primes, got size 2 at 3"):
        server.respond(cts[:-1] + [low.to_string()], pk)
    big = he.evaluator.multiply(ct, ct)
    with pytest.raises(HEError, match="too large"):  # size 3
        server.respond([big.to_string()] + cts[1:], pk)
    with pytest.raises(HEError, match="malformed public key"):
        server.respond(cts, b"not a key")
    replies, _ = server.respond(cts, pk)
    with pytest.raises(ValueError, match=f"expected {packing.n_out} reply"):
        client_decrypt(packing, keys, replies[1:])
    with pytest.raises(HEError, match="at 2 coefficient primes"):
        client_decrypt(packing, keys, (cts * 2)[: packing.n_out])
    with pytest.raises(ValueError, match="does not match the layer input"):
        client_encrypt(packing, keys, np.zeros((1, *in_shape), dtype=np.int64))
    with pytest.raises(ValueError, match="residues"):
        client_encrypt(packing, keys, np.full(in_shape, p))


def test_flood_bits_checked_both_ways():
    he = HEContext(HEParams(8192, P49))
    op, in_shape = conv(16, 16, 3, 1, 1, 8, wmax=2**12)
    with pytest.raises(ValueError, match="needs flood_bits >="):
        ServerLinear(op, in_shape, he, flood_bits=60)
    with pytest.raises(HEError, match="noise budget"):
        ServerLinear(op, in_shape, he, flood_bits=110)
    server = ServerLinear(op, in_shape, he)
    assert server.required_flood_bits <= 90 == server.flood_bits


def test_coefficient_plaintexts_roundtrip_and_multiply_negacyclically():
    he = HEContext()
    keys = ClientKeys(he)
    p, n = he.params.plain_modulus, he.slots
    a = np.zeros(n, dtype=np.int64)
    a[[0, 5, n - 1]] = [3, p - 2, 7]
    pt = he.plain_from_coeffs(a)
    assert (he.plain_to_coeffs(pt) == a).all()
    # (3 - 2 t^5 + 7 t^(N-1)) * t = 3 t - 2 t^6 - 7  (t^N = -1)
    t1 = he.plain_from_coeffs(np.array([0, 1]))
    prod = he.evaluator.multiply_plain(keys.encrypt_coeffs(a), t1)
    want = np.zeros(n, dtype=np.int64)
    want[[0, 1, 6]] = [p - 7, 3, p - 2]
    assert (keys.decrypt_coeffs(prod) == want).all()
    with pytest.raises(ValueError, match="do not fit"):
        he.plain_from_coeffs(np.zeros(n + 1))
    with pytest.raises(HEError, match="non-NTT"):
        ntt = seal.Plaintext(pt)
        he.evaluator.transform_to_ntt_inplace(ntt, he.context.first_parms_id())
        he.plain_to_coeffs(ntt)


def test_multiply_plain_lifts_coefficients_centred():
    """SEAL reads a plaintext coefficient c >= p/2 as c - p: -1 costs no more noise than +1."""
    he = HEContext(HEParams(8192, P49))
    keys = ClientKeys(he)
    p = he.params.plain_modulus
    ct = keys.encrypt_coeffs(np.random.default_rng(0).integers(0, p, he.slots))
    budget = {}
    for name, c in (("plus", 1), ("minus", p - 1), ("uniform", None)):
        k = np.zeros(he.slots, dtype=np.int64)
        k[:1000] = np.random.default_rng(1).integers(0, p, 1000) if c is None else c
        budget[name] = keys.noise_budget(he.evaluator.multiply_plain(ct, he.plain_from_coeffs(k)))
    assert abs(budget["plus"] - budget["minus"]) <= 1
    assert budget["minus"] > budget["uniform"] + 30
