"""Parameter counts, compression factor, and FLOPs and multiply-adds of any model (FlopCounterMode)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def compression_factor(teacher: nn.Module, student: nn.Module) -> float:
    """Teacher parameters / student parameters (METHOD.md's CF)."""
    return count_parameters(teacher) / count_parameters(student)


def _sdpa_flops(query_shape, key_shape, value_shape, *_args, out_shape=None, **_kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Attention kernels the counter does not know by name (CPU's), with the formula it has for the others:
# two batched matmuls, Q K^T and (softmax) V.
_EXTRA_FORMULAS = {op: _sdpa_flops for name in ("_scaled_dot_product_flash_attention_for_cpu",
                                              "_scaled_dot_product_fused_attention_overrideable")
                   if (op := getattr(torch.ops.aten, name, None)) is not None}


@torch.no_grad()
def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Floating-point operations of one forward pass on one input of shape (C, H, W), in eval mode, as
    PyTorch's ``FlopCounterMode`` counts them: every matmul, convolution and attention (a multiply-add is
    two), whichever module or functional call makes it; normalisation, activations and pooling are not
    counted, as is usual for FLOP figures."""
    was_training, fastpath = model.training, torch.backends.mha.get_fastpath_enabled()
    model.eval()
    # The fused multi-head attention kernel is one op the counter cannot see into; the unfused path does
    # the same arithmetic as projections and scaled dot products, which it counts.
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        param = next(model.parameters())
        with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
            model(torch.zeros((1, *input_shape), device=param.device, dtype=param.dtype))
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        model.train(was_training)
    return counter.get_total_flops()


def count_macs(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on one input of shape (C, H, W): :func:`count_flops` / 2."""
    return count_flops(model, input_shape) // 2
