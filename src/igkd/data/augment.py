"""Whole-batch augmentation: crop and flip an image and its IG map together, then the IG overlay.

Airbench-style: one gather per batch, no per-sample Python, so the same code runs on CPU and GPU.
Random numbers are drawn on the generator's device and moved to the data, so a CPU generator
seeded from the run seed gives the same augmentation whichever device the batch lives on.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _draw_uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


def batch_crop_flip(
    images: torch.Tensor,
    maps: torch.Tensor | None,
    padding: int,
    generator: torch.Generator,
    flip: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Random crop (zero padding) and horizontal flip, applied identically to each image and its map.

    Equivalent per sample to torchvision's ``RandomCrop(size, padding, fill=0)`` followed by
    ``RandomHorizontalFlip(0.5)``; giving the map the very same offsets and flip fixes the paper
    code's defect 2 (maps that no longer lie over their image). Offsets are drawn first, then flips.
    """
    if images.dim() != 4:
        raise ValueError(f"images must be (B, C, H, W), got {tuple(images.shape)}")
    b, c, h, w = images.shape
    if maps is not None and tuple(maps.shape) != (b, h, w):
        raise ValueError(f"maps must be (B, H, W) = {(b, h, w)}, got {tuple(maps.shape)}")
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    if padding == 0 and not flip:
        return images, maps

    device = images.device
    rows = torch.arange(h, device=device).expand(b, h)
    cols = torch.arange(w, device=device).expand(b, w)
    if padding > 0:
        offsets = torch.randint(0, 2 * padding + 1, (b, 2), generator=generator, device=generator.device)
        offsets = offsets.to(device)
        rows = rows + offsets[:, :1]
        cols = cols + offsets[:, 1:]
    if flip:
        flipped = _draw_uniform(b, generator, device) < 0.5
        cols = torch.where(flipped[:, None], cols.flip(1), cols)

    # Pad once, then one advanced-indexing gather does crop and flip for the whole batch.
    pad = (padding, padding, padding, padding)
    batch = torch.arange(b, device=device)
    padded = F.pad(images, pad) if padding else images
    out = padded[
        batch[:, None, None, None],
        torch.arange(c, device=device)[None, :, None, None],
        rows[:, None, :, None],
        cols[:, None, None, :],
    ]
    out_maps = None
    if maps is not None:
        padded_maps = F.pad(maps, pad) if padding else maps
        out_maps = padded_maps[batch[:, None, None], rows[:, :, None], cols[:, None, :]]
    return out, out_maps


def ig_overlay(
    images01: torch.Tensor,
    maps: torch.Tensor,
    p: float,
    generator: torch.Generator,
    power_range: tuple[float, float] = (1.0, 2.0),
    mix: float = 0.5,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blend a sharpened, normalised IG map into a random fraction ``p`` of the images (METHOD.md step 4).

    For each chosen image: m <- |m| ** s with s = exp(U(ln lo, ln hi)), min-max normalised to [0, 1]
    (a constant map becomes zeros), repeated over channels, x' = (1 - mix) x + mix m. Returns the new
    images and the boolean mask of chosen images; unchosen images are returned bit-for-bit. The
    choice and exponent are drawn for every image (choice first), so the random stream does not
    depend on which images get chosen.
    """
    if images01.dim() != 4 or not images01.is_floating_point():
        raise ValueError(f"images01 must be float (B, C, H, W), got {images01.dtype} {tuple(images01.shape)}")
    b, c, h, w = images01.shape
    if tuple(maps.shape) != (b, h, w):
        raise ValueError(f"maps must be (B, H, W) = {(b, h, w)}, got {tuple(maps.shape)}")
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    lo, hi = power_range
    if not 0.0 < lo <= hi:
        raise ValueError(f"power_range must satisfy 0 < lo <= hi, got {power_range}")
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")

    device = images01.device
    chosen = _draw_uniform(b, generator, device) < p
    u = _draw_uniform(b, generator, device)
    idx = torch.nonzero(chosen).squeeze(1)
    if idx.numel() == 0:
        return images01.clone(), chosen

    dtype = torch.promote_types(images01.dtype, torch.float32)
    if lo == hi:
        s = torch.full((idx.numel(),), lo, dtype=dtype, device=device)  # exact, not exp(log(lo))
    else:
        s = torch.exp(math.log(lo) + u[idx].to(dtype) * (math.log(hi) - math.log(lo)))
    m = maps.to(device)[idx].to(dtype).abs().pow(s[:, None, None])
    m_min = m.amin(dim=(1, 2), keepdim=True)
    spread = m.amax(dim=(1, 2), keepdim=True) - m_min
    m = torch.where(spread > 0, (m - m_min) / spread.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(m))
    blended = (1.0 - mix) * images01[idx].to(dtype) + mix * m[:, None]
    blended = blended.clamp_(0.0, 1.0).to(images01.dtype)
    return images01.index_copy(0, idx, blended), chosen
