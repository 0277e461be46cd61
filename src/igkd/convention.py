"""The one input convention used everywhere (METHOD.md defects 3 and 7).

Images live as uint8. Augmentation and the IG overlay work on pixel values in [0, 1]. Every network,
teacher and student alike, and the IG computation, see ``(x01 - mean) / std``. Nothing else feeds a
network, so no model can see another scaling than the one its store or checkpoint records.
Per-dataset mean and std live in :mod:`igkd.data.catalog`.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch


@functools.lru_cache(maxsize=64)
def _constant(values: tuple[float, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(1, C, 1, 1), made once per device: a copy to a GPU every batch would make the host wait for it."""
    with torch.inference_mode(False):  # a normal tensor, usable with autograd wherever it was first made
        return torch.tensor(values, dtype=dtype, device=device).view(1, -1, 1, 1)


@dataclass(frozen=True)
class InputConvention:
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        """Map pixel values in [0, 1], shape (N, C, H, W), to network input."""
        mean = _constant(self.mean, x01.dtype, x01.device)
        std = _constant(self.std, x01.dtype, x01.device)
        return (x01 - mean) / std

    def from_uint8(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images straight to network input."""
        return self.normalize(x.float().div_(255.0))

    def to_dict(self) -> dict:
        return {"space": "normalized", "pixel_range": [0.0, 1.0], "mean": list(self.mean), "std": list(self.std)}
