"""The eight methods and the distiller that turns a batch into named loss terms (mdistiller's shape)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import METHODS, DistillConfig
from .losses import at_loss, ce_loss, kd_loss


@dataclass(frozen=True)
class MethodSpec:
    """Which of the three ingredients a method uses: soft targets, IG overlay, attention transfer."""

    kd: bool
    ig: bool
    at: bool

    @classmethod
    def parse(cls, name: str) -> MethodSpec:
        if name not in METHODS:
            raise ValueError(f"unknown method {name!r}; known: {', '.join(METHODS)}")
        parts = set(name.split("_"))
        return cls(kd="kd" in parts, ig="ig" in parts, at="at" in parts)

    @property
    def needs_teacher(self) -> bool:
        return self.kd or self.at


class _Capture:
    """Keeps the output of one module during a forward pass."""

    def __init__(self, module: nn.Module):
        self.value: torch.Tensor | None = None
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, _module, _inputs, output):
        self.value = output


class Distiller(nn.Module):
    """Student plus (frozen, always-eval) teacher; ``forward_train`` returns logits and named losses.

    The teacher sees exactly the batch the student sees: the same crop, flip and overlay.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, method: str, cfg: DistillConfig,
                 at_layer: int | None = None):
        super().__init__()
        self.spec = MethodSpec.parse(method)
        if self.spec.needs_teacher and teacher is None:
            raise ValueError(f"method {method!r} needs a teacher")
        self.student = student
        self.teacher = teacher if self.spec.needs_teacher else None
        if self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.cfg = cfg
        self.alpha = cfg.alpha if self.spec.kd else 0.0
        if self.spec.at:
            if at_layer is None:
                raise ValueError("attention transfer needs at_layer")
            self._s_feat = _Capture(student.features[at_layer])
            self._t_feat = _Capture(self.teacher.features[at_layer])

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # whatever train() is called with
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.student(x)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        logits = self.student(x)
        losses = {"ce": (1.0 - self.alpha) * ce_loss(logits, y)}
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x)
            if self.spec.kd:
                losses["kd"] = self.alpha * kd_loss(logits, teacher_logits, self.cfg.temperature)
            if self.spec.at:
                losses["at"] = self.cfg.gamma * at_loss(self._s_feat.value, self._t_feat.value)
        return logits, losses
