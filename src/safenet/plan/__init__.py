"""Plans: the integer intermediate representation the secure protocol executes."""

from safenet.field import Field
from safenet.plan.compiler import compile_model
from safenet.plan.ir import KINDS, Op, Plan, UnsupportedLayerError
from safenet.plan.reference import RangeStats

__all__ = ["KINDS", "Field", "Op", "Plan", "RangeStats", "UnsupportedLayerError", "compile_model"]
