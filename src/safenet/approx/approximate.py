"""The search of :mod:`.search` as a job: on any ``nn.Module`` from Python, or on a checkpoint.

:func:`approximate` (``safenet.approximate``) starts from a model you hold (your own class,
your own weights) and a dataset (a name, ``folder:PATH[:SIZE]`` or an
:class:`~safenet.data.torchdata.ImageDataset`), with the search's settings as keywords
(:class:`~safenet.approx.search.SearchConfig` is their single source).
:func:`approximate_checkpoint` is the ``safenet approximate`` job: it starts from a ReLU
checkpoint, fine-tunes the winner, and writes ``best.pt``, ``report.json`` and
``layers.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from torch import nn

from safenet.approx.cost import Calibration, default_calibration_path
from safenet.approx.finetune import FinetuneConfig
from safenet.approx.float_check import opening_peaks
from safenet.approx.harden import UnsafeModelError
from safenet.approx.runners import Runner
from safenet.approx.search import SearchConfig, SearchReport, search
from safenet.checkpoint import Checkpoint
from safenet.data.torchdata import ImageDataset

__all__ = ["approximate", "approximate_checkpoint", "relu_teacher"]


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
) -> SearchReport:
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
        The :class:`~safenet.approx.search.SearchReport` (read like a dict): per-layer
        ``config``, ``accuracy``, ``predicted_online_s``, ``failure_rate``, the teacher's
        figures, and ``model``, the best student (trained, with
        :class:`~safenet.nn.activation.ChannelActivation` layers) to save or compile.

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


def relu_teacher(parent: Checkpoint) -> Checkpoint:
    """``parent``, checked to be a ReLU model (a search starts from one)."""
    if parent.activation is not None:
        raise ValueError("start the search from a ReLU model, not an approximated one")
    return parent


def approximate_checkpoint(
    parent: Checkpoint,
    parent_name: str,
    cfg: SearchConfig,
    out_dir: str | Path,
    calibration: Calibration,
    *,
    runner: Runner | None = None,
    final_epochs: int = 1,
    final_lr: float = 0.005,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> SearchReport:
    """The ``safenet approximate`` job: search from a ReLU checkpoint, then give the winner a
    final fine-tune; resumable from ``out_dir``.

    When the search is complete and ``final_epochs > 0`` the winner is fine-tuned for
    ``final_epochs`` epochs at ``final_lr`` on the full train set (the first ``limit``
    images), range-hardened until no training image blows it up (:mod:`.harden`; when some
    still do, everything is written and :class:`UnsafeModelError` raised) and measured on the
    test set; its fixed-point failure rate on the first test
    images is a diagnostic (a warning goes to ``log``). Otherwise the best member so far is
    saved as it is. Writes ``best.pt``, ``report.json`` (:meth:`SearchReport.to_dict`) and
    ``layers.json`` (the winner for ``safenet finetune --layers``) to ``out_dir``; returns the
    report, its ``extra`` holding the final figures, ``checkpoint`` and ``calibration``.
    """
    relu_teacher(parent)
    out = Path(out_dir)
    train = ImageDataset(parent.dataset, "train", data_dir, limit)
    rep = search(parent.build(), train, cfg, out, calibration, log=log, runner=runner)
    model, best = rep.model, out / "best.pt"
    assert model is not None
    search_metrics = {"search_accuracy": rep.accuracy,
                      "predicted_online_s": rep.predicted_online_s,
                      "teacher_accuracy": rep.teacher_accuracy}  # fmt: skip
    unsafe: UnsafeModelError | None = None
    if rep.complete and final_epochs > 0:
        fcfg = FinetuneConfig(epochs=final_epochs, lr=final_lr, blend_epochs=0.0, limit=limit,
                              seed=cfg.seed)  # fmt: skip
        try:
            _final_finetune(rep, parent, parent_name, fcfg, best, data_dir, log,
                            {"search": asdict(cfg), **search_metrics})  # fmt: skip
        except UnsafeModelError as e:  # best.pt is written; the report says why it is refused
            unsafe, rep.extra["unsafe"] = e, str(e)
    else:
        if not rep.complete:
            log("search not finished: best.pt holds the best member so far, not fine-tuned")
        ck = Checkpoint.from_model(
            model, parent.arch, parent.arch_kwargs, parent.dataset, metrics=search_metrics,
            training={"search": asdict(cfg)}, parent=parent_name, shape=parent.shape,
            data=parent.data,
        )  # fmt: skip
        ck.save(best)
    rep.extra |= {"checkpoint": str(best), "calibration": calibration.machine}
    (out / "report.json").write_text(json.dumps(rep.to_dict(), indent=1))
    (out / "layers.json").write_text(json.dumps(rep.layers_json(), indent=1))
    if unsafe is not None:
        raise unsafe
    return rep


def _final_finetune(
    rep: SearchReport,
    parent: Checkpoint,
    parent_name: str,
    cfg: FinetuneConfig,
    best: Path,
    data_dir: str | Path | None,
    log: Callable[[str], None],
    training: dict[str, Any],
) -> None:
    """Fine-tune and range-harden the search's winner into ``best`` (on the full train set,
    measured on the test set); its figures go to ``rep.extra``, and a warning to ``log`` when
    the fixed-point check on the first test images, or the float check on all of them
    (:func:`~safenet.approx.float_check.opening_peaks`), finds inferences that may fail."""
    from safenet.approx.finetune import finetune_checkpoint
    from safenet.evaluate import secure_check

    log(f"final fine-tune of the winner: {cfg.epochs} epoch(s) on the full train set")
    ck = finetune_checkpoint(parent, parent_name, rep.config, cfg, best, data_dir=data_dir,
                             log=log, student=rep.model, extra=training)  # fmt: skip
    rep.extra["test_accuracy"] = ck.metrics["accuracy"]
    rep.extra["teacher_test_accuracy"] = ck.metrics["parent_accuracy"]
    if "hardening" in ck.metrics:
        rep.extra["hardening"] = ck.metrics["hardening"]
    # on the first 256 test images; a diagnostic, nothing is chosen by it
    check, warning = secure_check(best, data_dir)
    rep.extra["final_failure_rate"] = check["secure_failure_rate"]
    if warning:
        log(warning)
    # the float check on every test image sees the rare input that blows a network up
    test = ImageDataset(parent.dataset, "test", data_dir)
    _, peaks = opening_peaks(ck.build(), test.normalize(test.images))
    fails = int(peaks.failures(ck.plan().field).sum())
    rep.extra["final_float_failures"] = fails
    if fails:
        log(f"warning: {fails} of {len(test)} test images reach the exact-truncation bound in "
            "float or blow up although no training image does after hardening: clients will "
            "refuse such inputs (the output bound). Harden further (safenet harden --rounds "
            "8) or keep more ReLU channels")  # fmt: skip
