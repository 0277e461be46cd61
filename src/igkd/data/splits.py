"""Stratified splits and subsets: class balance kept, every sample keeps its ``index``."""

from __future__ import annotations

import torch

from igkd.data.image_dataset import ImageDataset
from igkd.errors import DataError, warn_once

MIN_TRAIN_IMAGES = 2  # fewer training images of a class than this is warned about


def _class_positions(labels: torch.Tensor, counts: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Pick counts[c] random positions of each class c with one shared permutation."""
    perm = torch.randperm(len(labels), generator=generator)
    shuffled = labels[perm]
    picked = [perm[shuffled == c][: int(k)] for c, k in enumerate(counts.tolist()) if k > 0]
    if not picked:
        return torch.empty(0, dtype=torch.int64)
    return torch.sort(torch.cat(picked)).values


def _check_labels(labels: torch.Tensor) -> torch.Tensor:
    labels = torch.as_tensor(labels).cpu()
    if labels.dim() != 1 or labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be a 1-D integer tensor, got {labels.dtype} {tuple(labels.shape)}")
    if len(labels) and int(labels.min()) < 0:
        raise ValueError("labels must be non-negative")
    return labels.to(torch.int64)


def stratified_split(labels: torch.Tensor, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(kept, held_out) positions, each class holding out round(fraction * n_c).

    Keeps class balance in both parts, as the paper's Monte Carlo runs on random 80 % of the training
    set need. Rounding is half-up; a class with n_c > 1 gives at least one and at most n_c - 1
    samples to the held-out part (so every class stays in both), a single-sample class stays kept.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction}")
    labels = _check_labels(labels)
    counts = torch.bincount(labels) if len(labels) else torch.zeros(0, dtype=torch.int64)
    held = torch.floor(counts.double() * fraction + 0.5).long()
    if fraction > 0:
        held = torch.where(counts > 1, held.clamp(1, None), held)
    held = torch.minimum(held, (counts - 1).clamp_min(0))
    generator = torch.Generator().manual_seed(seed)
    held_out = _class_positions(labels, held, generator)
    mask = torch.ones(len(labels), dtype=torch.bool)
    mask[held_out] = False
    return torch.nonzero(mask).squeeze(1), held_out


def stratified_subset(ds: ImageDataset, size: int, seed: int) -> ImageDataset:
    """A class-balanced random subset of exactly ``size`` samples, for small demos and CPU runs.

    Per-class quotas are ``size * n_c / N`` rounded by largest remainder, so they sum to ``size``.
    The samples keep their ``index``.
    """
    if not 0 < size <= len(ds):
        raise ValueError(f"size must be in 1..{len(ds)}, got {size}")
    labels = _check_labels(ds.y)
    counts = torch.bincount(labels)
    exact = counts.double() * size / len(labels)
    quota = torch.floor(exact).long()
    short = size - int(quota.sum())
    if short > 0:
        # Largest remainders first; ties go to the lower class id (stable sort).
        order = torch.sort(exact - quota, descending=True, stable=True).indices
        quota[order[:short]] += 1
    positions = _class_positions(labels, quota, torch.Generator().manual_seed(seed))
    return ds.subset(positions)


def _named(classes: list[str], labels: list[int], counts: torch.Tensor | None = None) -> str:
    def one(c: int) -> str:
        name = classes[c] if c < len(classes) else str(c)
        text = name if name == str(c) else f"{name} (label {c})"
        return text if counts is None else f"{text}: {int(counts[c])}"
    shown = ", ".join(one(c) for c in labels[:10])
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > 10 else "")


def check_classes(train: ImageDataset, test: ImageDataset, where: str, full_train: ImageDataset | None = None) -> None:
    """Refuse test classes without a training image (no model can learn them, and the test accuracy
    would mislead); warn about classes with fewer than :data:`MIN_TRAIN_IMAGES` training images.

    ``full_train`` is the training split before a ``data.train_size`` subset, to say when the subset
    is what dropped a class. Validation is drawn from the training split by :func:`stratified_split`,
    which keeps every class in the training part, so it needs no check of its own.
    """
    if len(train) == 0:
        return  # no training images at all: the convention's check says so
    k = max(train.num_classes, test.num_classes)
    counts = torch.bincount(train.y, minlength=k)
    missing = sorted(int(c) for c in torch.unique(test.y) if counts[int(c)] == 0)
    if missing:
        fix = "add training images of them, or remove them from the test split"
        if full_train is not None and all((full_train.y == c).any() for c in missing):
            fix = "raise data.train_size (its stratified subset leaves them out), or unset it"
        raise DataError(f"{where}: test class(es) {_named(train.classes, missing)} have no training image, so no "
                        f"model can learn them and the test accuracy would mislead: {fix}")
    few = [c for c in range(k) if counts[c] < MIN_TRAIN_IMAGES]
    if few:
        warn_once(f"{where}: class(es) with fewer than {MIN_TRAIN_IMAGES} training images "
                  f"({_named(train.classes, few, counts)}): they are barely learnt and any accuracy on them is "
                  "noise; add training images")
