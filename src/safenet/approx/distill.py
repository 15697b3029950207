"""The distillation loss that fine-tuning, the search's trials and range hardening share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["CLIP", "KD_WEIGHT", "TEMPERATURE", "distillation_loss"]

#: the distillation defaults every trainer here starts from (the configs' single source)
TEMPERATURE = 4.0
KD_WEIGHT = 0.9  # the rest of the loss is cross-entropy with the labels
CLIP = 2.0  # gradient-norm clipping, as Delphi's planner does


def distillation_loss(
    student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor, t: float, w: float
) -> torch.Tensor:
    """w * T^2 * KL(teacher_T || student_T) + (1 - w) * CE(student, labels) (Hinton et al.)."""
    kd = (
        F.kl_div(
            F.log_softmax(student / t, 1),
            F.log_softmax(teacher / t, 1),
            reduction="batchmean",
            log_target=True,
        )
        * t
        * t
    )
    return w * kd + (1 - w) * F.cross_entropy(student, labels)
