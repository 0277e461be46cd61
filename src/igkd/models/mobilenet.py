"""The CIFAR MobileNetV2 teacher and its truncated students (METHOD.md steps 1 and 2)."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torchvision.models import mobilenet_v2

# Indices in ``features`` of the five modules that downsample in torchvision's MobileNetV2, and where
# the stride sits inside each: the stem conv, then the depthwise conv of a stage's first block.
_DOWNSAMPLING = (0, 2, 4, 7, 14)
IMAGENET_STRIDES = (2, 2, 2, 2, 2)
CIFAR_STRIDES = (1, 1, 2, 2, 2)
NUM_FEATURE_MODULES = 19
# Where each stage of the family begins (its downsampling module, whatever stride the plan gives it):
# a 1x1 feature map entering one of these leaves more than the last stage seeing a single pixel.
STAGE_STARTS = tuple(f"features.{i}" for i in _DOWNSAMPLING)
AUTO = "auto"  # a stride plan chosen from the image size
MIN_LAST_SIDE = 4  # auto strides keep the last feature map at least this many pixels on its shorter side


def auto_strides(image_size: Sequence[int]) -> tuple[int, ...]:
    """The stride plan ``strides: auto`` picks for images of ``image_size`` (H, W).

    As many stride-2 modules as keep the last feature map at least 4 pixels on its shorter side (all
    five from 128 px up: cheap on large images), placed in the latest downsampling modules (the early
    layers keep the most resolution, as in the CIFAR plan). 32x32 gives CIFAR_STRIDES exactly; 8x8
    gives (1, 1, 1, 1, 2); 64x64 (1, 2, 2, 2, 2); 224x224 the ImageNet plan. A 3x3 conv of stride 2
    and padding 1 maps a side s to ceil(s / 2).
    """
    side, n = min(int(v) for v in image_size), 0
    while n < len(_DOWNSAMPLING) and -(-side // 2) >= MIN_LAST_SIDE:
        side, n = -(-side // 2), n + 1
    return (1,) * (len(_DOWNSAMPLING) - n) + (2,) * n


def resolve_strides(strides: Sequence[int] | str, image_size: Sequence[int] | None) -> tuple[int, ...]:
    """``strides`` as five numbers: ``auto`` resolved on ``image_size`` (H, W)."""
    if isinstance(strides, str):
        if strides != AUTO:
            raise ValueError(f"strides must be {AUTO!r} or five values, each 1 or 2, got {strides!r}")
        if image_size is None:
            raise ValueError("strides 'auto' needs the image size")
        return auto_strides(image_size)
    return tuple(int(v) for v in strides)


def plan_for(strides: Sequence[int] | str, written_for: int | Sequence[int] | None,
             image_size: Sequence[int] | None) -> Sequence[int] | str:
    """``strides``, or ``auto`` when it is an explicit plan written for images of another size.

    ``written_for`` is the image side or (H, W) the plan was written for (a preset's ``strides_for``);
    None: the plan applies to any size.
    """
    if strides == AUTO or written_for is None or image_size is None:
        return strides
    sides = [written_for] if isinstance(written_for, int) else list(written_for)
    return strides if (int(sides[0]), int(sides[-1])) == tuple(int(v) for v in image_size) else AUTO


def _stride_conv(features: nn.Sequential, index: int) -> nn.Conv2d:
    module = features[index]
    if index == 0:
        return module[0]
    return module.conv[1][0]  # InvertedResidual: [expand, depthwise, project, bn]


def cifar_mobilenet_v2(
    num_classes: int = 10,
    in_channels: int = 3,
    width_mult: float = 1.0,
    strides: Sequence[int] = CIFAR_STRIDES,
    dropout: float = 0.2,
) -> nn.Module:
    """torchvision's MobileNetV2 with a configurable stride plan.

    The default is the CIFAR-10 teacher of the paper: stride 1 in ``features[0]`` and in the
    depthwise conv of ``features[2]``; 2,236,682 parameters; the state-dict layout of the public
    CIFAR-10 MobileNetV2 weights. ``strides`` gives the stride of each of the five downsampling
    modules (features 0, 2, 4, 7, 14), so a small-image recipe is the same code with other numbers.
    """
    if len(strides) != len(_DOWNSAMPLING) or any(s not in (1, 2) for s in strides):
        raise ValueError(f"strides must be five values, each 1 or 2, got {list(strides)}")
    model = mobilenet_v2(num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    if in_channels != 3:
        old = model.features[0][0]
        model.features[0][0] = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride,
                                         old.padding, bias=False)
        nn.init.kaiming_normal_(model.features[0][0].weight, mode="fan_out")
    for index, stride in zip(_DOWNSAMPLING, strides):
        _stride_conv(model.features, index).stride = (stride, stride)
    return model


class TruncatedStudent(nn.Module):
    """``features[:19-k]`` of a teacher, global average pooling, ``Sequential(Flatten(), Linear)``.

    The state-dict keys are ``features.*`` and ``classifier.1.*``: the layout of the authors' students.
    """

    def __init__(self, features: nn.Sequential, num_classes: int):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        channels = last_conv(features).out_channels
        # PyTorch's default Linear initialisation, as the authors' students had.
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.features(x)))


def last_conv(module: nn.Module) -> nn.Conv2d:
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ValueError("module has no convolution")
    return convs[-1]


def reset_parameters(module: nn.Module) -> None:
    """torchvision's MobileNetV2 initialisation, applied in place."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
            if isinstance(m, nn.BatchNorm2d):
                m.reset_running_stats()
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def truncated_student(teacher: nn.Module, remove_blocks: int, num_classes: int | None = None) -> TruncatedStudent:
    """A randomly initialised student: the teacher's ``features`` less its last ``remove_blocks``."""
    n = len(teacher.features)
    if not 1 <= remove_blocks < n:
        raise ValueError(f"remove_blocks must be in 1..{n - 1}, got {remove_blocks}")
    features = copy.deepcopy(teacher.features[: n - remove_blocks])
    reset_parameters(features)
    if num_classes is None:
        num_classes = teacher.classifier[-1].out_features
    return TruncatedStudent(features, num_classes)


def at_layer_for(remove_blocks: int, num_modules: int = NUM_FEATURE_MODULES) -> int:
    """The attention-transfer layer ``features[19 // d]`` of METHOD.md step 6.

    The paper's d is 2 for k in {3, 5, 7}, 4 for {9, 11, 13}, 8 for 15 and 20 for 17; other k take
    the d of the paper's range they fall in (k <= 7: 2, k <= 13: 4, k <= 15: 8, else 20).
    """
    k = remove_blocks
    d = 2 if k <= 7 else 4 if k <= 13 else 8 if k <= 15 else 20
    index = num_modules // d
    if index >= num_modules - k:
        raise ValueError(f"no attention layer rule for remove_blocks={k}; set distill.at_layer")
    return index
