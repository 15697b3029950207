"""ResNet-32 (3x32x32, random weights) end to end: safenet all-ReLU, half-polynomial and with
the channel split of the searched ``resnet32/safenet-b1.10`` plan (docs/results/planner.json:
37.5 % ReLU channels in every layer, degree 2), and CrypTen 0.4.1 on the same splits, side by
side in the same run.

safenet runs the whole protocol (offline and online) with the server and the client as two
processes over loopback TCP (``safenet bench``); CrypTen gets its multiplication triples from
a free dealer, so only its online phase exists and is compared with ours. CrypTen runs in its
own venv (``bench/peers/crypten_setup.sh``); without it, its rows are skipped with a note.

    python bench/resnet32_bench.py [--repeats 1] [--json out.json]

Prints a markdown table (for docs/benchmarks.md) and, with ``--json``, writes every report.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

from safenet.benchmark import run_bench

ROOT = Path(__file__).resolve().parent
CRYPTEN_PY = ROOT / "peers" / ".venv-crypten" / "bin" / "python"
CRYPTEN_SCRIPT = ROOT / "peers" / "crypten_resnet32.py"


PLANNER = ROOT.parent / "docs" / "results" / "planner.json"
PLANNED = "resnet32/safenet-b1.10"


def planned_fraction() -> float:
    """The ReLU fraction of the searched ``resnet32/safenet-b1.10`` plan (docs/results), which
    keeps the same fraction (and degree 2) in every layer; refused if that ever changes."""
    layers = json.loads(PLANNER.read_text())[PLANNED]["layers"]
    fractions = {round(row["relu_fraction"], 6) for row in layers}
    degrees = {row["degree"] for row in layers}
    if len(fractions) != 1 or degrees != {2}:
        raise SystemExit(f"{PLANNED} is no longer uniform: per-layer CrypTen splits needed")
    return fractions.pop()


def safenet_rows(repeats: int) -> list[dict]:
    rows = []
    fraction = planned_fraction()
    for ratio, variant in ((1.0, "relu"), (0.5, "half-poly"), (fraction, "planned")):
        best = None
        for _ in range(repeats):
            rep = run_bench("resnet32", (3, 32, 32), relu_ratio=ratio)
            if best is None or rep["online_s"] < best["online_s"]:
                best = rep
        assert best is not None
        rows.append(best | {"system": "safenet", "variant": variant})
    return rows


def crypten_rows(runs: int) -> list[dict]:
    if not CRYPTEN_PY.exists():
        print(
            f"# CrypTen venv missing ({CRYPTEN_PY}); run bench/peers/crypten_setup.sh",
            file=sys.stderr,
        )
        return []
    rows = []
    planned = ["--relu-fraction", str(planned_fraction())]
    for flag in ([], ["--half-poly"], ["--poly"], planned):
        out = subprocess.run(
            [str(CRYPTEN_PY), str(CRYPTEN_SCRIPT), "--runs", str(runs), *flag],
            capture_output=True,
            text=True,
            timeout=1800,
        )
        if out.returncode != 0:
            print(f"# CrypTen {flag} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument(
        "--repeats", type=int, default=1, help="safenet runs per variant (best online kept)"
    )
    ap.add_argument("--crypten-runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    t0 = time.time()
    ours = safenet_rows(args.repeats)
    peers = crypten_rows(args.crypten_runs)
    mib = 2.0**20
    head = "system|variant|ReLUs|offline s|online s|offline MiB|online MiB|online rounds|"
    head += "GC B/ReLU|online B/ReLU|peak RSS MiB (server/client)|exact"
    head = head.split("|")
    rows = []
    for r in ours:
        rss = r["peak_rss_mib"]
        exact = "bit-exact" if r["matches_reference"] else f"argmax agrees: {r['argmax_agrees']}"
        rows.append(["safenet", r["variant"], f"{r['relu_count']:,}", f"{r['offline_s']:.1f}",
                     f"{r['online_s']:.2f}", f"{r['offline_bytes'] / mib:,.0f}",
                     f"{r['online_bytes'] / mib:,.0f}", str(r["online_rounds"]),
                     f"{r['gc_bytes_per_relu']:,.0f}", str(r["online_bytes_per_relu"]),
                     f"{rss['server']:,.0f} / {rss['client']:,.0f}", exact])  # fmt: skip
    for r in peers:
        rows.append([r["system"], r["variant"], f"{r.get('relu_count', 0):,}", "(dealer)",
                     f"{r['online_s']:.2f}", "", f"{r['bytes'] / mib:,.0f}",
                     str(r.get("rounds", "")), "", "", "", ""])  # fmt: skip
    print(f"# {platform.machine()}, Python {platform.python_version()}, "
          f"{time.strftime('%Y-%m-%d')}, {time.time() - t0:.0f} s in all")  # fmt: skip
    for row in [head, ["---"] * len(head), *rows]:
        print("| " + " | ".join(row) + " |")
    ref = {("planned" if r["variant"].startswith("mixed:") else r["variant"]): r for r in peers}
    for r in ours:
        peer = ref.get(r["variant"]) or ref.get("relu")
        if peer:
            print(f"# safenet {r['variant']} online / CrypTen {peer['variant']} online = "
                  f"{r['online_s'] / peer['online_s']:.2f}")  # fmt: skip
    if args.json is not None:
        args.json.write_text(json.dumps({"safenet": ours, "peers": peers}, indent=1))


if __name__ == "__main__":
    main()
