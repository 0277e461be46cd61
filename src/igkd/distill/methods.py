"""The eight methods and the distiller that turns a batch into named loss terms (mdistiller's shape)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import METHODS, DistillConfig
from ..errors import ConfigError
from ..models.inference import OrtTeacher, inference_copy, onnxruntime_available
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

    Unless ``cfg.teacher_runtime`` is ``eager``, the teacher is an inference copy of the given one (batch
    norm folded, channels-last: :func:`igkd.models.inference.inference_copy`), run by PyTorch or ONNX
    Runtime (:meth:`teacher_outputs`); the given module is not changed.

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
        # The teacher only runs forward with fixed weights: distill.teacher_runtime says how (see teacher_outputs).
        self.runtime = cfg.teacher_runtime
        if self.teacher is not None and self.runtime != "eager":
            self.teacher = inference_copy(self.teacher)  # BN folded, channels-last; the caller's model untouched
        elif self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self._ort: OrtTeacher | None = None
        self._tap: str | None = None
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
            self._tap = at_modules[1]

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
            teacher_logits, teacher_feat = self.teacher_outputs(x)
            if self.spec.kd:
                losses["kd"] = self.alpha * kd_loss(logits, teacher_logits, self.cfg.temperature)
            if self.spec.at:
                losses["at"] = self.cfg.gamma * at_loss(self._s_feat.value, teacher_feat, resize=self._at_resize)
        return logits, losses

    def _use_ort(self, x: torch.Tensor) -> bool:
        if self.runtime == "onnxruntime":
            if x.device.type != "cpu" or not onnxruntime_available():
                raise ConfigError("bad value for distill.teacher_runtime: 'onnxruntime' (allowed: on the CPU with "
                                  "onnxruntime and onnxscript installed; use auto or torch)")
            return True
        # Data-parallel runs keep PyTorch: with ONNX Runtime, two gloo processes ended 1e-4 away from one
        # process on the same global batches (tests/test_distributed.py; cause not found yet).
        data_parallel = torch.distributed.is_available() and torch.distributed.is_initialized()
        return (self.runtime == "auto" and x.device.type == "cpu" and x.dtype == torch.float32
                and not torch.compiler.is_compiling() and not data_parallel and onnxruntime_available())

    def teacher_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The teacher's logits, and its AT module's output when the method uses AT, without gradients.

        ``distill.teacher_runtime``: ``eager`` runs the given teacher module; ``torch`` its inference
        copy (batch norm folded, channels-last); ``onnxruntime`` that copy exported to ONNX Runtime
        (CPU); ``auto`` ONNX Runtime on the CPU where it is installed, else (and in data-parallel runs)
        ``torch``. Every runtime gives the eager module's outputs within 1e-4 (float32 rounding only).
        """
        if self._use_ort(x):
            if self._ort is None:
                self._ort = OrtTeacher(self.teacher, self._tap if self.spec.at else None, tuple(x.shape[1:]))
            return self._ort(x)
        with torch.no_grad():
            logits = self.teacher(x.contiguous(memory_format=torch.channels_last)
                                  if self.runtime != "eager" else x)
        return logits, self._t_feat.value if self.spec.at else None
