"""The eight methods and the distiller that turns a batch into named loss terms (mdistiller's shape)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..config import METHODS, DistillConfig
from ..errors import ConfigError
from ..models.inference import TEACHER_RUNTIMES, OrtTeacher, inference_copy, onnxruntime_available
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
    """A student, its frozen teacher and the loss of a distillation method, as one ``nn.Module``.

    ``out = distiller(x, y)`` is a dict: ``loss`` (what to back-propagate), ``logits`` (the student's)
    and each loss term already weighted (``ce``; ``kd`` with a KD method; ``at`` with attention
    transfer), so ``loss == sum of the terms``. ``distiller(x)`` alone is the student's logits.

    Args:
        student: the network to train (``distiller.student``: what you wrap in DDP, optimise and export).
        teacher: the trained network to learn from; None for ``student`` and ``ig`` (no teacher term).
            It is frozen (eval mode whatever ``train()`` is called with, no gradients, so no optimiser
            state) and not registered for DDP: pass ``distiller.student.parameters()`` to the optimiser.
        method: ``student``, ``kd``, ``ig``, ``at``, ``kd_ig``, ``kd_at``, ``ig_at`` or ``kd_ig_at``. The
            ``ig`` part is the overlay of the inputs (:class:`igkd.Overlay`, or ``maps`` in
            :func:`igkd.fit`), not a loss term.
        alpha: weight of the KD term; the cross-entropy gets ``1 - alpha`` (METHOD.md step 5).
        temperature: the KD temperature T (the KD term is ``alpha * T**2 * KL``).
        gamma: weight of the attention-transfer term.
        teacher_runtime: how the teacher's forward runs (:meth:`teacher_outputs`): ``auto``, ``torch``,
            ``onnxruntime`` or ``eager``; the same runtime ``igkd distill`` uses.
        at_layer: attention transfer between ``features[at_layer]`` of both networks (igkd's
            MobileNetV2 family), or ``features[teacher_at_layer]`` of the teacher when given.
        teacher_at_layer: the teacher's AT module index when it differs from the student's.
        at_modules: ``(student module name, teacher module name)`` for attention transfer between
            networks of any architecture; the teacher's map is resized to the student's.

    Unless ``teacher_runtime`` is ``eager``, the teacher is an inference copy of the given one (batch
    norm folded, channels-last: :func:`igkd.models.inference.inference_copy`), run by PyTorch or ONNX
    Runtime; the given module is not changed. The teacher sees exactly the batch the student sees:
    the same crop, flip and overlay.
    """

    def __init__(self, student: nn.Module, teacher: nn.Module | None = None, method: str = "kd_ig", *,
                 alpha: float = 0.01, temperature: float = 2.5, gamma: float = 0.8,
                 teacher_runtime: str = "auto", at_layer: int | None = None, teacher_at_layer: int | None = None,
                 at_modules: tuple[str, str] | None = None):
        super().__init__()
        self.spec = MethodSpec.parse(method)
        if self.spec.needs_teacher and teacher is None:
            raise ValueError(f"method {method!r} needs a teacher")
        if not 0.0 <= alpha <= 1.0 or temperature <= 0 or gamma < 0:
            raise ValueError(f"need 0 <= alpha <= 1, temperature > 0, gamma >= 0; got alpha={alpha}, "
                             f"temperature={temperature}, gamma={gamma}")
        if teacher_runtime not in TEACHER_RUNTIMES:
            raise ValueError(f"teacher_runtime must be one of {', '.join(TEACHER_RUNTIMES)}, got {teacher_runtime!r}")
        self.method = method
        self.settings = {"alpha": alpha, "temperature": temperature, "gamma": gamma}  # as given (recorded by fit)
        self.student = student
        self.teacher = teacher if self.spec.needs_teacher else None
        # The teacher only runs forward with fixed weights: teacher_runtime says how (see teacher_outputs).
        self.runtime = teacher_runtime
        if self.teacher is not None and self.runtime != "eager":
            self.teacher = inference_copy(self.teacher)  # BN folded, channels-last; the caller's model untouched
        elif self.teacher is not None:
            for p in self.teacher.parameters():
                p.requires_grad_(False)
        self._ort: OrtTeacher | None = None
        self._tap: str | None = None
        self.at_modules: tuple[str, str] | None = None  # (student module, teacher module) of the AT term
        self.alpha = alpha if self.spec.kd else 0.0
        self.temperature, self.gamma = temperature, gamma
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
            self.at_modules = (at_modules[0], at_modules[1])

    @classmethod
    def from_config(cls, student: nn.Module, teacher: nn.Module | None, method: str, cfg: DistillConfig,
                    at_layer: int | None = None, teacher_at_layer: int | None = None,
                    at_modules: tuple[str, str] | None = None) -> Distiller:
        """The distiller a config's ``distill`` section describes (how ``igkd distill`` builds it)."""
        return cls(student, teacher, method, alpha=cfg.alpha, temperature=cfg.temperature, gamma=cfg.gamma,
                   teacher_runtime=cfg.teacher_runtime, at_layer=at_layer, teacher_at_layer=teacher_at_layer,
                   at_modules=at_modules)

    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # whatever train() is called with
        return self

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
        """``distiller(x, y)``: ``{"loss", "logits", and each weighted loss term}``; ``distiller(x)``: the
        student's logits. One module call for the whole training forward (teacher and losses included),
        so DDP or torch.compile can wrap it."""
        if y is None:
            return self.student(x)
        logits, losses = self.forward_train(x, y)
        return {"loss": sum(losses.values()), "logits": logits, **losses}

    def forward_train(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """The student's logits and the weighted loss terms by name (mdistiller's shape). Student and teacher
        forward on the same device in the same step, nothing read back to the host."""
        logits = self.student(x)
        losses = {"ce": (1.0 - self.alpha) * ce_loss(logits, y)}
        if self.teacher is not None:
            teacher_logits, teacher_feat = self.teacher_outputs(x)
            if self.spec.kd:
                losses["kd"] = self.alpha * kd_loss(logits, teacher_logits, self.temperature)
            if self.spec.at:
                losses["at"] = self.gamma * at_loss(self._s_feat.value, teacher_feat, resize=self._at_resize)
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
