"""safenet: secure, accurate and fast neural-network inference (after SAFENet, ICLR 2021).

The plaintext half lives here: datasets (:mod:`safenet.data`), the model zoo and the
channel-wise approximated activation (:mod:`safenet.nn`), channel scoring and fine-tuning
(:mod:`safenet.approx`), and :func:`compile`, which lowers a model to an integer
:class:`~safenet.plan.Plan` over a prime field whose :meth:`~safenet.plan.Plan.reference`
is the oracle for the secure protocol. The secure half is :mod:`safenet.secure`
(:func:`~safenet.secure.run_local`, :func:`~safenet.secure.serve`,
:func:`~safenet.secure.infer`) over :mod:`safenet.protocol` and :mod:`safenet.crypto`.
The names in ``__all__`` are imported on first use, so ``import safenet`` stays light.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = [
    "__version__",
    "ChannelActivation",
    "Field",
    "Plan",
    "approximate",
    "compile",
    "import_model",
]


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import safenet` (and the CLI's start-up) light.
    if name == "compile":
        from safenet.plan.compiler import compile_model

        return compile_model
    if name in ("Plan", "Field"):
        import safenet.plan

        return getattr(safenet.plan, name)
    if name == "approximate":
        from safenet.approx.approximate import approximate

        return approximate
    if name == "import_model":
        from safenet.checkpoint import import_model

        return import_model
    if name == "ChannelActivation":
        from safenet.nn.activation import ChannelActivation

        return ChannelActivation
    raise AttributeError(f"module 'safenet' has no attribute {name!r}")
