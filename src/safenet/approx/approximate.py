"""``safenet.approximate``: the search of :mod:`.search` on any ``nn.Module``, from Python.

The command line's ``safenet approximate`` starts from a checkpoint; this starts from a model
you hold (your own class, your own weights) and a dataset (a name, ``folder:PATH[:SIZE]`` or
an :class:`~safenet.data.torchdata.ImageDataset`), with the search's settings as keywords
(:class:`~safenet.approx.search.SearchConfig` is their single source).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from safenet.approx.cost import Calibration, default_calibration_path
from safenet.approx.runners import Runner
from safenet.approx.search import SearchConfig, search
from safenet.data.torchdata import ImageDataset

__all__ = ["approximate"]


def approximate(
    model: nn.Module,
    train: ImageDataset | str,
    out_dir: str | Path,
    *,
    calibration: Calibration | None = None,
    runner: Runner | None = None,
    log: Callable[[str], None] = print,
    limit: int | None = None,
    **settings: Any,
) -> dict[str, Any]:
    """Search per-layer ReLU ratios and polynomial degrees for ``model`` (a trained ReLU
    network) on ``train``; resumable from ``out_dir``.

    Args:
        model: any ``nn.Module`` that :func:`safenet.compile` lowers (it is not modified).
        train: training images: a dataset name, ``folder:PATH[:SIZE]`` or an ImageDataset.
        out_dir: where the search state is kept (``search.pt``), to resume.
        calibration: unit costs for the latency model (default: this machine's file from
            ``safenet bench --calibrate``, else the nominal ones).
        runner: where trials run (:mod:`safenet.approx.runners`; default here, in turn).
        limit: use only the first ``limit`` training images (with a dataset name).
        settings: fields of :class:`~safenet.approx.search.SearchConfig` (``max_drop``,
            ``latency_budget``, ``population``, ``steps``, ...).

    Returns:
        The search report: per-layer ``config``, ``accuracy``, ``predicted_online_s``,
        ``failure_rate``, the teacher's figures, and ``model``, the best student (trained,
        with :class:`~safenet.nn.activation.ChannelActivation` layers) to save or compile.

    Example:
        >>> rep = safenet.approximate(net, "folder:photos:32", "search", max_drop=1.0)
        >>> plan = safenet.compile(rep["model"], (3, 32, 32))
    """
    unknown = set(settings) - set(SearchConfig.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown search settings: {', '.join(sorted(unknown))}")
    ds = ImageDataset(train, "train", limit=limit) if isinstance(train, str) else train
    if calibration is None:
        path = default_calibration_path()
        calibration = Calibration.load(path) if path.exists() else Calibration.nominal()
    return search(model, ds, SearchConfig(**settings), out_dir, calibration, log, runner)
