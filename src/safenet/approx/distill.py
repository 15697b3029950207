"""The distillation loss that fine-tuning, the search's trials and range hardening share."""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["distillation_loss"]


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
