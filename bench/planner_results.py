"""Issue 4's results: accuracy (float, fixed point, secure) against measured secure cost.

``measure`` takes a ReLU teacher and the output folders of ``safenet approximate`` runs (each
with ``best.pt`` and ``report.json``), and for every model records:

* float accuracy on the whole test set, fixed-point accuracy and float/fixed agreement on its
  first ``--fixed-images`` (default 2,000); the failure rate is the larger of the fixed-point
  reference's on those and the float check's on the whole test set
  (:func:`safenet.approx.float_check.opening_peaks`: the rare input that blows a network up);
* secure accuracy on the first ``--secure-images`` test images, each classified by a real
  two-process private inference (server process preparing the model once, client process
  querying it over loopback TCP), and how often the secure logits equal the fixed-point
  reference's bit for bit and in argmax;
* measured online/offline seconds (median over those inferences), bytes and rounds, next to
  the cost model's prediction;
* the per-layer configuration (kept-ReLU fraction, degree).

Results are merged into a JSON file (one key per model; ``--force`` re-measures), so runs can
be added one at a time. ``plot`` draws the Pareto plots (accuracy vs measured online latency
and vs online bytes) and per-layer plots from that file; ``table`` prints the markdown table.

    python bench/planner_results.py measure --arch-name resnet20 --teacher default \
        --runs runs/r20/* --out docs/results/planner.json
    python bench/planner_results.py plot --results docs/results/planner.json --out docs/results
    python bench/planner_results.py table --results docs/results/planner.json
    python bench/planner_results.py targets --results docs/results/planner.json
    python bench/planner_results.py degrees --results docs/results/planner.json
    python bench/planner_results.py hardening --results docs/results/planner.json
    python bench/planner_results.py repredict --results docs/results/planner.json \
        --calibration docs/results/calibration-2026-12-02-after.json

Timing figures are only comparable within one ``measure`` run on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from safenet import checkpoint
from safenet.approx.cost import Calibration, count, default_calibration_path, predict
from safenet.approx.float_check import opening_peaks, tail_estimate
from safenet.data import ImageDataset
from safenet.demo import serve_and_query
from safenet.evaluate import evaluate_plan
from safenet.nn.surgery import activations

MIB = 2**20


def _layers(model: torch.nn.Module) -> list[dict[str, Any]]:
    """Per activation layer: name, channels, kept-ReLU fraction, degree."""
    out = []
    for name, act in activations(model).items():
        mask = act.relu_mask
        out.append({"layer": name, "channels": int(mask.numel()),
                    "relu_fraction": float(mask.float().mean()),
                    "degree": act.degree})  # fmt: skip
    return out


ACCURACY_KEYS = ("accuracy_float", "float_images", "accuracy_fixed_point", "test_images",
                 "float_fixed_agreement", "headroom_bits", "failure_rate", "float_failures",
                 "leak_bound", "largest_range_ratio", "eval_s")  # fmt: skip
SECURE_KEYS = ("secure_images", "secure_accuracy", "online_s", "online_bytes")


def measure_accuracy(ref: str, fixed_images: int | None) -> dict[str, Any]:
    """Float accuracy on the whole test set; fixed-point accuracy and float/fixed agreement on
    its first ``fixed_images`` (the plaintext reference is ~100x slower than torch). Any
    machine load: no timing involved."""
    ck = checkpoint.load(ref)
    model = ck.build().eval()
    full = ImageDataset(ck.dataset, "test")
    t0 = time.perf_counter()
    pred, peaks = opening_peaks(model, full.normalize(full.images))  # one float pass: both
    accuracy = float((pred == full.labels).float().mean())
    test = ImageDataset(ck.dataset, "test", limit=fixed_images)
    plan = ck.plan()
    ev = evaluate_plan(model, plan, test, progress=True)
    bad = peaks.failures(plan.field)
    float_failures = int(bad.sum())
    ratios = peaks.range_ratios()
    hard = ck.metrics.get("hardening")
    return {"accuracy_float": accuracy, "float_images": len(full),
            # range hardening (safenet.approx.harden): training-set failures per round
            "hardening": hard, "output_bound": ck.metrics.get("output_bound"),
            "largest_range_ratio": float(ratios[~bad].max()) if bool((~bad).any()) else None,
            "tail_ratio_1_5": tail_estimate(ratios, 1.5),
            "tail_ratio_2": tail_estimate(ratios, 2.0),
            "accuracy_float_subset": ev["accuracy"],
            "accuracy_fixed_point": ev["accuracy_fixed_point"],
            "test_images": ev["images"], "float_fixed_agreement": ev["agreement"],
            "headroom_bits": ev["headroom_bits"],
            "expected_wraps": ev["expected_wraps_per_inference"],
            "failure_rate_fixed_subset": ev["secure_failure_rate"],
            "float_failures": float_failures,  # on the whole test set
            # the fixed-point count on the subset, or the float check's on the whole set
            "failure_rate": max(ev["secure_failure_rate"], float_failures / len(full)),
            "leak_bound": ev["leak_bound_per_inference"],
            "eval_s": round(time.perf_counter() - t0, 1)}  # fmt: skip


def measure_secure(ref: str, secure_images: int, calibration: Calibration) -> dict[str, Any]:
    """Private inferences of the first test images: accuracy, agreement with the fixed-point
    reference, and the measured cost (needs an otherwise idle machine)."""
    ck = checkpoint.load(ref)
    model = ck.build().eval()
    plan = ck.plan()
    secure = ImageDataset(ck.dataset, "test", limit=secure_images)
    xs = [secure.normalize(secure.images[i : i + 1]).numpy()[0] for i in range(len(secure))]
    labels = secure.labels.numpy()
    ys, reps = serve_and_query(plan, xs, bar=True)
    ref_logits = [plan.reference(x, decode=False) for x in xs]  # centred integers
    scale = 2.0**plan.output_scale
    pairs = [(np.rint(y * scale), r) for y, r in zip(ys, ref_logits, strict=True)]
    pred = predict(count(plan), calibration)
    return {
        "secure_images": len(xs),
        "secure_accuracy": sum(int(y.argmax() == t) for y, t in zip(ys, labels, strict=True))
        / len(xs),
        "secure_equals_reference": sum(int(np.array_equal(a, b)) for a, b in pairs) / len(xs),
        "secure_argmax_equals_reference": sum(int(a.argmax() == b.argmax()) for a, b in pairs)
        / len(xs),
        "secure_max_logit_error_ulp": max(int(np.abs(a - b).max()) for a, b in pairs),
        "secure_logit_error_ulp_all": [int(np.abs(a - b).max()) for a, b in pairs],
        "online_s": statistics.median(r["online_s"] for r in reps),
        "online_s_all": [r["online_s"] for r in reps],
        "offline_s": statistics.median(r["offline_s"] for r in reps),
        "online_bytes": reps[0]["online_bytes"],
        "offline_bytes": reps[0]["offline_bytes"],
        "online_rounds": reps[0]["online_rounds"],
        "relu_count": reps[0]["relu_count"],
        "poly_count": reps[0]["poly_count"],
        "prime": plan.field.p,
        "predicted_online_s": pred["online_s"],
        "predicted_online_bytes": pred["online_bytes"],
        "layers": _layers(model) if ck.activation else [],
        "machine": f"{platform.node()} {platform.machine()}",
        "date": time.strftime("%Y-%m-%d"),
    }


def population_degrees(state_path: Path) -> dict[str, int]:
    """Over the final population of a search (``search.pt``): how many (member, layer) pairs
    replace channels, and how many of those on degree 3 (how often the search picks it)."""
    if not state_path.exists():
        return {}
    saved = torch.load(state_path, weights_only=False)
    pairs = [tuple(v) for m in saved["members"] for v in m["config"].values()]
    replaced = [(ratio, degree) for ratio, degree in pairs if ratio > 0]
    return {"members": len(saved["members"]), "replacing_layers": len(replaced),
            "degree3_layers": sum(int(d == 3) for _, d in replaced)}  # fmt: skip


def degree_summary(r: dict[str, Any]) -> dict[str, Any]:
    """A measured model's use of degree 3: layers with polynomial channels, those on degree 3,
    and the share of polynomial channels on degree 3."""
    poly = [(lay["channels"] * (1 - lay["relu_fraction"]), lay["degree"])
            for lay in r.get("layers", []) if lay["relu_fraction"] < 1]  # fmt: skip
    channels = sum(c for c, _ in poly)
    return {"poly_layers": len(poly), "degree3_layers": sum(int(d == 3) for _, d in poly),
            "degree3_channel_share": sum(c for c, d in poly if d == 3) / channels
            if channels else 0.0}  # fmt: skip


def cmd_measure(args: argparse.Namespace) -> int:
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.exists() else {}
    cal_path = args.calibration or default_calibration_path()
    cal = Calibration.load(cal_path) if cal_path.exists() else Calibration.nominal()
    todo: list[tuple[str, str, str, dict | None]] = []
    if args.teacher:
        todo.append((f"{args.arch_name}/all-relu", "all-relu", args.teacher, None))
    for run in args.runs:
        run = Path(run)
        if not (run / "best.pt").exists() or not (run / "report.json").exists():
            print(f"skipping {run}: no best.pt/report.json (search unfinished?)")
            continue
        rep = json.loads((run / "report.json").read_text())
        todo.append((f"{args.arch_name}/{run.name}", rep["method"], str(run / "best.pt"), rep))
    parts = set(args.parts.split(","))
    for label, method, ref, rep in todo:
        row = results.get(label, {}) | {"label": label, "arch": args.arch_name, "method": method,
                                        "checkpoint": ref}  # fmt: skip
        if rep is not None:
            keep = ("accuracy", "teacher_accuracy", "threshold", "predicted_online_s",
                    "generations", "feasible", "config")  # fmt: skip
            row["search"] = {k: rep.get(k) for k in keep}
            row["population_degrees"] = population_degrees(Path(ref).parent / "search.pt")
        for part, keys, fn in (
            ("accuracy", ACCURACY_KEYS, lambda r=ref: measure_accuracy(r, args.fixed_images)),
            ("secure", SECURE_KEYS, lambda r=ref: measure_secure(r, args.secure_images, cal)),
        ):
            if part not in parts:
                continue
            if all(k in row for k in keys) and not args.force:
                print(f"{label}: {part} already measured (--force to redo)")
                continue
            print(f"measuring {label} ({ref}): {part}")
            row |= fn()
            results[label] = row
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(results, indent=1))
        print(json.dumps({k: row.get(k) for k in ("label", "accuracy_float", "accuracy_fixed_point",
              "secure_accuracy", "secure_argmax_equals_reference", "online_s",
              "predicted_online_s", "online_bytes")}))  # fmt: skip
    return 0


STYLE = {"all-relu": ("k", "*", "all-ReLU"), "delphi": ("tab:red", "s", "Delphi planner"),
         "safenet": ("tab:blue", "o", "SAFENet (BTPBT)")}  # fmt: skip


def _frontier(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """Points not beaten by another with lower cost and higher accuracy, by cost."""
    best, front = -1.0, []
    for c, a in sorted(points):
        if a > best:
            front.append((c, a))
            best = a
    return front


def cmd_plot(args: argparse.Namespace) -> int:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(Path(args.results).read_text())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    archs = sorted({r["arch"] for r in results.values()})
    written = []
    fig, axes = plt.subplots(len(archs), 2, figsize=(12, 4.5 * len(archs)), squeeze=False)
    for row_axes, arch in zip(axes, archs, strict=True):
        rows = [r for r in results.values() if r["arch"] == arch]
        teacher = next((r for r in rows if r["method"] == "all-relu"), None)
        # the axis spans what matters; a collapsed model is drawn on its floor, labelled
        top = max(100 * secure_estimate(r) for r in rows)
        floor = top - 3.0

        def acc(r: dict[str, Any], floor: float = floor) -> float:
            return max(100 * secure_estimate(r), floor)

        panels = ((row_axes[0], "online_s", 1.0, "measured online latency (s)"),
                  (row_axes[1], "online_bytes", MIB, "online traffic (MiB)"))  # fmt: skip
        for ax, key, unit, xlabel in panels:
            for method, (color, marker, name) in STYLE.items():
                pts = [(r[key] / unit, acc(r)) for r in rows if r["method"] == method]
                if not pts:
                    continue
                ax.scatter(
                    *zip(*pts, strict=True), c=color, marker=marker, s=60, label=name, zorder=3
                )
                if len(pts) > 1:
                    ax.plot(*zip(*_frontier(pts), strict=True), c=color, lw=1, alpha=0.6)
            for r in rows:
                text = r["label"].split("/", 1)[1]
                if 100 * secure_estimate(r) < floor:
                    text += f" ({100 * secure_estimate(r):.1f} %, off scale)"
                ax.annotate(text, (r[key] / unit, acc(r)), fontsize=6, xytext=(3, 3),
                            textcoords="offset points")  # fmt: skip
            ax.set_ylim(floor - 0.2, top + 0.3)
            if teacher is not None:
                ax.axhline(100 * secure_estimate(teacher) - 0.5, ls="--", c="grey", lw=0.8,
                           label="all-ReLU - 0.5 pt")  # fmt: skip
                if key == "online_s":
                    ax.axvline(0.5 * teacher["online_s"], ls=":", c="grey", lw=0.8,
                               label="0.5 x all-ReLU latency")  # fmt: skip
            ax.set_xlabel(xlabel)
            ax.set_ylabel("expected secure accuracy (%)")
            ax.set_title(f"{arch}: accuracy vs {xlabel.split(' (')[0]}")
            ax.grid(alpha=0.3)
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "pareto.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    written.append(path)
    for arch in archs:
        rows = [r for r in results.values() if r["arch"] == arch and r["layers"]]
        if not rows:
            continue
        fig, axes = plt.subplots(len(rows), 1, figsize=(10, 2.2 * len(rows)), squeeze=False)
        for ax, r in zip(axes[:, 0], rows, strict=True):
            fr = [lay["relu_fraction"] for lay in r["layers"]]
            colors = ["tab:blue" if lay["degree"] == 2 else "tab:orange" for lay in r["layers"]]
            ax.bar(range(len(fr)), fr, color=colors)
            ax.set_ylim(0, 1)
            ax.set_ylabel("ReLU kept")
            ax.set_title(f"{r['label']} ({r['method']}): {100 * r['accuracy_float']:.2f} %, "
                         f"{r['online_s']:.2f} s online  (blue: degree 2, orange: degree 3)",
                         fontsize=8)  # fmt: skip
            ax.set_xticks(range(len(fr)), [lay["layer"] for lay in r["layers"]], rotation=90,
                          fontsize=6)  # fmt: skip
        fig.tight_layout()
        path = out / f"layers-{arch}.png"
        fig.savefig(path, dpi=120)
        plt.close(fig)
        written.append(path)
    for p in written:
        print(p)
    return 0


def cmd_table(args: argparse.Namespace) -> int:
    results = json.loads(Path(args.results).read_text())
    print(
        "| model | method | float % (10k) | fixed % (n) | agreement | secure (n) "
        "| fail rate | leak bound | online s (pred.) | x all-ReLU | online MiB | offline s "
        "| ReLUs | poly | deg-3 layers |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for arch in sorted({r["arch"] for r in results.values()}):
        rows = sorted(
            (r for r in results.values() if r["arch"] == arch and "online_s" in r),
            key=lambda r: -r["online_s"],
        )
        base = next((r["online_s"] for r in rows if r["method"] == "all-relu"), None)
        for r in rows:
            ratio = f"{r['online_s'] / base:.2f}" if base else "-"
            deg = degree_summary(r)
            print(f"| {r['label']} | {r['method']} | {100 * r['accuracy_float']:.2f} "
                  f"| {100 * r['accuracy_fixed_point']:.2f} ({r['test_images']:,}) "
                  f"| {100 * r['float_fixed_agreement']:.2f} % "
                  f"| {100 * r['secure_accuracy']:.0f} % ({r['secure_images']}) "
                  f"| {r.get('failure_rate', float('nan')):.4f} "
                  f"| {r.get('leak_bound', float('nan')):.4f} "
                  f"| {r['online_s']:.3f} ({r['predicted_online_s']:.3f}) | {ratio} "
                  f"| {r['online_bytes'] / MIB:.1f} | {r['offline_s']:.1f} | {r['relu_count']:,} "
                  f"| {r['poly_count']:,} "
                  f"| {deg['degree3_layers']} of {deg['poly_layers']} |")  # fmt: skip
    return 0


def cmd_hardening(args: argparse.Namespace) -> int:
    """Range hardening per polynomial model: training-set failures before and after, and on
    the test set its float failures, largest range ratio and the tail estimates."""
    results = json.loads(Path(args.results).read_text())
    print("| model | training failures (60k), by round | test failures (10k) | largest range "
          "ratio (test) | est. P(ratio >= 1.5) | est. P(ratio >= 2) | output bound |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for label in sorted(results):
        r = results[label]
        hard = r.get("hardening")
        if r["method"] == "all-relu" or "largest_range_ratio" not in r:
            continue
        rounds = " -> ".join(str(f) for f in hard["failures"]) if hard else "not hardened"
        print(f"| {label} | {rounds} | {r['float_failures']} | {r['largest_range_ratio']:.2f} "
              f"| {r['tail_ratio_1_5']:.1e} | {r['tail_ratio_2']:.1e} "
              f"| {r['output_bound'] or 0:.1f} |")  # fmt: skip
    return 0


def cmd_repredict(args: argparse.Namespace) -> int:
    """Price every measured model again under another calibration (e.g. one made right after
    the measurements) and store it under ``--key`` (default ``predicted_online_s_recal``)."""
    results = json.loads(Path(args.results).read_text())
    cal = Calibration.load(args.calibration)
    for r in results.values():
        if "online_s" not in r:
            continue
        ck = checkpoint.load(r["checkpoint"])
        r[args.key] = predict(count(ck.plan()), cal)["online_s"]
        print(f"{r['label']}: measured {r['online_s']:.3f} s, predicted "
              f"{r['predicted_online_s']:.3f} s (search calibration), "
              f"{r[args.key]:.3f} s ({args.calibration})")  # fmt: skip
    Path(args.results).write_text(json.dumps(results, indent=1))
    return 0


def secure_estimate(r: dict[str, Any]) -> float:
    """A row's expected secure accuracy: float accuracy (whole test set) less the share of
    inferences expected to see a truncation failure (a polynomial value past the exact-truncation
    bound, or a local `truncate` wrap; each may change a prediction)."""
    return float(r["accuracy_float"]) - float(r.get("failure_rate", 0.0))


def targets(results: dict[str, Any]) -> list[str]:
    """Issue 4's targets per architecture, from measured rows: SAFENet's fastest model within
    0.5 point of all-ReLU against all-ReLU and against the cheapest Delphi plan at least as
    accurate (all-ReLU counts: it is Delphi's plan with nothing replaced); and SAFENet against
    Delphi at each shared latency budget (label ``*-bX``); and, at each Delphi plan's
    accuracy, SAFENet's cheapest plan at least as accurate (latency ratio). Accuracy is
    :func:`secure_estimate`, so a plan whose truncations often fail does not qualify."""
    lines = []
    for arch in sorted({r["arch"] for r in results.values()}):
        rows = [r for r in results.values() if r["arch"] == arch and "online_s" in r]
        base = next((r for r in rows if r["method"] == "all-relu"), None)
        if base is None:
            continue
        a0, l0 = secure_estimate(base), base["online_s"]
        ok = [r for r in rows if r["method"] == "safenet" and secure_estimate(r) >= a0 - 0.005]
        if ok:
            s = min(ok, key=lambda r: r["online_s"])
            delphi = [r for r in rows if r["method"] in ("delphi", "all-relu")
                      and secure_estimate(r) >= secure_estimate(s)]  # fmt: skip
            d = min(delphi, key=lambda r: r["online_s"])
            lines.append(
                f"{arch}: SAFENet within 0.5 pt: {s['label']} {100 * secure_estimate(s):.2f} % "
                f"(all-ReLU {100 * a0:.2f} %), online {s['online_s']:.3f} s = "
                f"{s['online_s'] / l0:.2f}x all-ReLU (target <= 0.50); cheapest Delphi plan at "
                f"least as accurate: {d['label']} {d['online_s']:.3f} s -> "
                f"{s['online_s'] / d['online_s']:.2f}x (target <= 0.62)"
            )
        else:
            lines.append(f"{arch}: no SAFENet model within 0.5 pt of all-ReLU")
        for d in sorted((r for r in rows if r["method"] == "delphi"), key=lambda r: r["label"]):
            fits = [r for r in rows if r["method"] == "safenet"
                    and secure_estimate(r) >= secure_estimate(d)]  # fmt: skip
            if not fits:
                continue
            s = min(fits, key=lambda r: r["online_s"])
            lines.append(
                f"{arch} at {d['label']}'s accuracy ({100 * secure_estimate(d):.2f} %, "
                f"{d['online_s']:.3f} s): cheapest SAFENet plan at least as accurate: "
                f"{s['label']} {100 * secure_estimate(s):.2f} % at {s['online_s']:.3f} s -> "
                f"{s['online_s'] / d['online_s']:.2f}x Delphi's latency"
            )
        for r in sorted(rows, key=lambda r: r["label"]):
            if r["method"] != "safenet" or "-b" not in r["label"]:
                continue
            budget = r["label"].rsplit("-b", 1)[1]
            d = next((x for x in rows if x["method"] == "delphi"
                      and x["label"].endswith(f"-b{budget}")), None)  # fmt: skip
            if d is None:
                continue
            gain = 100 * (secure_estimate(r) - secure_estimate(d))
            lines.append(
                f"{arch} budget {budget} s: SAFENet {100 * secure_estimate(r):.2f} % at "
                f"{r['online_s']:.3f} s, Delphi {100 * secure_estimate(d):.2f} % at "
                f"{d['online_s']:.3f} s: SAFENet {gain:+.2f} pt"
            )
    return lines


def cmd_degrees(args: argparse.Namespace) -> int:
    """How often degree 3 was chosen: in each winner, and in each search's final population."""
    results = json.loads(Path(args.results).read_text())
    for r in results.values():
        if r["method"] == "all-relu":
            continue
        d, pop = degree_summary(r), r.get("population_degrees", {})
        line = (f"{r['label']}: winner {d['degree3_layers']} of {d['poly_layers']} polynomial "
                f"layers on degree 3 ({100 * d['degree3_channel_share']:.0f} % of polynomial "
                "channels)")  # fmt: skip
        if pop:
            line += (f"; final population ({pop['members']} members): {pop['degree3_layers']} of "
                     f"{pop['replacing_layers']} replacing layers on degree 3")  # fmt: skip
        print(line)
    return 0


def cmd_targets(args: argparse.Namespace) -> int:
    for line in targets(json.loads(Path(args.results).read_text())):
        print(line)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(required=True)
    m = sub.add_parser("measure", help="measure models and merge them into the results file")
    m.add_argument("--arch-name", required=True, help="label prefix, e.g. resnet20")
    m.add_argument("--teacher", default=None, help="the all-ReLU model (path or built-in name)")
    m.add_argument("--runs", nargs="*", default=[], help="safenet approximate output folders")
    m.add_argument("--out", required=True)
    m.add_argument("--fixed-images", type=int, default=2000, help="test images, fixed point")
    m.add_argument("--secure-images", type=int, default=10)
    m.add_argument("--calibration", type=Path, default=None)
    m.add_argument(
        "--parts",
        default="accuracy,secure",
        help="accuracy (float/fixed point, any load), secure (timed: idle machine)",
    )
    m.add_argument("--force", action="store_true", help="re-measure parts already recorded")
    m.set_defaults(func=cmd_measure)
    p = sub.add_parser("plot", help="Pareto and per-layer PNGs")
    p.add_argument("--results", required=True)
    p.add_argument("--out", required=True)
    p.set_defaults(func=cmd_plot)
    t = sub.add_parser("table", help="markdown table")
    t.add_argument("--results", required=True)
    t.set_defaults(func=cmd_table)
    q = sub.add_parser("repredict", help="predict every measured model under a calibration")
    q.add_argument("--results", required=True)
    q.add_argument("--calibration", type=Path, required=True)
    q.add_argument("--key", default="predicted_online_s_recal", help="field to store it in")
    q.set_defaults(func=cmd_repredict)
    d = sub.add_parser("degrees", help="how often the searches chose degree 3")
    d.add_argument("--results", required=True)
    d.set_defaults(func=cmd_degrees)
    g = sub.add_parser("targets", help="issue 4's targets: reached or not, with the figures")
    g.add_argument("--results", required=True)
    g.set_defaults(func=cmd_targets)
    h = sub.add_parser("hardening", help="range hardening: failures before/after, tail estimates")
    h.add_argument("--results", required=True)
    h.set_defaults(func=cmd_hardening)
    args = ap.parse_args()
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
