"""Settings fields that carry their own command-line help.

A config dataclass (:class:`~safenet.approx.search.SearchConfig`,
:class:`~safenet.approx.finetune.FinetuneConfig`, :class:`~safenet.training.TrainConfig`) is
the single source of its settings: :mod:`safenet.cli` reads each ``--flag``'s default, help
and choices from the field (``metadata["help"]``, ``metadata["choices"]``) and its type from
the annotation.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

__all__ = ["option"]


def option(default: Any, help: str, **metadata: Any) -> Any:  # noqa: A002 (argparse's word)
    """A dataclass field with ``default`` and its command-line ``help`` (and e.g. ``choices``)."""
    return field(default=default, metadata={"help": help, **metadata})
