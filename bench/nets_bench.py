"""Secure cost of networks written outside the zoo (examples/nets.py): a torchvision-style
ResNet-18 (7x7 stem, 3x3 max pool), VGG-11 with max pooling and MobileNetV2 (depthwise,
ReLU6), random weights, measured end to end (server and client in two processes over loopback
TCP, ``safenet.benchmark.bench_plan``) all-ReLU and with half the channels polynomial; plus
the cost model's prediction for the ImageNet-sized originals (224 x 224), which do not fit
this machine's time.

    python bench/nets_bench.py [--nets resnet18 vgg11 mobilenet_v2] [--json out.json]

Prints a markdown table of the measured runs and one of the predictions.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

import safenet
from safenet.approx.cost import Calibration, count, predict
from safenet.benchmark import bench_plan, randomize
from safenet.nn.modelfile import load_builder

NETS = Path(__file__).resolve().parents[1] / "examples" / "nets.py"

#: measured here: CIFAR-sized inputs, the networks' own widths
MEASURED = {
    "resnet18": ({"num_classes": 10}, (3, 32, 32)),
    "vgg11": ({"num_classes": 10, "image_size": 32}, (3, 32, 32)),
    "mobilenet_v2": ({"num_classes": 10, "stem_stride": 2}, (3, 32, 32)),
}
#: predicted only: the ImageNet originals
PREDICTED = {
    "resnet18": ({"num_classes": 1000}, (3, 224, 224)),
    "vgg11": ({"num_classes": 1000, "image_size": 224}, (3, 224, 224)),
    "mobilenet_v2": ({"num_classes": 1000, "stem_stride": 2}, (3, 224, 224)),
}


def _plan(name: str, kwargs: dict, shape: tuple, ratio: float) -> safenet.Plan:
    torch.manual_seed(0)
    model = randomize(load_builder(f"{NETS}:{name}")(**kwargs), shape, ratio)
    return safenet.compile(model, shape)


def measure(name: str, ratio: float) -> dict:
    kwargs, shape = MEASURED[name]
    t0 = time.perf_counter()
    plan = _plan(name, kwargs, shape, ratio)
    compile_s = time.perf_counter() - t0
    rep = bench_plan(plan)
    pred = predict(count(plan), Calibration.nominal())
    return rep | {"net": name, "relu_ratio": ratio, "compile_s": round(compile_s, 2),
                  "predicted_online_s": pred["online_s"],
                  "predicted_offline_s": pred["offline_s"]}  # fmt: skip


def predicted(name: str) -> dict:
    kwargs, shape = PREDICTED[name]
    plan = _plan(name, kwargs, shape, 1.0)
    c = count(plan)
    lan = predict(c, Calibration.nominal(), safenet_network("lan"))
    return {"net": name, "input": "x".join(map(str, shape)), "relu": c.relu, "ands": c.ands,
            "maxpool_outputs": sum(int(np.prod(op.shape)) for op in plan.ops
                                   if op.kind == "maxpool"),
            "online_s_lan": lan["online_s"], "offline_s_lan": lan["offline_s"],
            "offline_gib": round(lan["offline_bytes"] / 2**30, 1),
            "online_mib": round(lan["online_bytes"] / 2**20, 1)}  # fmt: skip


def safenet_network(name: str):  # noqa: ANN201
    from safenet.approx.cost import NETWORKS

    return NETWORKS[name]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nets", nargs="+", default=list(MEASURED), choices=list(MEASURED))
    ap.add_argument("--ratios", nargs="+", type=float, default=[1.0, 0.5])
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    rows = [measure(n, r) for n in args.nets for r in args.ratios]
    preds = [predicted(n) for n in args.nets]
    print(f"machine: {platform.machine()} {platform.processor() or ''}, {time.strftime('%F')}")
    print("| network (3x32x32) | ReLU kept | ReLUs | polynomials | max-pool outputs | "
          "offline s | online s | offline MiB | online MiB | rounds | exact | "
          "predicted online s |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
    for r in rows:
        exact = "bit-exact" if r["matches_reference"] else f"max {r['max_abs_error_ulp']} ulp"
        print(f"| {r['net']} | {r['relu_ratio']:.0%} | {r['relu_count']:,} | "
              f"{r['poly_count']:,} | {r['maxpool_outputs']:,} | {r['offline_s']:.1f} | "
              f"{r['online_s']:.2f} | {r['offline_bytes'] / 2**20:,.0f} | "
              f"{r['online_bytes'] / 2**20:.1f} | {r['online_rounds']} | {exact} | "
              f"{r['predicted_online_s']:.2f} |")  # fmt: skip
    print()
    print(
        "| network (ImageNet, 3x224x224, all ReLU) | ReLUs | max-pool outputs | AND gates | "
        "predicted online s (LAN) | predicted offline s (LAN) | offline GiB | online MiB |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in preds:
        print(f"| {p['net']} | {p['relu']:,} | {p['maxpool_outputs']:,} | {p['ands']:,} | "
              f"{p['online_s_lan']:.1f} | {p['offline_s_lan']:.0f} | {p['offline_gib']} | "
              f"{p['online_mib']} |")  # fmt: skip
    if args.json:
        args.json.write_text(json.dumps({"measured": rows, "predicted": preds}, indent=1))


if __name__ == "__main__":
    main()
