"""Models defined in your own Python file: ``path/to/file.py:build_fn`` and a state dict.

The convention is the one PyTorch users already follow: a function that returns an
``nn.Module`` (keyword arguments allowed) and weights saved with
``torch.save(model.state_dict(), "w.pt")``. ``safenet import`` turns the pair into a safenet
checkpoint that names the file, so every command (``eval``, ``approximate``, ``finetune``,
``compile``, ``serve``, ``bench``) takes it like a zoo model. The file is imported (it runs
as Python, its folder on the import path while it loads, as for ``python file.py``), so only
use files you trust.
"""

from __future__ import annotations

import hashlib
import importlib.util
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

__all__ = ["build", "is_model_def", "load_builder", "load_weights", "parse"]

_SPEC = re.compile(r"^(?P<path>.+\.py):(?P<fn>[A-Za-z_][A-Za-z0-9_]*)$")


def is_model_def(ref: str | Path) -> bool:
    """True for ``file.py:function``."""
    return _SPEC.match(str(ref)) is not None


def parse(ref: str) -> tuple[Path, str]:
    """``(absolute file path, function name)`` of ``file.py:function``."""
    m = _SPEC.match(str(ref))
    if m is None:
        raise ValueError(f"{ref!r} is not a model definition; write path/to/file.py:function")
    return Path(m["path"]).expanduser().resolve(), m["fn"]


def load_builder(ref: str) -> Callable[..., nn.Module]:
    """The function ``fn`` of ``file.py:fn``, imported from the file (once per content)."""
    path, fn = parse(ref)
    if not path.is_file():
        raise FileNotFoundError(f"model definition {path} does not exist")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    name = f"safenet_user_model_{digest}"
    module = sys.modules.get(name)
    if module is None:
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses and pickling look modules up by name
        sys.path.insert(0, str(path.parent))  # its own imports of sibling files, as `python file`
        try:
            spec.loader.exec_module(module)
        except Exception as e:
            del sys.modules[name]
            raise ImportError(f"importing {path} failed: {type(e).__name__}: {e}") from e
        finally:
            sys.path.remove(str(path.parent))
    builder = getattr(module, fn, None)
    if not callable(builder):
        names = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_"))
        raise ValueError(f"{path} has no function {fn!r}; it defines {', '.join(names)}")
    return builder


def build(ref: str, kwargs: dict[str, Any] | None = None) -> nn.Module:
    """Call ``file.py:fn`` with ``kwargs``; it must return an ``nn.Module``."""
    try:
        model = load_builder(ref)(**(kwargs or {}))
    except TypeError as e:
        raise ValueError(f"{ref}: calling it with {kwargs or {}} failed: {e}") from e
    if not isinstance(model, nn.Module):
        raise ValueError(f"{ref} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict saved with ``torch.save`` (also inside ``{"state_dict": ...}`` or
    ``{"model": ...}``, as training scripts often wrap it); tensors only."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"no weights file at {path}") from None
    except Exception as e:
        raise ValueError(
            f"{path} is not a state dict torch.load can read safely ({e}); save it with "
            "torch.save(model.state_dict(), path)"
        ) from e
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(f"{path} does not hold a state dict (name -> tensor)")
    return obj
