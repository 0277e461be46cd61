"""A toy image task small enough to train in seconds and separable enough that accuracy means something."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SIZE, CLASSES = 12, 4


def write_quadrants_npz(path: Path, n_train: int = 320, n_test: int = 160, seed: int = 0) -> Path:
    """Grey-scale noise images with one bright quadrant; the quadrant is the class (no flips: a flip
    would swap classes)."""
    rng = np.random.default_rng(seed)

    def make(n: int):
        y = np.arange(n) % CLASSES
        x = rng.integers(0, 80, (n, SIZE, SIZE))
        h = SIZE // 2
        for i, c in enumerate(y):
            r, col = divmod(int(c), 2)
            x[i, r * h:(r + 1) * h, col * h:(col + 1) * h] += 140
        return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)

    x_train, y_train = make(n_train)
    x_test, y_test = make(n_test)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def toy_settings(data: Path, tmp: Path) -> list[str]:
    """Config overrides for the toy task: a width-0.25 teacher, CPU, one thread, no flips, small IG."""
    return [
        "data.name=npz", f"data.root={data}", "teacher.width_mult=0.25", "teacher.strides=[1,1,2,2,1]",
        "augment.flip=false", "augment.crop_padding=1", "train.device=cpu", "teacher_train.device=cpu",
        "train.threads=1", "teacher_train.threads=1", "train.batch_size=32", "teacher_train.batch_size=32",
        "teacher_train.epochs=6", "teacher_train.lr=0.005", "train.epochs=1", "train.eval_batch_size=200",
        "teacher_train.eval_batch_size=200", "ig.n_steps=4", "ig.dtype=float32", "ig.chunk_size=160",
        f"ig.cache_dir={tmp / 'ig'}", "student.remove_blocks=11",
    ]


def quadrant_images(n: int, size: int, channels: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(n, size, size, channels) uint8 noise images with one bright quadrant (the class, of 4), NHWC."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % CLASSES
    x = rng.integers(0, 80, (n, size, size, channels))
    h = max(size // 2, 1)
    for i, c in enumerate(y):
        r, col = divmod(int(c), 2)
        x[i, r * h:(r + 1) * h, col * h:(col + 1) * h] += 140
    return x.clip(0, 255).astype(np.uint8), y.astype(np.int64)


def write_rgb_npz(path: Path, size: int = 32, n_train: int = 48, n_test: int = 24, channels: int = 3) -> Path:
    """A user's own ``.npz`` (x_train, y_train, x_test, y_test; NHWC uint8) of ``size`` x ``size`` images."""
    x_train, y_train = quadrant_images(n_train, size, channels, seed=0)
    x_test, y_test = quadrant_images(n_test, size, channels, seed=1)
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    return path


def write_image_folder(root: Path, sizes: tuple[int, ...] = (20, 28, 36), per_class: int = 6) -> Path:
    """``root/{train,test}/<class>/*.png``: RGB PNGs of several sizes (a user's photos are rarely one size)."""
    from PIL import Image

    for split, n in (("train", per_class), ("test", max(per_class // 2, 1))):
        for i in range(n * CLASSES):
            size, c = sizes[i % len(sizes)], i % CLASSES
            x, _ = quadrant_images(CLASSES, size, 3, seed=1000 * (split == "test") + i)
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(x[c]).save(folder / f"{i:03d}.png")
    return root
