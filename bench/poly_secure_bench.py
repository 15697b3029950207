"""Many secure inferences of a model with polynomial channels, each checked op by op.

For each of ``--n`` test images: a full secure inference (offline and online, server and
client sessions over a loopback socket pair, each in its own thread) with traces kept,
then :func:`safenet.protocol.verify.check_trace`: every op against the reference on the
inputs the secure run had, within the per-element bound the protocol states. Counts the
inferences with any element beyond the bound (*failures*), polynomial values at or above
the exact-truncation bound ``B``, and whether the secure prediction equals the fixed-point
reference's. Meant for degree-3 plans, the ones local truncation could not run.

    python bench/poly_secure_bench.py --model d3.pt [--n 200] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import threading
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from safenet.channel import connection_pair
from safenet.checkpoint import load
from safenet.data import ImageDataset
from safenet.plan.compiler import compile_model
from safenet.plan.ops import Activation
from safenet.protocol.engine import ClientSession, ServerModel, ServerSession
from safenet.protocol.session import encode_input
from safenet.protocol.verify import check_trace


def secure_traced(model: ServerModel, plan, xi: np.ndarray):
    """One secure inference with traces; returns (output, server session, client session)."""
    a, b = connection_pair(timeout=600)
    box: dict = {}

    def server() -> None:
        try:
            s = ServerSession(model, a, keep_trace=True)
            s.offline()
            s.online()
            box["server"] = s
        except BaseException as e:  # re-raised below
            box["error"] = e
            a.close()

    t = threading.Thread(target=server)
    t.start()
    c = ClientSession(plan.public(), b, keep_trace=True)
    c.offline()
    y = c.online(xi)
    t.join()
    a.close()
    b.close()
    if "error" in box:
        raise box["error"]
    return y, box["server"], c


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="checkpoint with polynomial channels")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    ck = load(args.model)
    ds = ImageDataset(ck.dataset, "test", args.data_dir, args.n)
    x = ds.normalize(ds.images).numpy()
    plan = compile_model(ck.build().eval(), tuple(x.shape[1:]))
    server_model = ServerModel(plan)
    rows, t0 = [], time.perf_counter()
    for i in tqdm(range(len(x)), desc="secure inferences"):
        xi = encode_input(plan, x[i])
        y, srv, cli = secure_traced(server_model, plan, xi)
        found = check_trace(plan, srv.trace, cli.trace, xi)
        ref = plan.reference(x[i], decode=False)
        rows.append({"image": i, "misses": found.misses, "beyond_bound": found.beyond_bound,
                     "worst_poly_error": found.worst_poly_error,
                     "logits_equal": bool((y == ref).all()),
                     "argmax_agrees": bool(y.argmax() == ref.argmax()),
                     "correct": bool(y.argmax() == int(ds.labels[i])),
                     "failed_ops": found.failed_ops[:3]})  # fmt: skip
    counts = plan.counts()
    summary = {
        "model": args.model,
        "degree": sorted({op.attrs_as(Activation).degree for _, op in plan.activations()}),
        "relu_count": counts["relu_count"],
        "poly_count": counts["poly_count"],
        "prime_bits": plan.field.p.bit_length(),
        "inferences": len(rows),
        "failures": sum(r["misses"] > 0 for r in rows),
        "elements_beyond_bound": sum(r["misses"] for r in rows),
        "inferences_with_values_at_or_above_B": sum(r["beyond_bound"] > 0 for r in rows),
        "argmax_agrees_with_reference": sum(r["argmax_agrees"] for r in rows),
        "logits_equal_to_reference": sum(r["logits_equal"] for r in rows),
        "secure_accuracy": sum(r["correct"] for r in rows) / len(rows),
        "worst_poly_error_ulp": max(r["worst_poly_error"] for r in rows),
        "seconds": round(time.perf_counter() - t0, 1),
        "python": platform.python_version(),
    }
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"summary": summary, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
