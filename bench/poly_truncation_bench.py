"""An older engine revision against this checkout, side by side, same machine, same run,
interleaved: the price (or the gain) of an engine change. Used for exact polynomial
truncation (issue 11: ``--old 0fdc005``, the last commit with local, wrapping truncation),
for the per-session statistical bounds (issue 14: ``--old 86d4a9b``, the last commit with
40-bit ReLU masks and full-size polynomial plaintexts) and for the AES-NI kernels and
output bits as shares (issue 12: ``--old 74693ea``).

The old engine is the one at ``--old``, checked out into a temporary git worktree; the
new one is this checkout. Each repetition runs, for every configuration, one secure
inference (``safenet.benchmark.run_bench``: server and client as two processes over loopback
TCP, random weights) with the old code and then with the new, each in a fresh interpreter,
so neither warms the other's caches. Reports the median online and offline seconds, the
client's garbled-circuit evaluation time (``gc.eval``), bytes, the client's peak RSS and the
new/old ratios, and whether each run matched the reference (``argmax`` for plans with
polynomial channels, bit-exact for all-ReLU ones).

    python bench/poly_truncation_bench.py [--repeats 3] [--old REV] [--only polynomial]
                                          [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: (label, arch, input shape, relu ratio, degree)
CONFIGS = [
    ("ResNet-32 3x32x32, all ReLU", "resnet32", (3, 32, 32), 1.0, 2),
    ("ResNet-20 3x32x32, all ReLU", "resnet20", (3, 32, 32), 1.0, 2),
    ("ResNet-20 3x32x32, 25 % ReLU, degree 2", "resnet20", (3, 32, 32), 0.25, 2),
    ("ResNet-32 3x32x32, half polynomial, degree 2", "resnet32", (3, 32, 32), 0.5, 2),
    ("ResNet-32 3x32x32, half polynomial, degree 3", "resnet32", (3, 32, 32), 0.5, 3),
]

_RUN = """
import json, sys
from safenet.benchmark import run_bench
arch, shape, ratio, degree = json.loads(sys.argv[1])
rep = run_bench(arch, tuple(shape), relu_ratio=ratio, degree=degree)
print("REPORT " + json.dumps(rep))
"""


def one_run(src: Path, arch: str, shape: tuple, ratio: float, degree: int) -> dict:
    """One secure inference with the engine under ``src`` (a ``src/`` folder)."""
    env = os.environ | {"PYTHONPATH": str(src)}
    arg = json.dumps([arch, list(shape), ratio, degree])
    out = subprocess.run(
        [sys.executable, "-c", _RUN, arg], env=env, capture_output=True, text=True, check=False
    )
    line = next((x for x in out.stdout.splitlines() if x.startswith("REPORT ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"run failed under {src}:\n{out.stderr[-2000:]}")
    return json.loads(line[len("REPORT ") :])


def _eval_s(rep: dict) -> float:
    """The client's garbled-circuit evaluation time of one run (0 without garbled layers)."""
    return _prim(rep, "client", "gc.eval", "online")


def _prim(rep: dict, party: str, name: str, phase: str) -> float:
    """Seconds of one primitive of one party in one phase (0 if it did not run)."""
    return rep[party]["primitives"].get(name, {}).get(f"{phase}_s", 0.0)


#: (party, primitive, phase) reported per variant: the online and offline breakdown
PRIMITIVES = [
    ("client", "gc.eval", "online"), ("server", "gc.encode", "online"),
    ("server", "linear.plain", "online"), ("client", "poly", "online"),
    ("server", "gc.garble(thread)", "offline"), ("server", "gc.send+ot", "offline"),
    ("client", "gc.recv+ot", "offline"), ("server", "he.linear", "offline"),
    ("client", "he.linear", "offline"),
]  # fmt: skip


def summarise(label: str, runs: dict[str, list[dict]]) -> dict:
    """Medians per variant and the new/old ratios."""
    row: dict = {"config": label}
    for variant, reps in runs.items():
        row[variant] = {
            "online_s": statistics.median(r["online_s"] for r in reps),
            "online_s_min": min(r["online_s"] for r in reps),
            "online_s_all": [r["online_s"] for r in reps],
            "online_bytes": reps[0]["online_bytes"],
            "offline_s": statistics.median(r["offline_s"] for r in reps),
            "argmax_agrees": sum(r["argmax_agrees"] for r in reps),
            "matches_reference": sum(r["matches_reference"] for r in reps),
            "max_abs_error_ulp": max(r["max_abs_error_ulp"] for r in reps),
            "gc_eval_s": statistics.median(_eval_s(r) for r in reps),
            "client_rss_mib": max(r["peak_rss_mib"]["client"] for r in reps),
            "server_rss_mib": max(r["peak_rss_mib"]["server"] for r in reps),
            "primitives_s": {
                f"{party} {name} ({phase})": round(
                    statistics.median(_prim(r, party, name, phase) for r in reps), 4
                )
                for party, name, phase in PRIMITIVES
            },
            "runs": len(reps),
        }
    for variant, reps in runs.items():
        row[variant]["offline_bytes"] = reps[0]["offline_bytes"]
    row["online_ratio"] = round(row["new"]["online_s"] / row["old"]["online_s"], 3)
    row["offline_ratio"] = round(row["new"]["offline_s"] / row["old"]["offline_s"], 3)
    row["offline_bytes_ratio"] = round(row["new"]["offline_bytes"] / row["old"]["offline_bytes"], 4)
    row["bytes_ratio"] = round(row["new"]["online_bytes"] / row["old"]["online_bytes"], 4)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="0fdc005", help="git revision of the old arithmetic")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", default=None, help="write the full report here")
    ap.add_argument("--only", default="", help="run the configurations whose label has this")
    args = ap.parse_args()
    configs = [c for c in CONFIGS if args.only in c[0]]
    with tempfile.TemporaryDirectory() as tmp:
        wt = Path(tmp) / "old"
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(wt),
                        args.old], check=True)  # fmt: skip
        try:
            runs = {c[0]: {"old": [], "new": []} for c in configs}
            for rep in range(args.repeats):
                for label, *cfg in configs:
                    for variant, src in (("old", wt / "src"), ("new", ROOT / "src")):
                        r = one_run(src, *cfg)
                        runs[label][variant].append(r)
                        print(f"[{rep + 1}/{args.repeats}] {label} {variant}: "
                              f"online {r['online_s']:.3f} s", file=sys.stderr)  # fmt: skip
        finally:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(wt)],
                           check=False)  # fmt: skip
    rows = [summarise(label, r) for label, r in runs.items()]
    print("| configuration | online s old / new | ratio | gc.eval s old / new |"
          " online MiB old / new | ratio | offline s old / new | ratio | offline MiB ratio |"
          " client peak RSS MiB old / new | argmax agrees old / new |")  # fmt: skip
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        o, n = r["old"], r["new"]
        print(f"| {r['config']} | {o['online_s']:.3f} / {n['online_s']:.3f} | "
              f"{r['online_ratio']:.3f} | {o['gc_eval_s']:.3f} / {n['gc_eval_s']:.3f} | "
              f"{o['online_bytes'] / 2**20:.2f} / "
              f"{n['online_bytes'] / 2**20:.2f} | {r['bytes_ratio']:.4f} | "
              f"{o['offline_s']:.2f} / {n['offline_s']:.2f} | {r['offline_ratio']:.3f} | "
              f"{r['offline_bytes_ratio']:.4f} | "
              f"{o['client_rss_mib']:,.0f} / {n['client_rss_mib']:,.0f} | "
              f"{o['argmax_agrees']}/{o['runs']} / {n['argmax_agrees']}/{n['runs']} |")  # fmt: skip
    if args.json:
        meta = {"python": platform.python_version(), "machine": platform.machine(),
                "old": args.old, "repeats": args.repeats}  # fmt: skip
        Path(args.json).write_text(json.dumps({"meta": meta, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
