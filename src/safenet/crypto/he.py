"""BFV homomorphic encryption (Microsoft SEAL via seal-python) over the plan's prime field.

The plaintext modulus is the plan's prime p, so a batched plaintext is a vector of N values
in F_p and slot-wise products and sums are exactly the field arithmetic of the protocol.
The client owns the keys; the server only ever holds the public key and ciphertexts.

Circuit privacy (the client must learn M r - s and nothing else about the server's M):
:func:`rerandomize` adds a fresh public-key encryption of zero, and :func:`flood` adds
uniform noise of ``flood_bits`` bits to the ciphertext's c0 polynomial, statistically hiding
the noise that the server's plaintexts left behind. SEAL has no call for the latter; it is
done on the documented uncompressed serialisation (the ciphertext's two polynomials are its
last 2 * L * N little-endian uint64 words, RNS limb by limb), adding the noise modulo each
coefficient prime, and the result is validated by SEAL on load.

Coefficient encoding (:meth:`HEContext.plain_from_coeffs`, :meth:`ClientKeys.encrypt_coeffs`,
:meth:`ClientKeys.decrypt_coeffs`) puts field elements straight into the plaintext
polynomial's coefficients, so a plaintext product is a polynomial product mod (X^N + 1, p):
the basis of the convolution packing in :mod:`safenet.protocol.linear`. seal-python has no
numpy access to plaintext coefficients; they are written and read through the uncompressed
serialisation (the N coefficients are its last N little-endian uint64 words). SEAL lifts
plaintext coefficients centred (c >= (p + 1) / 2 counts as c - p) in ``multiply_plain`` and
``transform_to_ntt``, so small negative weights stored as p - |w| add little noise.
"""

from __future__ import annotations

import os
import secrets
import tempfile
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import seal

from safenet.field import DELPHI_PRIME


class HEError(RuntimeError):
    """A ciphertext or key is malformed, or the noise budget would be exceeded."""


@dataclass(frozen=True)
class HEParams:
    """BFV parameters: ring dimension N, plaintext modulus p (= the plan's prime)."""

    poly_degree: int = 8192
    plain_modulus: int = DELPHI_PRIME

    def __post_init__(self) -> None:
        if (self.plain_modulus - 1) % (2 * self.poly_degree):
            raise ValueError(f"p must be 1 mod 2N = {2 * self.poly_degree} for batching")


class HEContext:
    """A SEAL context with its encoder and evaluator; shared by both parties' code."""

    def __init__(self, params: HEParams = HEParams()) -> None:
        self.params = params
        parms = seal.EncryptionParameters(seal.scheme_type.bfv)
        parms.set_poly_modulus_degree(params.poly_degree)
        parms.set_coeff_modulus(seal.CoeffModulus.BFVDefault(params.poly_degree))
        parms.set_plain_modulus(params.plain_modulus)
        self.context = seal.SEALContext(parms)
        if not self.context.parameters_set():
            raise HEError(f"invalid BFV parameters: {self.context.parameter_error_message()}")
        self.encoder = seal.BatchEncoder(self.context)
        self.evaluator = seal.Evaluator(self.context)
        # the data-level primes (the last, special prime is dropped after key generation)
        self.coeff_primes = [q.value() for q in parms.coeff_modulus()][:-1]

    @property
    def slots(self) -> int:
        return self.params.poly_degree

    def encode(self, values: np.ndarray) -> seal.Plaintext:
        """Batch-encode up to N field elements (any integers; reduced mod p)."""
        v = np.asarray(values, dtype=np.int64).reshape(-1)
        if len(v) > self.slots:
            raise ValueError(f"{len(v)} values do not fit {self.slots} slots")
        full = np.zeros(self.slots, dtype=np.uint64)
        full[: len(v)] = np.mod(v, self.params.plain_modulus).astype(np.uint64)
        return self.encoder.encode(full)

    @cached_property
    def _plain_template(self) -> bytes:
        return seal.Plaintext(self.slots).to_bytes(seal.compr_mode_type.none)

    def plain_from_coeffs(self, coeffs: np.ndarray) -> seal.Plaintext:
        """The plaintext polynomial with the given coefficients (up to N integers, mod p).

        Built on the uncompressed serialisation of a zero plaintext of N coefficients;
        SEAL validates the result (every coefficient below p) on load.
        """
        c = np.asarray(coeffs).reshape(-1)
        if len(c) > self.slots:
            raise ValueError(f"{len(c)} coefficients do not fit degree {self.slots}")
        full = np.zeros(self.slots, dtype="<u8")
        full[: len(c)] = np.mod(c.astype(np.int64), self.params.plain_modulus)
        raw = bytearray(self._plain_template)
        raw[-8 * self.slots :] = full.tobytes()
        pt = seal.Plaintext()
        pt.load_bytes(self.context, bytes(raw))
        return pt

    def plain_to_coeffs(self, pt: seal.Plaintext) -> np.ndarray:
        """The N coefficients of a (non-NTT) plaintext as int64 residues in [0, p)."""
        if pt.is_ntt_form():
            raise HEError("plain_to_coeffs needs a plaintext in coefficient (non-NTT) form")
        n = pt.coeff_count()
        out = np.zeros(self.slots, dtype=np.int64)
        if n:
            raw = pt.to_bytes(seal.compr_mode_type.none)
            out[:n] = np.frombuffer(raw, dtype="<u8", count=n, offset=len(raw) - 8 * n)
        return out

    def encrypt_zero(self, public_key: seal.PublicKey) -> seal.Ciphertext:
        """A fresh public-key encryption of zero (re-randomisation, empty sums)."""
        return seal.Encryptor(self.context, public_key).encrypt_zero()

    @property
    def max_ciphertext_bytes(self) -> int:
        """Most bytes a serialised ciphertext of size 2 can take (uncompressed, all primes,
        plus SEAL's header): a receiver refuses larger frames before reading them."""
        return 2 * 8 * self.slots * len(self.coeff_primes) + 4096

    @property
    def max_public_key_bytes(self) -> int:
        """Most bytes a serialised public key can take (it also has the special prime)."""
        return 2 * 8 * self.slots * (len(self.coeff_primes) + 1) + 4096

    def load_ciphertext(self, data: bytes, primes: int, what: str) -> seal.Ciphertext:
        """Load serialised ``data`` from a peer and check its form: size 2, not NTT, at the
        level of ``primes`` coefficient primes, not transparent (a clear :class:`HEError`
        otherwise). The flooding bounds assume exactly such ciphertexts."""
        if not isinstance(data, bytes | bytearray | memoryview):
            raise HEError(f"{what}: expected bytes, got {type(data).__name__}")
        if len(data) > self.max_ciphertext_bytes:
            raise HEError(f"{what}: {len(data)} bytes is too large for a ciphertext")
        ct = self.ciphertext_from_bytes(bytes(data))
        if ct.size() != 2 or ct.is_ntt_form() or ct.coeff_modulus_size() != primes:
            raise HEError(
                f"{what}: expected a size-2 ciphertext at {primes} coefficient primes, got "
                f"size {ct.size()} at {ct.coeff_modulus_size()} primes"
                + (" in NTT form" if ct.is_ntt_form() else "")
            )
        if ct.is_transparent():
            raise HEError(f"{what}: transparent ciphertext (not an encryption)")
        return ct

    def ciphertext_from_bytes(self, data: bytes) -> seal.Ciphertext:
        """Load and validate a serialised ciphertext (a clear error if it is not one)."""
        ct = seal.Ciphertext()
        try:
            ct.load_bytes(self.context, data)
        except Exception as e:  # SEAL raises several types on malformed input
            raise HEError(f"malformed ciphertext: {e}") from e
        return ct

    def public_key_from_bytes(self, data: bytes) -> seal.PublicKey:
        """Load and validate a serialised public key."""
        if len(data) > self.max_public_key_bytes:
            raise HEError(f"public key of {len(data)} bytes is too large for these parameters")
        fd, path = tempfile.mkstemp(suffix=".pk")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            pk = seal.PublicKey()
            pk.load(self.context, path)
        except Exception as e:
            raise HEError(f"malformed public key: {e}") from e
        finally:
            os.unlink(path)
        return pk


class ClientKeys:
    """The client's key pair: it encrypts its masks and decrypts the server's answers."""

    def __init__(self, he: HEContext) -> None:
        self.he = he
        keygen = seal.KeyGenerator(he.context)
        self._secret = keygen.secret_key()
        self.public_key = keygen.create_public_key()
        self._encryptor = seal.Encryptor(he.context, self.public_key, self._secret)
        self._decryptor = seal.Decryptor(he.context, self._secret)

    @cached_property
    def public_key_bytes(self) -> bytes:
        return self.public_key.to_string()

    def encrypt(self, values: np.ndarray) -> seal.Ciphertext:
        """Encrypt up to N field elements (symmetric encryption: fresh, smaller noise)."""
        return self._encryptor.encrypt_symmetric(self.he.encode(values))

    def decrypt(self, ct: seal.Ciphertext) -> np.ndarray:
        """All N slots as uint64 residues mod p."""
        if self._decryptor.invariant_noise_budget(ct) <= 0:
            raise HEError("ciphertext noise budget exhausted: decryption would be wrong")
        return self.he.encoder.decode_uint64(self._decryptor.decrypt(ct))

    def encrypt_coeffs(self, coeffs: np.ndarray) -> seal.Ciphertext:
        """Symmetric encryption of the plaintext polynomial with these coefficients (mod p)."""
        return self._encryptor.encrypt_symmetric(self.he.plain_from_coeffs(coeffs))

    def decrypt_coeffs(self, ct: seal.Ciphertext) -> np.ndarray:
        """The N plaintext coefficients as int64 residues in [0, p) (checks the noise budget)."""
        if self._decryptor.invariant_noise_budget(ct) <= 0:
            raise HEError("ciphertext noise budget exhausted: decryption would be wrong")
        return self.he.plain_to_coeffs(self._decryptor.decrypt(ct))

    def noise_budget(self, ct: seal.Ciphertext) -> int:
        """Remaining noise budget in bits (tests and parameter checks)."""
        return self._decryptor.invariant_noise_budget(ct)


def rerandomize(he: HEContext, ct: seal.Ciphertext, public_key: seal.PublicKey) -> seal.Ciphertext:
    """ct + Enc_pk(0): a fresh encryption's randomness on top of the server's result."""
    return he.evaluator.add(ct, he.encrypt_zero(public_key))


def _uniform_mod(q_list: list[int], n: int, bits: int) -> list[np.ndarray]:
    """n uniform integers u in [0, 2^bits), returned reduced mod each q (< 2^44), vectorised.

    u is drawn as 16-bit limbs from the OS CSPRNG and reduced by Horner's rule, so every
    intermediate (r < q times 2^16, plus a limb) stays below 2^60.
    """
    limbs = -(-bits // 16)
    raw = np.frombuffer(secrets.token_bytes(2 * limbs * n), dtype="<u2").reshape(limbs, n)
    raw = raw.astype(np.uint64)
    top = bits - 16 * (limbs - 1)  # bits used in the most significant limb
    raw[0] &= np.uint64((1 << top) - 1)
    out = []
    for q in q_list:
        qq = np.uint64(q)
        r = np.zeros(n, dtype=np.uint64)
        for limb in raw:
            r = (r * np.uint64(1 << 16) + limb) % qq
        out.append(r)
    return out


def flood(he: HEContext, ct: seal.Ciphertext, flood_bits: int) -> seal.Ciphertext:
    """Add uniform noise in [-2^flood_bits, 2^flood_bits) to c0 (statistical circuit privacy).

    Decryption stays correct while 2^flood_bits plus the existing noise is below q / (2p);
    check with the noise budget in tests. Returns a new ciphertext.
    """
    raw = bytearray(ct.to_string(seal.compr_mode_type.none))
    n = he.params.poly_degree
    limbs = len(he.coeff_primes)
    if ct.size() != 2 or ct.coeff_modulus_size() != limbs or ct.is_ntt_form():
        raise HEError("flood expects a fresh-level, size-2, non-NTT BFV ciphertext")
    if max(he.coeff_primes) >= 2**44:
        raise HEError("flood assumes coefficient primes below 2^44")
    offset = len(raw) - 2 * limbs * n * 8
    words = np.frombuffer(raw, dtype="<u8", offset=offset).reshape(2, limbs, n).copy()
    # noise = u - 2^flood_bits with u uniform in [0, 2^(flood_bits + 1))
    for i, (q, u) in enumerate(
        zip(he.coeff_primes, _uniform_mod(he.coeff_primes, n, flood_bits + 1), strict=True)
    ):
        qq = np.uint64(q)
        shift = np.uint64(pow(2, flood_bits, q))
        words[0, i] = (words[0, i] + u + (qq - shift)) % qq
    raw[offset:] = words.tobytes()
    return he.ciphertext_from_bytes(bytes(raw))
