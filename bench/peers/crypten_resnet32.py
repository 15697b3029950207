"""CrypTen 0.4.1 peer benchmark: private ResNet-32 inference on one CIFAR-sized image.

Runs inside ``bench/peers/.venv-crypten`` (made by ``crypten_setup.sh``), not the project's venv.
Two parties in separate processes started by CrypTen's own multiprocess launcher
(``crypten.mpc.context.run_multiprocess``: gloo backend, world size 2, rendezvous through
environment variables, tensors over TCP on loopback). Party 0 is the server: it encrypts the
model weights. Party 1 is the client: it encrypts the input. Beaver triples and the other
tuples come from CrypTen's default "trusted first party" provider, which derives them from
seeds the parties share: they cost no communication, which is why the figures are compared
with SafeNet's online phase. BatchNorm is folded into the convolutions before conversion
unless ``--keep-bn``.

Only the private forward is timed: one warm-up, then ``--runs`` timed runs, each between two
barriers; times are medians of party 0's wall-clock times. Two timings:

* ``online_s``: CrypTen as it runs by default, making each tuple locally when a layer asks.
* ``online_cached_s``: every tuple made before the forward, outside the clock (the dealer's
  work wholly free, as a preprocessing phase would make it).

``nodes_s`` and ``nodes_cached_s`` are the parts of those spent inside graph nodes; the rest is
CrypTen's graph walk (``nn.Graph.forward``), which is quadratic in the number of nodes.

Communication is CrypTen's own accounting (``cfg.communicator.verbose``), reset right before
each timed forward. Each party counts what it sends plus what it receives, so the mean over the
two parties is the traffic of the whole run in both directions; ``bytes`` is that figure.
``rounds`` counts communication calls of party 0 (barriers excluded).

Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings

import crypten
import crypten.communicator as comm
import torch
from crypten.config import cfg
from crypten.mpc.context import run_multiprocess
from torch import nn

# Delphi's fixed quadratic (DESIGN.md section 3).
POLY = (0.1992, 0.5002, 0.1997)
SERVER, CLIENT = 0, 1
SHAPE = (3, 32, 32)


class Activation(nn.Module):
    """ReLU, the degree-2 polynomial, or ReLU on the first channels and the polynomial on the
    rest: half of them (``half-poly``) or a fraction ``F`` kept as ReLU (``mixed:F``, the
    channel split of a planner's uniform configuration, as safenet's plan keeps it)."""

    def __init__(self, variant: str, channels: int) -> None:
        super().__init__()
        self.variant = variant
        # Plain ints, so that the export slices at constant indices. The end is explicit:
        # an open end becomes INT64_MAX, which CrypTen's Slice casts to int32 (-1).
        self.channels, self.half = channels, channels // 2
        if variant.startswith("mixed:"):
            self.half = round(channels * float(variant.split(":", 1)[1]))
        self.relu = nn.ReLU()  # the only place ReLUs are evaluated, so hooks can count them

    @staticmethod
    def poly(x: torch.Tensor) -> torch.Tensor:
        c0, c1, c2 = POLY
        # x ** 2 is exported as ONNX Pow, which CrypTen evaluates with one square().
        return c0 + c1 * x + c2 * x**2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.variant == "relu":
            return self.relu(x)
        if self.variant == "poly" or self.half == 0:
            return self.poly(x)
        if self.half == self.channels:
            return self.relu(x)
        relu_part, poly_part = x[:, : self.half], x[:, self.half : self.channels]
        return torch.cat([self.relu(relu_part), self.poly(poly_part)], dim=1)


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int, variant: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.act1 = Activation(variant, c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.act2 = Activation(variant, c_out)
        self.shortcut = nn.Identity()
        if stride != 1 or c_in != c_out:  # option B: 1x1 projection with BatchNorm
            self.shortcut = nn.Sequential(
                nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return self.act2(y + self.shortcut(x))


class ResNet32(nn.Module):
    """ResNet-32 for CIFAR: 16/32/64 channels, 5 basic blocks per stage, 10 classes."""

    def __init__(self, variant: str = "relu", blocks: int = 5, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        self.act = Activation(variant, 16)
        layers, c_in = [], 16
        for c_out, stride in ((16, 1), (32, 2), (64, 2)):
            for i in range(blocks):
                layers.append(BasicBlock(c_in, c_out, stride if i == 0 else 1, variant))
                c_in = c_out
        self.layers = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(64, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layers(self.act(self.bn(self.conv(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


def build(variant: str, seed: int) -> ResNet32:
    torch.manual_seed(seed)
    model = ResNet32(variant)
    # Random BatchNorm parameters and statistics: not an identity, and no two initializers
    # equal (the ONNX exporter would merge equal ones through Identity nodes, an op CrypTen's
    # converter does not know). Scales near 0.5 keep 31 layers of the quadratic finite (near
    # 1 they overflow float32), so the decrypted output can be checked for every variant.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.4, 0.6)
                m.bias.uniform_(-0.1, 0.1)
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def fold_batchnorm(model: ResNet32) -> ResNet32:
    """Fold every BatchNorm into the convolution before it (inference only)."""

    def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> nn.Conv2d:
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        out = nn.Conv2d(
            conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding
        )
        with torch.no_grad():
            out.weight.copy_(conv.weight * scale.reshape(-1, 1, 1, 1))
            out.bias.copy_(bn.bias - bn.running_mean * scale)
        return out

    model.conv, model.bn = fold(model.conv, model.bn), nn.Identity()
    for block in model.layers:
        block.conv1, block.bn1 = fold(block.conv1, block.bn1), nn.Identity()
        block.conv2, block.bn2 = fold(block.conv2, block.bn2), nn.Identity()
        if isinstance(block.shortcut, nn.Sequential):
            block.shortcut = fold(*block.shortcut)
    return model.eval()


def count_relus(model: nn.Module) -> tuple[int, int]:
    """Elements that go through a ReLU, and the number of activation layers, in one forward."""
    counts = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: counts.append(out.numel()))
        for m in model.modules()
        if isinstance(m, nn.ReLU)
    ]
    with torch.no_grad():
        model(torch.zeros(1, *SHAPE))
    for h in hooks:
        h.remove()
    layers = sum(isinstance(m, Activation) for m in model.modules())
    return sum(counts), layers


class NodeTimer:
    """Adds up the time spent inside the nodes of a CrypTen graph during a forward.

    CrypTen's ``nn.Graph.forward`` walks the ONNX graph with bookkeeping that is quadratic in the
    number of nodes; what is left of ``online_s`` after the nodes' own time is that walk.
    """

    def __init__(self) -> None:
        self.seconds = 0.0
        self._depth = 0

    def install(self) -> None:
        timer, plain_call = self, crypten.nn.Module.__call__

        def timed_call(module, *args, **kwargs):
            if isinstance(module, crypten.nn.Graph) or timer._depth:
                return plain_call(module, *args, **kwargs)
            timer._depth += 1
            start = time.perf_counter()
            try:
                return plain_call(module, *args, **kwargs)
            finally:
                timer.seconds += time.perf_counter() - start
                timer._depth -= 1

        crypten.nn.Module.__call__ = timed_call


def _frozen(value):
    """A hashable stand-in for a tuple request's arguments (lists and dicts included)."""
    if isinstance(value, list | tuple):
        return tuple(_frozen(v) for v in value)
    if isinstance(value, dict):
        return frozenset((k, _frozen(v)) for k, v in value.items())
    return value


class PremadeTuples:
    """Makes the trusted first party's tuples before a forward instead of during it.

    CrypTen has this built in (``crypten.trace()`` then ``crypten.fill_cache()``), but 0.4.1's
    cache keys on the raw keyword arguments, and convolution triples carry lists (padding,
    stride), so ``fill_cache`` raises ``TypeError: unhashable type: 'list'``. This does the
    same with hashable keys. Both parties record, fill and consume in the same order, so each
    hands out its share of the same tuple.
    """

    def __init__(self) -> None:
        self.mode = "off"  # "record", "serve" or "off"
        self.requests: list[tuple] = []
        self.store: dict[tuple, list] = {}
        self.hits = self.misses = 0
        self._made: dict[str, object] = {}

    def install(self) -> None:
        tfp = crypten.mpc.provider.TrustedFirstParty
        for name in crypten.mpc.provider.provider.TupleProvider.TRACEABLE_FUNCTIONS:
            self._made[name] = getattr(tfp, name)
            setattr(tfp, name, self._wrapper(name))

    def _wrapper(self, name: str):
        def provide(provider, *args, **kwargs):
            if self.mode == "record":
                self.requests.append((name, args, kwargs))
            elif self.mode == "serve":
                queue = self.store.get((name, _frozen(args), _frozen(kwargs)))
                if queue:
                    self.hits += 1
                    return queue.pop(0)
                self.misses += 1
            return self._made[name](provider, *args, **kwargs)

        return provide

    def fill(self) -> None:
        provider = crypten.mpc.get_default_provider()
        for name, args, kwargs in self.requests:
            key = (name, _frozen(args), _frozen(kwargs))
            made = self._made[name](provider, *args, **kwargs)
            self.store.setdefault(key, []).append(made)


def timed_runs(private, x, runs: int, timer: NodeTimer, before=None) -> dict:
    """Time ``runs`` private forwards, each between two barriers, with CrypTen's comm stats."""
    out = {"times": [], "node_times": [], "bytes": [], "rounds": [], "max_abs_err": None}
    for _ in range(runs):
        if before is not None:
            before()
        comm.get().barrier()
        comm.get().reset_communication_stats()
        timer.seconds = 0.0
        start = time.perf_counter()
        private(x)
        stats = comm.get().get_communication_stats()
        comm.get().barrier()
        out["times"].append(time.perf_counter() - start)
        out["node_times"].append(timer.seconds)
        out["bytes"].append(stats["bytes"])
        out["rounds"].append(stats["rounds"])
    return out


def party(variant: str, runs: int, threads: int, seed: int, keep_bn: bool) -> dict:
    """One party's work; CrypTen's launcher has already called crypten.init() here."""
    warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
    torch.set_num_threads(threads)
    rank = comm.get().get_rank()
    model = build(variant, seed)
    relus, layers = count_relus(model)
    if not keep_bn:
        model = fold_batchnorm(model)
    torch.manual_seed(seed + 1)
    image = torch.randn(1, *SHAPE)
    with torch.no_grad():
        expected = model(image)

    private = crypten.nn.from_pytorch(model, torch.zeros(1, *SHAPE))
    private.encrypt(src=SERVER)
    private.eval()
    x = crypten.cryptensor(image, src=CLIENT)
    timer, premade = NodeTimer(), PremadeTuples()
    timer.install()
    premade.install()

    def error_of(out) -> float | None:
        # The all-quadratic network overflows float32 on random weights, so the plaintext
        # reference is inf/NaN there and no error can be given.
        err = (out.get_plain_text() - expected).abs().max().item()
        return err if math.isfinite(err) else None

    cfg.communicator.verbose = True
    with crypten.no_grad():
        # Warm-up, which also records the tuple requests of one forward.
        premade.mode = "record"
        warm_error = error_of(private(x))
        premade.mode = "off"

        # CrypTen's default: the trusted first party makes each tuple when a layer asks for
        # it, locally from seeds the parties share, inside the forward (no bytes, but time).
        inline = timed_runs(private, x, runs, timer)
        inline["max_abs_err"] = error_of(private(x))

        # The same forward with every tuple made beforehand, outside the clock.
        premade.mode = "serve"
        cached = timed_runs(private, x, runs, timer, before=premade.fill)
        premade.fill()
        cached["max_abs_err"] = error_of(private(x))
    return {
        "rank": rank,
        "inline": inline,
        "cached": cached,
        "warm_up_max_abs_err": warm_error,
        "tuples_per_forward": len(premade.requests),
        "tuple_cache_hits": premade.hits,
        "tuple_cache_misses": premade.misses,
        "graph_nodes": len(private._graph),
        "relu_count": relus,
        "activation_layers": layers,
        "ops": sorted({type(m).__name__ for m in private.modules()}),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    group = ap.add_mutually_exclusive_group()
    group.add_argument("--poly", action="store_true", help="every ReLU becomes the quadratic")
    group.add_argument(
        "--half-poly",
        action="store_true",
        help="half the channels of every activation layer quadratic, ReLU on the rest",
    )
    group.add_argument(
        "--relu-fraction",
        type=float,
        default=None,
        help="ReLU on this fraction of every layer's channels (the first ones), the quadratic "
        "on the rest",
    )
    ap.add_argument("--runs", type=int, default=3, help="timed runs after one warm-up")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per party")
    ap.add_argument(
        "--keep-bn",
        action="store_true",
        help="leave BatchNorm for CrypTen to evaluate on encrypted statistics (default: fold it "
        "into the convolutions before conversion, as the other systems compared do)",
    )
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--verbose", action="store_true", help="also print per-party details to stderr")
    args = ap.parse_args()
    variant = "poly" if args.poly else "half-poly" if args.half_poly else "relu"
    if args.relu_fraction is not None:
        variant = f"mixed:{args.relu_fraction}"

    # Both parties and gloo on loopback.
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")

    # No torch work in this process before the launcher forks: a forked child that inherits
    # an initialised OpenMP pool hangs once it runs with more than one thread.
    launch = run_multiprocess(world_size=2)(party)
    results = launch(variant, args.runs, args.threads, args.seed, args.keep_bn)
    if not results or len(results) != 2:
        raise SystemExit("a CrypTen party failed; see the log above")
    p0, p1 = sorted(results, key=lambda r: r["rank"])
    if args.verbose:
        print(json.dumps({"party0": p0, "party1": p1}), file=sys.stderr)

    def median(key: str, mode: str) -> float:
        return statistics.median(p0[mode][key])

    def traffic(mode: str) -> int:
        # Each party counts what it sends plus what it receives: the mean of the two is the
        # traffic of the whole run, both directions together.
        both = zip(p0[mode]["bytes"], p1[mode]["bytes"], strict=True)
        return int(statistics.median((a + b) / 2 for a, b in both))

    print(
        json.dumps(
            {
                "system": f"crypten-{crypten.__version__}",
                "model": "resnet32",
                "input_shape": list(SHAPE),
                "online_s": round(median("times", "inline"), 4),
                "bytes": traffic("inline"),
                "rounds": int(median("rounds", "inline")),
                "relu_count": p0["relu_count"],
                "variant": variant,
                "activation_layers": p0["activation_layers"],
                "nodes_s": round(median("node_times", "inline"), 4),
                "online_cached_s": round(median("times", "cached"), 4),
                "nodes_cached_s": round(median("node_times", "cached"), 4),
                "bytes_cached": traffic("cached"),
                "tuples_per_forward": p0["tuples_per_forward"],
                "tuple_cache_misses": p0["tuple_cache_misses"],
                "graph_nodes": p0["graph_nodes"],
                "batchnorm": "crypten" if args.keep_bn else "folded",
                "runs": args.runs,
                "threads_per_party": args.threads,
                "torch": torch.__version__,
                "max_abs_err": p0["inline"]["max_abs_err"],
                "max_abs_err_cached": p0["cached"]["max_abs_err"],
            }
        )
    )


if __name__ == "__main__":
    main()
