"""The dataset every other box consumes: uint8 images in memory, or read from disk a batch at a time."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .sources import read_ahead, spans_of


@dataclass
class ImageDataset:
    """uint8 images (N, C, H, W), int64 labels (N,), and each sample's index for life.

    ``x`` is a tensor in memory, or images read by position (:class:`~igkd.fileio.NpyRows`: a decoded
    cache on disk; :class:`~igkd.data.sources.DatasetRows`: a user's Dataset): ``x[pos]`` and ``x[a:b]``
    read just those images, so the same code serves both.

    ``index[i]`` is the sample's position in the file it came from; it survives subsetting, so a
    map store or a log can always name the original image. Stores are addressed by *position* in the
    dataset they were built for, and :meth:`fingerprint` (which covers images, labels and indices)
    ties a store to exactly that dataset.
    """

    name: str
    x: torch.Tensor
    y: torch.Tensor
    classes: list[str]
    index: torch.Tensor = field(default=None)  # type: ignore[assignment]
    known_fingerprint: str | None = field(default=None, repr=False)  # recorded by a cache: not read again

    def __post_init__(self) -> None:
        if self.x.dtype != torch.uint8 or self.x.dim() != 4:
            raise ValueError(f"images must be uint8 (N, C, H, W), got {self.x.dtype} {tuple(self.x.shape)}")
        self.y = self.y.to(torch.int64)
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"labels must have shape ({self.x.shape[0]},), got {tuple(self.y.shape)}")
        if self.index is None:
            self.index = torch.arange(self.x.shape[0], dtype=torch.int64)
        self._fingerprint: str | None = self.known_fingerprint

    def __len__(self) -> int:
        return self.x.shape[0]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]

    def first_of_each_class(self, count: int) -> list[int]:
        """The position of each class's first image, in class order, at most ``count`` of them."""
        picks = []
        for c in range(self.num_classes):
            hits = torch.nonzero(self.y == c).squeeze(1)
            if len(hits):
                picks.append(int(hits[0]))
        return picks[:count]

    @property
    def on_disk(self) -> bool:
        """Whether the images are read a batch at a time (a cache on disk, a user's dataset), else one tensor
        in memory."""
        return not isinstance(self.x, torch.Tensor)

    def subset(self, positions: torch.Tensor) -> ImageDataset:
        positions = torch.as_tensor(positions, dtype=torch.int64)
        x = self.x.subset(positions.numpy()) if self.on_disk else self.x[positions]
        return ImageDataset(self.name, x, self.y[positions], self.classes, self.index[positions])

    def fingerprint(self, workers: int = 0) -> str:
        """sha256 over shapes, images, labels and indices (cached), read in chunks: the same digest
        whether the images are in memory or on disk. Images not in memory are read ahead of the hashing
        (:func:`~igkd.data.sources.read_ahead`), by ``workers`` DataLoader processes when > 0 (for a user's
        dataset that decodes as it is read): the same digest."""
        if self._fingerprint is None:
            h = hashlib.sha256()
            h.update(str(tuple(self.x.shape)).encode())
            for chunk, _ in read_ahead(self.x, self.y, spans_of(0, len(self), 4096), torch.device("cpu"), workers):
                h.update(chunk.contiguous().numpy())
            for t in (self.y, self.index):
                h.update(t.contiguous().numpy().tobytes())
            self._fingerprint = h.hexdigest()
        return self._fingerprint
