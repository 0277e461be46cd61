"""ImageNet images of the classes that map onto CIFAR-10, for evaluating CIFAR-10 students.

:func:`load_imagenet_cifar10` reads the ImageNet images whose WordNet id (wnid) a mapping file
assigns to a CIFAR-10 class and labels them by that class's CIFAR-10 index, so a CIFAR-10 model's
outputs line up with the labels. Two layouts are recognised, whichever ``root`` holds:

1. Downsampled ImageNet (Chrabaszcz, Loshchilov and Hutter 2017, "Imagenet32x32"/"Imagenet64x64"):
   the validation file ``val_data`` (a pickle of ``{'data': uint8 (N, 3*S*S), 'labels': list}``,
   rows channel-major like CIFAR, labels 1..1000) or ``val_data.npz`` with the same keys; ``root``
   may also be one such file itself, e.g. a training file ``train_data_batch_3``. The 1-based labels
   follow the ILSVRC devkit's ``map_clsloc.txt`` order, shipped here as ``imagenet_wnids.txt``; a
   ``map_clsloc.txt`` next to the data file is used instead when present.
2. An ImageNet folder with one sub-folder per wnid (``root/n02690373/*.JPEG`` or
   ``root/val/n02690373/*.JPEG``), images of any size; only the mapped wnids' images are decoded.

``index`` is the image's position in its source: the row in the downsampled file, or the position in
the sorted list of all image files of the folder layout (wnid folders in name order, files in name
order within each, unmapped folders counted too), so it does not depend on the mapping.
"""

from __future__ import annotations

import functools
import json
import os
import pickle
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.data.loaders import (
    _IMAGE_SUFFIXES,
    _NumpyOnlyUnpickler,
    _one_line,
    _stat_digest,
    _stat_key,
)
from igkd.errors import ConfigError, DatasetNotFoundError
from igkd.utils import default_cache_dir

DATASET_NAME = "imagenet_cifar10"
NUM_IMAGENET_CLASSES = 1000

_PACKAGE_DIR = Path(__file__).resolve().parent
DEFAULT_MAPPING = _PACKAGE_DIR / "imagenet_to_cifar10.json"
DEFAULT_WNID_ORDER = _PACKAGE_DIR / "imagenet_wnids.txt"

_WNID_RE = re.compile(r"n\d{8}")
_DOWNSAMPLED_VAL_NAMES = ("val_data", "val_data.npz")
_MAP_CLSLOC = "map_clsloc.txt"

__all__ = ["DEFAULT_MAPPING", "DEFAULT_WNID_ORDER", "keep_correct", "load_imagenet_cifar10"]


# --------------------------------------------------------------------------------------------------
# Entry points


def load_imagenet_cifar10(
    root: str | Path,
    mapping: str | Path | None = None,
    image_size: int = 32,
    streaming: bool = False,
    cache_root: str | Path | None = None,
) -> ImageDataset:
    """The ImageNet images of the classes mapped onto CIFAR-10, labelled by CIFAR-10 class index.

    ``root`` is a downsampled-ImageNet file (``val_data``, ``val_data.npz``,
    ``train_data_batch_N``), a folder holding ``val_data`` / ``val_data.npz`` (directly or under
    ``val/``), or an ImageNet folder with one sub-folder per wnid (directly or under ``val/``); a
    downsampled file is looked for first. ``mapping`` is a JSON file ``{"cifar10_class_order":
    [...], "imagenet_wnids_by_cifar10_class": {cifar_class: {wnid: name}}}``, by default the copy
    shipped with igkd; ``classes`` of the result is its ``cifar10_class_order``.

    Every image comes out as uint8 RGB ``image_size x image_size``. Images of another size are
    resized as a whole with PIL's bilinear filter after conversion to RGB (no crop: the aspect
    ratio is not kept, which is how the downsampled-ImageNet files were made); JPEGs are decoded
    at a reduced scale first when they are much larger than ``image_size``. With ``streaming`` the images
    of a wnid folder are decoded once, chunk by chunk, into a cache (:mod:`igkd.data.cache`, under
    ``cache_root``, by default ``$IGKD_CACHE/images``) and read from it a batch at a time.
    """
    if int(image_size) < 1:
        raise ConfigError(f"image_size must be a positive number of pixels, got {image_size}")
    image_size = int(image_size)
    root = Path(root).expanduser()
    mapping_path = DEFAULT_MAPPING if mapping is None else Path(mapping).expanduser()
    classes, wnid_to_label = _read_mapping(mapping_path)
    if not root.exists():
        raise DatasetNotFoundError(
            f"ImageNet root {root} does not exist; set it to a downsampled-ImageNet val_data / "
            "val_data.npz file or folder, or to an ImageNet folder with one sub-folder per wnid"
        )
    data_file = _find_downsampled_file(root)
    if data_file is not None:
        order = _wnid_order(data_file.parent)
        x, y, index = _read_downsampled(str(data_file.resolve()), _stat_key([data_file]),
                                        order, tuple(sorted(wnid_to_label.items())), image_size)
        if len(y) == 0:
            raise DatasetNotFoundError(
                f"downsampled-ImageNet file {data_file} holds no image of the {len(wnid_to_label)} "
                f"wnids that {mapping_path} maps onto CIFAR-10; point root at the full validation "
                "file, or check the mapping"
            )
    else:
        wnid_dir = _find_wnid_dir(root)
        if wnid_dir is None:
            raise DatasetNotFoundError(
                f"no ImageNet found at {root}: expected either a downsampled-ImageNet file "
                f"({root / 'val_data'} or {root / 'val_data.npz'}) or an ImageNet folder with one "
                f"sub-folder per wnid ({root / 'n02690373'}/... or "
                f"{root / 'val' / 'n02690373'}/...); "
                "point root at one of them (sort flat validation images into wnid folders first)"
            )
        files, labels, positions = _list_wnid_dir(wnid_dir, wnid_to_label)
        if not files:
            raise DatasetNotFoundError(
                f"ImageNet folder {wnid_dir} holds no image in the sub-folders of the "
                f"{len(wnid_to_label)} wnids that {mapping_path} maps onto CIFAR-10 (e.g. "
                f"{wnid_dir / next(iter(sorted(wnid_to_label)))}); point root at the ImageNet "
                "validation folder, or check the mapping"
            )
        y = torch.tensor(labels, dtype=torch.int64)
        index = torch.tensor(positions, dtype=torch.int64)
        if streaming:
            from .cache import CacheSource, cache_folder, open_or_build

            names = tuple(str(f) for f in files)
            source = CacheSource(DATASET_NAME, {"files": _stat_digest(files), "size": image_size,
                                                "mapping": sorted(wnid_to_label.items())}, y.numpy(), list(classes),
                                 lambda: ((len(names), 3, image_size, image_size),
                                          lambda s, e: _read_resized.__wrapped__(names[s:e], None, image_size).numpy()))
            cached = open_or_build(cache_folder(Path(cache_root) if cache_root else default_cache_dir(), source, "val"),
                                   source)
            return ImageDataset(DATASET_NAME, cached.x, y, list(classes), index)
        x = _read_resized(tuple(str(f) for f in files), _stat_key(files), image_size)
    return ImageDataset(DATASET_NAME, x, y, list(classes), index)


@torch.no_grad()
def keep_correct(
    ds: ImageDataset,
    model: torch.nn.Module,
    convention: InputConvention,
    batch_size: int = 500,
    device: str | torch.device = "cpu",
) -> ImageDataset:
    """The subset of ``ds`` that ``model`` (already on ``device``) classifies correctly.

    The model sees ``convention.from_uint8(x)`` in eval mode (its mode is restored afterwards);
    the subset keeps each image's ``index``.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        keep = []
        for start in range(0, len(ds), batch_size):
            xb = ds.x[start : start + batch_size].to(device)
            yb = ds.y[start : start + batch_size].to(device)
            logits = model(convention.from_uint8(xb))
            keep.append((logits.argmax(dim=1) == yb).cpu())
    finally:
        model.train(was_training)
    mask = torch.cat(keep) if keep else torch.zeros(0, dtype=torch.bool)
    return ds.subset(torch.nonzero(mask, as_tuple=False).flatten())


# --------------------------------------------------------------------------------------------------
# Mapping and wnid order


def _read_mapping(path: Path) -> tuple[tuple[str, ...], dict[str, int]]:
    """(CIFAR-10 class names in order, wnid -> CIFAR-10 class index) from a mapping JSON."""
    if not path.is_file():
        raise DatasetNotFoundError(
            f"ImageNet-to-CIFAR-10 mapping {path} not found; pass mapping= a JSON with "
            "cifar10_class_order and imagenet_wnids_by_cifar10_class, or omit it for the "
            "shipped one"
        )
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(
            f"mapping {path} is not readable JSON ({_one_line(exc)}); fix or replace it"
        ) from None
    order = obj.get("cifar10_class_order") if isinstance(obj, dict) else None
    by_class = obj.get("imagenet_wnids_by_cifar10_class") if isinstance(obj, dict) else None
    if (not isinstance(order, list) or not order or not all(isinstance(c, str) for c in order)
            or len(set(order)) != len(order) or not isinstance(by_class, dict)):
        raise ConfigError(
            f"mapping {path} needs 'cifar10_class_order' (a list of distinct class names) and "
            "'imagenet_wnids_by_cifar10_class' ({class: {wnid: name}}); fix the file"
        )
    label_of = {c: i for i, c in enumerate(order)}
    wnid_to_label: dict[str, int] = {}
    for cls, wnids in by_class.items():
        if cls not in label_of:
            raise ConfigError(
                f"mapping {path} maps wnids onto {cls!r}, which is not in cifar10_class_order"
            )
        if not isinstance(wnids, (dict, list)):
            raise ConfigError(
                f"mapping {path}: the wnids of {cls!r} must be a {{wnid: name}} object or a list"
            )
        for wnid in wnids:
            if not isinstance(wnid, str) or not _WNID_RE.fullmatch(wnid):
                raise ConfigError(
                    f"mapping {path}: {wnid!r} (class {cls!r}) is not a wnid like n02690373"
                )
            if wnid in wnid_to_label and wnid_to_label[wnid] != label_of[cls]:
                raise ConfigError(f"mapping {path} maps {wnid} onto two CIFAR-10 classes; keep one")
            wnid_to_label[wnid] = label_of[cls]
    if not wnid_to_label:
        raise ConfigError(f"mapping {path} maps no wnid onto any CIFAR-10 class")
    return tuple(order), wnid_to_label


def _wnid_order(folder: Path) -> tuple[str, ...]:
    """The 1000 wnids by label - 1: ``folder/map_clsloc.txt`` if present, else the shipped list."""
    clsloc = folder / _MAP_CLSLOC
    if clsloc.is_file():
        return _read_map_clsloc(clsloc)
    return _read_wnid_list(DEFAULT_WNID_ORDER)


@functools.lru_cache(maxsize=2)
def _read_wnid_list(path: Path) -> tuple[str, ...]:
    try:
        wnids = tuple(path.read_text(encoding="ascii").split())
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetNotFoundError(
            f"wnid list {path} is unreadable ({_one_line(exc)}); reinstall igkd"
        ) from None
    _check_order(wnids, path, "reinstall igkd")
    return wnids


def _read_map_clsloc(path: Path) -> tuple[str, ...]:
    fix = f"replace it with the ILSVRC devkit's {_MAP_CLSLOC} or delete it to use igkd's list"
    try:
        text = path.read_text(encoding="utf-8")
        lines = [line.split() for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetNotFoundError(f"{path} is unreadable ({_one_line(exc)}); {fix}") from None
    order: list[str | None] = [None] * NUM_IMAGENET_CLASSES
    for n, tok in enumerate(lines, 1):
        if len(tok) < 2 or not tok[1].isdigit() or not 1 <= int(tok[1]) <= NUM_IMAGENET_CLASSES:
            raise DatasetNotFoundError(
                f"{path} line {n} is not 'wnid label name' with a label in 1..1000; {fix}"
            )
        order[int(tok[1]) - 1] = tok[0]
    if len(lines) != NUM_IMAGENET_CLASSES or any(w is None for w in order):
        raise DatasetNotFoundError(f"{path} does not give each label 1..1000 exactly once; {fix}")
    wnids = tuple(order)  # type: ignore[arg-type]
    _check_order(wnids, path, fix)
    return wnids


def _check_order(wnids: Sequence[str], path: Path, fix: str) -> None:
    if len(wnids) != NUM_IMAGENET_CLASSES or len(set(wnids)) != NUM_IMAGENET_CLASSES:
        raise DatasetNotFoundError(
            f"{path} lists {len(set(wnids))} distinct wnids, not 1000; {fix}"
        )
    bad = next((w for w in wnids if not _WNID_RE.fullmatch(w)), None)
    if bad is not None:
        raise DatasetNotFoundError(
            f"{path} holds {bad!r}, which is not a wnid like n02690373; {fix}"
        )


# --------------------------------------------------------------------------------------------------
# Layout 1: downsampled ImageNet


def _find_downsampled_file(root: Path) -> Path | None:
    if root.is_file():
        return root
    for folder in (root, root / "val"):
        for name in _DOWNSAMPLED_VAL_NAMES:
            if (folder / name).is_file():
                return folder / name
    return None


def _downsampled_arrays(path: Path) -> tuple[object, object]:
    """('data', 'labels') of a downsampled-ImageNet pickle or .npz, unchecked."""
    fix = "re-download it from image-net.org (downsampled ImageNet)"
    if path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as archive:
                missing = [k for k in ("data", "labels") if k not in archive.files]
                if missing:
                    raise DatasetNotFoundError(
                        f"downsampled-ImageNet file {path} lacks {', '.join(map(repr, missing))} "
                        f"(has {', '.join(archive.files) or 'nothing'}); {fix}"
                    )
                return archive["data"], archive["labels"]
        except (OSError, ValueError, EOFError) as exc:
            raise DatasetNotFoundError(
                f"downsampled-ImageNet file {path} is unreadable ({_one_line(exc)}); {fix}"
            ) from None
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError,
            ImportError, IndexError, KeyError) as exc:
        raise DatasetNotFoundError(
            f"downsampled-ImageNet file {path} is not a readable pickle ({_one_line(exc)}); {fix}"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetNotFoundError(
            f"downsampled-ImageNet file {path} holds a {type(obj).__name__}, not a dict; {fix}"
        )
    found = []
    for key in ("data", "labels"):
        value = next((obj[k] for k in (key, key.encode()) if k in obj), None)
        if value is None:
            names = ", ".join(repr(k.decode() if isinstance(k, bytes) else k) for k in obj)
            raise DatasetNotFoundError(
                f"downsampled-ImageNet file {path} has no {key!r} entry "
                f"(has {names or 'nothing'}); {fix}"
            )
        found.append(value)
    return found[0], found[1]


@functools.lru_cache(maxsize=2)
def _read_downsampled(
    path: str,
    stat_key: tuple,
    order: tuple[str, ...],
    mapping_items: tuple[tuple[str, int], ...],
    image_size: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    del stat_key  # only part of the cache key
    file = Path(path)
    fix = "re-download it from image-net.org (downsampled ImageNet)"
    data, labels = _downsampled_arrays(file)
    data = np.asarray(data)
    try:
        labels = np.asarray(labels)
    except (ValueError, TypeError):
        labels = np.asarray([], dtype=object)
    side = int(round((data.shape[1] / 3) ** 0.5)) if data.ndim == 2 else 0
    if data.dtype != np.uint8 or data.ndim != 2 or side < 1 or 3 * side * side != data.shape[1]:
        raise DatasetNotFoundError(
            f"downsampled-ImageNet file {path} has 'data' {data.dtype} {data.shape}, expected "
            f"uint8 (N, 3*S*S) rows (e.g. 3072 for 32x32); {fix}"
        )
    if labels.ndim != 1 or len(labels) != len(data) or not np.issubdtype(labels.dtype, np.integer):
        raise DatasetNotFoundError(
            f"downsampled-ImageNet file {path} has 'labels' {labels.dtype} {labels.shape} for "
            f"{len(data)} images, expected {len(data)} integers; {fix}"
        )
    labels = labels.astype(np.int64)
    if len(labels) and (labels.min() < 1 or labels.max() > NUM_IMAGENET_CLASSES):
        raise DatasetNotFoundError(
            f"downsampled-ImageNet file {path} has labels in {labels.min()}..{labels.max()}, "
            "expected 1-based labels in 1..1000 (map_clsloc.txt order); add 1 to 0-based labels "
            "or re-download"
        )
    # ImageNet label (1-based) -> CIFAR-10 label, -1 where the wnid maps onto no CIFAR-10 class.
    mapping = dict(mapping_items)
    lut = np.array([-1] + [mapping.get(w, -1) for w in order], dtype=np.int64)
    cifar = lut[labels]
    rows = np.flatnonzero(cifar >= 0)
    # Rows are channel-major: S*S red, S*S green, S*S blue values, each plane row by row.
    x = data[rows].reshape(-1, 3, side, side)
    if side != image_size:
        x = _resize_chw(x, image_size)
    return (torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(cifar[rows]),
            torch.from_numpy(rows.astype(np.int64)))


def _resize_chw(x: np.ndarray, size: int) -> np.ndarray:
    from PIL import Image

    out = np.empty((len(x), 3, size, size), dtype=np.uint8)
    for i, img in enumerate(x):
        im = Image.fromarray(np.ascontiguousarray(img.transpose(1, 2, 0)))
        resized = im.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = np.asarray(resized, dtype=np.uint8).transpose(2, 0, 1)
    return out


# --------------------------------------------------------------------------------------------------
# Layout 2: one folder per wnid


def _wnid_subdirs(folder: Path) -> list[str]:
    try:
        with os.scandir(folder) as it:
            return sorted(e.name for e in it if _WNID_RE.fullmatch(e.name) and e.is_dir())
    except OSError:
        return []


def _find_wnid_dir(root: Path) -> Path | None:
    for folder in (root, root / "val"):
        if folder.is_dir() and _wnid_subdirs(folder):
            return folder
    return None


def _image_names(folder: Path) -> list[str]:
    with os.scandir(folder) as it:
        return sorted(
            e.name for e in it
            if not e.name.startswith(".")
            and os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES
            and e.is_file()
        )


def _list_wnid_dir(
    folder: Path, wnid_to_label: dict[str, int]
) -> tuple[list[Path], list[int], list[int]]:
    """The mapped images' paths, CIFAR-10 labels and positions among all images of ``folder``."""
    files: list[Path] = []
    labels: list[int] = []
    positions: list[int] = []
    offset = 0
    for wnid in _wnid_subdirs(folder):
        try:
            names = _image_names(folder / wnid)
        except OSError as exc:
            raise DatasetNotFoundError(
                f"ImageNet folder {folder / wnid} is unreadable ({_one_line(exc)}); "
                "fix its permissions"
            ) from None
        if wnid in wnid_to_label:
            files += [folder / wnid / n for n in names]
            labels += [wnid_to_label[wnid]] * len(names)
            positions += range(offset, offset + len(names))
        offset += len(names)
    return files, labels, positions


@functools.lru_cache(maxsize=2)
def _read_resized(files: tuple[str, ...], stat_key: tuple, image_size: int) -> torch.Tensor:
    del stat_key  # only part of the cache key
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), 3, image_size, image_size), dtype=np.uint8)
    for i, f in enumerate(files):
        try:
            with Image.open(f) as im:
                # JPEG: decode at a reduced scale that is still at least image_size
                im.draft("RGB", (image_size, image_size))
                rgb = im.convert("RGB")
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            out[i] = np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as exc:
            raise DatasetNotFoundError(
                f"image {f} is unreadable ({_one_line(exc)}); replace it with a valid copy "
                "or delete it"
            ) from None
    return torch.from_numpy(out)
