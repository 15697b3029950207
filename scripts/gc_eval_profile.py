"""Garbled-circuit evaluation time of served inferences against the cost model's price, per
model, and the two-term fit (seconds per AND + seconds per layer with ReLUs) over them.

Each model is served once in its own process (``safenet.demo.serve_and_query``) and queried
privately on its first test images; the client's profiled ``gc.eval`` online time (median
over the queries after the first) is set against ``gc_eval`` of ``safenet.approx.cost.predict``
under ``--calibration``. Behind the per-ReLU-layer term of docs/cost-model.md:

    python scripts/gc_eval_profile.py runs/r20/delphi-b0.41/best.pt runs/r20/safenet-b0.41/best.pt
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

from safenet import checkpoint
from safenet.approx.cost import Calibration, _fit_gc_eval, count, predict
from safenet.data import ImageDataset
from safenet.demo import serve_and_query


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("models", nargs="+")
    ap.add_argument("--images", type=int, default=4)
    ap.add_argument("--calibration", type=Path,
                    default=Path("docs/results/calibration-2026-12-02-after.json"))  # fmt: skip
    args = ap.parse_args()
    cal = Calibration.load(args.calibration)
    rows = []
    print("model ANDs relu_layers gc_eval_measured_s gc_eval_predicted_s online_s")
    for ref in args.models:
        ck = checkpoint.load(ref)
        plan = ck.plan()
        ds = ImageDataset(ck.dataset, "test", limit=args.images)
        xs = [ds.normalize(ds.images[i : i + 1]).numpy()[0] for i in range(len(ds))]
        _, reps = serve_and_query(plan, xs, bar=False)
        warm = reps[1:] or reps
        ev = statistics.median(
            r["client"]["primitives"].get("gc.eval", {}).get("online_s", 0.0) for r in warm
        )
        c = count(plan)
        rows.append((float(c.ands), float(c.relu_layers), ev))
        pred = predict(c, cal)["online_parts_s"]["gc_eval"]
        online = statistics.median(r["online_s"] for r in warm)
        print(ref, c.ands, c.relu_layers, round(ev, 4), round(pred, 4), round(online, 4))
    per_and, per_layer = _fit_gc_eval(rows)
    print(f"fit: {per_and:.3g} s per AND + {per_layer * 1e3:.2f} ms per layer with ReLUs")


if __name__ == "__main__":
    main()
