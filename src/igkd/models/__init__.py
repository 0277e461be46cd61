"""Teacher and student architectures, and how big and costly they are."""

from __future__ import annotations

import hashlib

import torch
from torch import nn

from ..fileio import tensor_bytes
from .complexity import compression_factor, count_flops, count_macs, count_parameters
from .mobilenet import (
    AUTO,
    CIFAR_STRIDES,
    IMAGENET_STRIDES,
    NUM_FEATURE_MODULES,
    STAGE_STARTS,
    TruncatedStudent,
    at_layer_for,
    auto_strides,
    cifar_mobilenet_v2,
    plan_for,
    reset_parameters,
    resolve_strides,
    truncated_student,
)
from .registry import (
    ARCH_HELP,
    FAMILY,
    create_model,
    is_family,
    model_name_problem,
    torchvision_names,
)
from .students import (
    STUDENT_KINDS,
    WIDTH_GRID,
    StudentSpec,
    model_io,
    paired_at_layer,
    resolved_kind,
    scaled_strides,
    scaled_student,
    student_kind,
    student_spec,
    widest_under,
    width_for_macs,
)
from .taps import (
    AtPair,
    at_pair_of,
    check_input,
    feature_taps,
    input_problem,
    pair_at_layers,
    smallest_side,
    stage_ends,
)

MODEL_NAMES = FAMILY  # igkd's own architectures; teacher.arch and student.arch also take torchvision's and timm's


def state_dict_hash(model_or_state: nn.Module | dict) -> str:
    """sha256 over the names, shapes and bytes of a state dict, independent of file format."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


__all__ = [
    "ARCH_HELP",
    "AUTO",
    "AtPair",
    "CIFAR_STRIDES",
    "FAMILY",
    "IMAGENET_STRIDES",
    "MODEL_NAMES",
    "NUM_FEATURE_MODULES",
    "STAGE_STARTS",
    "STUDENT_KINDS",
    "StudentSpec",
    "WIDTH_GRID",
    "TruncatedStudent",
    "at_layer_for",
    "at_pair_of",
    "auto_strides",
    "check_input",
    "cifar_mobilenet_v2",
    "compression_factor",
    "count_flops",
    "count_macs",
    "count_parameters",
    "create_model",
    "feature_taps",
    "input_problem",
    "is_family",
    "model_io",
    "model_name_problem",
    "pair_at_layers",
    "paired_at_layer",
    "plan_for",
    "reset_parameters",
    "resolve_strides",
    "resolved_kind",
    "scaled_student",
    "scaled_strides",
    "smallest_side",
    "stage_ends",
    "state_dict_hash",
    "student_kind",
    "student_spec",
    "torchvision_names",
    "truncated_student",
    "widest_under",
    "width_for_macs",
]
