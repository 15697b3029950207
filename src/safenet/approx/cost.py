"""What a Plan costs under the secure protocol: latency and bytes, offline and online.

The model counts, from the plan alone, everything the protocol does (AND gates and label bits
of every garbled layer: ReLU channels and max pools; polynomial elements and HE tuple
ciphertexts, multiply-accumulates and HE ciphertexts of every linear layer, messages and
rounds) and prices each count with per-unit costs *measured on this machine* (a
:class:`Calibration`, written by ``safenet bench --calibrate``), plus a :class:`Network`
(bandwidth and round-trip time), so a plan can be priced for the loopback it was calibrated
on, a LAN or a WAN:

    online  = sum_units count x cost  +  online bytes / bandwidth  +  rounds x RTT
              + (activation and max-pool layers) x per-layer overhead
    offline = HE (linear and polynomial) + garbling, OT and table shipping per AND gate
              + offline bytes / bandwidth + offline rounds x RTT

Bytes are exact up to frame headers (the sizes are fixed by the protocol); HE ciphertext sizes
come from the calibration (SEAL compresses them a little). Unit costs are fitted from the
engine's own per-primitive profile of real two-process sessions, so they include what micro
benchmarks miss (cold tables, Python glue, message framing). Validated in docs/cost-model.md.
The counts per op kind are one function each, dispatched by :data:`COUNTERS`.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from safenet.field import DELPHI_PRIME
from safenet.plan.ir import Plan
from safenet.plan.ops import Activation, Conv, Linear, MaxPool, Op, OpAttrs

__all__ = [
    "Calibration",
    "Network",
    "NETWORKS",
    "PlanCounts",
    "calibrate",
    "count",
    "default_calibration_path",
    "predict",
]

#: bytes of framing per message (header, label, array metadata), an average
FRAME_BYTES = 48


@dataclass(frozen=True)
class Network:
    """A link between the parties: bandwidth (bytes per second) and round-trip time."""

    bandwidth: float
    rtt: float
    name: str = "custom"

    def transfer(self, nbytes: float, rounds: float = 0) -> float:
        """Seconds to move ``nbytes`` in ``rounds`` round trips."""
        return nbytes / self.bandwidth + rounds * self.rtt


#: typical links; "local" is replaced by the calibrated loopback when a calibration is given
NETWORKS = {
    "lan": Network(1e9 / 8, 0.5e-3, "lan"),  # 1 Gbit/s, 0.5 ms
    "wan": Network(100e6 / 8, 40e-3, "wan"),  # 100 Mbit/s, 40 ms
}


@dataclass
class PlanCounts:
    """What one inference of a plan does, counted from the plan (no weights needed)."""

    relu: int = 0
    poly: int = 0
    ands: int = 0  # AND gates over all ReLU instances
    label_bits: int = 0  # server-share input bits of all garbled layers (online labels)
    gc_rows: int = 0  # garbled output bits, each read through two 8-byte output rows
    poly_cts: int = 0  # HE ciphertexts the client sends for polynomial tuples (x digits)
    poly_replies: int = 0
    macs: int = 0  # online multiply-accumulates of linear layers
    he_in: int = 0  # linear-layer HE ciphertexts client -> server
    he_out: int = 0  # and back
    he_products: int = 0
    act_layers: int = 0
    relu_layers: int = 0  # activation layers with at least one ReLU channel
    poly_layers: int = 0  # activation layers with at least one polynomial channel
    maxpool_layers: int = 0  # max pools: a garbled layer and a round trip each
    act_elements: int = 0  # everything reshared online
    input_elements: int = 0
    output_elements: int = 0
    layers: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class _Counting:
    """What the per-kind counters share: the plan, its HE context and the running totals."""

    plan: Plan
    he: Any  # HEContext (imported on use: SEAL is not needed to import this module)
    digits: int
    c: PlanCounts

    @property
    def p(self) -> int:
        return self.plan.field.p


def _count_linear(ctx: _Counting, op: Op) -> dict[str, Any]:
    from safenet.protocol.linear import LinearPacking

    c = ctx.c
    in_shape = ctx.plan.ops[op.inputs[0]].shape
    pk = LinearPacking(op, in_shape, ctx.he)
    if isinstance(op.attrs, Conv):
        kh, kw = op.attrs.kernel
        fan_in = in_shape[0] // op.attrs.groups * kh * kw
    else:
        fan_in = int(np.prod(in_shape))
    macs = int(np.prod(op.shape)) * fan_in
    c.macs += macs
    c.he_in += pk.n_in
    c.he_out += pk.n_out
    c.he_products += pk.products
    return {"macs": macs, "he_in": pk.n_in, "he_out": pk.n_out, "he_products": pk.products}


def _count_activation(ctx: _Counting, op: Op) -> dict[str, Any]:
    from safenet.crypto.gc import relu_circuit

    a, c, p = op.attrs_as(Activation), ctx.c, ctx.p
    mask = op.arrays["relu_mask"].astype(bool)
    per = int(np.prod(op.shape[1:])) if len(op.shape) > 1 else 1
    n_relu = int(mask.sum()) * per
    n_poly = (len(mask) - int(mask.sum())) * per
    ands = 0
    if n_relu:
        circ = relu_circuit(p, a.shift, a.clip)
        ands = circ.and_count * n_relu
        c.gc_rows += circ.n_outputs * n_relu
    cts = -(-n_poly // ctx.he.slots) * a.degree if n_poly else 0
    c.relu += n_relu
    c.poly += n_poly
    c.ands += ands
    c.label_bits += n_relu * p.bit_length()
    c.poly_cts += cts * ctx.digits
    c.poly_replies += cts  # d replies for m = 0..d-1, as many as the d powers
    c.act_layers += 1
    c.relu_layers += 1 if n_relu else 0
    c.poly_layers += 1 if n_poly else 0
    c.act_elements += int(np.prod(op.shape))
    return {"relu": n_relu, "poly": n_poly, "ands": ands}


def _count_maxpool(ctx: _Counting, op: Op) -> dict[str, Any]:
    from safenet.crypto.gc.maxpool_circuit import max_circuit

    a, c, p = op.attrs_as(MaxPool), ctx.c, ctx.p
    n = int(np.prod(op.shape))
    k = len(max(a.rows, key=len)) * len(max(a.cols, key=len))
    circ = max_circuit(p, k)
    c.ands += circ.and_count * n
    c.label_bits += n * k * p.bit_length()
    c.gc_rows += circ.n_outputs * n
    c.maxpool_layers += 1
    c.act_elements += n
    return {"maxpool": n, "ands": circ.and_count * n}


#: the op kinds that cost protocol work, each with its counter (the others are free locally)
COUNTERS: dict[type[OpAttrs], Callable[[_Counting, Op], dict[str, Any]]] = {
    Conv: _count_linear,
    Linear: _count_linear,
    Activation: _count_activation,
    MaxPool: _count_maxpool,
}


def count(plan: Plan, poly_degree: int = 8192) -> PlanCounts:
    """Count the protocol's work for ``plan`` (public or full)."""
    from safenet.crypto.he import HEContext, HEParams
    from safenet.protocol.engine import poly_reply_params

    he = HEContext(HEParams(poly_degree, plan.field.p))
    digits = poly_reply_params(plan, he).digits  # the client sends each power in digits
    c = PlanCounts(
        input_elements=int(np.prod(plan.input_shape)),
        output_elements=int(np.prod(plan.output.shape)),
    )
    ctx = _Counting(plan, he, digits, c)
    for i, op in enumerate(plan.ops):
        row: dict[str, Any] = {"op": i, "kind": op.kind, "name": op.name}
        if (counter := COUNTERS.get(type(op.attrs))) is not None:
            row |= counter(ctx, op)
        c.layers.append(row)
    return c


@dataclass
class Calibration:
    """Per-unit costs of the protocol on one machine (seconds; bytes for sizes).

    Fitted by :func:`calibrate` from real sessions; save/load as JSON.
    """

    gc_eval_per_and: float
    gc_encode_per_bit: float
    linear_online_per_mac: float
    poly_online_per_element: float
    online_layer_overhead: float
    gc_offline_per_and: float
    he_linear_per_product: float
    he_poly_per_ct: float
    ct_in_bytes: float
    ct_reply_bytes: float
    public_key_bytes: float
    local: Network
    gc_eval_per_relu_layer: float = 0.0  # fixed evaluation cost of a layer with ReLUs
    machine: str = ""
    date: str = ""
    sources: list[dict[str, Any]] = field(default_factory=list)

    def save(self, path: str | Path) -> Path:
        """Write JSON (parent folders created)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(asdict(self), indent=1))
        return path

    @classmethod
    def nominal(cls) -> Calibration:
        """The unit costs measured on the 2-core reference VM on 2026-11-25
        (docs/cost-model.md), for planning where no calibration file exists yet."""
        return cls(
            gc_eval_per_and=2.55e-08, gc_encode_per_bit=1.38e-08, linear_online_per_mac=1.2e-09,
            poly_online_per_element=8.2e-08, online_layer_overhead=2.65e-03,
            gc_offline_per_and=1.06e-07, he_linear_per_product=2.03e-03, he_poly_per_ct=6.9e-03,
            ct_in_bytes=524_427.0, ct_reply_bytes=262_282.0, public_key_bytes=655_473.0,
            local=Network(3.0e9, 1.0e-4, "local"), machine="nominal (2-core x86-64 VM)",
            date="2026-11-25",
        )  # fmt: skip

    @classmethod
    def load(cls, path: str | Path) -> Calibration:
        """Read a calibration written by :meth:`save`; a clear error if it is not one."""
        try:
            d = json.loads(Path(path).read_text())
            d["local"] = Network(**d["local"])
            return cls(**d)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no calibration at {path}: run `safenet bench --calibrate` first"
            ) from None
        except (json.JSONDecodeError, TypeError, KeyError) as e:
            raise ValueError(f"{path} is not a safenet calibration: {e}") from e


def default_calibration_path() -> Path:
    """``~/.cache/safenet/calibration.json``."""
    return Path.home() / ".cache" / "safenet" / "calibration.json"


def _bytes(c: PlanCounts, cal: Calibration) -> tuple[dict[str, float], dict[str, float], int, int]:
    """(offline bytes by part, online bytes by part, offline messages, online rounds)."""
    online = {
        "input": 8.0 * c.input_elements,
        "labels": 16.0 * c.label_bits,  # one 16-byte label per server-share bit
        "openings": 16.0 * c.poly,  # v + R1 to the client, e back (docs/protocol.md)
        "reshares": 8.0 * c.act_elements,
        "output": 8.0 * c.output_elements,
        "framing": float(
            FRAME_BYTES * (2 + 3 * c.act_layers + c.poly_layers + 2 * c.maxpool_layers)
        ),
    }
    offline = {
        "public_key": cal.public_key_bytes,
        "base_ot": 4200.0,
        "gc_tables": 32.0 * c.ands,
        "gc_rows": 16.0 * c.gc_rows,
        "ot": 32.0 * c.label_bits,  # one correlated OT per client-share bit: IKNP u + y
        "he_linear": c.he_in * cal.ct_in_bytes + c.he_out * cal.ct_reply_bytes,
        "he_poly": c.poly_cts * cal.ct_in_bytes + c.poly_replies * cal.ct_reply_bytes,
    }
    n_linear = sum(1 for r in c.layers if r["kind"] in ("conv", "linear"))
    # a latency proxy (halved into rounds below), not a frame count; protocol 5 sends two
    # frames fewer per garbled layer than protocol 4 did (no mask labels, no decode bits)
    messages = 3 + 2 * n_linear + 3 * c.act_layers + 2 * c.maxpool_layers
    return offline, online, messages, 1 + c.act_layers + c.maxpool_layers


def predict(
    plan: Plan | PlanCounts, calibration: Calibration, network: Network | None = None
) -> dict[str, Any]:
    """Predicted offline/online seconds and bytes of one inference of ``plan``.

    ``network`` defaults to the calibrated local link. Returns the totals and the online
    breakdown per component (seconds).
    """
    cal = calibration
    net = network or cal.local
    c = plan if isinstance(plan, PlanCounts) else count(plan)
    off_parts, on_parts, off_msgs, rounds = _bytes(c, cal)
    off_b, on_b = sum(off_parts.values()), sum(on_parts.values())
    parts = {
        "gc_eval": c.ands * cal.gc_eval_per_and
        + (c.relu_layers + c.maxpool_layers) * cal.gc_eval_per_relu_layer,
        "gc_encode": c.label_bits * cal.gc_encode_per_bit,
        "linear": c.macs * cal.linear_online_per_mac,
        "poly": c.poly * cal.poly_online_per_element,
        "layer_overhead": (c.act_layers + c.maxpool_layers) * cal.online_layer_overhead,
        "transfer": net.transfer(on_b, rounds),
    }
    offline_parts = {
        "he_linear": c.he_products * cal.he_linear_per_product,
        "he_poly": (c.poly_cts + c.poly_replies) * cal.he_poly_per_ct,
        "gc": c.ands * cal.gc_offline_per_and,
        "transfer": net.transfer(off_b, off_msgs / 2),
    }
    return {
        "offline_s": round(sum(offline_parts.values()), 4),
        "online_s": round(sum(parts.values()), 4),
        "offline_bytes": int(off_b),
        "online_bytes": int(on_b),
        "online_rounds": rounds,
        "relu_count": c.relu,
        "poly_count": c.poly,
        "network": asdict(net),
        "online_parts_s": {k: round(v, 4) for k, v in parts.items()},
        "online_bytes_parts": {k: int(v) for k, v in on_parts.items()},
        "offline_bytes_parts": {k: int(v) for k, v in off_parts.items()},
        "offline_parts_s": {k: round(v, 4) for k, v in offline_parts.items()},
    }


# ---- calibration ------------------------------------------------------------------------------
BULK_REPEATS = 3


def _echo(port: int, pings: int) -> None:
    from safenet.channel import connect

    with connect("127.0.0.1", port) as conn:
        for _ in range(pings):
            conn.send(conn.recv("ping"), "ping")
        for _ in range(BULK_REPEATS):
            conn.recv_array("bulk")
            conn.send(b"ok", "done")


def measure_loopback(nbytes: int = 128 << 20, pings: int = 200) -> Network:
    """Bandwidth and round-trip time of loopback TCP between two processes (as the parties
    run), through the protocol's own framing (``nbytes`` per bulk frame: within the
    transport's ``max_message``, as every real frame is)."""
    import multiprocessing as mp

    from safenet.channel import accept, listen

    lst = listen("127.0.0.1", 0)
    proc = mp.get_context("spawn").Process(target=_echo, args=(lst.getsockname()[1], pings))
    proc.start()
    try:
        conn, _ = accept(lst, timeout=60)
        with conn:
            t0 = time.perf_counter()
            for _ in range(pings):
                conn.send(b"x", "ping")
                conn.recv("ping")
            rtt = (time.perf_counter() - t0) / pings
            payload = np.zeros(nbytes, dtype=np.uint8)
            best = np.inf
            for _ in range(BULK_REPEATS):  # the best of a few: the link, not a noisy moment
                t0 = time.perf_counter()
                conn.send_array(payload, "bulk")
                conn.recv("done")
                best = min(best, time.perf_counter() - t0 - rtt)
            bw = nbytes / max(best, 1e-9)
    finally:
        lst.close()
        proc.join(30)
    return Network(bw, rtt, "local")


def _prim(rep: dict[str, Any], side: str, name: str, phase: str) -> float:
    return float(rep[side]["primitives"].get(name, {}).get(f"{phase}_s", 0.0))


def _fit_gc_eval(rows: list[tuple[float, float, float]]) -> tuple[float, float]:
    """(seconds per AND, seconds per ReLU layer) by least squares over (ANDs, layers, s);
    per AND alone (layer term 0) when the runs cannot separate the two or the fit is not
    positive."""
    a = np.array([[r[0], r[1]] for r in rows])
    y = np.array([r[2] for r in rows])
    alone = float(y.sum() / max(a[:, 0].sum(), 1.0))
    if len(rows) < 2 or np.linalg.matrix_rank(a) < 2:
        return alone, 0.0
    (per_and, per_layer), *_ = np.linalg.lstsq(a, y, rcond=None)
    if per_and <= 0 or per_layer < 0:
        return alone, 0.0
    return float(per_and), float(per_layer)


#: calibrate's default sessions: all-ReLU, half polynomial, and ReLU in 2 whole layers only
_DEFAULT_CONFIGS: list[dict[str, Any]] = [
    {"arch": "resnet20", "input_shape": (3, 32, 32), "relu_ratio": 1.0},
    {"arch": "resnet20", "input_shape": (3, 32, 32), "relu_ratio": 0.5},
    {"arch": "resnet20", "input_shape": (3, 32, 32), "relu_layers": 2},
]


def _session(cfg: dict[str, Any], progress: bool) -> tuple[Plan, PlanCounts, dict[str, Any]]:
    """One real two-process session of a random-weight plan: (plan, its counts, report)."""
    from safenet.benchmark import random_plan
    from safenet.secure import run_local

    cfg = dict(cfg)
    plan = random_plan(cfg.pop("arch"), tuple(cfg.pop("input_shape")), **cfg)
    c = count(plan)
    x = np.random.default_rng(0).normal(size=plan.input_shape)
    _, rep = run_local(plan, x, decode=False)
    if progress:
        n = plan.info.get("relu_layers")
        kind = f"ReLU in {n} layers" if n is not None else f"relu_ratio {plan.info['relu_ratio']}"
        what = f"{plan.info['arch']} {kind}"
        print(f"calibration run {what}: online {rep['online_s']:.2f} s, "
              f"offline {rep['offline_s']:.2f} s", flush=True)  # fmt: skip
    return plan, c, rep


def _unit_counts(c: PlanCounts) -> dict[str, float]:
    """The units a session's primitives are charged per, by name in calibrate's totals."""
    return {"ands": c.ands, "bits": c.label_bits, "macs": c.macs, "poly": c.poly,
            "products": c.he_products, "he_cts": c.he_in + c.he_out,
            "poly_cts": c.poly_cts + c.poly_replies, "act": c.act_layers}  # fmt: skip


def _online_times(rep: dict[str, Any], c: PlanCounts, local: Network) -> dict[str, float]:
    """Online seconds by primitive; what neither they nor the transfer explain is overhead."""
    ev = _prim(rep, "client", "gc.eval", "online")
    enc = _prim(rep, "server", "gc.encode", "online")
    lin = _prim(rep, "server", "linear.plain", "online")
    pol = _prim(rep, "server", "poly", "online") + _prim(rep, "client", "poly", "online")
    transfer = local.transfer(rep["online_bytes"], 1 + c.act_layers)
    rest = rep["online_s"] - ev - enc - lin - pol - transfer
    return {"eval": ev, "encode": enc, "linear": lin, "poly_s": pol, "overhead": max(rest, 0.0)}


def _offline_times(rep: dict[str, Any], local: Network) -> dict[str, float]:
    """Offline seconds of HE (linear, polynomial); the rest, less the transfer, is garbling."""
    he_lin = _prim(rep, "server", "he.linear", "offline") + _prim(
        rep, "client", "he.linear", "offline"
    )
    he_pol = _prim(rep, "server", "he.poly", "offline") + _prim(rep, "client", "he.poly", "offline")
    off_transfer = local.transfer(rep["offline_bytes"], 0)
    gc_off = rep["offline_s"] - he_lin - he_pol - off_transfer
    return {"he_lin_s": he_lin, "he_poly_s": he_pol, "gc_off": max(gc_off, 0.0)}


@dataclass
class _Measurements:
    """What calibrate's sessions measured, summed over them, before any fitting."""

    local: Network
    #: unit counts and seconds by name (see :func:`_unit_counts`, :func:`_online_times`)
    tot: dict[str, float] = field(default_factory=dict)
    gc_rows: list[tuple[float, float, float]] = field(default_factory=list)  # ANDs, layers, s
    ct_sizes: dict[str, list[tuple[float, int]]] = field(
        default_factory=lambda: {"in": [], "reply": []}
    )  # (bytes, ciphertexts) of linear-layer HE, per session
    sources: list[dict[str, Any]] = field(default_factory=list)

    def add(self, plan: Plan, c: PlanCounts, rep: dict[str, Any]) -> None:
        """Add one session's report (``c``: the counts of its ``plan``)."""
        online = _online_times(rep, c, self.local)
        self.gc_rows.append((float(c.ands), float(c.relu_layers), online["eval"]))
        t = rep["client"]["traffic"].get("offline", {}).get("he.linear")
        if t:
            self.ct_sizes["in"].append((t["bytes_sent"], c.he_in))
            self.ct_sizes["reply"].append((t["bytes_received"], c.he_out))
        for k, v in (_unit_counts(c) | online | _offline_times(rep, self.local)).items():
            self.tot[k] = self.tot.get(k, 0.0) + v
        self.sources.append({"arch": plan.info["arch"], "relu_ratio": plan.info["relu_ratio"],
                             "relu_layers": plan.info.get("relu_layers"),
                             "input_shape": list(plan.input_shape), "online_s": rep["online_s"],
                             "offline_s": rep["offline_s"]})  # fmt: skip


def _ct_bytes(sizes: list[tuple[float, int]]) -> float:
    """Average bytes per ciphertext over the sessions' (bytes, ciphertexts)."""
    return sum(b for b, _ in sizes) / max(1, sum(n for _, n in sizes))


def _fit(m: _Measurements) -> Calibration:
    """Unit costs from the summed measurements (and the public key's size)."""
    from safenet.crypto.he import ClientKeys, HEContext, HEParams

    he = HEContext(HEParams(8192, DELPHI_PRIME))
    pk_bytes = len(ClientKeys(he).public_key_bytes)
    tot = m.tot
    # linear-layer HE time is charged per plaintext-ciphertext product (the dominant term; the
    # per-ciphertext work is proportional to it for these layouts)
    per_and, per_layer = _fit_gc_eval(m.gc_rows)
    return Calibration(
        gc_eval_per_and=per_and,
        gc_eval_per_relu_layer=per_layer,
        gc_encode_per_bit=tot["encode"] / max(tot["bits"], 1),
        linear_online_per_mac=tot["linear"] / max(tot["macs"], 1),
        poly_online_per_element=tot["poly_s"] / max(tot["poly"], 1),
        online_layer_overhead=tot["overhead"] / max(tot["act"], 1),
        gc_offline_per_and=tot["gc_off"] / max(tot["ands"], 1),
        he_linear_per_product=tot["he_lin_s"] / max(tot["products"], 1),
        he_poly_per_ct=tot["he_poly_s"] / max(tot["poly_cts"], 1),
        ct_in_bytes=_ct_bytes(m.ct_sizes["in"]),
        ct_reply_bytes=_ct_bytes(m.ct_sizes["reply"]),
        public_key_bytes=float(pk_bytes),
        local=m.local,
        machine=f"{platform.machine()} {platform.processor() or ''} x{os.cpu_count() or 1}".strip(),
        date=time.strftime("%Y-%m-%d"),
        sources=m.sources,
    )


def calibrate(configs: list[dict[str, Any]] | None = None, progress: bool = True) -> Calibration:
    """Measure unit costs with real two-process sessions of random-weight models.

    ``configs`` are :func:`safenet.benchmark.random_plan` keyword sets (default: a ResNet-20
    at 3x32x32, all-ReLU, half polynomial, and ReLU in 2 whole layers only). Each unit cost
    is the engine's own profiled time for a primitive divided by the plan's count of that
    unit, summed over the runs; garbled-circuit evaluation is fitted by least squares as a
    cost per AND gate plus a cost per layer with ReLUs (a few large ReLU layers evaluate
    faster per gate than many small ones), which the third configuration separates.
    """
    measured = _Measurements(measure_loopback())
    for cfg in configs or _DEFAULT_CONFIGS:
        measured.add(*_session(cfg, progress))
    return _fit(measured)
