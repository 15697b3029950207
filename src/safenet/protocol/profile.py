"""Where a party's time and bytes go: per phase, per primitive and per layer."""

from __future__ import annotations

import resource
import time
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from safenet.channel import Channel

__all__ = ["Profile", "peak_rss_mib"]


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class Profile:
    """Accumulates wall time per (phase, primitive) and bytes per (phase, layer).

    Primitives are names such as ``"he.linear"``, ``"gc.garble"``, ``"gc.eval"``, ``"ot"``,
    ``"poly"``, ``"linear.plain"``; layers are op indices of the plan.
    """

    def __init__(self, conn: Channel) -> None:
        self.conn = conn
        self.seconds: dict[tuple[str, str], float] = defaultdict(float)
        self.phase_seconds: dict[str, float] = defaultdict(float)
        self.layer_bytes: dict[tuple[str, int], int] = defaultdict(int)
        self.layer_seconds: dict[tuple[str, int], float] = defaultdict(float)

    @contextmanager
    def primitive(self, name: str) -> Iterator[None]:
        """Time a block as primitive ``name`` of the connection's current phase."""
        t = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[self.conn.phase, name] += time.perf_counter() - t

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Enter phase ``name`` (sets the connection's phase for its byte counters)."""
        self.conn.phase = name
        t = time.perf_counter()
        try:
            yield
        finally:
            self.phase_seconds[name] += time.perf_counter() - t

    @contextmanager
    def layer(self, index: int) -> Iterator[None]:
        """Attribute the bytes and time of a block to plan op ``index``."""
        phase = self.conn.phase
        before = self.conn.stats.total(phase)
        b0 = before.bytes_sent + before.bytes_received
        t = time.perf_counter()
        try:
            yield
        finally:
            after = self.conn.stats.total(phase)
            self.layer_bytes[phase, index] += after.bytes_sent + after.bytes_received - b0
            self.layer_seconds[phase, index] += time.perf_counter() - t

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly summary including the connection's traffic counters."""
        prims: dict[str, dict[str, float]] = defaultdict(dict)
        for (ph, name), s in sorted(self.seconds.items()):
            prims[name][f"{ph}_s"] = round(s, 6)
        layers: dict[int, dict[str, float]] = defaultdict(dict)
        for (ph, i), b in self.layer_bytes.items():
            layers[i][f"{ph}_bytes"] = b
        for (ph, i), s in self.layer_seconds.items():
            layers[i][f"{ph}_s"] = round(s, 6)
        return {
            "phase_s": {k: round(v, 6) for k, v in self.phase_seconds.items()},
            "primitives": dict(prims),
            "layers": {str(k): v for k, v in sorted(layers.items())},
            "traffic": self.conn.stats.as_dict(),
            "peak_rss_mib": round(peak_rss_mib(), 1),
        }
