"""What igkd knows about each dataset it can load by name: classes, image shape, input convention.

The one table of per-dataset facts. ``npz`` and ``image_folder`` are the user's own data: their
classes and shape come from the files, their mean/std is computed on the training split.
"""

from __future__ import annotations

from dataclasses import dataclass

from igkd.convention import InputConvention


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    classes: tuple[str, ...] | None = None  # None: read from the files
    image_shape: tuple[int, int, int] | None = None  # (C, H, W); None: read from the files
    convention: InputConvention | None = None  # None: computed on the training split

    @property
    def num_classes(self) -> int | None:
        return None if self.classes is None else len(self.classes)


CIFAR10 = DatasetInfo(
    "cifar10",
    ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
    (3, 32, 32),
    InputConvention((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
)
FASHION_MNIST = DatasetInfo(
    "fashion_mnist",
    ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"),
    (1, 28, 28),
    InputConvention((0.2860,), (0.3530,)),
)

DATASETS: dict[str, DatasetInfo] = {
    d.name: d for d in (CIFAR10, FASHION_MNIST, DatasetInfo("npz"), DatasetInfo("image_folder"))
}
KNOWN_DATASETS = tuple(DATASETS)


def image_size_hw(image_size: int | list[int] | tuple[int, ...] | None) -> tuple[int, int] | None:
    """``data.image_size`` as (H, W): one side for square images, or [H, W]; None: images as stored."""
    if image_size is None:
        return None
    sides = [image_size] if isinstance(image_size, int) else list(image_size)
    return (int(sides[0]), int(sides[-1]))


def known_image_shape(name: str, image_size: int | list[int] | None = None) -> tuple[int, int, int] | None:
    """(C, H, W) of a named dataset's images as loaded (``data.image_size`` applied), or None when only
    its files can tell (``npz``, ``image_folder`` without an image size)."""
    info = DATASETS.get(name)
    hw = image_size_hw(image_size)
    if info is None or info.image_shape is None:
        return None
    return info.image_shape if hw is None else (info.image_shape[0], *hw)
