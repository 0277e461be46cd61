"""Inference copies of a network: eval mode, frozen, batch norm folded, channels-last.

Used wherever a network only runs forward (or forward and input-gradient) with fixed weights: the
teacher in every distillation step, and the teacher in the IG passes. Folding and channels-last change
float32 rounding only (logits within about 1e-5 relative of the eager model: ``tests/test_inference.py``),
far below any error the method itself makes, and make the CPU forward about twice as fast.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode ``BatchNorm2d`` that directly follows a ``Conv2d`` in a ``Sequential``.

    Works in place on ``module`` (pass a copy) and returns it. The folded conv gets a bias and the
    batch norm becomes ``Identity``, so module paths are kept (a forward hook on ``features.9`` still
    sees that module's output). This covers torchvision's ``Conv2dNormActivation`` and
    ``InvertedResidual.conv`` (both ``Sequential``); a batch norm that does not directly follow a conv
    inside a ``Sequential`` is left alone (still correct, just not faster). Only valid in eval mode:
    the folded conv uses the running statistics.
    """
    for child in module.children():
        fold_batchnorm(child)
    if isinstance(module, nn.Sequential):
        for i in range(len(module) - 1):
            conv, bn = module[i], module[i + 1]
            if (type(conv) is nn.Conv2d and type(bn) is nn.BatchNorm2d and not bn.training
                    and bn.track_running_stats and bn.running_mean is not None
                    and bn.num_features == conv.out_channels):
                module[i] = fuse_conv_bn_eval(conv, bn)
                module[i + 1] = nn.Identity()
    return module


def inference_copy(model: nn.Module, *, fold_bn: bool = True, channels_last: bool = True,
                   device: torch.device | str | None = None) -> nn.Module:
    """A copy of ``model`` for forward passes with fixed weights; the caller's model is not touched.

    Eval mode, parameters frozen, batch norm folded (``fold_bn``), in-place ReLU/ReLU6/Hardtanh made
    out-of-place (same numbers; the in-place form costs an extra copy in autograd on channels-last
    tensors), and channels-last weights (``channels_last``; feed it channels-last inputs).
    """
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    module = copy.deepcopy(model).to(device).eval()
    for p in module.parameters():
        p.requires_grad_(False)
    if fold_bn:
        fold_batchnorm(module)
    for m in module.modules():
        if isinstance(m, (nn.ReLU, nn.ReLU6, nn.Hardtanh)) and getattr(m, "inplace", False):
            m.inplace = False
    if channels_last:
        module = module.to(memory_format=torch.channels_last)
    return module
