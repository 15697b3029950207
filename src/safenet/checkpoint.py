"""Checkpoints: weights plus everything needed to rebuild, evaluate and resume a model.

A checkpoint records the architecture and its arguments, the dataset, the activation
configuration (channel masks, degrees) of an approximated model, measured metrics and the
training state. ``default`` and ``default-approx`` name the models shipped in the package.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from safenet.data.errors import DatasetError
from safenet.nn.modelfile import build as build_user_model
from safenet.nn.modelfile import is_model_def, load_weights
from safenet.nn.surgery import activation_config, apply_config
from safenet.nn.zoo import build_model

FORMAT = "safenet-checkpoint/1"
BUILTIN_DIR = Path(__file__).parent / "models"
BUILTIN = {"default": "default.pt", "default-approx": "default-approx.pt"}


@dataclass
class Checkpoint:
    """A model on disk. ``activation`` is None for a plain ReLU model."""

    arch: str
    arch_kwargs: dict[str, Any]
    dataset: str
    state_dict: dict[str, torch.Tensor]
    activation: dict[str, dict] | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)
    training: dict[str, Any] = field(default_factory=dict)
    parent: str | None = None  # where an approximated model came from
    #: (C, H, W) of one input, for models whose arguments do not say it (your own models)
    shape: list[int] | None = None
    #: how inputs are prepared (:func:`safenet.data.images.preprocessing`): normalisation,
    #: size and class names, kept so that serving needs no dataset
    data: dict[str, Any] | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input."""
        if self.shape is not None:
            c, h, w = self.shape
            return (int(c), int(h), int(w))
        c, s = self.arch_kwargs["in_channels"], self.arch_kwargs["image_size"]
        return (c, s, s)

    def preprocess(self) -> dict[str, Any]:
        """How a picture becomes this model's input (the dataset's normalisation, size and
        class names); travels in the public plan as ``info["preprocess"]``."""
        if self.data is not None:
            return dict(self.data)
        from safenet.data.images import preprocessing
        from safenet.data.registry import dataset_info

        return preprocessing(dataset_info(self.dataset))

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input of the model's shape, for tracing."""
        return torch.zeros(batch, *self.input_shape)

    def build(self) -> nn.Module:
        """The model with its weights loaded, in eval mode."""
        if is_model_def(self.arch):
            model = build_user_model(self.arch, self.arch_kwargs)
        else:
            model = build_model(self.arch, **self.arch_kwargs)
        if self.activation is not None:
            model = apply_config(model, self.activation, self.example_input())
        model.load_state_dict(self.state_dict)
        return model.eval()

    def plan(self, field: Any = None) -> Any:
        """The model compiled to a :class:`~safenet.plan.Plan` (default field per model)."""
        from safenet.plan.compiler import compile_model

        plan = compile_model(self.build(), self.input_shape, field)
        plan.info |= self.plan_info()
        return plan

    def plan_info(self) -> dict[str, Any]:
        """What a compiled plan's ``info`` takes from the checkpoint: the dataset, how
        inputs are prepared, and the ``output_bound`` a client holds results to (models
        range-hardened by :mod:`safenet.approx.harden`; :func:`safenet.secure.check_output`)."""
        info: dict[str, Any] = {"dataset": self.dataset}
        with contextlib.suppress(DatasetError, OSError):  # a folder that is gone: no metadata
            info["preprocess"] = self.preprocess()
        if self.metrics.get("output_bound"):
            info["output_bound"] = float(self.metrics["output_bound"])
        return info

    def save(self, path: str | Path) -> None:
        """Write atomically (a crash never leaves a half-written checkpoint)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        payload = asdict(self) | {"format": FORMAT}
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        try:
            torch.save(payload, tmp)
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint is not a secret
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    @classmethod
    def from_model(
        cls, model: nn.Module, arch: str, arch_kwargs: dict, dataset: str, **extra: Any
    ) -> Checkpoint:
        """Capture a (possibly approximated) model's weights and activation configuration."""
        config = activation_config(model) or None
        state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        return cls(arch, dict(arch_kwargs), dataset, state, config, **extra)


def import_model(
    definition: str,
    weights: str | Path | None,
    dataset: str,
    input_shape: tuple[int, int, int] | None = None,
    kwargs: dict[str, Any] | None = None,
) -> Checkpoint:
    """A checkpoint of your own model: ``definition`` is ``path/to/file.py:build_fn`` (called
    with ``kwargs``), ``weights`` a state dict file (``None``: the function's initial
    weights), ``dataset`` what it was trained on (a known name or ``folder:PATH[:SIZE]``),
    ``input_shape`` (C, H, W), if given, must be the dataset's (the checkpoint's preprocessing
    is the dataset's). Checks that the weights fit and the model runs on that shape; the
    checkpoint then works with every safenet command."""
    from safenet.data.images import canonical, preprocessing
    from safenet.data.registry import dataset_info
    from safenet.nn.modelfile import parse

    dataset = canonical(dataset)
    path, fn = parse(definition)
    ref = f"{path}:{fn}"
    model = build_user_model(ref, kwargs)
    info = dataset_info(dataset)
    shape = (info.channels, info.image_size, info.image_size)
    if input_shape is not None and tuple(input_shape) != shape:
        raise ValueError(
            f"--input-shape {tuple(input_shape)} differs from {dataset}'s pictures {shape}: the "
            "checkpoint's preprocessing would not match the model (use folder:PATH:SIZE to "
            "resize an image folder)"
        )
    if weights is not None:
        state = load_weights(weights)
        try:
            missing, unexpected = model.load_state_dict(state, strict=False)
        except RuntimeError as e:  # shape mismatches
            raise ValueError(f"{weights} does not fit {ref}: {e}") from None
        if missing or unexpected:
            raise ValueError(
                f"{weights} does not fit {ref}: missing {', '.join(missing) or 'none'}; "
                f"unexpected {', '.join(unexpected) or 'none'}"
            )
    model.eval()
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape))
    except Exception as e:
        raise ValueError(f"{ref} does not run on an input of shape {tuple(shape)}: {e}") from e
    if out.dim() != 2 or out.shape[1] != info.num_classes:
        raise ValueError(
            f"{ref} gives outputs of shape {tuple(out.shape)} on one input; {dataset} has "
            f"{info.num_classes} classes"
        )
    return Checkpoint.from_model(
        model, ref, dict(kwargs or {}), dataset, shape=list(shape), data=preprocessing(info),
        metrics={}, parent=None,
    )  # fmt: skip


def resolve(name_or_path: str | Path) -> Path:
    """Path of a checkpoint: a built-in name (``default``, ``default-approx``) or a file."""
    if str(name_or_path) in BUILTIN:
        p = BUILTIN_DIR / BUILTIN[str(name_or_path)]
        if not p.is_file():
            raise FileNotFoundError(f"built-in model {name_or_path!r} is missing from {p}")
        return p
    p = Path(name_or_path)
    if not p.is_file():
        raise FileNotFoundError(
            f"no model at {p}; give a checkpoint file or one of {', '.join(BUILTIN)}"
        )
    return p


def load(name_or_path: str | Path) -> Checkpoint:
    """Load a checkpoint file or a built-in model by name; a clear error if it is not one."""
    path = resolve(name_or_path)
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path} is not a readable safenet checkpoint: {e}") from e
    if not isinstance(payload, dict) or payload.pop("format", None) != FORMAT:
        raise ValueError(f"{path} is not a safenet checkpoint (format {FORMAT} expected)")
    return Checkpoint(**payload)
