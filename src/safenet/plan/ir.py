"""The Plan: a small integer intermediate representation of a network over F_p.

A Plan is a list of :class:`Op` in execution order. Every op produces one tensor of integers
(centred residues mod p) at a known *scale* (fractional bits). The op kinds, and what the
secure protocol does with each, are:

``input``      the client's image at scale ``frac_bits``.
``conv``       2-D convolution (batch-norm folded), integer weight and bias      (HE)
``linear``     fully connected layer, integer weight and bias                    (HE)
``sumpool``    sum over k x k windows (average pools fold their 1/k^2 elsewhere)  (local)
``rescale``    multiply by an integer constant (a non-power-of-two pool divisor) (local)
``add``        residual add; each input is first multiplied by 2^shift to align  (local)
``maxpool``    max over each window (``attrs`` rows/cols: :mod:`.pooling`)       (GC)
``flatten``    reshape (C, H, W) -> (C*H*W,)                                      (free)
``truncate``   round-shift right by ``shift`` bits                               (local)
``activation`` per channel: ReLU (garbled circuit) or a polynomial (triples)

Activation semantics (what :meth:`Plan.reference` and the protocol compute): with
``k = shift``, ``X = floor((v + 2^(k-1)) / 2^k)`` (round half up; exact in the circuit);
ReLU channels output ``max(X, 0)``; polynomial channels output
``floor((sum_j C_j X_p^j + 2^(q-1)) / 2^q)`` with ``q = poly_shift``, where ``X_p`` is ``v``
round-shifted by ``poly_in_shift`` (:meth:`Op.poly_input_shift`: ``shift`` unless the field
sets ``poly_frac_bits``) and the integer coefficients are
``C_j = round(c_j * 2^(coef_bits + (d - j) * poly_bits))``.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from safenet.field import Field

FORMAT = "safenet-plan/1"
#: op arrays that belong to the architecture, not to the server's secret weights
PUBLIC_ARRAYS = ("relu_mask",)
KINDS = (
    "input",
    "conv",
    "linear",
    "sumpool",
    "rescale",
    "add",
    "concat",
    "maxpool",
    "flatten",
    "truncate",
    "activation",
)


class UnsupportedLayerError(ValueError):
    """The model holds a layer that cannot be lowered to a Plan."""


@dataclass
class Op:
    """One node of a Plan.

    Attributes:
        kind: one of :data:`KINDS`.
        inputs: indices of the ops whose outputs this op reads.
        shape: output shape without the batch dimension.
        scale: fractional bits of the output.
        attrs: JSON-serialisable parameters (stride, padding, shifts, ...).
        arrays: integer parameters (weights, bias, masks, coefficients).
        name: the torch.fx node this op came from, for error messages and reports.
    """

    kind: str
    inputs: list[int]
    shape: tuple[int, ...]
    scale: int
    attrs: dict[str, Any] = field(default_factory=dict)
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    name: str = ""

    def poly_input_shift(self) -> int:
        """An activation's truncation of ``v`` into the polynomial input ``X_p``."""
        return int(self.attrs.get("poly_in_shift", self.attrs["shift"]))

    def meta(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "inputs": self.inputs,
            "shape": list(self.shape),
            "scale": self.scale,
            "attrs": self.attrs,
            "name": self.name,
            "arrays": sorted(self.arrays),
        }


@dataclass
class Plan:
    """A compiled network: field parameters, input shape, ops; the last op is the output."""

    field: Field
    input_shape: tuple[int, ...]
    ops: list[Op]
    info: dict[str, Any] = field(default_factory=dict)

    # ---- structure -----------------------------------------------------------------------
    @property
    def output(self) -> Op:
        return self.ops[-1]

    @property
    def output_scale(self) -> int:
        return self.output.scale

    def activations(self) -> list[tuple[int, Op]]:
        """(index, op) of every activation op."""
        return [(i, op) for i, op in enumerate(self.ops) if op.kind == "activation"]

    def counts(self) -> dict[str, int]:
        """Number of ReLU and polynomial activations (elements) per inference."""
        relu = poly = 0
        for _, op in self.activations():
            per_channel = int(np.prod(op.shape[1:])) if len(op.shape) > 1 else 1
            kept = int(op.arrays["relu_mask"].sum())
            relu += kept * per_channel
            poly += (op.shape[0] - kept) * per_channel
        return {"relu_count": relu, "poly_count": poly}

    def summary(self) -> str:
        """A human-readable table of the ops."""
        rows = [
            f"Plan: input {self.input_shape}, p={self.field.p} ({self.field.bits} bits), "
            f"frac_bits={self.field.frac_bits}, weight_bits={self.field.weight_bits}, "
            f"coef_bits={self.field.coef_bits}"
        ]
        for i, op in enumerate(self.ops):
            extra = ""
            if op.kind == "activation":
                m = op.arrays["relu_mask"]
                extra = f" relu {int(m.sum())}/{len(m)} ch, degree {op.attrs['degree']}"
            rows.append(
                f"{i:3d} {op.kind:10s} {str(op.shape):16s} scale {op.scale:3d} "
                f"<- {op.inputs} {op.name}{extra}"
            )
        c = self.counts()
        rows.append(
            f"ReLUs {c['relu_count']}, polynomial activations {c['poly_count']}, "
            f"fingerprint {self.fingerprint()[:16]}"
        )
        return "\n".join(rows)

    # ---- what the client may know ------------------------------------------------------------
    def public(self) -> Plan:
        """The architecture without the server's secrets: what the client runs the protocol on.

        Keeps every op's kind, inputs, shape, scale and attributes (strides, shifts, degree)
        and the ``relu_mask`` of activations (which channels are ReLU is public in the
        protocol) and ``info["preprocess"]`` (input size, normalisation, class names);
        drops weights, biases and polynomial coefficients.
        """
        ops = [
            Op(op.kind, list(op.inputs), op.shape, op.scale, dict(op.attrs),
               {k: a for k, a in op.arrays.items() if k in PUBLIC_ARRAYS}, op.name)
            for op in self.ops
        ]  # fmt: skip
        info: dict[str, Any] = {"public": True}
        if "preprocess" in self.info:  # how a client prepares a picture: public by nature
            info["preprocess"] = self.info["preprocess"]
        return Plan(self.field, self.input_shape, ops, info)

    @property
    def is_public(self) -> bool:
        """True for a :meth:`public` view (no weights)."""
        return all(set(op.arrays) <= set(PUBLIC_ARRAYS) for op in self.ops)

    def to_bytes(self) -> bytes:
        """The :meth:`save` format in memory."""
        buf = io.BytesIO()
        self.save(buf)
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> Plan:
        """Inverse of :meth:`to_bytes` (checks the fingerprint)."""
        return cls.load(io.BytesIO(data))

    # ---- identity and storage --------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "field": self.field.to_dict(),
            "input_shape": list(self.input_shape),
            "ops": [op.meta() for op in self.ops],
        }

    def fingerprint(self) -> str:
        """SHA-256 over the structure, field parameters and every integer parameter.

        Two parties agree on a Plan iff their fingerprints match (``info`` is excluded).
        """
        h = hashlib.sha256(json.dumps(self._meta(), sort_keys=True).encode())
        for op in self.ops:
            for key in sorted(op.arrays):
                a = np.ascontiguousarray(op.arrays[key])
                h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
                h.update(a.tobytes())
        return h.hexdigest()

    def save(self, path: str | Path | BinaryIO) -> str:
        """Write the plan as a zip of JSON metadata and .npy arrays; returns the fingerprint."""
        fp = self.fingerprint()
        meta = self._meta() | {"fingerprint": fp, "info": self.info}
        with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
            z.writestr("plan.json", json.dumps(meta, indent=1))
            for i, op in enumerate(self.ops):
                for key, a in op.arrays.items():
                    buf = io.BytesIO()
                    np.save(buf, a, allow_pickle=False)
                    z.writestr(f"op{i}/{key}.npy", buf.getvalue())
        return fp

    @classmethod
    def load(cls, path: str | Path | BinaryIO) -> Plan:
        """Read a saved plan; fails if its content does not match its fingerprint."""
        try:
            with zipfile.ZipFile(path) as z:
                meta = json.loads(z.read("plan.json"))
                if meta.get("format") != FORMAT:
                    raise ValueError(f"{path}: not a {FORMAT} file")
                ops = []
                for i, m in enumerate(meta["ops"]):
                    arrays = {
                        k: np.load(io.BytesIO(z.read(f"op{i}/{k}.npy")), allow_pickle=False)
                        for k in m["arrays"]
                    }
                    ops.append(
                        Op(
                            m["kind"],
                            m["inputs"],
                            tuple(m["shape"]),
                            m["scale"],
                            m["attrs"],
                            arrays,
                            m["name"],
                        )
                    )
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a readable safenet plan: {e}") from e
        plan = cls(Field(**meta["field"]), tuple(meta["input_shape"]), ops, meta.get("info", {}))
        if plan.fingerprint() != meta["fingerprint"]:
            raise ValueError(f"{path}: fingerprint mismatch, the file is corrupt or was edited")
        return plan

    # ---- evaluation ------------------------------------------------------------------------
    def reference(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Run the plan in plaintext fixed point; see :func:`safenet.plan.reference.run`."""
        from safenet.plan.reference import run

        return run(self, x, **kwargs)
