"""The preprocessing bank: offline material kept on disk, each session consumed exactly once.

A party stores the material of a finished offline phase (its masks, shares, garbled-circuit
inputs, polynomial tuples) under a session id both parties agree on, then later runs only the
online phase with it. The server's material is tied to the model it was made with: its
manifest records the model version (a hash of the full plan: weights, coefficients, field)
and a bank opened for another version refuses it (material made with old weights would give
wrong outputs that depend on the weight difference). Layout, under
``root/<role>-<public plan fingerprint[:16]>/`` (mode 0700):

``<id>/material.npz`` + ``<id>/manifest.json``   a ready session (SHA-256 of the npz inside)
``tmp-<id>/``                                     being written (never read)
``consumed-<id>/``                                taken for use (never read again)

Every state change is one atomic ``rename``: a session is written under ``tmp-`` and renamed
into place when complete, and taken by renaming it to ``consumed-`` *before* it is read, so
after a crash at any point a session is either complete and unused, or gone; it is never used
twice. Opening a bank deletes ``tmp-`` and ``consumed-`` leftovers; an advisory lock on the
folder keeps that (and picking a session) safe when several processes share one bank. The
manifest's hash is checked on every take (:class:`BankError` on mismatch: a corrupted or
edited session is refused and discarded).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Bank", "BankError"]

#: material layout; 2: polynomial layers keep the exact-truncation masks; 3: ReLU masks as
#: wide as the session needs, manifests carry the model version; 4: garbled layers under
#: gc/ (ReLU channels and max pools), with their output rows; 5: rows per output bit, no
#: mask labels or decode bits
FORMAT = "safenet-bank/5"

_ID = re.compile(r"[0-9a-f]{32}")


class BankError(RuntimeError):
    """A banked session is missing, already used, or fails its integrity check."""


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 24):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Bank:
    """One party's store of preprocessed sessions for one public plan.

    Args:
        root: the bank's folder (created private, mode 0700).
        fingerprint: the public plan's fingerprint.
        role: ``"client"`` or ``"server"``.
        version: the model version whose material this bank holds and accepts (the
            server's; None accepts any, for a client, which never sees the weights).
    """

    def __init__(
        self, root: str | Path, fingerprint: str, role: str, version: str | None = None
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError("role must be 'client' or 'server'")
        Path(root).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.dir = Path(root) / f"{role}-{fingerprint[:16]}"
        self.dir.mkdir(mode=0o700, exist_ok=True)
        self.fingerprint = fingerprint
        self.version = version
        with self._lock():  # a put or take in progress elsewhere holds it: not a leftover
            for leftover in [*self.dir.glob("tmp-*"), *self.dir.glob("consumed-*")]:
                shutil.rmtree(leftover, ignore_errors=True)

    @contextmanager
    def _lock(self) -> Iterator[None]:
        """Exclusive advisory lock on the bank folder (released by the OS if we crash)."""
        with open(self.dir / ".lock", "w") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def _check_id(self, session_id: str) -> str:
        if not isinstance(session_id, str) or not _ID.fullmatch(session_id):
            raise BankError(f"not a session id: {session_id!r}")
        return session_id

    def put(self, session_id: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
        """Store a session atomically; returns its folder."""
        with self._lock():
            return self._put(self._check_id(session_id), arrays, meta)

    def _put(self, sid: str, arrays: dict[str, np.ndarray], meta: dict[str, Any]) -> Path:
        final = self.dir / sid
        if final.exists():
            raise BankError(f"session {sid} already in the bank")
        tmp = self.dir / f"tmp-{sid}"
        tmp.mkdir(mode=0o700)
        npz = tmp / "material.npz"
        with open(npz, "wb") as f:
            np.savez(f, allow_pickle=False, **arrays)  # take() refuses pickles too
            f.flush()
            os.fsync(f.fileno())
        manifest = {
            "format": FORMAT,
            "fingerprint": self.fingerprint,
            "model_version": self.version,
            "session_id": sid,
            "created": time.time(),
            "sha256": _sha256(npz),
            "meta": meta,
        }
        with open(tmp / "manifest.json", "w") as f:
            json.dump(manifest, f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, final)
        _fsync_dir(self.dir)
        return final

    def ids(self) -> list[str]:
        """Ready sessions, oldest first."""
        ready = [
            p
            for p in self.dir.iterdir()
            if _ID.fullmatch(p.name) and (p / "manifest.json").exists()
        ]
        return [p.name for p in sorted(ready, key=lambda p: p.stat().st_mtime)]

    def discard_stale(self) -> int:
        """Delete ready sessions made for another model version (never usable: see the
        module docstring); returns how many. A no-op for a bank without a version."""
        if self.version is None:
            return 0
        gone = 0
        with self._lock():
            for sid in self.ids():
                try:
                    made = json.loads((self.dir / sid / "manifest.json").read_text())
                except (OSError, ValueError):
                    made = {}
                if made.get("model_version") != self.version:
                    shutil.rmtree(self.dir / sid, ignore_errors=True)
                    gone += 1
        return gone

    def __len__(self) -> int:
        return len(self.ids())

    def take(self, session_id: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """Consume a session: renamed away first, then read and verified, then deleted."""
        sid = self._check_id(session_id)
        with self._lock():
            return self._take(sid)

    def take_oldest(self) -> tuple[str, dict[str, np.ndarray], dict[str, Any]] | None:
        """Consume the oldest ready session (None if the bank is empty): the pick and the
        take happen under one lock, so two processes sharing a bank never pick the same."""
        with self._lock():
            ids = self.ids()
            return (ids[0], *self._take(ids[0])) if ids else None

    def _take(self, sid: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        taken = self.dir / f"consumed-{sid}"
        try:
            os.rename(self.dir / sid, taken)
        except FileNotFoundError:
            raise BankError(f"session {sid} is not in the bank (used or never made)") from None
        _fsync_dir(self.dir)
        try:
            manifest = json.loads((taken / "manifest.json").read_text())
            npz = taken / "material.npz"
            if manifest.get("format") != FORMAT:
                raise BankError(
                    f"session {sid}: material format {manifest.get('format')!r}, this safenet "
                    f"reads {FORMAT!r} (preprocess again)"
                )
            if manifest.get("fingerprint") != self.fingerprint or manifest.get("session_id") != sid:
                raise BankError(f"session {sid}: manifest does not match this bank")
            if self.version is not None and manifest.get("model_version") != self.version:
                raise BankError(
                    f"session {sid} was made for model version {manifest.get('model_version')}"
                    f", this server runs {self.version} (retrained?): preprocess again"
                )
            if _sha256(npz) != manifest.get("sha256"):
                raise BankError(f"session {sid}: material fails its SHA-256 check (corrupted)")
            with np.load(npz, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            return arrays, manifest["meta"]
        except (OSError, ValueError, KeyError) as e:
            raise BankError(f"session {sid}: unreadable ({e})") from e
        finally:
            shutil.rmtree(taken, ignore_errors=True)
