"""BFV layer: exact field arithmetic on ciphertexts, serialisation, re-randomisation, flooding."""

import numpy as np
import pytest

from safenet.crypto.he import ClientKeys, HEContext, HEError, HEParams, flood, rerandomize


@pytest.fixture(scope="module")
def he():
    return HEContext()


@pytest.fixture(scope="module")
def keys(he):
    return ClientKeys(he)


def test_params_must_allow_batching():
    with pytest.raises(ValueError, match="1 mod 2N"):
        HEParams(plain_modulus=2**61 - 1)


def test_server_computes_w_times_r_minus_s_exactly(he, keys):
    p = he.params.plain_modulus
    rng = np.random.default_rng(0)
    r, w, s = (rng.integers(0, p, he.slots) for _ in range(3))
    wire = keys.encrypt(r).to_string()
    # server side: only bytes, the public key and its own plaintexts
    ct = he.ciphertext_from_bytes(wire)
    pk = he.public_key_from_bytes(keys.public_key_bytes)
    out = he.evaluator.multiply_plain(ct, he.encode(w))
    out = he.evaluator.sub_plain(out, he.encode(s))
    after_mul = keys.noise_budget(out)
    assert after_mul >= 75  # docs/architecture.md: about 82 bits left after one product
    out = flood(he, rerandomize(he, out, pk), 100)
    assert 20 <= keys.noise_budget(out) <= after_mul - 40  # ~32 bits left, 2^100 of noise
    got = keys.decrypt(he.ciphertext_from_bytes(out.to_string()))
    want = (r.astype(object) * w.astype(object) - s.astype(object)) % p
    assert (got.astype(object) == want).all()


def test_flooding_changes_the_ciphertext_not_the_plaintext(he, keys):
    vals = np.arange(he.slots)
    ct = keys.encrypt(vals)
    a, b = flood(he, ct, 90), flood(he, ct, 90)
    sa, sb, sc = a.to_string(), b.to_string(), ct.to_string()
    assert sa != sb and sa != sc and sb != sc
    assert (keys.decrypt(a) == vals).all() and (keys.decrypt(b) == vals).all()
    assert keys.noise_budget(a) < keys.noise_budget(ct) - 40


def test_too_much_noise_is_detected(he, keys):
    ct = flood(he, keys.encrypt(np.arange(10)), 140)
    with pytest.raises(HEError, match="noise budget exhausted"):
        keys.decrypt(ct)


def test_malformed_inputs_are_clear_errors(he, keys):
    data = keys.encrypt(np.arange(4)).to_string()
    with pytest.raises(HEError, match="malformed ciphertext"):
        he.ciphertext_from_bytes(data[: len(data) // 2])
    with pytest.raises(HEError, match="malformed ciphertext"):
        he.ciphertext_from_bytes(b"garbage")
    with pytest.raises(HEError, match="malformed public key"):
        he.public_key_from_bytes(b"garbage")
    with pytest.raises(ValueError, match="do not fit"):
        he.encode(np.zeros(he.slots + 1))
