"""Where a training run's batches come from: the whole set on the device, or read from disk a batch at a time.

The loop asks a :class:`BatchSource` for the images, labels and maps at the positions of each of its
steps, in order, and gets them on its device. What positions to ask for (the epoch's order, this rank's
part of each global batch) and how to augment them (crops, flips, overlay draws) the loop decides
beforehand, from its seed, so where the data lives never changes what a run computes:

* :class:`InMemorySource`: airbench's trick, the fast path for data that fits: everything moved to
  the device once, a batch is one gather there.
* :class:`StreamedSource`: the images (and maps) stay where they are (a decoded cache on disk,
  :class:`~igkd.fileio.NpyRows`, or any object that gives a uint8 batch for a list of positions) and
  are read ahead of the loop by a background thread, or by DataLoader worker processes, into pinned
  memory and copied to the device without blocking, so only a few batches are ever in memory.

Both hand over the very same bytes, so the same seed gives the same run, bit for bit.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch


@dataclass
class Batch:
    """One step's data on the device: uint8 images (B, C, H, W), int64 labels, maps (B, H, W) or None."""

    x: torch.Tensor
    y: torch.Tensor
    maps: torch.Tensor | None


Span = tuple[int, int] | None  # a step's slice of the epoch's order; None: a step that is skipped


class BatchSource:
    """The batches of a run, in the order its epoch plan asks for them."""

    def batches(self, order: torch.Tensor, spans: Sequence[Span]) -> Iterator[Batch | None]:
        """For each span ``(a, b)`` the data at positions ``order[a:b]`` (None for a None span), in order."""
        raise NotImplementedError

    @property
    def streamed(self) -> bool:
        return isinstance(self, StreamedSource)


class InMemorySource(BatchSource):
    """Images, labels and maps moved to ``device`` once; a batch is a gather there."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, maps: torch.Tensor | None, device: torch.device):
        self.x, self.y = x.to(device), y.to(device)
        self.maps = None if maps is None else maps.to(device)
        self.device = device

    def batches(self, order: torch.Tensor, spans: Sequence[Span]) -> Iterator[Batch | None]:
        order = order.to(self.device)
        for span in spans:
            if span is None:
                yield None
                continue
            pos = order[span[0]:span[1]]
            yield Batch(self.x[pos], self.y[pos], None if self.maps is None else self.maps[pos])


class _Rows(torch.utils.data.Dataset):
    """A DataLoader's view of the images, labels and maps: one batch of positions at a time."""

    def __init__(self, x: Any, y: torch.Tensor, maps: Any):
        self.x, self.y, self.maps = x, y, maps

    def __len__(self) -> int:
        return len(self.y)

    def __getitems__(self, positions: list[int]) -> Batch:
        pos = np.asarray(positions, dtype=np.int64)
        return Batch(_rows(self.x, pos), self.y[torch.from_numpy(pos)], None if self.maps is None
                     else _rows(self.maps, pos))

    def __getitem__(self, i: int) -> Batch:
        return self.__getitems__([i])


def _rows(array: Any, pos: np.ndarray) -> torch.Tensor:
    """``array[pos]`` as a tensor: an :class:`~igkd.fileio.NpyRows` reads them, a tensor gathers them."""
    if isinstance(array, torch.Tensor):
        return array[torch.from_numpy(pos)]
    return torch.as_tensor(array[pos])


def _as_batch(batch: Batch) -> Batch:
    return batch


class StreamedSource(BatchSource):
    """Batches read ahead of the loop from wherever the data lives, a few at a time.

    ``x`` and ``maps`` are anything indexable by an array of positions (an :class:`~igkd.fileio.NpyRows`,
    a host tensor, a user's array-like); labels are small and stay in memory. ``workers`` = 0 reads in
    one background thread (a cache read releases the GIL); more reads in that many DataLoader worker
    processes (for data that costs CPU to produce). ``prefetch`` batches wait ready, in pinned memory
    on CUDA, and are copied to the device without blocking the host.
    """

    def __init__(self, x: Any, y: torch.Tensor, maps: Any, device: torch.device, workers: int = 0,
                 prefetch: int = 2):
        self.rows = _Rows(x, y, maps)
        self.device, self.workers, self.prefetch = device, workers, max(1, prefetch)
        self.pin = device.type == "cuda"

    def batches(self, order: torch.Tensor, spans: Sequence[Span]) -> Iterator[Batch | None]:
        order = order.cpu()
        wanted = [order[a:b].tolist() for a, b in (s for s in spans if s is not None)]
        read = iter(self._loader(wanted) if self.workers else self._thread(wanted))
        try:
            for span in spans:
                yield None if span is None else self._to_device(next(read))
        finally:
            close = getattr(read, "close", None)
            if close is not None:
                close()

    def _loader(self, wanted: list[list[int]]):
        return torch.utils.data.DataLoader(self.rows, batch_sampler=wanted, num_workers=self.workers,
                                           collate_fn=_as_batch, pin_memory=self.pin,
                                           prefetch_factor=self.prefetch)

    def _thread(self, wanted: list[list[int]]) -> Iterator[Batch]:
        """Reads in a daemon thread, ``prefetch`` batches ahead; an error there is raised here."""
        ready: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def work() -> None:
            try:
                for positions in wanted:
                    if stop.is_set():
                        return
                    batch = self.rows.__getitems__(positions)
                    ready.put(_pinned(batch) if self.pin else batch)
            except BaseException as e:  # noqa: BLE001 - handed to the loop, which raises it
                ready.put(e)

        thread = threading.Thread(target=work, name="igkd-batches", daemon=True)
        thread.start()
        try:
            for _ in wanted:
                item = ready.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():  # let a blocked put finish
                try:
                    ready.get_nowait()
                except queue.Empty:
                    thread.join(timeout=0.05)

    def _to_device(self, batch: Batch) -> Batch:
        def move(t: torch.Tensor | None) -> torch.Tensor | None:
            return None if t is None else t.to(self.device, non_blocking=self.pin)

        return Batch(move(batch.x), move(batch.y), move(batch.maps))


def _pinned(batch: Batch) -> Batch:
    return Batch(batch.x.pin_memory(), batch.y.pin_memory(), None if batch.maps is None else batch.maps.pin_memory())


class DatasetRows:
    """The images of a user's map-style ``Dataset`` (``dataset[i]`` gives an image, or an (image, label, ...)
    tuple), read by position like :class:`~igkd.fileio.NpyRows`: an uint8 (N, C, H, W) array that is never
    held whole. An image may be a uint8 tensor or array (C, H, W) or (H, W), or a PIL image; ``image_of``
    picks it out of an item (default: the item, or its first element). With ``StreamedSource(workers=N)``
    the reads run in N processes, for datasets that decode or transform as they are read. The same reads
    a Dataset of maps, (H, W) each, with ``dtype`` their floating dtype."""

    def __init__(self, dataset: Any, image_of: Any = None, rows: np.ndarray | None = None,
                 dtype: torch.dtype = torch.uint8):
        self.dataset, self.image_of, self.dtype = dataset, image_of, dtype
        self.rows = rows
        first = self._image(0 if rows is None else int(rows[0])) if len(self) else None
        self._chw = tuple(first.shape) if first is not None else (0, 0, 0)

    def _image(self, i: int) -> torch.Tensor:
        item = self.dataset[i]
        image = self.image_of(item) if self.image_of else item[0] if isinstance(item, (tuple, list)) else item
        if not isinstance(image, (torch.Tensor, np.ndarray)):  # PIL: HWC or HW
            image = np.asarray(image)
            image = image.transpose(2, 0, 1) if image.ndim == 3 else image
        t = torch.as_tensor(image)
        if t.dtype != self.dtype:
            raise TypeError(f"dataset item {i}: expected {self.dtype}, got {t.dtype} (convert them as the "
                            "dataset reads them)")
        return t[None] if t.dim() == 2 and self.dtype == torch.uint8 else t

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self), *self._chw))

    def dim(self) -> int:
        return 1 + len(self._chw)

    def __len__(self) -> int:
        return len(self.dataset) if self.rows is None else len(self.rows)

    def subset(self, positions: Any) -> DatasetRows:
        positions = np.asarray(positions, dtype=np.int64).reshape(-1)
        return DatasetRows(self.dataset, self.image_of, positions if self.rows is None else self.rows[positions],
                           self.dtype)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, slice):
            key = np.arange(len(self))[key]
        elif isinstance(key, torch.Tensor):
            key = key.cpu().numpy()
        positions = np.asarray(key, dtype=np.int64).reshape(-1)
        rows = positions if self.rows is None else self.rows[positions]
        if not len(rows):
            return torch.empty((0, *self._chw), dtype=self.dtype)
        return torch.stack([self._image(int(i)) for i in rows])


def read_ahead(x: Any, y: torch.Tensor, spans: Sequence[tuple[int, int]], device: torch.device,
               workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``x[a:b]`` and ``y[a:b]`` on ``device`` for each span ``(a, b)``, in order: slices of a tensor already
    there; else read ahead of the caller (a :class:`StreamedSource`: a background thread, or ``workers``
    DataLoader processes for images that are not a tensor, such as a user's dataset that decodes as it is
    read). The same bytes either way."""
    if isinstance(x, torch.Tensor) and x.device == device:
        for a, b in spans:
            yield x[a:b], y[a:b].to(device)
        return
    source = StreamedSource(x, y, None, device, workers=0 if isinstance(x, torch.Tensor) else workers)
    for batch in source.batches(torch.arange(len(y)), spans):
        yield batch.x, batch.y


def spans_of(lo: int, hi: int, size: int) -> list[tuple[int, int]]:
    """Positions ``lo..hi-1`` as consecutive spans of at most ``size``."""
    return [(i, min(i + size, hi)) for i in range(lo, hi, size)]


def eval_batches(x: Any, y: torch.Tensor, lo: int, hi: int, batch_size: int, device: torch.device,
                 workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Positions ``lo..hi-1`` in batches on ``device``: slices of a tensor, or read ahead (:func:`read_ahead`)."""
    return read_ahead(x, y, spans_of(lo, hi, batch_size), device, workers)
