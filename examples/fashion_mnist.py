"""Fashion-MNIST as a plain map-style ``Dataset`` for the examples (read from the idx files, no download)."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist (scripts/setup.sh)
MEAN, STD = (0.2860,), (0.3530,)  # what igkd's shipped Fashion-MNIST teacher takes
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class FashionMNIST(Dataset):
    """The first ``n`` images of a split: ``(uint8 tensor (1, 28, 28), label)``."""

    classes = list(CLASSES)

    def __init__(self, root: str | Path = DEFAULT_ROOT, split: str = "train", n: int | None = None):
        prefix = "train" if split == "train" else "t10k"
        with gzip.open(Path(root) / f"{prefix}-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)
        with gzip.open(Path(root) / f"{prefix}-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8)
        self.x, self.y = torch.from_numpy(x[:n].copy()), torch.from_numpy(y[:n].astype(np.int64))

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return self.x[i], int(self.y[i])
