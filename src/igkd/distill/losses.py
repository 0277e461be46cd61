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


def attention_map(features: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
    """a(F) = L2-normalise(flatten(mean over channels of F²)), one row per sample.

    With ``size``, the map is resized to (H, W) before it is normalised: area-averaged when it shrinks,
    bilinear when it grows, so maps of layers of different resolution can be compared.
    """
    a = features.pow(2).mean(dim=1, keepdim=True)
    if size is not None and tuple(a.shape[-2:]) != tuple(size):
        shrink = a.shape[-2] >= size[0] and a.shape[-1] >= size[1]
        a = F.interpolate(a, size=size, mode="area") if shrink else \
            F.interpolate(a, size=size, mode="bilinear", align_corners=False)
    return F.normalize(a.flatten(1), dim=1)


def at_loss(student_features: torch.Tensor, teacher_features: torch.Tensor, resize: bool = False) -> torch.Tensor:
    """mean((a_t - a_s)²) over batch and positions: the authors' ("code") variant of Zagoruyko's AT.

    The AT paper's own form is the p-norm of the difference; METHOD.md's mean of squares is what the
    reproduced numbers used. Maps of different sizes are an error unless ``resize``: then the teacher's
    map is resized to the student's (a scaled student's layer need not match the teacher's in size).
    """
    size = tuple(student_features.shape[-2:])
    if size != tuple(teacher_features.shape[-2:]) and not resize:
        raise ValueError(
            f"attention maps differ in size: student {size}, "
            f"teacher {tuple(teacher_features.shape[-2:])}; choose another distill.at_layer"
        )
    return (attention_map(teacher_features, size) - attention_map(student_features)).pow(2).mean()
