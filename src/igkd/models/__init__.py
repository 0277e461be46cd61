"""Teacher and student architectures, and how big and costly they are."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import torch
from torch import nn

from .complexity import compression_factor, count_macs, count_parameters
from .mobilenet import (
    CIFAR_STRIDES,
    IMAGENET_STRIDES,
    NUM_FEATURE_MODULES,
    TruncatedStudent,
    at_layer_for,
    cifar_mobilenet_v2,
    reset_parameters,
    truncated_student,
)

_REGISTRY: dict[str, Callable[..., nn.Module]] = {"cifar_mobilenet_v2": cifar_mobilenet_v2}
MODEL_NAMES = tuple(sorted(_REGISTRY))  # what teacher.arch may name


def create_model(name: str, **kwargs) -> nn.Module:
    """One constructor for every architecture, by name (timm's shape)."""
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(sorted(_REGISTRY))}") from None
    return factory(**kwargs)


def state_dict_hash(model_or_state: nn.Module | dict) -> str:
    """sha256 over the names, shapes and bytes of a state dict, independent of file format."""
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        if not isinstance(t, torch.Tensor):
            continue
        t = t.detach().cpu().contiguous()
        h.update(name.encode())
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


__all__ = [
    "CIFAR_STRIDES",
    "IMAGENET_STRIDES",
    "MODEL_NAMES",
    "NUM_FEATURE_MODULES",
    "TruncatedStudent",
    "at_layer_for",
    "cifar_mobilenet_v2",
    "compression_factor",
    "count_macs",
    "count_parameters",
    "create_model",
    "reset_parameters",
    "state_dict_hash",
    "truncated_student",
]
