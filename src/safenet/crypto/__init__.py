"""Cryptographic building blocks: fixed-key AES hashing, garbled circuits, OT, HE."""
