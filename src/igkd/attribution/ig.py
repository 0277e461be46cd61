"""Batched integrated gradients: Captum's call and numbers, memory-bounded, faster than Captum on CPU.

``integrated_gradients`` follows ``captum.attr.IntegratedGradients.attribute`` (same arguments, same
quadrature nodes and weights, same convergence delta). What differs is how the work is done:

* The passes run on a prepared *copy* of the model (the caller's model is never modified): eval mode,
  frozen parameters, batch norm folded into the preceding convolutions (``fold_bn``) and channels-last
  memory (``channels_last``). Both are on by default. They change float32 rounding only: on the paper's
  teacher with trained-like batch norm the attributions are 1.8e-4 (relative L2) from float64 IG of
  the same quadrature (Captum's: 6.6e-5), while the 50-step quadrature itself is 1.7e-2 from a
  200-step one (``benchmarks/ig_throughput.py`` prints both for every option; 1.73x Captum's best
  speed on the project's 2-core CPU). The default is the fastest path whose
  rounding error is at most 0.05x the quadrature error (trained-like teacher) and at most 3x Captum's
  (teacher at initialisation); ``fold_bn=False, channels_last=False`` runs the caller's model itself.
* The (image, step) pairs are laid out image-major and cut into passes of exactly
  ``internal_batch_size`` samples, so every pass is full whatever the number of images (Captum cuts by
  whole steps and exceeds the bound when it is smaller than the number of images). The scaled inputs of
  a pass are written by one broadcasted ``addcmul`` per run of images into a buffer reused across
  passes; the gradient comes from ``torch.autograd.grad`` with respect to that input only.
* Options that change the work (``autocast``) are explicit and off by default; so are
  fewer steps or another quadrature rule, which are just the ``n_steps``/``method`` arguments.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from ..models.inference import inference_copy

SUPPORTED_METHODS = ("gausslegendre", "riemann_trapezoid", "riemann_left", "riemann_right", "riemann_middle")

TargetType = int | torch.Tensor | list[int] | None
BaselineType = torch.Tensor | int | float | None


def quadrature(method: str, n_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(step sizes, alphas) as float32 tensors, exactly Captum's ``approximation_parameters``.

    Riemann alphas come from a float32 ``linspace`` as in Captum; Gauss-Legendre nodes and weights
    from numpy's ``leggauss`` in float64, rescaled from [-1, 1] to [0, 1], then cast like Captum does.
    """
    if method not in SUPPORTED_METHODS:
        raise ValueError(f"unknown IG method {method!r}; choose one of {', '.join(SUPPORTED_METHODS)}")
    if method == "gausslegendre":
        if n_steps < 1:
            raise ValueError(f"n_steps must be >= 1 for gausslegendre, got {n_steps}")
        nodes, weights = np.polynomial.legendre.leggauss(n_steps)
        steps = (0.5 * weights).tolist()
        alphas = (0.5 * (1 + nodes)).tolist()
    else:
        if n_steps < 2:
            raise ValueError(f"n_steps must be >= 2 for Riemann methods, got {n_steps}")
        n = n_steps
        steps = [1 / n] * n
        kind = method.split("_")[1]
        if kind == "trapezoid":
            steps[0] /= 2
            steps[-1] /= 2
            alphas = torch.linspace(0, 1, n).tolist()
        elif kind == "left":
            alphas = torch.linspace(0, 1 - 1 / n, n).tolist()
        elif kind == "middle":
            alphas = torch.linspace(1 / (2 * n), 1 - 1 / (2 * n), n).tolist()
        else:
            alphas = torch.linspace(1 / n, 1, n).tolist()
    return torch.tensor(steps, dtype=torch.float32), torch.tensor(alphas, dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# The model used for the IG passes


@dataclass
class PreparedModel:
    """An eval-mode, frozen copy of a model, made ready for IG passes by :func:`prepare_for_ig`."""

    module: nn.Module
    channels_last: bool
    folded: bool


def prepare_for_ig(model: nn.Module | PreparedModel, *, fold_bn: bool = True,
                   channels_last: bool = True, device: torch.device | str | None = None) -> PreparedModel:
    """Copy ``model`` for the IG passes (:func:`igkd.models.inference.inference_copy`): eval mode,
    parameters frozen, batch norm folded, channels-last. The caller's model is not touched.
    """
    if isinstance(model, PreparedModel):
        return model
    module = inference_copy(model, fold_bn=fold_bn, channels_last=channels_last, device=device)
    return PreparedModel(module, channels_last, fold_bn)


_ALLOCATOR_TUNED = False


def tune_cpu_allocator(trim_threshold_mb: int = 2047) -> bool:
    """Make glibc keep freed memory for reuse instead of returning it to the OS after every pass.

    Each IG pass allocates and frees the same large activation tensors. By default glibc serves those
    with fresh ``mmap``s and unmaps them on free, so every pass pays page faults and the kernel's
    zeroing of every page: on the 2-core benchmark machine IG on the CIFAR MobileNetV2 ran at 2.8-3.5
    images/s untuned against 5.0-5.3 tuned, A/B in alternating processes. This raises glibc's mmap threshold to 1 GiB and
    its trim threshold to ``trim_threshold_mb``, process-wide and for the rest of the process: memory
    once used stays with the process (up to that amount) and is reused. Results do not change.
    ``precompute_ig`` calls it on CPU; a library user calling :func:`integrated_gradients` may call
    it explicitly. No-op (returns False) off glibc, or with ``IGKD_TUNE_MALLOC=0``.
    """
    global _ALLOCATOR_TUNED
    if _ALLOCATOR_TUNED:
        return True
    if os.environ.get("IGKD_TUNE_MALLOC", "1") == "0" or not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # from glibc's malloc.h
    ok = mallopt(m_mmap_threshold, 1 << 30) == 1
    ok = mallopt(m_trim_threshold, min(trim_threshold_mb << 20, 2**31 - 1)) == 1 and ok
    _ALLOCATOR_TUNED = ok
    return ok


# --------------------------------------------------------------------------------------------------
# Integrated gradients


def default_internal_batch_size(sample_shape: tuple[int, ...], device: torch.device) -> int:
    """Step-samples per pass when the caller gives none: a fixed function of shape and device.

    ``sample_shape`` is an input's shape with its batch dimension, e.g. (N, C, H, W). The target is
    32 samples of 32x32 pixels per pass on CPU (2048 on CUDA), scaled by image *area* (H x W, not
    counting channels), so a pass holds about as many pixels at any resolution: a CIFAR image gets
    32, a 28x28 one 42, a 64x64 one 8. On the 2-core benchmark machine the CIFAR MobileNetV2 ran
    5.2-5.3 img/s at 16-32 samples per pass, 4.6-4.8 at 64 and 3.9-4.7 at 100 (unfolded, contiguous).
    It never depends on timing, so results are reproducible.
    """
    if len(sample_shape) >= 3:
        pixels = int(np.prod(sample_shape[-2:]))
    else:
        pixels = int(np.prod(sample_shape[1:])) if len(sample_shape) > 1 else 1
    target = 32 if device.type != "cuda" else 2048
    return int(max(1, min(4 * target, round(target * 1024 / max(pixels, 1)))))


def _format_target(target: TargetType, n: int, device: torch.device) -> torch.Tensor | None:
    if target is None:
        return None
    if isinstance(target, tuple):
        raise ValueError("tuple targets (outputs of more than two dimensions) are not supported")
    t = torch.as_tensor(target, dtype=torch.int64, device=device)
    if t.dim() == 0 or t.numel() == 1:
        return t.reshape(1).expand(n)
    if t.shape != (n,):
        raise ValueError(f"target must be an int or have one entry per input ({n}), got shape {tuple(t.shape)}")
    return t


def _format_baseline(baselines: BaselineType, x: torch.Tensor) -> torch.Tensor:
    """The baseline as a tensor broadcastable to ``x`` with batch dim 1 (shared) or N."""
    if baselines is None:
        return torch.zeros((1, *x.shape[1:]), dtype=x.dtype, device=x.device)
    if isinstance(baselines, (int, float)):
        return torch.full((1, *x.shape[1:]), float(baselines), dtype=x.dtype, device=x.device)
    b = torch.as_tensor(baselines).to(device=x.device, dtype=x.dtype)
    while b.dim() < x.dim():
        b = b.unsqueeze(0)
    try:
        torch.broadcast_shapes(b.shape, x.shape)
    except RuntimeError:
        raise ValueError(f"baselines of shape {tuple(b.shape)} do not broadcast to inputs {tuple(x.shape)}") from None
    if b.shape[0] not in (1, x.shape[0]):
        raise ValueError(f"baselines batch size {b.shape[0]} must be 1 or {x.shape[0]}")
    return b.expand(b.shape[0], *x.shape[1:])


def _select(out: torch.Tensor, tgt: torch.Tensor | None) -> torch.Tensor:
    """The attributed output of each sample (Captum's target semantics for 1-D/2-D outputs)."""
    if tgt is None:
        if out.dim() > 1 and out[0].numel() != 1:
            raise ValueError(f"target is None but the model returns {tuple(out.shape[1:])} values per sample")
        return out.reshape(out.shape[0])
    if out.dim() != 2:
        raise ValueError(f"expected (N, classes) outputs, got shape {tuple(out.shape)}")
    return out.gather(1, tgt.unsqueeze(1)).squeeze(1)


@dataclass
class IGResult:
    attributions: torch.Tensor
    delta: torch.Tensor | None = None  # sum of attributions - (F(x) - F(b)), per sample
    output_difference: torch.Tensor | None = None  # F(x) - F(b), per sample
    outputs: torch.Tensor | None = None  # F(x), per sample
    baseline_outputs: torch.Tensor | None = None  # F(b), per sample


def _autocast_context(device: torch.device, autocast: bool | torch.dtype):
    if not autocast:
        return torch.autocast(device.type, enabled=False)
    if device.type != "cuda":
        raise ValueError("autocast is a CUDA-only option (it changes the results; off by default)")
    dtype = torch.float16 if autocast is True else autocast
    return torch.autocast("cuda", dtype=dtype)


def _forward_raw(module: nn.Module, x: torch.Tensor, batch: int, channels_last: bool,
                 autocast: bool | torch.dtype) -> torch.Tensor:
    """Model outputs for ``x`` in passes of ``batch``, without gradients, as float32."""
    outs = []
    with torch.no_grad(), _autocast_context(x.device, autocast):
        for s in range(0, x.shape[0], batch):
            xb = x[s:s + batch]
            xb = xb.contiguous(memory_format=torch.channels_last) if channels_last else xb.contiguous()
            outs.append(module(xb).float())
    return torch.cat(outs)


def integrated_gradients_detailed(
    model: nn.Module | PreparedModel,
    inputs: torch.Tensor,
    target: TargetType,
    baselines: BaselineType = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    autocast: bool | torch.dtype = False,
    progress_callback: Callable[[int], None] | None = None,
) -> IGResult:
    """:func:`integrated_gradients`, returning also F(x) - F(b) when the delta is asked for."""
    x = inputs.detach()
    if not x.is_floating_point():
        raise TypeError(f"inputs must be floating point, got {x.dtype}")
    device = x.device
    step_sizes, alphas = quadrature(method, n_steps)
    n, n_steps = x.shape[0], len(alphas)
    tgt = _format_target(target, n, device)
    b = _format_baseline(baselines, x)

    # Without folding or channels-last there is nothing to copy for: run the caller's model, with
    # eval mode and frozen parameters for the call only.
    in_place = not isinstance(model, PreparedModel) and not fold_bn and not channels_last
    if in_place:
        restore_training = {m: m.training for m in model.modules()}
        restore_grad = {p: p.requires_grad for p in model.parameters()}
        model.eval()
        for p in model.parameters():
            p.requires_grad_(False)
        prepared = PreparedModel(model, False, False)
    else:
        prepared = prepare_for_ig(model, fold_bn=fold_bn, channels_last=channels_last, device=device)
    try:
        return _integrate(prepared, x, tgt, b, step_sizes.to(device), alphas.to(device),
                          internal_batch_size, return_convergence_delta, autocast, progress_callback)
    finally:
        if in_place:
            for m, mode in restore_training.items():
                m.training = mode
            for p, flag in restore_grad.items():
                p.requires_grad_(flag)


def integrated_gradients(
    model: nn.Module | PreparedModel,
    inputs: torch.Tensor,
    target: TargetType,
    baselines: BaselineType = None,
    n_steps: int = 50,
    method: str = "gausslegendre",
    internal_batch_size: int | None = None,
    return_convergence_delta: bool = False,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    autocast: bool | torch.dtype = False,
    progress_callback: Callable[[int], None] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Integrated gradients of ``model(inputs)[:, target]`` along the straight path from ``baselines``.

    Arguments and results are those of Captum's ``IntegratedGradients(model).attribute``:
    ``target`` is an int, or one int per sample (list or LongTensor), or None for a model with one
    output per sample; ``baselines`` is None (zeros), a scalar, or a tensor broadcastable to ``inputs``
    (batch dim 1 or N); ``method`` is one of :data:`SUPPORTED_METHODS`; with
    ``return_convergence_delta`` the result is ``(attributions, delta)`` where delta is, per sample,
    the sum of attributions minus ``F(inputs) - F(baselines)``.

    Differences from Captum: the model is evaluated in eval mode, on a copy with batch norm folded and
    channels-last memory (``fold_bn``, ``channels_last``: on by default, float32 rounding only; with
    both off, on the model itself, its mode and ``requires_grad`` flags restored afterwards); pass a
    :class:`PreparedModel` to reuse one copy across calls; ``internal_batch_size`` is a strict bound on step-samples per
    forward pass (None = :func:`default_internal_batch_size`, not "everything at once");
    parameter gradients are never computed or accumulated. ``autocast`` (CUDA only; True = float16,
    or a dtype) runs the passes in reduced precision and does change the result: off by default.
    ``progress_callback`` is called with the number of step-samples after each pass.
    """
    res = integrated_gradients_detailed(
        model, inputs, target, baselines, n_steps, method, internal_batch_size, return_convergence_delta,
        fold_bn=fold_bn, channels_last=channels_last, autocast=autocast, progress_callback=progress_callback)
    if return_convergence_delta:
        return res.attributions, res.delta
    return res.attributions


def _integrate(prepared: PreparedModel, x: torch.Tensor, tgt: torch.Tensor | None, b: torch.Tensor,
               step_sizes: torch.Tensor, alphas: torch.Tensor, internal_batch_size: int | None,
               with_delta: bool, autocast: bool | torch.dtype,
               progress_callback: Callable[[int], None] | None) -> IGResult:
    module, cl = prepared.module, prepared.channels_last and x.dim() == 4
    n, n_steps = x.shape[0], alphas.shape[0]
    total_pairs = n * n_steps
    if internal_batch_size is None:
        internal_batch_size = default_internal_batch_size(tuple(x.shape), x.device)
    if internal_batch_size < 1:
        raise ValueError(f"internal_batch_size must be >= 1, got {internal_batch_size}")
    pass_size = min(internal_batch_size, total_pairs)
    sample_shape = x.shape[1:]
    diff = x - b  # (N, ...); b may be a broadcast view
    b_full = b.expand_as(x)
    fmt = torch.channels_last if cl else torch.contiguous_format
    buf = torch.empty((pass_size, *sample_shape), dtype=x.dtype, device=x.device, memory_format=fmt)
    grad_sum = torch.zeros_like(x, memory_format=torch.contiguous_format)  # sum_s w_s * grad(x_s)
    flat_tgt = None if tgt is None else tgt.repeat_interleave(n_steps)
    ones = (1,) * len(sample_shape)
    autocast_ctx = _autocast_context(x.device, autocast)

    for start in range(0, total_pairs, pass_size):
        stop = min(start + pass_size, total_pairs)
        runs = _runs(start, stop, n_steps)
        # Scaled inputs, written in place: one broadcasted addcmul per run of whole or partial images.
        with torch.no_grad():
            for i0, i1, s0, s1, off in runs:
                k = (i1 - i0) * (s1 - s0)
                out = buf[off:off + k].view(i1 - i0, s1 - s0, *sample_shape)
                torch.addcmul(b_full[i0:i1].unsqueeze(1), alphas[s0:s1].view(1, -1, *ones),
                              diff[i0:i1].unsqueeze(1), out=out)
        inp = buf[:stop - start].detach().requires_grad_(True)
        with autocast_ctx:
            out = _select(module(inp), None if flat_tgt is None else flat_tgt[start:stop])
        (grads,) = torch.autograd.grad(out.sum(), inp)
        with torch.no_grad():
            for i0, i1, s0, s1, off in runs:
                k = (i1 - i0) * (s1 - s0)
                g = grads[off:off + k].view(i1 - i0, s1 - s0, *sample_shape).float()
                grad_sum[i0:i1] += (g * step_sizes[s0:s1].view(1, -1, *ones)).sum(1)
        del inp, out, grads
        if progress_callback is not None:
            progress_callback(stop - start)

    attributions = grad_sum.mul_(diff)
    if not with_delta:
        return IGResult(attributions)
    fx = _select(_forward_raw(module, x, pass_size, cl, autocast), tgt)
    if b.shape[0] == 1:  # one baseline shared by all inputs: one forward pass
        out_b = _forward_raw(module, b[:1], 1, cl, autocast)
        fb = _select(out_b.expand(n, *out_b.shape[1:]), tgt)
    else:
        fb = _select(_forward_raw(module, b, pass_size, cl, autocast), tgt)
    out_diff = fx - fb
    delta = attributions.reshape(n, -1).sum(1) - out_diff
    return IGResult(attributions, delta, out_diff, fx, fb)


def _runs(start: int, stop: int, n_steps: int) -> list[tuple[int, int, int, int, int]]:
    """Cover flat pairs [start, stop) (pair k = image k // S, step k % S) by rectangular runs.

    Each run is (i0, i1, s0, s1, offset): images i0..i1-1, steps s0..s1-1, at ``offset`` in the pass.
    At most three runs: a partial first image, whole images, a partial last image.
    """
    runs = []
    k = start
    while k < stop:
        i, s = divmod(k, n_steps)
        if s == 0 and stop - k >= n_steps:  # a block of whole images
            m = (stop - k) // n_steps
            runs.append((i, i + m, 0, n_steps, k - start))
            k += m * n_steps
        else:
            s1 = min(n_steps, s + stop - k)
            runs.append((i, i + 1, s, s1, k - start))
            k += s1 - s
    return runs


def attribution_map(attributions: torch.Tensor) -> torch.Tensor:
    """The paper's map: absolute attribution summed over channels, (N, C, H, W) -> (N, H, W)."""
    if attributions.dim() != 4:
        raise ValueError(f"expected (N, C, H, W) attributions, got shape {tuple(attributions.shape)}")
    return attributions.abs().sum(dim=1)
