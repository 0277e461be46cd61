"""The eight methods and the distiller that turns a batch into named loss terms (mdistiller's shape)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import METHODS, DistillConfig
from ..models.inference import inference_copy
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

    With ``cfg.fast_teacher`` (the default) the teacher is an inference copy of the given one (batch norm
    folded, channels-last: :func:`igkd.models.inference.inference_copy`); the given module is not changed.

    The teacher sees exactly the batch the student sees: the same crop, flip and overlay. Attention
    transfer compares the student's ``features[at_layer]`` with the teacher's ``features[at_layer]``,
    or with ``features[teacher_at_layer]`` when given (a scaled student), its map resized to the student's.
    Networks of any architecture name their modules instead: ``at_modules = (student module, teacher
    module)``, the teacher's map resized to the student's when their sizes differ.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None, method: str, cfg: DistillConfig,
                 at_layer: int | None = None, teacher_at_layer: int | None = None,
                 at_modules: tuple[str, str] | None = None):
        super().__init__()
        self.spec = MethodSpec.parse(method)
        if self.spec.needs_teacher and teacher is None:
            raise ValueError(f"method {method!r} needs a teacher")
        self.student = student
        self.teacher = teacher if self.spec.needs_teacher else None
        # The teacher only runs forward with fixed weights: an inference copy (BN folded, channels-last)
        # costs about half the eager forward on CPU, keeps module paths (AT hooks) and the caller's model.
        self._teacher_cl = self.teacher is not None and cfg.fast_teacher
        if self._teacher_cl:
            self.teacher = inference_copy(self.teacher)
        elif self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self.cfg = cfg
        self.alpha = cfg.alpha if self.spec.kd else 0.0
        if self.spec.at:
            self._at_resize = at_modules is not None or teacher_at_layer is not None
            if at_modules is None:
                if at_layer is None:
                    raise ValueError("attention transfer needs at_layer or at_modules")
                t_layer = at_layer if teacher_at_layer is None else teacher_at_layer
                at_modules = (f"features.{at_layer}", f"features.{t_layer}")
            self._s_feat = _Capture(student.get_submodule(at_modules[0]))
            self._t_feat = _Capture(self.teacher.get_submodule(at_modules[1]))

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # whatever train() is called with
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None):
        """The student's logits; with labels, :meth:`forward_train` (so DDP or torch.compile can wrap the
        whole training forward, teacher and losses included, as one module call)."""
        return self.student(x) if y is None else self.forward_train(x, y)

    def forward_train(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Student and teacher forward on the same device in the same step, nothing read back to the host."""
        logits = self.student(x)
        losses = {"ce": (1.0 - self.alpha) * ce_loss(logits, y)}
        if self.teacher is not None:
            with torch.no_grad():
                teacher_logits = self.teacher(x.contiguous(memory_format=torch.channels_last)
                                              if self._teacher_cl else x)
            if self.spec.kd:
                losses["kd"] = self.alpha * kd_loss(logits, teacher_logits, self.cfg.temperature)
            if self.spec.at:
                losses["at"] = self.cfg.gamma * at_loss(self._s_feat.value, self._t_feat.value,
                                                          resize=self._at_resize)
        return logits, losses
