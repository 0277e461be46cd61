"""Whole-batch augmentation: crop and flip an image and its IG map together, and the IG overlay.

Airbench-style: one gather per batch, no per-sample Python, so the same code runs on CPU and GPU.
Random numbers are drawn on the generator's device and moved to the data, so a CPU generator
seeded from the run seed gives the same augmentation whichever device the batch lives on.

Order (METHOD.md step 4): the overlay's power and min-max normalisation apply to the *whole* map;
the normalised map is then cropped and flipped with its image and blended. The result equals
overlaying the full image and cropping afterwards, so neither zero padding nor a cropped-away peak
changes the normalisation. Draws happen in a fixed order per batch: crop offsets, flips, overlay
choices, overlay exponents (each for every image), so the stream never depends on what was chosen.
Training draws crops and flips from one generator and the overlay from another, so runs of different
methods with the same seed see the very same crops and flips (a paired design).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _draw_uniform(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    return torch.rand(n, generator=generator, device=generator.device).to(device)


@dataclass
class CropFlip:
    """One batch's random crops and flips, as the source row and column of every output pixel."""

    rows: torch.Tensor  # (B, H): row in the padded image
    cols: torch.Tensor  # (B, W): column in the padded image, flip included
    padding: int

    def select(self, idx: torch.Tensor) -> CropFlip:
        return CropFlip(self.rows[idx], self.cols[idx], self.padding)

    def apply(self, t: torch.Tensor) -> torch.Tensor:
        """Crop and flip a (B, C, H, W) image batch or a (B, H, W) map batch; padding is zeros."""
        b = t.shape[0]
        batch = torch.arange(b, device=t.device)
        pad = (self.padding,) * 4
        padded = F.pad(t, pad) if self.padding else t
        if t.dim() == 4:
            channels = torch.arange(t.shape[1], device=t.device)
            return padded[batch[:, None, None, None], channels[None, :, None, None],
                          self.rows[:, None, :, None], self.cols[:, None, None, :]]
        return padded[batch[:, None, None], self.rows[:, :, None], self.cols[:, None, :]]


def draw_crop_flip(b: int, h: int, w: int, padding: int, generator: torch.Generator, flip: bool = True,
                   device: torch.device | str = "cpu") -> CropFlip:
    """Offsets in [0, 2*padding] (rows, then columns), then flips with probability 0.5."""
    if padding < 0:
        raise ValueError(f"padding must be >= 0, got {padding}")
    device = torch.device(device)
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
    return CropFlip(rows, cols, padding)


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
    cf = draw_crop_flip(b, h, w, padding, generator, flip, images.device)
    return cf.apply(images), None if maps is None else cf.apply(maps)


@dataclass
class OverlayDraw:
    """Which images of a batch get the overlay, and each image's exponent s (drawn for all)."""

    chosen: torch.Tensor  # (B,) bool
    exponents: torch.Tensor  # (B,) float32

    @property
    def index(self) -> torch.Tensor:
        return torch.nonzero(self.chosen).squeeze(1)

    def select(self, idx: torch.Tensor | slice) -> OverlayDraw:
        return OverlayDraw(self.chosen[idx], self.exponents[idx])


def draw_overlay(b: int, p: float, generator: torch.Generator, power_range: tuple[float, float] = (1.0, 2.0),
                 device: torch.device | str = "cpu") -> OverlayDraw:
    """Choose each image with probability ``p``; its exponent is s = exp(U(ln lo, ln hi))."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"p must be in [0, 1], got {p}")
    lo, hi = power_range
    if not 0.0 < lo <= hi:
        raise ValueError(f"power_range must satisfy 0 < lo <= hi, got {power_range}")
    device = torch.device(device)
    chosen = _draw_uniform(b, generator, device) < p
    u = _draw_uniform(b, generator, device)
    if lo == hi:
        s = torch.full((b,), lo, device=device)  # exact, not exp(log(lo))
    else:
        s = torch.exp(math.log(lo) + u * (math.log(hi) - math.log(lo)))
    return OverlayDraw(chosen, s)


def normalize_maps(maps: torch.Tensor, exponents: torch.Tensor) -> torch.Tensor:
    """|m| ** s, then min-max per map to [0, 1] over the whole map (a constant map becomes zeros)."""
    dtype = torch.promote_types(maps.dtype, torch.float32)
    m = maps.to(dtype).abs().pow(exponents.to(device=maps.device, dtype=dtype)[:, None, None])
    m_min = m.amin(dim=(1, 2), keepdim=True)
    spread = m.amax(dim=(1, 2), keepdim=True) - m_min
    return torch.where(spread > 0, (m - m_min) / spread.clamp_min(torch.finfo(dtype).tiny), torch.zeros_like(m))


def blend(images01: torch.Tensor, normalized_maps: torch.Tensor, mix: float = 0.5) -> torch.Tensor:
    """x' = (1 - mix) x + mix m, the map repeated over channels, clamped to [0, 1]."""
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    dtype = torch.promote_types(images01.dtype, torch.float32)
    out = (1.0 - mix) * images01.to(dtype) + mix * normalized_maps.to(dtype)[:, None]
    return out.clamp_(0.0, 1.0).to(images01.dtype)


def example_overlays(images: torch.Tensor, maps: torch.Tensor, mix: float = 0.5, power: float = 1.5) -> torch.Tensor:
    """uint8 images (B, C, H, W) overlaid with their maps sharpened by one ``power`` (what a reader is
    shown of the overlay: the report's gallery, TensorBoard), as uint8."""
    over = blend(images.float() / 255, normalize_maps(maps, torch.full((len(images),), power)), mix)
    return (over * 255).round().to(torch.uint8)


def _check_overlay_args(images01: torch.Tensor, maps: torch.Tensor) -> None:
    if images01.dim() != 4 or not images01.is_floating_point():
        raise ValueError(f"images01 must be float (B, C, H, W), got {images01.dtype} {tuple(images01.shape)}")
    b, _c, h, w = images01.shape
    if tuple(maps.shape) != (b, h, w):
        raise ValueError(f"maps must be (B, H, W) = {(b, h, w)}, got {tuple(maps.shape)}")


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
    images and the boolean mask of chosen images; unchosen images are returned bit-for-bit.
    """
    _check_overlay_args(images01, maps)
    if not 0.0 <= mix <= 1.0:
        raise ValueError(f"mix must be in [0, 1], got {mix}")
    draw = draw_overlay(images01.shape[0], p, generator, power_range, images01.device)
    return _apply_overlay(images01, maps, draw, mix), draw.chosen


def _apply_overlay(images01: torch.Tensor, maps: torch.Tensor, draw: OverlayDraw, mix: float,
                   cf: CropFlip | None = None, masked: bool | None = None) -> torch.Tensor:
    """Blend the chosen images with their whole-map-normalised maps (cropped and flipped by ``cf``).

    On the CPU only the chosen maps are normalised. On an accelerator (``masked``) every map is, and
    the chosen images are kept with a mask: the same values per image (elementwise operations and
    exact min and max), without the host waiting for the device to learn how many were chosen.
    """
    if masked if masked is not None else images01.device.type != "cpu":
        normalized = normalize_maps(maps.to(images01.device), draw.exponents.to(images01.device))
        if cf is not None:
            normalized = cf.apply(normalized)
        chosen = draw.chosen.to(images01.device)[:, None, None, None]
        return torch.where(chosen, blend(images01, normalized, mix), images01)
    idx = draw.index
    if idx.numel() == 0:
        return images01.clone()
    normalized = normalize_maps(maps.to(images01.device)[idx], draw.exponents[idx])
    if cf is not None:
        normalized = cf.select(idx).apply(normalized)
    return images01.index_copy(0, idx, blend(images01[idx], normalized, mix))


def augment_batch(
    images01: torch.Tensor,
    maps: torch.Tensor | None,
    generator: torch.Generator,
    padding: int,
    flip: bool = True,
    overlay_p: float = 0.0,
    power_range: tuple[float, float] = (1.0, 2.0),
    mix: float = 0.5,
    overlay_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """A training batch's augmentation: crop and flip, and (with maps) the IG overlay in METHOD.md's order.

    The chosen images' whole maps are normalised, then cropped and flipped with their images, then
    blended: equal to overlaying the full images and cropping afterwards with the same draws. The
    overlay draws come from ``overlay_generator`` (default: ``generator``, after the crops).
    """
    b, _c, h, w = images01.shape
    cf = draw_crop_flip(b, h, w, padding, generator, flip, images01.device) if (padding or flip) else None
    if maps is None or overlay_p <= 0:
        return apply_draws(images01, None, AugmentDraws(cf, None), mix)
    _check_overlay_args(images01, maps)
    draw = draw_overlay(b, overlay_p, overlay_generator or generator, power_range, images01.device)
    return apply_draws(images01, maps, AugmentDraws(cf, draw), mix)


def plan_padding(padding: int | str, written_for: int | None, hw: tuple[int, int]) -> int:
    """The crop padding for images of ``hw`` (H, W): ``auto`` is one eighth of the smaller side; a padding
    written for images of side ``written_for`` is scaled to this side (rounded, at least 1 if it was)."""
    side = min(hw)
    if padding == "auto":
        return max(1, side // 8)
    if written_for is None or written_for == side or padding == 0:
        return int(padding)
    return max(1, round(int(padding) * side / written_for))


@dataclass
class CropFlipPlan:
    """Many images' crops and flips kept as three numbers each (first source row and column, flipped) and
    expanded to a :class:`CropFlip` a batch at a time: an epoch's plan for N images of H x W costs
    O(N), not the O(N (H + W)) of every pixel's source (1 GB for ImageNet at 224 x 224)."""

    row0: torch.Tensor  # (N,) first source row in the padded image
    col0: torch.Tensor  # (N,) source column of the first output column
    flipped: torch.Tensor  # (N,) bool
    h: int
    w: int
    padding: int

    @classmethod
    def of(cls, cf: CropFlip) -> CropFlipPlan:
        flipped = cf.cols[:, 0] > cf.cols[:, -1] if cf.cols.shape[1] > 1 else torch.zeros(len(cf.cols), dtype=torch.bool)
        return cls(cf.rows[:, 0].clone(), cf.cols[:, 0].clone(), flipped, cf.rows.shape[1], cf.cols.shape[1],
                   cf.padding)

    def select(self, idx: slice) -> CropFlip:
        row0, col0, flipped = self.row0[idx], self.col0[idx], self.flipped[idx]
        rows = row0[:, None] + torch.arange(self.h, device=row0.device)
        steps = torch.arange(self.w, device=col0.device)
        cols = torch.where(flipped[:, None], col0[:, None] - steps, col0[:, None] + steps)
        return CropFlip(rows, cols, self.padding)

    def to(self, device: torch.device | str) -> CropFlipPlan:
        return CropFlipPlan(self.row0.to(device), self.col0.to(device), self.flipped.to(device), self.h, self.w,
                            self.padding)


@dataclass
class AugmentDraws:
    """Random draws for a run of samples, one row per sample: crop and flip, and the overlay's choices."""

    crop_flip: CropFlip | CropFlipPlan | None
    overlay: OverlayDraw | None

    def rows(self, start: int, stop: int) -> AugmentDraws:
        """The draws of samples ``start`` to ``stop`` (positions in the order they were drawn for)."""
        part = slice(start, stop)
        return AugmentDraws(None if self.crop_flip is None else self.crop_flip.select(part),
                            None if self.overlay is None else self.overlay.select(part))

    def to(self, device: torch.device | str) -> AugmentDraws:
        cf, ov = self.crop_flip, self.overlay
        if isinstance(cf, CropFlip):
            cf = CropFlip(cf.rows.to(device), cf.cols.to(device), cf.padding)
        return AugmentDraws(None if cf is None else cf.to(device) if isinstance(cf, CropFlipPlan) else cf,
                            None if ov is None else OverlayDraw(ov.chosen.to(device), ov.exponents.to(device)))


def draw_batches(batch_sizes: list[int], h: int, w: int, padding: int, flip: bool, generator: torch.Generator,
                 overlay_p: float = 0.0, power_range: tuple[float, float] = (1.0, 2.0),
                 overlay_generator: torch.Generator | None = None) -> AugmentDraws:
    """What :func:`augment_batch` would draw for batches of these sizes in turn, drawn at once (on the
    generators' device) and concatenated: the same numbers, so a loop can move one epoch's draws to its
    device once instead of every step, and a data-parallel rank can take its part of a batch's draws."""
    cfs, ovs = [], []
    for b in batch_sizes:
        if padding or flip:  # drawn as augment_batch draws them, kept as three numbers per image
            cfs.append(CropFlipPlan.of(draw_crop_flip(b, h, w, padding, generator, flip, generator.device)))
        if overlay_p > 0:
            ovs.append(draw_overlay(b, overlay_p, overlay_generator or generator, power_range,
                                    (overlay_generator or generator).device))
    cf = CropFlipPlan(torch.cat([c.row0 for c in cfs]), torch.cat([c.col0 for c in cfs]),
                      torch.cat([c.flipped for c in cfs]), h, w, padding) if cfs else None
    ov = OverlayDraw(torch.cat([o.chosen for o in ovs]), torch.cat([o.exponents for o in ovs])) if ovs else None
    return AugmentDraws(cf, ov)


def apply_draws(images01: torch.Tensor, maps: torch.Tensor | None, draws: AugmentDraws,
                mix: float = 0.5) -> torch.Tensor:
    """Crop and flip, then (with maps and overlay draws) the IG overlay, as :func:`augment_batch` does."""
    if isinstance(draws.crop_flip, CropFlipPlan):
        draws = AugmentDraws(draws.crop_flip.select(slice(None)), draws.overlay)
    out = draws.crop_flip.apply(images01) if draws.crop_flip is not None else images01
    if maps is None or draws.overlay is None:
        return out
    _check_overlay_args(images01, maps)
    return _apply_overlay(out, maps, draws.overlay, mix, draws.crop_flip)
