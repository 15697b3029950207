"""Does one forked session fit a memory cap? The check behind ``default_session_memory``
(docs/security.md, docs/service.md): serve a model with ``--concurrency 2`` and the cap
given, run one private inference, say whether it completed.

    .venv/bin/python scripts/session_memory.py --model default-approx --caps 0.25 0.5
    .venv/bin/python scripts/session_memory.py --model resnet32 --caps 2.5
"""

from __future__ import annotations

import argparse
import socket
import threading

import numpy as np

from safenet import checkpoint
from safenet.benchmark import random_plan
from safenet.channel import listen
from safenet.plan.ir import Plan
from safenet.secure import default_session_memory, infer, serve


def load(model: str) -> Plan:
    """A shipped checkpoint, or ``resnet32`` (all ReLU, random weights, 3x32x32)."""
    if model == "resnet32":
        return random_plan("resnet32", (3, 32, 32))
    return checkpoint.load(model).plan()


def fits(plan: Plan, cap_gib: float) -> str:
    """``"ok"`` or the error one inference met under a cap of ``cap_gib`` per session."""
    lst = listen("127.0.0.1", 0)
    kw = {"listener": lst, "concurrency": 2, "max_sessions": 1,
          "session_memory": int(cap_gib * 2**30)}  # fmt: skip
    t = threading.Thread(target=serve, args=(plan,), kwargs=kw, daemon=True)
    t.start()
    try:
        infer("127.0.0.1", lst.getsockname()[1], np.zeros(plan.input_shape), timeout=300)
        return "ok"
    except Exception as e:  # the session's MemoryError comes back as the server's error
        return f"failed: {str(e)[:100]}"
    finally:
        t.join(120)
        lst.shutdown(socket.SHUT_RDWR)
        lst.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default-approx")
    ap.add_argument("--caps", type=float, nargs="+", default=[0.25, 0.5, 1.0])
    args = ap.parse_args()
    plan = load(args.model)
    print(f"{args.model}: default cap {default_session_memory(plan) / 2**30:.2f} GiB")
    for cap in args.caps:
        print(f"  {cap:g} GiB: {fits(plan, cap)}", flush=True)


if __name__ == "__main__":
    main()
