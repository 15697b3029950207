"""The Plan: a small integer intermediate representation of a network over F_p.

This module holds :class:`Plan` (field, input shape, ops; identity, storage, the client's
public view) and re-exports :class:`~safenet.plan.ops.Op`. A Plan is a list of ops in
execution order; every op produces one tensor of integers (centred residues mod p) at a known
*scale* (fractional bits). The op kinds are typed classes in :mod:`safenet.plan.ops`:

=======================  ==============================================================
kind (class)             secure protocol
=======================  ==============================================================
``input`` (Input)        the client's mask ``R_0``, then ``x - R_0``
``conv`` (Conv)          HE, offline (:mod:`safenet.protocol.linear`)
``linear`` (Linear)      HE, offline
``sumpool`` (SumPool)    local on each share
``rescale`` (Rescale)    local
``add`` (Add)            local
``concat`` (Concat)      local
``flatten`` (Flatten)    local (free)
``truncate`` (Truncate)  local probabilistic truncation
``maxpool`` (MaxPool)    garbled circuit
``activation``           ReLU channels by garbled circuit, polynomial channels by HE tuples
(Activation)
=======================  ==============================================================

Activation semantics (what :meth:`Plan.reference` and the protocol compute): with
``k = shift``, ``X = floor((v + 2^(k-1)) / 2^k)`` (round half up; exact in the circuit);
ReLU channels output ``max(X, 0)``; polynomial channels output
``floor((sum_j C_j X_p^j + 2^(q-1)) / 2^q)`` with ``q = poly_shift``, where ``X_p`` is ``v``
round-shifted by ``poly_in_shift`` (:meth:`Op.poly_input_shift`: ``shift`` unless the field
sets ``poly_frac_bits``) and the integer coefficients are
``C_j = round(c_j * 2^(coef_bits + (d - j) * poly_bits))``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from safenet.field import Field
from safenet.plan.ops import OP_TYPES, Activation, Op

FORMAT = "safenet-plan/1"
#: op arrays that belong to the architecture, not to the server's secret weights
PUBLIC_ARRAYS = ("relu_mask",)
#: the op kinds' names, as plan files store them (:data:`.ops.OP_TYPES`)
KINDS = tuple(OP_TYPES)


class UnsupportedLayerError(ValueError):
    """The model holds a layer that cannot be lowered to a Plan."""


@dataclass
class Plan:
    """A compiled network over F_p: field parameters, input shape and ops in execution order.

    The last op is the output. A Plan is what both parties of the secure protocol run (the
    client on its :meth:`public` view) and what :meth:`reference` evaluates in plaintext;
    two parties agree on one iff their :meth:`fingerprint` match.

    Args:
        field: the prime field and fixed-point parameters (:class:`~safenet.field.Field`).
        input_shape: the input's shape without the batch dimension, e.g. ``(3, 32, 32)``.
        ops: the :class:`~safenet.plan.ops.Op` list; op ``i`` reads only ops before it.
        info: free-form metadata (architecture, counts, preprocessing); not fingerprinted.

    Shape:
        - Input: ``(*input_shape)`` or ``(N, *input_shape)``.
        - Output: ``(*output.shape)`` or ``(N, *output.shape)``, at scale ``output_scale``.

    Example::

        >>> plan = safenet.compile(model, (3, 32, 32))  # a CIFAR-10 classifier
        >>> plan.reference(np.zeros((3, 32, 32))).shape
        (10,)
        >>> fp = plan.save("model.plan")
        >>> Plan.load("model.plan").fingerprint() == fp
        True
    """

    field: Field
    input_shape: tuple[int, ...]
    ops: list[Op]
    info: dict[str, Any] = dataclasses.field(default_factory=dict)

    # ---- structure -----------------------------------------------------------------------
    @property
    def output(self) -> Op:
        return self.ops[-1]

    @property
    def output_scale(self) -> int:
        return self.output.scale

    def activations(self) -> list[tuple[int, Op]]:
        """(index, op) of every activation op."""
        return [(i, op) for i, op in enumerate(self.ops) if isinstance(op.attrs, Activation)]

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
            if isinstance(op.attrs, Activation):
                m = op.arrays["relu_mask"]
                extra = f" relu {int(m.sum())}/{len(m)} ch, degree {op.attrs.degree}"
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
        and ``info["output_bound"]``; drops weights, biases and polynomial coefficients.
        """
        ops = [
            Op(op.attrs, list(op.inputs), op.shape, op.scale,
               {k: a for k, a in op.arrays.items() if k in PUBLIC_ARRAYS}, op.name)
            for op in self.ops
        ]  # fmt: skip
        info: dict[str, Any] = {"public": True}
        # how a client prepares a picture, and the largest |output| it accepts as a result
        # (safenet.secure.check_output): public by nature
        for key in ("preprocess", "output_bound"):
            if key in self.info:
                info[key] = self.info[key]
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
                    try:
                        ops.append(Op.from_meta(m, arrays))
                    except ValueError as e:
                        raise ValueError(f"{path} is not a readable safenet plan: {e}") from e
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as e:
            raise ValueError(f"{path} is not a readable safenet plan: {e}") from e
        plan = cls(Field(**meta["field"]), tuple(meta["input_shape"]), ops, meta.get("info", {}))
        if plan.fingerprint() != meta["fingerprint"]:
            raise ValueError(f"{path}: fingerprint mismatch, the file is corrupt or was edited")
        return plan

    # ---- evaluation ------------------------------------------------------------------------
    def reference(self, x: np.ndarray, **kwargs: Any) -> np.ndarray:
        """Run the plan in plaintext fixed point: the oracle the secure protocol matches.

        Args:
            x: one input ``(*input_shape)`` or a batch ``(N, *input_shape)``, real (encoded
                at ``frac_bits`` here) or, with ``encoded=True``, integers.
            **kwargs: ``encoded``, ``decode`` (default True: reals, else centred integers),
                ``stats`` (a :class:`~safenet.plan.reference.RangeStats` to fill),
                ``batch_size``; see :func:`safenet.plan.reference.run`.

        Returns:
            The output, ``(*output.shape)`` or ``(N, *output.shape)``.

        Example::

            >>> y = plan.reference(np.zeros(plan.input_shape), decode=False)  # int64
        """
        from safenet.plan.reference import run  # evaluation imports nothing from here

        return run(self, x, **kwargs)
