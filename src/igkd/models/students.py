"""Students: the teacher truncated (METHOD.md step 2), or a MobileNetV2 scaled to a budget.

Truncation removes parameters, not work: the paper's k = 5 student keeps 67 % of the teacher's
multiply-adds, and at batch 1 a CPU spends most of its time per layer, not per multiply-add. A
*scaled* student is a MobileNetV2 of its own width multiplier and stride plan (how early the image
shrinks), cut after its first ``19 - k`` modules like a truncated one. Its width can be chosen to fit
a budget of multiply-adds (``student.budget_macs``) or of measured latency (``igkd bench
--latency-budget-ms``). Both kinds have the same state-dict layout (``features.*``,
``classifier.1.*``) and are trained by every method: attention transfer pairs the student's layer
with the teacher's layer of the nearest spatial size (:func:`paired_at_layer`). A student of its own
*architecture* (``student.arch``: any name :func:`~igkd.models.registry.create_model` knows) is built
fresh for the data and paired with the teacher by :func:`~igkd.models.taps.pair_at_layers`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import torch
from torch import nn

from ..errors import ConfigError
from .complexity import count_macs
from .mobilenet import (
    TruncatedStudent,
    cifar_mobilenet_v2,
    plan_for,
    resolve_strides,
    truncated_student,
)
from .registry import create_model, is_family
from .taps import nearest_size

STUDENT_KINDS = ("truncated", "scaled", "arch")  # what student.kind may name (arch: student.arch, built fresh)
# Width multipliers a budget search chooses from: 0.05 .. 3.00 in steps of 0.05.
WIDTH_GRID = tuple(round(0.05 * i, 2) for i in range(1, 61))


class StudentChoice(Protocol):
    """What the functions below read: a config's ``student`` and ``teacher`` sections (``igkd.config.Config``
    has them; the models do not need the config module, which sits above them)."""

    student: Any
    teacher: Any


@dataclass(frozen=True)
class StudentSpec:
    """One student architecture, fully resolved: what the config asked for, the budget turned into a width."""

    kind: str  # truncated | scaled | arch
    remove_blocks: int | None  # None for an arch student
    width_mult: float | None = None  # scaled only
    strides: tuple[int, ...] | None = None  # scaled, and an arch student of the cifar_mobilenet_v2 family
    arch: str | None = None  # arch only: the model name

    def build(self, teacher: nn.Module, num_classes: int | None = None, in_channels: int | None = None) -> nn.Module:
        """The student, randomly initialised; a truncated one takes its layers from ``teacher``. Classes and
        input channels are the teacher's unless given."""
        if self.kind == "truncated":
            if not isinstance(getattr(teacher, "features", None), nn.Sequential) or len(teacher.features) < 2:
                raise ConfigError("a truncated student is cut from a cifar_mobilenet_v2 teacher: set student.arch "
                                  "(e.g. mobilenet_v3_small) or student.kind=scaled")
            return truncated_student(teacher, self.remove_blocks, num_classes)
        if num_classes is None or in_channels is None:
            teacher_classes, teacher_channels = model_io(teacher)
            num_classes = teacher_classes if num_classes is None else num_classes
            in_channels = teacher_channels if in_channels is None else in_channels
        if self.kind == "arch":
            family = {"strides": self.strides} if is_family(self.arch) else {}
            return create_model(self.arch, num_classes=num_classes, in_channels=in_channels, **family)
        return scaled_student(num_classes, in_channels, self.width_mult, self.strides, self.remove_blocks)

    @property
    def label(self) -> str:
        if self.kind == "truncated":
            return f"truncated k={self.remove_blocks}"
        if self.kind == "arch":
            return self.arch + (f" s={''.join(map(str, self.strides))}" if self.strides else "")
        return f"scaled w={self.width_mult:g} s={''.join(map(str, self.strides))} k={self.remove_blocks}"

    def to_dict(self) -> dict:
        d = asdict(self)
        d["strides"] = list(self.strides) if self.strides is not None else None
        if d["arch"] is None:  # the layout of runs recorded before students had architectures
            del d["arch"]
        return d


def model_io(model: nn.Module) -> tuple[int, int]:
    """(classes, input channels) of a classifier: its last linear layer's outputs, its first convolution's inputs."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not convs or not linears:
        raise ValueError("cannot tell the classes and input channels of a model without a convolution and a "
                         "linear layer: pass them")
    return linears[-1].out_features, convs[0].in_channels * convs[0].groups


def scaled_student(num_classes: int, in_channels: int, width_mult: float, strides: Sequence[int],
                   remove_blocks: int) -> TruncatedStudent:
    """A MobileNetV2 of width ``width_mult`` and stride plan ``strides``, less its last ``remove_blocks``
    modules, with global pooling and a linear head: the layout of a truncated student."""
    net = cifar_mobilenet_v2(num_classes=num_classes, in_channels=in_channels, width_mult=width_mult,
                             strides=strides)  # freshly initialised: its first modules need no copy or reset
    n = len(net.features)
    if not 1 <= remove_blocks < n:
        raise ValueError(f"remove_blocks must be in 1..{n - 1}, got {remove_blocks}")
    return TruncatedStudent(net.features[: n - remove_blocks], num_classes)


def widest_under(cost: Callable[[float], float], budget: float,
                 grid: Sequence[float] = WIDTH_GRID) -> float | None:
    """The largest width on ``grid`` whose ``cost`` is at most ``budget`` (binary search: the cost
    grows with the width), or None when even the narrowest is over."""
    lo, hi = 0, len(grid) - 1
    if cost(grid[lo]) > budget:
        return None
    while lo < hi:  # invariant: grid[lo] fits
        mid = (lo + hi + 1) // 2
        if cost(grid[mid]) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return grid[lo]


def scaled_macs(width_mult: float, strides: Sequence[int], remove_blocks: int,
                input_shape: tuple[int, int, int], num_classes: int = 10) -> int:
    return count_macs(scaled_student(num_classes, input_shape[0], width_mult, strides, remove_blocks),
                      input_shape)


@functools.lru_cache(maxsize=64)  # a config resolves its budget on every load
def width_for_macs(budget_macs: float, strides: tuple[int, ...], remove_blocks: int,
                   input_shape: tuple[int, int, int], num_classes: int = 10) -> float:
    """The widest scaled student that does at most ``budget_macs`` multiply-adds per image."""
    width = widest_under(lambda w: scaled_macs(w, strides, remove_blocks, input_shape, num_classes),
                         budget_macs)
    if width is None:
        least = scaled_macs(WIDTH_GRID[0], strides, remove_blocks, input_shape, num_classes)
        raise ConfigError(f"bad value for student.budget_macs: {budget_macs:g} (allowed: >= {least:,} for "
                          f"strides {list(strides)}, remove_blocks={remove_blocks} on {tuple(input_shape)} images)")
    return width


def resolved_kind(student: Any) -> str:
    """The kind of the student a config's ``student`` section describes: ``arch`` whenever its ``arch`` is
    set, else its ``kind``."""
    return "arch" if student.arch is not None else student.kind


def student_kind(cfg: StudentChoice) -> str:
    """The student's kind: ``arch`` whenever ``student.arch`` is set, else ``student.kind``."""
    return resolved_kind(cfg.student)


def scaled_strides(cfg: StudentChoice, input_shape: Sequence[int]) -> tuple[int, ...]:
    """A scaled student's stride plan: ``student.strides``, else the teacher's (``auto`` resolved on the images;
    a plan written for other images, see :func:`~igkd.models.mobilenet.plan_for`, is ``auto``)."""
    s, t, hw = cfg.student, cfg.teacher, tuple(input_shape)[-2:]
    strides = s.strides if s.strides is not None else plan_for(t.strides, t.strides_for, hw) if is_family(t.arch) \
        else "auto"
    return resolve_strides(strides, hw)


def student_spec(cfg: StudentChoice, input_shape: tuple[int, int, int], num_classes: int = 10,
                 remove_blocks: int | None = None) -> StudentSpec:
    """The student ``cfg.student`` describes (``remove_blocks`` overrides its k): a scaled student's
    unset width and strides default to the teacher's, and a MAC budget chooses the width; an arch student
    of the cifar_mobilenet_v2 family takes the stride plan ``auto`` chooses for the images."""
    s = cfg.student
    k = s.remove_blocks if remove_blocks is None else remove_blocks
    kind = student_kind(cfg)
    if kind == "arch":
        strides = resolve_strides("auto", tuple(input_shape)[-2:]) if is_family(s.arch) else None
        return StudentSpec("arch", None, strides=strides, arch=s.arch)
    if kind == "truncated":
        return StudentSpec("truncated", k)
    strides = scaled_strides(cfg, input_shape)
    if s.budget_macs is not None:
        width = width_for_macs(s.budget_macs, strides, k, tuple(input_shape), num_classes)
    else:
        width = s.width_mult if s.width_mult is not None else cfg.teacher.width_mult
    return StudentSpec("scaled", k, float(width), strides)


@torch.no_grad()
def feature_sizes(model: nn.Module, input_shape: tuple[int, int, int]) -> list[tuple[int, int]]:
    """(H, W) of the output of every module in ``model.features`` for one input of ``input_shape``."""
    sizes: list[tuple[int, int]] = []
    handles = [m.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
               for m in model.features]
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters())
        model.features(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return sizes


def paired_at_layer(student: nn.Module, teacher: nn.Module, student_layer: int,
                    input_shape: tuple[int, int, int]) -> int:
    """The teacher module whose attention map the student's ``features[student_layer]`` learns.

    The same index when its output has the student's spatial size (always so for a truncated student:
    METHOD.md step 6). Otherwise the teacher module of the nearest spatial size (by log area) and,
    among those, the deepest: the end of a resolution stage, where attention transfer taps a network.
    The loss then resizes the teacher's map to the student's size.
    """
    s_sizes, t_sizes = feature_sizes(student, input_shape), feature_sizes(teacher, input_shape)
    target = s_sizes[student_layer]
    if student_layer < len(t_sizes) and t_sizes[student_layer] == target:
        return student_layer
    return nearest_size(target, t_sizes)
