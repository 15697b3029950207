"""Load test: N concurrent clients against one safenet server over loopback.

The server (one process, ``serve(concurrency=C)``: one forked worker per connection) serves a
small model; ``--clients`` client processes each run ``--requests`` private inferences back
to back, every answer checked against the plaintext reference. Reports throughput, latency
percentiles and errors, for full inferences and for online-only inferences on sessions
preprocessed into a bank beforehand. Prints one JSON object.

    python bench/load_bench.py [--clients 8] [--requests 4] [--concurrency 2] [--arch lenet5]
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from safenet.benchmark import random_plan


def _server(arch: str, shape: tuple, concurrency: int, bank: str, port_q) -> None:
    from safenet.secure import serve

    plan = random_plan(arch, shape)
    serve(plan, "127.0.0.1", 0, concurrency=concurrency, bank=bank, on_ready=port_q.put)


def _client(
    k: int, port: int, arch: str, shape: tuple, requests: int, bank: str | None, out_q
) -> None:
    from safenet.secure import infer, preprocess

    plan = random_plan(arch, shape)
    lat, errors, wrong = [], [], 0
    if bank is not None:
        preprocess("127.0.0.1", port, requests, bank)
    for r in range(requests):
        x = np.random.default_rng(1000 * k + r).normal(size=shape)
        t = time.perf_counter()
        try:
            y, rep = infer("127.0.0.1", port, x, bank=bank, timeout=300)
            lat.append(time.perf_counter() - t)
            wrong += int(not np.allclose(y, plan.reference(x)))
            if bank is not None and rep.get("mode") != "online":
                errors.append("banked session missing")
        except Exception as e:  # reported, not raised: the load test counts errors
            errors.append(f"{type(e).__name__}: {e}")
    out_q.put({"latencies": lat, "errors": errors, "wrong": wrong})


def run(args: argparse.Namespace, banked: bool) -> dict:
    ctx = mp.get_context("spawn")
    shape = tuple(int(v) for v in args.input_shape.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        port_q, out_q = ctx.Queue(), ctx.Queue()
        srv = ctx.Process(
            target=_server,
            args=(args.arch, shape, args.concurrency, str(Path(tmp) / "server"), port_q),
        )  # not a daemon: it forks a worker per connection
        srv.start()
        port = port_q.get(timeout=120)
        t0 = time.perf_counter()
        clients = [
            ctx.Process(
                target=_client,
                args=(
                    k,
                    port,
                    args.arch,
                    shape,
                    args.requests,
                    str(Path(tmp) / f"client{k}") if banked else None,
                    out_q,
                ),  # fmt: skip
            )
            for k in range(args.clients)
        ]
        for c in clients:
            c.start()
        results = [out_q.get(timeout=1800) for _ in clients]
        wall = time.perf_counter() - t0
        for c in clients:
            c.join(30)
        srv.kill()
        srv.join(10)
    lat = np.array([x for r in results for x in r["latencies"]])
    errors = [e for r in results for e in r["errors"]]
    done = len(lat)
    return {
        "mode": "banked (online only, preprocessing included in wall time)" if banked else "full",
        "clients": args.clients,
        "requests_per_client": args.requests,
        "completed": done,
        "errors": len(errors),
        "error_samples": errors[:3],
        "wrong_answers": sum(r["wrong"] for r in results),
        "wall_s": round(wall, 2),
        "throughput_per_s": round(done / wall, 3),
        "latency_s": {f"p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 90, 99)}
        if done
        else {},  # fmt: skip
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=2, help="server worker processes")
    ap.add_argument("--arch", default="lenet5")
    ap.add_argument("--input-shape", default="1,28,28")
    args = ap.parse_args()
    out = {
        "arch": args.arch,
        "input_shape": args.input_shape,
        "server_concurrency": args.concurrency,
        "python": platform.python_version(),
        "date": time.strftime("%Y-%m-%d"),
        "runs": [run(args, banked=False), run(args, banked=True)],
    }
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
