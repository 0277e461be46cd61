"""Networks by name, and the paper's students of a teacher."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..models import StudentSpec, model_io, resolve_strides, width_for_macs
from ..models import create_model as _create_model
from ..runs import load_weights

__all__ = ["create_model", "create_student"]


def create_model(name: str, num_classes: int, in_chans: int = 3, checkpoint: str | os.PathLike | None = None,
                 **kwargs: Any) -> nn.Module:
    """A network by name, freshly initialised, or with the weights of ``checkpoint``.

    Args:
        name: ``cifar_mobilenet_v2`` (igkd's, the paper's teacher; takes ``width_mult``, ``strides`` (five
            values or ``"auto"`` with ``image_size=(H, W)``) and ``dropout``), any torchvision
            classification model name (``resnet18``, ``mobilenet_v3_small``, ...), or ``timm:<name>``.
            Nothing is downloaded.
        num_classes: outputs of the classifier.
        in_chans: input channels (1 for grey images).
        checkpoint: a weights file (igkd's ``model.pt``/``best.pt``, a plain state dict, timm's or Lightning's
            checkpoint), or ``igkd:<name>`` for weights shipped with igkd (``igkd:fashion-mnist-teacher-w0.5``:
            ``cifar_mobilenet_v2``, 10 classes, 1 channel, ``width_mult=0.5``, ``strides=[2, 1, 2, 2, 1]``).
            Loaded strictly; a file for another architecture, class count or channel count is refused.
        **kwargs: passed to the architecture's builder.

    Returns:
        The model (train mode, on the CPU).
    """
    try:
        model = _create_model(name, num_classes=num_classes, in_channels=in_chans, **kwargs)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    return model if checkpoint is None else load_weights(model, checkpoint)


STUDENT_KINDS = ("truncated", "scaled", "budget")


def create_student(teacher: nn.Module, kind: str = "truncated", remove_blocks: int = 5, *,
                   width_mult: float | None = None, strides: Sequence[int] | str = "auto",
                   budget_macs: float | None = None, input_shape: tuple[int, int, int] | None = None,
                   num_classes: int | None = None, in_chans: int | None = None) -> nn.Module:
    """One of the paper's students of ``teacher`` (a ``cifar_mobilenet_v2``), randomly initialised.

    Args:
        teacher: the teacher network (a truncated student copies its architecture, not its weights).
        kind: ``truncated``: the teacher's ``features`` less its last ``remove_blocks`` modules, global
            pooling and a linear head (METHOD.md step 2); ``scaled``: a MobileNetV2 of its own
            ``width_mult`` and ``strides``, cut the same way; ``budget``: the widest scaled student that
            does at most ``budget_macs`` multiply-adds per image of ``input_shape``.
        remove_blocks: k, the modules removed (1..18; the paper's main student: 5).
        width_mult: a scaled student's width multiplier.
        strides: a scaled student's five strides, or ``"auto"`` (chosen from ``input_shape``).
        budget_macs: the ``budget`` kind's multiply-adds per image.
        input_shape: ``(C, H, W)`` of the images (for ``strides="auto"`` and ``budget``).
        num_classes: classes (default: the teacher's).
        in_chans: input channels (default: the teacher's).

    Returns:
        The student (train mode, on the CPU); the same layout (``features.*``, ``classifier.1.*``) for
        every kind, so :class:`igkd.Distiller`'s attention transfer can pair it with the teacher.
    """
    if kind not in STUDENT_KINDS:
        raise ConfigError(f"bad value for kind: {kind!r} (allowed: {', '.join(STUDENT_KINDS)})")
    if kind == "truncated":
        return StudentSpec("truncated", remove_blocks).build(teacher, num_classes)
    if strides == "auto" or kind == "budget":
        if input_shape is None:
            raise ConfigError(f"a {kind} student with strides='auto' or a budget needs input_shape=(C, H, W)")
    plan = tuple(resolve_strides(strides, tuple(input_shape)[-2:] if input_shape is not None else None))
    if kind == "budget":
        if budget_macs is None:
            raise ConfigError("a budget student needs budget_macs")
        classes = num_classes if num_classes is not None else model_io(teacher)[0]
        width_mult = width_for_macs(float(budget_macs), plan, remove_blocks, tuple(input_shape), classes)
    elif width_mult is None:
        raise ConfigError("a scaled student needs width_mult (or kind='budget' with budget_macs)")
    return StudentSpec("scaled", remove_blocks, float(width_mult), plan).build(teacher, num_classes, in_chans)
