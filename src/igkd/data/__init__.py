"""Datasets, splits and batch augmentation: where images enter the pipeline and how they are varied."""

from igkd.data.augment import batch_crop_flip, ig_overlay
from igkd.data.dataset import ImageDataset
from igkd.data.datasets import (
    CIFAR10_CLASSES,
    DATASET_CONVENTIONS,
    FASHION_MNIST_CLASSES,
    KNOWN_DATASETS,
    compute_convention,
    load_dataset,
    read_idx,
    stratified_split,
    stratified_subset,
)

__all__ = [
    "CIFAR10_CLASSES",
    "DATASET_CONVENTIONS",
    "FASHION_MNIST_CLASSES",
    "KNOWN_DATASETS",
    "ImageDataset",
    "batch_crop_flip",
    "compute_convention",
    "ig_overlay",
    "load_dataset",
    "read_idx",
    "stratified_split",
    "stratified_subset",
]
