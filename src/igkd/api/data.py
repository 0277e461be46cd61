"""The user's map-style ``Dataset`` of ``(image, label)`` as igkd's in-memory data.

Images are pixels: ``uint8`` tensors, float tensors in [0, 1] that hold 8-bit values (what
``v2.ToImage()`` + ``v2.ToDtype(torch.float32, scale=True)`` give), or PIL images; ``(C, H, W)``.
What a network sees is ``(pixels - mean) / std`` with the ``normalize`` a function is given, so one
input convention holds for the store, the overlay and every network (METHOD.md defects 3 and 7).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import ConcatDataset, Dataset

from ..convention import InputConvention
from ..data.image_dataset import ImageDataset
from ..distill.trainer import TrainingData
from ..errors import ConfigError, DataError

Normalize = tuple[Sequence[float], Sequence[float]]


def pixels_uint8(image, where: str) -> torch.Tensor:
    """One image as a ``uint8 (C, H, W)`` tensor; a float image must hold 8-bit values in [0, 1]."""
    if not isinstance(image, torch.Tensor):
        from torchvision.transforms.v2 import functional as TF

        image = TF.pil_to_tensor(image) if hasattr(image, "getbands") else torch.as_tensor(image)
    image = image.as_subclass(torch.Tensor)
    if image.dim() == 2:
        image = image[None]
    if image.dim() != 3:
        raise DataError(f"{where}: an image must be (C, H, W), got shape {tuple(image.shape)}")
    if image.dtype == torch.uint8:
        return image
    if not image.is_floating_point():
        raise DataError(f"{where}: images must be uint8 or float in [0, 1], got {image.dtype}")
    scaled = image.double() * 255.0
    q = scaled.round()
    if bool((q < 0).any() or (q > 255).any() or ((scaled - q).abs() > 1e-3).any()):
        raise DataError(f"{where}: float images must hold 8-bit pixel values in [0, 1] (v2.ToDtype(torch.float32, "
                        "scale=True) of uint8 images); give the images before Normalize or resizing")
    return q.to(torch.uint8)


def _not_an_item(name: str, i: int, item) -> DataError:
    """The one-line error for item ``i`` that is not ``(image, label)``."""
    kind = type(item).__name__ + (f" of {len(item)}" if isinstance(item, (tuple, list)) else "")
    if isinstance(item, (tuple, list)) and len(item) == 2:
        kind += f" whose label is {type(item[1]).__name__}"
    return DataError(f"{name}[{i}] must be (image, label) with an integer label, got {kind}")


def image_dataset_from(dataset: Dataset, name: str = "dataset") -> ImageDataset:
    """Every ``(image, label)`` of ``dataset``, in order, as one in-memory uint8 :class:`ImageDataset`
    (position ``i`` is ``dataset[i]``). Classes: ``dataset.classes`` when it has them."""
    if isinstance(dataset, ImageDataset):
        return dataset
    try:
        n = len(dataset)
    except TypeError:
        raise DataError(f"{name}: a map-style Dataset (with __len__ and __getitem__) is needed") from None
    xs, ys = [], []
    for i in range(n):
        item = dataset[i]
        label = _label_of(item)
        if label is None:
            raise _not_an_item(name, i, item)
        xs.append(pixels_uint8(item[0], f"{name}[{i}]"))
        ys.append(label)
    if not xs:
        raise DataError(f"{name} is empty")
    shapes = {tuple(x.shape) for x in xs}
    if len(shapes) > 1:
        raise DataError(f"{name}: images of several shapes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                        "resize them to one (v2.Resize) first")
    y = torch.tensor(ys, dtype=torch.int64)
    if int(y.min()) < 0:
        raise DataError(f"{name}: labels must be 0..K-1, got {int(y.min())}")
    classes = list(getattr(dataset, "classes", None) or [str(c) for c in range(int(y.max()) + 1)])
    return ImageDataset(name, torch.stack(xs), y, classes)


class _Pixels:
    """An item's image as ``uint8 (C, H, W)``, read as the in-memory path reads it (a class, not a lambda,
    so that DataLoader workers can take it)."""

    def __init__(self, name: str):
        self.name = name

    def __call__(self, item) -> torch.Tensor:
        return pixels_uint8(item[0], self.name)


def _label_of(item) -> int | None:
    """An item's label, or None when the item is not ``(image, label)`` with an integer label."""
    try:
        if isinstance(item, (tuple, list)) and len(item) == 2:
            return int(item[1])
    except (TypeError, ValueError):
        pass
    return None


def _labels_of(items: list) -> list[int | None]:  # a DataLoader's collate_fn: only the labels travel back
    return [_label_of(item) for item in items]


def _labels(dataset: Dataset, name: str, workers: int = 0) -> torch.Tensor:
    """Every label of ``dataset``: its ``targets`` (torchvision's datasets keep them) when it has them, else
    one pass over its items (each image is read once, none kept), in ``workers`` DataLoader processes when
    > 0 (a dataset that decodes as it is read)."""
    targets = getattr(dataset, "targets", None)
    if targets is not None and len(targets) == len(dataset):
        return torch.as_tensor(targets, dtype=torch.int64)
    if workers > 0:
        loader = torch.utils.data.DataLoader(dataset, batch_size=256, num_workers=workers, collate_fn=_labels_of)
        labels = [label for batch in loader for label in batch]
    else:
        labels = [_label_of(dataset[i]) for i in range(len(dataset))]
    if None in labels:
        i = labels.index(None)
        raise _not_an_item(name, i, dataset[i])
    return torch.tensor(labels, dtype=torch.int64)


def streamed_dataset_from(dataset: Dataset, name: str = "dataset", workers: int = 0) -> ImageDataset:
    """The ``(image, label)`` items of ``dataset`` as an :class:`ImageDataset` whose images are read by
    position a batch at a time (:class:`~igkd.data.sources.DatasetRows`), never held whole: the same
    pixels, positions and labels as :func:`image_dataset_from` gives in memory. ``workers``: DataLoader
    processes for the labels' pass, when the dataset has no ``targets``."""
    if not hasattr(dataset, "__len__") or not len(dataset):
        raise DataError(f"{name}: a non-empty map-style Dataset (with __len__ and __getitem__) is needed")
    y = _labels(dataset, name, workers)
    if int(y.min()) < 0:
        raise DataError(f"{name}: labels must be 0..K-1, got {int(y.min())}")
    classes = list(getattr(dataset, "classes", None) or [str(c) for c in range(int(y.max()) + 1)])
    return ImageDataset(name, _streamed_rows(dataset, name), y, classes)


def dataset_from(dataset: Dataset, name: str = "dataset", streaming: bool = False, workers: int = 0) -> ImageDataset:
    """The user's dataset as an :class:`ImageDataset`: held in memory (:func:`image_dataset_from`), or with
    ``streaming`` read a batch at a time (:func:`streamed_dataset_from`, its labels' pass in ``workers``
    processes); the same images either way. ``workers`` is the public functions' ``loader_workers``."""
    if workers < 0:
        raise ConfigError(f"loader_workers must be >= 0, got {workers}")
    return streamed_dataset_from(dataset, name, workers) if streaming else image_dataset_from(dataset, name)


def _streamed_rows(dataset: Dataset, name: str):
    from ..data.sources import DatasetRows

    return DatasetRows(dataset, image_of=_Pixels(name))


def convention_of(normalize: Normalize | None, channels: int) -> InputConvention:
    """``(mean, std)`` per channel as igkd's input convention; None: pixels in [0, 1] as they are."""
    if normalize is None:
        return InputConvention((0.0,) * channels, (1.0,) * channels)
    mean, std = (tuple(float(v) for v in part) for part in normalize)
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise DataError(f"normalize must be (mean, std) with {channels} values each and std > 0, got {normalize}")
    return InputConvention(mean, std)


def training_data_from_datasets(train: Dataset, val: Dataset | None = None, test: Dataset | None = None,
                                normalize: Normalize | None = None, streaming: bool = False,
                                workers: int = 0) -> TrainingData:
    """The user's datasets as the training loop's data: the training images first, then the validation
    images (their positions are ``val_pos``), the test set apart; held in memory as uint8, or with
    ``streaming`` read a batch at a time from the datasets themselves (the training loop then streams them,
    with the same epoch plan: the same run).

    This is the one place where :func:`igkd.fit` turns map-style datasets into training data.
    ``normalize``: the ``(mean, std)`` the networks take (the teacher's, as it was trained); None feeds
    pixels in [0, 1] as they are. ``workers``: DataLoader processes for a streamed dataset's labels' pass.
    """
    parts = [dataset_from(d, n, streaming, workers) for d, n in ((train, "train"), (val, "val")) if d is not None]
    tr = parts[0]
    shape = tr.image_shape
    for p in parts[1:]:
        if p.image_shape != shape:
            raise DataError(f"{p.name} images are {p.image_shape}, train images {shape}: use one size")
    num_classes = max(len(p.classes) for p in parts)
    classes = max((p.classes for p in parts), key=len)
    # training images first, then the validation images; labels as each part read them (once)
    x = (_streamed_rows(ConcatDataset([train, val]) if val is not None else train, "train") if streaming
         else torch.cat([p.x for p in parts]))
    whole = ImageDataset("train", x, torch.cat([p.y for p in parts]), classes)
    if test is not None:
        te = dataset_from(test, "test", streaming, workers)
    else:
        te = ImageDataset("test", torch.zeros((0, *shape), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64),
                          classes)
    if te.image_shape != shape:
        raise DataError(f"test images are {te.image_shape}, train images {shape}: use one size")
    if len(te) and int(te.y.max()) >= num_classes:
        raise DataError(f"test labels reach {int(te.y.max())}, the training data has {num_classes} classes")
    n_train = len(tr)
    convention = convention_of(normalize, shape[0])
    return TrainingData(whole, te, torch.arange(n_train), torch.arange(n_train, len(whole)), convention)
