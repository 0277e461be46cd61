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
