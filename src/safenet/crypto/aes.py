"""Fixed-key AES as a random permutation, and the hashes built from it.

Garbling and OT extension hash millions of 128-bit blocks. One long-lived AES-128-ECB
encryptor from ``cryptography`` (AES-NI) runs over whole numpy arrays at GB/s; a 128-bit
block is held as two little-endian uint64 words, arrays of shape (..., 2).

The hash is the tweakable circular correlation-robust hash of Guo, Katz, Wang and Yu
(S&P 2020): H(x, i) = pi(pi(x) xor i) xor pi(x), with pi = AES under a fixed public key.
It is secure for half-gates garbling with free-XOR and for IKNP OT extension.
"""

from __future__ import annotations

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

BLOCK = np.dtype("<u8")
#: hash tweaks of OT extension start here; garbling, which shares the hash and (in correlated
#: OT) Delta, keeps its tweaks (before the final ``<< 1``) below half of it
OT_TWEAK_DOMAIN = 0x4F54 << 48  # "OT"
FIXED_KEY = bytes.fromhex("61f4c5d2a8e39b1c07d6e54f3a2b1c9d")  # public, arbitrary


class FixedKeyAES:
    """pi(x) = AES_k(x) for a fixed public key k, vectorised over blocks."""

    def __init__(self, key: bytes = FIXED_KEY) -> None:
        self._enc = Cipher(algorithms.AES(key), modes.ECB()).encryptor()
        self._buf = bytearray(0)
        self._in_place: bool | None = None  # whether update_into accepts src is dst

    def permute(self, blocks: np.ndarray) -> np.ndarray:
        """AES of every block of ``blocks`` (uint64, shape (..., 2)); a new array."""
        x = np.ascontiguousarray(blocks, dtype=BLOCK)
        n = x.nbytes
        if len(self._buf) < n + 16:
            self._buf = bytearray(max(n + 16, 2 * len(self._buf)))
        written = self._enc.update_into(x.view(np.uint8).reshape(-1).data, self._buf)
        assert written == n
        return np.frombuffer(self._buf, dtype=BLOCK, count=n // 8).reshape(x.shape).copy()

    def permute_words(self, src: np.ndarray, dst: np.ndarray, nwords: int) -> None:
        """``dst[:nwords] = pi(src[:nwords])`` on flat uint64 arrays (two words per block).

        No copies: AES writes straight into ``dst``, which needs two spare words at its end
        (the encryptor's output slack). ``src`` may be ``dst``: in place where the installed
        ``cryptography`` allows it (< 51), through one copy of ``src`` where it does not.
        """
        if dst.size < nwords + 2 or src.size < nwords:
            raise ValueError("buffers too small (dst needs 2 spare words)")
        data = src.view(np.uint8).data[: 8 * nwords]
        out = dst.view(np.uint8).data
        if self._in_place is False and np.shares_memory(src, dst):
            data = memoryview(bytes(data))  # cryptography >= 51 refuses overlapping buffers
        try:
            written = self._enc.update_into(data, out)
        except ValueError:  # the first overlapping call on such a version: copy from now on
            if self._in_place is not None or not np.shares_memory(src, dst):
                raise
            self._in_place = False
            written = self._enc.update_into(memoryview(bytes(data)), out)
        assert written == 8 * nwords

    def hash(self, x: np.ndarray, tweak: np.ndarray | int) -> np.ndarray:
        """H(x, i) = pi(pi(x) xor i) xor pi(x); ``tweak`` (uint64) is broadcast over blocks."""
        px = self.permute(x)
        t = px.copy()
        t[..., 0] ^= np.asarray(tweak, dtype=np.uint64)
        return self.permute(t) ^ px


#: below this many bytes the OS CSPRNG is used directly (a PRG key costs as much)
PRG_MIN_BYTES = 4096


def random_bytes(n: int) -> np.ndarray:
    """``n`` uniform bytes (uint8) for keys, labels and masks.

    Large requests come from a PRG: the AES-128-CTR keystream under a fresh key of 16 bytes
    from the OS CSPRNG (the expansion emp-toolkit and others use for labels; AES-NI makes it
    several GB/s against the kernel's ~0.3 GB/s, which was a third of the garbling time).
    """
    import secrets

    if n < PRG_MIN_BYTES:
        return np.frombuffer(secrets.token_bytes(n), dtype=np.uint8).copy()
    enc = Cipher(algorithms.AES(secrets.token_bytes(16)), modes.CTR(bytes(16))).encryptor()
    zeros = np.zeros(n, dtype=np.uint8)  # the keystream is CTR over zeros
    out = np.empty(n + 16, dtype=np.uint8)  # (separate buffers: cryptography >= 51 refuses
    written = enc.update_into(zeros.data, out.data)  # overlapping ones)
    assert written == n
    return out[:n]


def random_blocks(shape: tuple[int, ...], rng: np.random.Generator | None = None) -> np.ndarray:
    """Uniform 128-bit blocks (uint64, shape + (2,)) for keys and labels (``rng`` in tests),
    from :func:`random_bytes`."""
    if rng is not None:
        return rng.integers(0, 2**64, size=(*shape, 2), dtype=np.uint64)
    n = int(np.prod(shape)) * 16
    return random_bytes(n).view(BLOCK).reshape(*shape, 2)
