"""Checkpoints: weights plus everything needed to rebuild, evaluate and resume a model.

A checkpoint records the architecture and its arguments, the dataset, the activation
configuration (channel masks, degrees) of an approximated model, measured metrics and the
training state. ``default`` and ``default-approx`` name the models shipped in the package.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

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

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of one input."""
        c, s = self.arch_kwargs["in_channels"], self.arch_kwargs["image_size"]
        return (c, s, s)

    def example_input(self, batch: int = 1) -> torch.Tensor:
        """A zero input of the model's shape, for tracing."""
        return torch.zeros(batch, *self.input_shape)

    def build(self) -> nn.Module:
        """The model with its weights loaded, in eval mode."""
        model = build_model(self.arch, **self.arch_kwargs)
        if self.activation is not None:
            model = apply_config(model, self.activation, self.example_input())
        model.load_state_dict(self.state_dict)
        return model.eval()

    def plan(self, field: Any = None) -> Any:
        """The model compiled to a :class:`~safenet.plan.Plan` (default field per model)."""
        from safenet.plan.compiler import compile_model

        plan = compile_model(self.build(), self.input_shape, field)
        plan.info |= {"dataset": self.dataset}
        return plan

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
