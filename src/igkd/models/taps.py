"""Looking inside any network with one dry forward pass: does it take the data, and where to tap it for AT.

Works on every ``nn.Module`` (igkd's, torchvision's, timm's) through forward hooks on a zero batch
of one image, so nothing here knows an architecture:

* :func:`input_problem` says why a network cannot take images of a shape: its forward pass fails, it
  collapses the image to 1x1 before its last stage (a strided convolution or pooling, or a module the
  caller names as the start of a stage, that gets a 1x1 map), or its output is not one logit per class. :func:`smallest_side` finds a size that works.
* :func:`feature_taps` lists every module whose output is a feature map (a 4-D tensor); the *stage
  ends* are the last module of each spatial size, where attention transfer taps a network.
* :func:`pair_at_layers` chooses the student's and the teacher's AT layers: named in the config, or
  the student's middle stage end and the teacher's stage end of the nearest spatial size (by log
  area; among equals the deepest). The loss resizes the teacher's map when the sizes differ.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError

# Image sides tried, in order, when looking for a size a network can take.
TRY_SIDES = (8, 12, 16, 24, 32, 48, 64, 96, 128, 160, 192, 224, 256, 299, 320, 384, 512)


@torch.no_grad()
def dry_forward(model: nn.Module, input_shape: Sequence[int],
                hook: Callable[[str, nn.Module, tuple, object], None] | None = None,
                modules: Callable[[nn.Module], bool] = lambda m: True):
    """The model's output for one zero image of ``input_shape`` (C, H, W), in eval mode (restored after);
    ``hook(name, module, inputs, output)`` is called for every named sub-module that ``modules`` selects."""
    handles = []
    if hook is not None:
        for name, m in model.named_modules():
            if name and modules(m):
                handles.append(m.register_forward_hook(
                    lambda mod, inp, out, name=name: hook(name, mod, inp, out)))
    was_training = model.training
    model.eval()
    try:
        param = next(model.parameters(), None)
        device, dtype = (param.device, param.dtype) if param is not None else (None, torch.float32)
        return model(torch.zeros((1, *input_shape), device=device, dtype=dtype))
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else tuple(v)


def input_problem(model: nn.Module, input_shape: Sequence[int], num_classes: int | None = None,
                  stage_starts: Sequence[str] = ()) -> str | None:
    """None when ``model`` takes one image of ``input_shape`` (C, H, W) and keeps a feature map larger than
    1x1 until its last stage; else what goes wrong, in words.

    A stage begins at every strided layer, and at the modules named in ``stage_starts`` (where the
    architecture begins a stage whatever stride it was given: a stride-1 plan hides them otherwise).
    """
    collapsed: list[str] = []
    strided = (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)
    starts = {id(m) for name, m in model.named_modules() if name in set(stage_starts)}

    def hook(name, module, inputs, _out):
        x = inputs[0] if inputs else None
        if not (isinstance(x, torch.Tensor) and x.ndim == 4):
            return
        stride = _pair(module.stride or 1) if isinstance(module, strided) else (1, 1)
        if any(s > 1 and side == 1 for s, side in zip(stride, x.shape[-2:])):
            collapsed.append(f"{name} (stride {max(stride)})")
        elif id(module) in starts and x.shape[-2:] == (1, 1):
            collapsed.append(f"{name} (where a stage begins)")

    try:
        out = dry_forward(model, input_shape, hook, lambda m: isinstance(m, strided) or id(m) in starts)
    except Exception as e:  # any failure of the forward pass is the answer
        first = (str(e).strip().splitlines() or [""])[0][:160]
        return f"its forward pass fails ({type(e).__name__}: {first})"
    if collapsed:
        more = f", as do {len(collapsed) - 1} more layers after it" if len(collapsed) > 1 else ""
        return (f"it shrinks them to 1x1 before its last stage ({collapsed[0]} gets a 1x1 feature map{more}: "
                "the rest of the network sees one pixel)")
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or (num_classes is not None and out.shape[1] != num_classes):
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        return f"its output is {shape}, not one logit per class (1, {num_classes})"
    return None


def smallest_side(model: nn.Module, in_channels: int, num_classes: int | None = None,
                  sides: Sequence[int] = TRY_SIDES) -> int | None:
    """The smallest square image side in ``sides`` that ``model`` takes (:func:`input_problem`), or None."""
    return next((s for s in sides if input_problem(model, (in_channels, s, s), num_classes) is None), None)


def check_input(model: nn.Module, input_shape: Sequence[int], num_classes: int, who: str,
                fix: str | Callable[[], str], stage_starts: Sequence[str] = ()) -> None:
    """Refuse, with one line naming ``who`` and the ``fix`` (text, or a function that writes it), a model
    that cannot take the data's images (:func:`input_problem`)."""
    problem = input_problem(model, input_shape, num_classes, stage_starts)
    if problem is not None:
        shape = "x".join(map(str, input_shape))
        raise ConfigError(f"{who} cannot take the data's {shape} (channels x height x width) images: {problem}; "
                          f"{fix() if callable(fix) else fix}")


@dataclass(frozen=True)
class Tap:
    """A module whose output is a feature map: its name, spatial size and channels."""

    name: str
    size: tuple[int, int]
    channels: int

    @property
    def area(self) -> int:
        return self.size[0] * self.size[1]


def feature_taps(model: nn.Module, input_shape: Sequence[int]) -> list[Tap]:
    """Every named module whose output is a 4-D tensor, in the order the outputs were completed (a module
    called more than once: its last call). A container completes after what it holds."""
    seen: dict[str, Tap] = {}  # insertion order: the order of the last completion

    def hook(name, _module, _inputs, out):
        if isinstance(out, torch.Tensor) and out.ndim == 4:
            seen.pop(name, None)
            seen[name] = Tap(name, tuple(out.shape[-2:]), int(out.shape[1]))

    dry_forward(model, input_shape, hook)
    return list(seen.values())


def stage_ends(taps: Sequence[Tap]) -> list[Tap]:
    """One tap per spatial size larger than 1x1, in forward order: the end of that resolution stage, i.e.
    the last output of that size among the least nested modules that have one (a block, not a layer
    inside the next block). A 1x1 map has no spatial attention to transfer."""
    best: dict[tuple[int, int], tuple[int, Tap]] = {}
    for tap in taps:  # in completion order: a later tap of the same nesting replaces an earlier one
        depth = tap.name.count(".")
        if tap.area > 1 and (tap.size not in best or depth <= best[tap.size][0]):
            best[tap.size] = (depth, tap)
    order = {tap.name: i for i, tap in enumerate(taps)}
    return sorted((tap for _, tap in best.values()), key=lambda t: order[t.name])


def nearest_size(target: tuple[int, int], sizes: Sequence[tuple[int, int]]) -> int:
    """The index of the size nearest ``target`` by log area; among equals the last (the deepest)."""
    def distance(hw: tuple[int, int]) -> float:
        return abs(math.log(hw[0] * hw[1] / (target[0] * target[1])))

    best = min(distance(hw) for hw in sizes)
    return max(i for i, hw in enumerate(sizes) if distance(hw) <= best + 1e-12)


@dataclass(frozen=True)
class AtPair:
    """The student's and the teacher's attention-transfer layers, by module name, with their map sizes."""

    student: str
    teacher: str
    student_size: tuple[int, int]
    teacher_size: tuple[int, int]

    def to_dict(self) -> dict:
        return {"student": self.student, "teacher": self.teacher, "student_size": list(self.student_size),
                "teacher_size": list(self.teacher_size)}


def _named_tap(taps: list[Tap], name: str, key: str, who: str) -> Tap:
    found = next((t for t in taps if t.name == name), None)
    ends = ", ".join(t.name for t in stage_ends(taps)) or "none"
    if found is None or found.area == 1:
        why = "its output is 1x1" if found is not None else "not a module with a feature-map output"
        raise ConfigError(f"bad value for {key}: {name!r} (allowed: a module of the {who} whose output is a "
                          f"feature map larger than 1x1, e.g. the stage ends {ends}; {why})")
    return found


def pair_at_layers(student: nn.Module, teacher: nn.Module, input_shape: Sequence[int],
                   student_layer: str | None = None, teacher_layer: str | None = None,
                   names: tuple[str, str] = ("student", "teacher")) -> AtPair:
    """The AT layer pair of two networks of any architecture on images of ``input_shape``.

    A layer named in the config (``distill.at_student_layer`` / ``distill.at_teacher_layer``) is used as
    given. An unnamed student layer is the end of the student's middle resolution stage (for the CIFAR
    MobileNetV2 on 32x32 that is 8x8, the paper's AT resolution); an unnamed teacher layer is the
    teacher's stage end of the nearest spatial size (by log area; among equals the deepest).
    """
    s_taps, t_taps = feature_taps(student, input_shape), feature_taps(teacher, input_shape)
    s_ends, t_ends = stage_ends(s_taps), stage_ends(t_taps)
    shape = "x".join(map(str, input_shape))
    for who, ends, key in ((names[0], s_ends, "distill.at_student_layer"), (names[1], t_ends, "distill.at_teacher_layer")):
        if not ends:
            raise ConfigError(f"attention transfer needs a feature map larger than 1x1 in both networks, but the "
                              f"{who} has none on {shape} images: set data.image_size larger, {key} to a module "
                              "name, or choose a method without AT")
    s = _named_tap(s_taps, student_layer, "distill.at_student_layer", names[0]) if student_layer else None
    t = _named_tap(t_taps, teacher_layer, "distill.at_teacher_layer", names[1]) if teacher_layer else None
    if s is None and t is not None:
        s = s_ends[nearest_size(t.size, [e.size for e in s_ends])]
    elif s is None:
        s = s_ends[len(s_ends) // 2]
    if t is None:
        t = t_ends[nearest_size(s.size, [e.size for e in t_ends])]
    return AtPair(s.name, t.name, s.size, t.size)


def at_pair_of(student: nn.Module, teacher: nn.Module, input_shape: Sequence[int], student_layer: str,
               teacher_layer: str) -> AtPair:
    """The record of a pair chosen elsewhere (METHOD.md's same-index rule): names and map sizes."""
    def size(model: nn.Module, name: str) -> tuple[int, int]:
        return next(t.size for t in feature_taps(model, input_shape) if t.name == name)

    return AtPair(student_layer, teacher_layer, size(student, student_layer), size(teacher, teacher_layer))
