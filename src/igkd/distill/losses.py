"""Loss terms: cross-entropy, KD and attention transfer. Methods combine them (``methods.py``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ce_loss(student_logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(student_logits, labels)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T² · KL(softmax(z_t/T) ‖ softmax(z_s/T)), summed over classes, averaged over the batch."""
    log_p_s = F.log_softmax(student_logits / temperature, dim=1)
    log_p_t = F.log_softmax(teacher_logits / temperature, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * temperature**2


def attention_map(features: torch.Tensor) -> torch.Tensor:
    """a(F) = L2-normalise(flatten(mean over channels of F²)), one row per sample."""
    return F.normalize(features.pow(2).mean(dim=1).flatten(1), dim=1)


def at_loss(student_features: torch.Tensor, teacher_features: torch.Tensor) -> torch.Tensor:
    """mean((a_t - a_s)²) over batch and positions: the authors' ("code") variant of Zagoruyko's AT.

    The AT paper's own form is the p-norm of the difference; METHOD.md's mean of squares is what the
    reproduced numbers used.
    """
    if student_features.shape[-2:] != teacher_features.shape[-2:]:
        raise ValueError(
            f"attention maps differ in size: student {tuple(student_features.shape[-2:])}, "
            f"teacher {tuple(teacher_features.shape[-2:])}; choose another distill.at_layer"
        )
    return (attention_map(teacher_features) - attention_map(student_features)).pow(2).mean()
