"""``safenet demo``: private inference of the built-in models, client and server in two processes.

A server process (:func:`safenet.secure.serve`) holds ``default-approx`` and listens on a free
loopback port; this process is the client and classifies a few Fashion-MNIST test images with
:func:`safenet.secure.infer`, which fetches only the public plan (architecture, no weights).
Each private prediction is printed beside the plaintext ones (float model and the Plan's
fixed point, which the protocol computes exactly on ReLU channels and up to one unit per
element on polynomial ones). One more private inference, of the all-ReLU ``default``, gives
the cost table. Servers are always stopped, on errors and Ctrl-C too.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import statistics
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from safenet import checkpoint
from safenet.data import ImageDataset
from safenet.plan import compile_model
from safenet.plan.ir import Plan
from safenet.secure import SecureRunError, infer, merge_reports, serve

HOST = "127.0.0.1"
MODELS = ("default-approx", "default")


def _exit_with_parent() -> None:
    """Exit this process as soon as the demo process is gone (even killed with SIGKILL)."""
    parent = mp.parent_process()
    if parent is not None:
        parent.join()
        os._exit(1)


def _serve_proc(plan: Plan, sessions: int, out_q: Any) -> None:
    """Server process: serve ``sessions`` clients, then send back the session reports."""
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    try:
        reports = serve(
            plan, HOST, 0, max_sessions=sessions, on_ready=lambda p: out_q.put(("port", p))
        )
        out_q.put(("reports", reports))
    except KeyboardInterrupt:  # Ctrl-C reaches the whole process group; the parent reports it
        pass
    except BaseException:
        out_q.put(("error", traceback.format_exc()))


class _Server:
    """A :func:`serve` process on a free loopback port; :meth:`close` always stops it."""

    def __init__(self, plan: Plan, sessions: int, timeout: float = 120.0) -> None:
        ctx = mp.get_context("spawn")
        self.timeout = timeout
        self.q = ctx.Queue()
        self.proc = ctx.Process(
            target=_serve_proc,
            args=(plan, sessions, self.q),
            daemon=True,
            name="safenet-demo-server",
        )
        self.proc.start()
        try:
            self.port: int = self._wait("port")
        except BaseException:
            self.close()
            raise

    def _wait(self, kind: str) -> Any:
        deadline = time.monotonic() + self.timeout
        while True:
            alive = self.proc.is_alive()  # checked first: a dead process's last word is queued
            try:
                got, value = self.q.get(timeout=0.2)
            except queue.Empty:
                if not alive:
                    code = self.proc.exitcode
                    msg = f"the demo server exited unexpectedly (exit code {code})"
                    raise SecureRunError(msg) from None
                if time.monotonic() > deadline:
                    msg = f"no {kind} from the demo server in {self.timeout:.0f} s"
                    raise SecureRunError(msg) from None
                continue
            if got == "error":
                raise SecureRunError(f"the demo server failed:\n{value}")
            if got == kind:
                return value

    def reports(self) -> list[dict[str, Any]]:
        """The server's per-session reports (once it has served all its sessions)."""
        reps = self._wait("reports")
        self.proc.join(10)
        return reps

    def close(self) -> None:
        """Stop the process if it still runs (terminate, then kill) and reap it."""
        if self.proc.is_alive():
            self.proc.terminate()
            self.proc.join(5)
            if self.proc.is_alive():
                self.proc.kill()
        self.proc.join(5)
        self.q.close()
        self.q.cancel_join_thread()


def _private(port: int, x: np.ndarray, desc: str, bar: bool) -> tuple[np.ndarray, dict[str, Any]]:
    """One private inference with a progress bar over the offline phase's ops."""
    pbar: tqdm | None = None

    def progress(done: int, total: int) -> None:
        nonlocal pbar
        if pbar is None:
            pbar = tqdm(total=total, desc=desc, unit="op", leave=False, disable=not bar)
        pbar.update(done - pbar.n)

    try:
        return infer(HOST, port, x, progress=progress)
    finally:
        if pbar is not None:
            pbar.close()


def serve_and_query(
    plan: Plan,
    xs: list[np.ndarray],
    bar: bool,
    on_result: Callable[[int, np.ndarray, dict[str, Any]], None] | None = None,
) -> tuple[list[np.ndarray], list[dict[str, Any]]]:
    """Serve ``plan`` in its own process and query it privately once per input from this one.

    Returns the outputs and the merged (server + client) report of each inference. The
    server prepares its model once for all the queries (as a real deployment does).
    """
    name = plan.info.get("model", "?")
    server = _Server(plan, len(xs))
    try:
        ys, client_reps = [], []
        for k, x in enumerate(xs):
            y, rep = _private(server.port, x, f"{name} #{k} offline", bar)
            ys.append(y)
            client_reps.append(rep)
            if on_result is not None:
                on_result(k, y, rep)
        server_reps = server.reports()
    finally:
        server.close()
    merged = [merge_reports(plan, s, c) for s, c in zip(server_reps, client_reps, strict=True)]
    return ys, merged


def _mib(n: float) -> str:
    return f"{n / 2**20:,.1f}"


def _cost_table(rows: dict[str, dict[str, Any]], acc: dict[str, float]) -> list[str]:
    head = ("model", "ReLUs", "polys", "test acc", "online s", "online MiB", "offline s",
            "offline MiB")  # fmt: skip
    fmt = "  {:16s}" + " {:>11s}" * (len(head) - 1)
    lines = [fmt.format(*head)]
    for name in ("default", "default-approx"):
        r = rows[name]
        lines.append(
            fmt.format(
                name,
                f"{r['relu_count']:,}",
                f"{r['poly_count']:,}",
                f"{acc[name]:.2%}",
                f"{r['online_s']:.2f}",
                _mib(r["online_bytes"]),
                f"{r['offline_s']:.2f}",
                _mib(r["offline_bytes"]),
            )
        )
    a, b = rows["default-approx"], rows["default"]

    def ratio(k: str) -> str:
        return f"{a[k] / b[k]:.2f}x" if b[k] else "-"

    lines.append(
        fmt.format(
            "approx/default",
            ratio("relu_count"),
            "",
            "",
            ratio("online_s"),
            ratio("online_bytes"),
            ratio("offline_s"),
            ratio("offline_bytes"),
        )
    )
    return lines


@dataclass
class _Prepared:
    """Both built-in models compiled, the test images and their plaintext predictions."""

    checkpoints: dict[str, checkpoint.Checkpoint]
    plans: dict[str, Plan]
    classes: tuple[str, ...]
    xs: list[np.ndarray]
    labels: np.ndarray
    pred_float: np.ndarray
    pred_fixed: np.ndarray


def _prepare(images: int, data_dir: str | Path | None) -> _Prepared:
    """Load and compile :data:`MODELS`, read ``images`` test images and predict them in the
    clear with ``default-approx`` (float model and the Plan's fixed point)."""
    cks = {n: checkpoint.load(n) for n in MODELS}
    ck = cks["default-approx"]
    ds = ImageDataset(ck.dataset, "test", data_dir, images)  # DatasetError if not fetched
    plans, models = {}, {}
    for n, k in cks.items():
        models[n] = k.build().eval()
        plans[n] = compile_model(models[n], k.input_shape)
        plans[n].info |= k.plan_info() | {"model": n}
    xb = ds.normalize(ds.images)
    with torch.no_grad():
        pred_float = models["default-approx"](xb).argmax(1).numpy()
    pred_fixed = np.asarray(plans["default-approx"].reference(xb.double().numpy())).argmax(1)
    xs = [x.double().numpy() for x in xb]
    return _Prepared(cks, plans, ds.info.classes, xs, ds.labels.numpy(), pred_float, pred_fixed)


def _print_intro(prep: _Prepared) -> None:
    counts = prep.plans["default-approx"].counts()
    print(
        f"Private inference of {len(prep.xs)} Fashion-MNIST test images with default-approx "
        f"({prep.checkpoints['default-approx'].arch}: {counts['relu_count']:,} ReLUs, "
        f"{counts['poly_count']:,} polynomial activations).\nA server process holds the "
        "weights; this process is the client and learns only the prediction.\nThe plaintext "
        "columns come from the model in the clear, for comparison only.\n",
        flush=True,
    )


class _PredictionTable:
    """Each private prediction beside the plaintext ones, printed one row per image as it
    arrives (:meth:`show` is :func:`serve_and_query`'s ``on_result``); ``rows`` keeps them."""

    def __init__(self, prep: _Prepared) -> None:
        self.prep = prep
        self.width = max(len(n) for n in prep.classes)
        self.rows: list[dict[str, Any]] = []

    def line(self, *cells: str) -> str:
        idx, *classes, mark, online, offline = cells
        named = "  ".join(f"{c:{self.width}s}" for c in classes)
        return f"  {idx:>5s}  {named}  {mark:5s}  {online:>8s}  {offline:>9s}"

    def header(self) -> str:
        return self.line(
            "image", "true", "private", "float", "fixed point", "match", "online s", "offline s"
        )

    def show(self, k: int, y: np.ndarray, rep: dict[str, Any]) -> None:
        p = self.prep
        row = {
            "index": k,
            "label": int(p.labels[k]),
            "private": int(np.argmax(y)),
            "float": int(p.pred_float[k]),
            "fixed_point": int(p.pred_fixed[k]),
            "online_s": rep["phase_s"]["online"],
            "offline_s": rep["phase_s"]["offline"],
        }
        self.rows.append(row)
        preds = [p.classes[row[c]] for c in ("label", "private", "float", "fixed_point")]
        mark = "ok" if row["private"] == row["fixed_point"] == row["float"] else "DIFF"
        online, offline = f"{row['online_s']:.2f}", f"{row['offline_s']:.2f}"
        tqdm.write(self.line(str(k), *preds, mark, online, offline))

    def summary(self) -> str:
        """How many private predictions equal the fixed-point ones and the true labels."""
        same = sum(r["private"] == r["fixed_point"] for r in self.rows)
        right = sum(r["private"] == r["label"] for r in self.rows)
        n = len(self.rows)
        return (
            f"{same}/{n} private predictions equal the plaintext fixed-point ones; "
            f"{right}/{n} are the true label."
        )


def _median_cost(merged: list[dict[str, Any]]) -> dict[str, Any]:
    """The first merged report with the median online and offline times of all of them."""

    def med(key: str) -> float:
        return statistics.median(m[key] for m in merged)

    return merged[0] | {k: med(k) for k in ("online_s", "offline_s")}


def _print_cost(cost: dict[str, dict[str, Any]], prep: _Prepared, runs: int) -> None:
    acc = {n: k.metrics["accuracy"] for n, k in prep.checkpoints.items()}
    print(
        f"\nCost of one private inference over loopback on this machine (default-approx: median "
        f"of {runs}); offline = input-independent preprocessing:"
    )
    print("\n".join(_cost_table(cost, acc)))


def run_demo(
    images: int = 5, data_dir: str | Path | None = None, *, progress: bool = True
) -> dict[str, Any]:
    """Classify ``images`` Fashion-MNIST test images privately with ``default-approx`` and
    compare one private inference's cost with ``default``; prints as it goes.

    Returns ``{"images": [per-image dict], "cost": {model: merged report}, "wall_s": float}``.
    """
    if images < 1:
        raise ValueError(f"--images must be at least 1, got {images}")
    t0 = time.perf_counter()
    prep = _prepare(images, data_dir)
    _print_intro(prep)
    table = _PredictionTable(prep)
    print(table.header())
    _, merged = serve_and_query(prep.plans["default-approx"], prep.xs, progress, table.show)
    print(
        f"\n{table.summary()}\n\nOne private inference of the all-ReLU model default, for "
        "the cost comparison ...",
        flush=True,
    )
    (y_base,), (base,) = serve_and_query(prep.plans["default"], prep.xs[:1], progress)
    cost = {"default-approx": _median_cost(merged), "default": base}
    _print_cost(cost, prep, len(merged))
    wall = time.perf_counter() - t0
    print(
        "\ntest acc: float accuracy on all 10,000 test images, recorded with the model (safenet "
        "eval).\nEvery ReLU costs a garbled circuit, every polynomial a few multiplications on "
        f"secret shares.\nDemo finished in {wall:.0f} s.",
        flush=True,
    )
    return {
        "images": table.rows,
        "default_prediction": int(np.argmax(y_base)),
        "cost": cost,
        "wall_s": wall,
    }
