"""Maps for the overlay's controls: what a gain from IG maps must beat to be credited to IG.

* ``unrelated``: every image gets the IG map of another image (a fixed random derangement), which is
  what the authors' misaligned store actually trained with;
* ``noise``: smooth random maps that carry no information about the image (Gaussian noise at a
  quarter of the resolution, bilinearly upsampled, absolute value), put through the same power and
  min-max normalisation as IG maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

MAP_SOURCES = ("ig", "unrelated", "noise")


def derangement(n: int, seed: int) -> torch.Tensor:
    """A random permutation of 0..n-1 with no fixed point (n >= 2): image i gets map perm[i] != i."""
    if n < 2:
        raise ValueError("an unrelated map needs at least two images")
    g = torch.Generator().manual_seed(seed)
    # A random cyclic shift of a random order: sigma(order[j]) = order[(j + s) % n] moves every index.
    order = torch.randperm(n, generator=g)
    shift = int(torch.randint(1, n, (1,), generator=g))
    perm = torch.empty(n, dtype=torch.int64)
    perm[order] = order.roll(-shift)
    return perm


def unrelated_maps(maps: torch.Tensor, seed: int) -> torch.Tensor:
    """``maps`` with each image's map replaced by another image's."""
    return maps[derangement(len(maps), seed)]


def noise_maps(n: int, h: int, w: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` smooth random maps of size h x w, non-negative, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, max(1, h // 4), max(1, w // 4), generator=g)
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[:, 0].abs().to(dtype)


def control_maps(source: str, maps: torch.Tensor | None, shape: tuple[int, int, int], seed: int) -> torch.Tensor:
    """The maps the overlay uses for ``source``: the IG maps themselves, another image's, or noise."""
    if source == "ig":
        assert maps is not None
        return maps
    if source == "unrelated":
        assert maps is not None
        return unrelated_maps(maps, seed)
    if source == "noise":
        return noise_maps(*shape, seed)
    raise ValueError(f"unknown map source {source!r}; choose one of {', '.join(MAP_SOURCES)}")
