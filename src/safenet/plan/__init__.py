"""Plans: the integer intermediate representation the secure protocol executes.

``compile_model`` and ``RangeStats`` need torch and are imported on first use, so the secure
engine (numpy, SEAL, numba) can load plans without importing torch.
"""

from typing import Any

from safenet.field import Field
from safenet.plan.ir import KINDS, Op, Plan, UnsupportedLayerError

__all__ = ["KINDS", "Field", "Op", "Plan", "RangeStats", "UnsupportedLayerError", "compile_model"]


def __getattr__(name: str) -> Any:
    if name == "compile_model":
        from safenet.plan.compiler import compile_model

        return compile_model
    if name == "RangeStats":
        from safenet.plan.reference import RangeStats

        return RangeStats
    raise AttributeError(f"module 'safenet.plan' has no attribute {name!r}")
