"""Validate the cost model: predicted vs measured latency and bytes of real secure inferences.

Calibrates on two ResNet-20 runs (or loads ``--calibration``), then runs configurations the
calibration did not see (other architectures, sizes, ratios and the trained built-in models)
with ``safenet.secure.run_local`` and prints a markdown table of predicted vs measured online
and offline seconds and bytes, with the relative errors.

    python bench/cost_validate.py [--calibration FILE] [--json out.json] [--save-calibration F]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from safenet.approx.cost import Calibration, calibrate, predict
from safenet.benchmark import random_plan
from safenet.secure import run_local

CONFIGS = [
    {"arch": "resnet32", "input_shape": (3, 32, 32), "relu_ratio": 1.0},
    {"arch": "resnet32", "input_shape": (3, 32, 32), "relu_ratio": 0.5},
    {"arch": "resnet32", "input_shape": (3, 32, 32), "relu_ratio": 0.25, "degree": 3},
    {"arch": "resnet32", "input_shape": (3, 32, 32), "relu_layers": 4},
    {"arch": "minionn", "input_shape": (1, 28, 28), "relu_ratio": 1.0},
    {"model": "default"},
    {"model": "default-approx"},
]


def _plan(cfg: dict):
    if "model" in cfg:
        from safenet.checkpoint import load

        return load(cfg["model"]).plan(), cfg["model"]
    cfg = dict(cfg)
    arch, shape = cfg.pop("arch"), tuple(cfg.pop("input_shape"))
    name = f"{arch} {'x'.join(map(str, shape))} relu {cfg.get('relu_ratio', 1.0)}"
    if cfg.get("relu_layers") is not None:
        name = f"{arch} {'x'.join(map(str, shape))} ReLU in {cfg['relu_layers']} layers"
    if cfg.get("degree", 2) == 3:
        name += " deg 3"
    return random_plan(arch, shape, **cfg), name


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--save-calibration", type=Path, default=None, help="write the calibration")
    args = ap.parse_args()
    t0 = time.time()
    cal = Calibration.load(args.calibration) if args.calibration else calibrate()
    if args.save_calibration is not None:
        cal.save(args.save_calibration)
    rows = []
    for cfg in CONFIGS:
        plan, name = _plan(cfg)
        pred = predict(plan, cal)
        x = np.random.default_rng(1).normal(size=plan.input_shape)
        _, rep = run_local(plan, x, decode=False)
        rows.append({"config": name, "predicted": pred, "measured": {
            k: rep[k] for k in ("online_s", "offline_s", "online_bytes", "offline_bytes",
                                "online_rounds", "relu_count", "poly_count")}})  # fmt: skip
        po, mo = pred["online_s"], rep["online_s"]
        print(f"# {name}: online predicted {po:.2f} s, measured {mo:.2f} s", flush=True)

    def err(p: float, m: float) -> str:
        return f"{100 * (p - m) / m:+.0f} %"

    print(f"# calibration: {cal.machine}, {cal.date}; {time.time() - t0:.0f} s in all")
    print("| configuration | ReLUs | polys | online s pred / meas | err | offline s pred / meas | "
          "err | online MiB pred / meas | offline MiB pred / meas |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    mib = 2.0**20
    for r in rows:
        p, m = r["predicted"], r["measured"]
        on_err, off_err = err(p["online_s"], m["online_s"]), err(p["offline_s"], m["offline_s"])
        print(f"| {r['config']} | {m['relu_count']:,} | {m['poly_count']:,} | "
              f"{p['online_s']:.2f} / {m['online_s']:.2f} | {on_err} | "
              f"{p['offline_s']:.1f} / {m['offline_s']:.1f} | {off_err} | "
              f"{p['online_bytes'] / mib:.1f} / {m['online_bytes'] / mib:.1f} | "
              f"{p['offline_bytes'] / mib:,.0f} / {m['offline_bytes'] / mib:,.0f} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"calibration": cal.__dict__, "rows": rows}, default=str))


if __name__ == "__main__":
    main()
