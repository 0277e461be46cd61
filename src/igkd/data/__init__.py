"""Datasets, splits and batch augmentation: where images enter the pipeline and how they are varied."""

from igkd.data.augment import batch_crop_flip, ig_overlay
from igkd.data.catalog import DATASETS, KNOWN_DATASETS, DatasetInfo
from igkd.data.image_dataset import ImageDataset
from igkd.data.loaders import compute_convention, load_dataset, read_idx
from igkd.data.splits import check_classes, stratified_split, stratified_subset

__all__ = [
    "DATASETS",
    "KNOWN_DATASETS",
    "DatasetInfo",
    "ImageDataset",
    "batch_crop_flip",
    "check_classes",
    "compute_convention",
    "ig_overlay",
    "load_dataset",
    "read_idx",
    "stratified_split",
    "stratified_subset",
]
