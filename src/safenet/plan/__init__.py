"""Plans: the integer intermediate representation the secure protocol executes.

:mod:`.ops` holds the op kinds (one typed attribute class each) and :class:`Op`; :mod:`.ir`
the :class:`Plan` (identity, storage, public view); :mod:`.compiler` lowers a torch model;
:mod:`.reference` evaluates a plan in plaintext; :mod:`.analysis` bounds its ranges
statically; :mod:`.pooling` describes max-pool windows.

``compile_model`` and ``RangeStats`` need torch and are imported on first use, so the secure
engine (numpy, SEAL, numba) can load plans without importing torch.
"""

from typing import Any

from safenet.field import Field
from safenet.plan.ir import KINDS, Plan, UnsupportedLayerError
from safenet.plan.ops import Op

__all__ = ["KINDS", "Field", "Op", "Plan", "RangeStats", "UnsupportedLayerError", "compile_model"]


def __getattr__(name: str) -> Any:
    if name == "compile_model":
        from safenet.plan.compiler import compile_model

        return compile_model
    if name == "RangeStats":
        from safenet.plan.reference import RangeStats

        return RangeStats
    raise AttributeError(f"module 'safenet.plan' has no attribute {name!r}")
