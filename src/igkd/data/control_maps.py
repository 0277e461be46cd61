"""Maps for the overlay's controls: what a gain from IG maps must beat to be credited to IG.

* ``unrelated``: every image gets the IG map of another image (a fixed random derangement), which is
  what the authors' misaligned store actually trained with;
* ``noise``: smooth random maps that carry no information about the image (Gaussian noise at a
  quarter of the resolution, bilinearly upsampled, absolute value), put through the same power and
  min-max normalisation as IG maps. Held in memory (:func:`noise_maps`), or for streamed data read by
  position (:func:`streamed_noise_maps`): the quarter-resolution noise written once to a file, a sixteenth
  of the maps' size, upsampled a batch at a time; the same values.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..fileio import NpyRows, ensure_dir, fsync_dir, guarded_write

MAP_SOURCES = ("ig", "unrelated", "noise")
NOISE_CHUNK_ROWS = 4096  # images of low-resolution noise drawn at once while writing its file (a multiple of 16)


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


def _low_shape(h: int, w: int) -> tuple[int, int]:
    return max(1, h // 4), max(1, w // 4)


def _upsample(low: torch.Tensor, h: int, w: int, dtype: torch.dtype) -> torch.Tensor:
    """Low-resolution noise (B, 1, h', w') as maps (B, h, w): each image on its own, whatever the batch."""
    return F.interpolate(low, size=(h, w), mode="bilinear", align_corners=False)[:, 0].abs().to(dtype)


def noise_maps(n: int, h: int, w: int, seed: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``n`` smooth random maps of size h x w, non-negative, from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(n, 1, *_low_shape(h, w), generator=g)
    return _upsample(low, h, w, dtype)


def _noise_chunks(n: int, per_image: int, rows: int) -> list[tuple[int, int]]:
    """Image ranges whose ``randn`` draws, one after another from one generator, give the numbers of one
    ``randn`` over all ``n``: PyTorch's CPU normal sampler fills blocks of 16 numbers from 16 uniforms, and a
    tensor of 16 or more numbers whose size is not a multiple of 16 redraws its last 16. So every range but
    the last holds a multiple of 16 numbers (``rows`` is a multiple of 16), and the last holds at least 16
    (else it joins the one before). Tested against :func:`noise_maps`."""
    bounds = list(range(0, n, rows)) + [n]
    if len(bounds) > 2 and (bounds[-1] - bounds[-2]) * per_image < 16:
        del bounds[-2]
    return list(zip(bounds[:-1], bounds[1:]))


def write_low_noise(path: str | Path, n: int, h: int, w: int, seed: int) -> Path:
    """The low-resolution noise of :func:`noise_maps` (n, 1, h', w') as a ``.npy`` file, drawn
    :data:`NOISE_CHUNK_ROWS` images at a time (never all in memory); written to a temporary name and renamed,
    so the file at ``path`` is whole or absent."""
    path = Path(path)
    ensure_dir(path.parent)
    lh, lw = _low_shape(h, w)
    g = torch.Generator().manual_seed(seed)
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}.tmp"
    with guarded_write(path):
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float32, shape=(n, 1, lh, lw))
            for s, e in _noise_chunks(n, lh * lw, NOISE_CHUNK_ROWS):
                out[s:e] = torch.randn(e - s, 1, lh, lw, generator=g).numpy()
            out.flush()
            del out
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        fsync_dir(path.parent)
    return path


class NoiseMapRows(NpyRows):
    """Noise maps (N, h, w) read by position like an :class:`~igkd.fileio.NpyRows`: the rows of the
    low-resolution noise file, upsampled a batch at a time (the values :func:`noise_maps` gives)."""

    def __init__(self, path: str | Path, h: int, w: int, dtype: torch.dtype = torch.float32):
        super().__init__(path)
        self.size, self.out_dtype = (h, w), dtype

    @property
    def shape(self):
        return torch.Size((len(self), *self.size))

    @property
    def dtype(self):
        return self.out_dtype

    def dim(self) -> int:
        return 3

    def read(self, positions) -> torch.Tensor:
        return _upsample(super().read(positions), *self.size, self.out_dtype)


def streamed_noise_maps(n: int, h: int, w: int, seed: int, dtype: torch.dtype = torch.float32,
                        root: str | Path | None = None) -> NoiseMapRows:
    """:func:`noise_maps` read by position, from a file of their low-resolution noise under ``root``
    (default: igkd's cache folder, ``noise/``), written on first use: ``n * h * w / 16`` float32 numbers
    on disk, one batch of maps in memory at a time."""
    from ..utils import default_cache_dir

    lh, lw = _low_shape(h, w)
    path = Path(root) if root is not None else default_cache_dir() / "noise"
    path = path / f"noise-{n}x{lh}x{lw}-seed{seed}.npy"
    if not path.is_file() or NpyRows(path).file_shape != (n, 1, lh, lw):
        write_low_noise(path, n, h, w, seed)
    return NoiseMapRows(path, h, w, dtype)


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
