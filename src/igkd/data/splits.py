"""Stratified splits and subsets: class balance kept, every sample keeps its ``index``."""

from __future__ import annotations

import torch

from igkd.data.image_dataset import ImageDataset


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
