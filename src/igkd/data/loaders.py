"""Loading datasets from their files into :class:`ImageDataset`.

Every loader returns uint8 (N, C, H, W) images, int64 labels and ``index = arange(N)`` (the position
in the file), so a map store built for a dataset can always be addressed by that index. Parsing is
done with numpy straight from the files on disk (no PIL, no per-image Python for the big sets) and
cached per process, keyed by the files' paths, sizes and modification times.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import math
import os
import pickle
import stat
import zlib
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from igkd.convention import InputConvention
from igkd.data.catalog import FASHION_MNIST, KNOWN_DATASETS, image_size_hw
from igkd.data.image_dataset import ImageDataset
from igkd.errors import ConfigError, DataError, DatasetNotFoundError
from igkd.fileio import NpyRows, read_json, write_json
from igkd.utils import default_cache_dir

SPLITS = ("train", "test")

_CIFAR_DIRNAME = "cifar-10-batches-py"
_FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm"}


# --------------------------------------------------------------------------------------------------
# Entry point


def load_dataset(
    name: str,
    split: str = "train",
    root: str | Path | None = None,
    download: bool = False,
    image_size: int | Sequence[int] | None = None,
    streaming: bool = False,
    cache_root: str | Path | None = None,
    progress: bool | None = None,
) -> ImageDataset:
    """Load one split of a named dataset; the single door through which data enters the pipeline.

    With ``streaming`` the images are read from disk a batch at a time: from the split's decoded
    cache (:mod:`igkd.data.cache`, under ``cache_root``, by default ``$IGKD_CACHE/images``), built on
    first use chunk by chunk, so an image folder is never decoded whole into memory. The images, labels
    and fingerprint are those of the in-memory load.

    ``root`` is a folder for ``cifar10``, ``fashion_mnist`` and ``image_folder`` and the ``.npz``
    file for ``npz``. With ``root=None`` the standard places are searched (see the loaders).
    ``image_size`` (a side, or [H, W]; ``data.image_size``) resizes every image on load (bilinear,
    antialiased); an image folder of mixed sizes needs it.
    """
    hw = image_size_hw(image_size)
    if name not in KNOWN_DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; known datasets: {', '.join(KNOWN_DATASETS)}")
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r} for dataset {name!r}; use one of: {', '.join(SPLITS)}")
    root_path = None if root is None else Path(root).expanduser()
    if streaming:
        from .cache import cache_folder, open_or_build

        source = (_folder_source(split, root_path, hw) if name == "image_folder"
                  else _memory_source(name, split, root_path, download, hw))
        return open_or_build(cache_folder(Path(cache_root) if cache_root else default_cache_dir(), source, split),
                             source, progress)
    if name == "cifar10":
        x, y, classes = _load_cifar10(split, root_path, download)
    elif name == "fashion_mnist":
        x, y, classes = _load_fashion_mnist(split, root_path, download)
    elif name == "npz":
        x, y, classes = _load_npz(split, root_path)
    else:
        x, y, classes = _load_image_folder(split, root_path, hw)
    if hw is not None:
        x = resize_images(x, hw)
    return ImageDataset(name, x, y, list(classes))


def _memory_source(name: str, split: str, root: Path | None, download: bool, hw: tuple[int, int] | None):
    """The cache source of a dataset whose files are read whole anyway (CIFAR-10, IDX, npz: small archives)."""
    from .cache import CacheSource

    ds = load_dataset(name, split, root, download, hw)
    files = {"cifar10": lambda: [], "fashion_mnist": lambda: list(_find_fashion_files(
        [root] if root is not None else [*_default_dirs("fashion_mnist"), _FASHION_SYSTEM_DIR], split) or []),
        "npz": lambda: [root]}[name]()
    key = {"dataset": name, "split": split, "resize": hw, "files": _stat_digest(files) if files else None,
           "fingerprint": ds.fingerprint() if not files else None}
    return CacheSource(name, key, ds.y.numpy(), ds.classes, lambda: (tuple(ds.x.shape), lambda s, e: ds.x[s:e].numpy()))


def _stat_triples(paths: Sequence[Path]):
    """``(resolved path, modification time in ns, size)`` of each path, in order: what
    ``(str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size)`` gives, in one system call a file (each
    folder is resolved once; a file that is a link is resolved on its own), not one per path component."""
    folders: dict[str, str] = {}
    for p in paths:
        st = os.lstat(p)
        if stat.S_ISLNK(st.st_mode):
            where, st = str(p.resolve()), p.stat()
        else:
            folder, name = os.path.split(os.fspath(p))
            parent = folders.get(folder)
            if parent is None:
                parent = folders[folder] = str(p.parent.resolve())
            where = os.path.join(parent, name)
        yield where, st.st_mtime_ns, st.st_size


def _stat_digest(paths: Sequence[Path]) -> str:
    """A digest of :func:`_stat_key` (paths, modification times, sizes), without holding it for every file."""
    h = hashlib.sha256()
    for where, mtime, size in _stat_triples(paths):
        h.update(f"{where}\0{mtime}\0{size}\n".encode())
    return h.hexdigest()


def resize_images(x: torch.Tensor, size: tuple[int, int], chunk: int = 4096) -> torch.Tensor:
    """uint8 images (N, C, H, W) resized to ``size`` (H, W): bilinear, antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    out = torch.empty((x.shape[0], x.shape[1], *size), dtype=torch.uint8)
    for start in range(0, x.shape[0], chunk):  # a float copy of a whole dataset is large
        part = torch.nn.functional.interpolate(x[start:start + chunk].float(), size=size, mode="bilinear",
                                               align_corners=False, antialias=True)
        out[start:start + chunk] = part.round_().clamp_(0, 255).to(torch.uint8)
    return out


def compute_convention(ds: ImageDataset, source: str | Path | None = None) -> InputConvention:
    """Per-channel mean/std of pixel values in [0, 1], for datasets without published constants.

    Compute it on the training split and record it; the test split must reuse the training numbers. Of a
    whole split read from its cache it is computed once and kept beside the cache (``convention.json``,
    checked against the split's fingerprint).
    """
    where = f"dataset {ds.name!r}" + (f" ({source})" if source else "")
    sidecar = ds.x.path.with_name("convention.json") if isinstance(ds.x, NpyRows) and ds.x.rows is None else None
    if sidecar is not None and sidecar.is_file():  # a whole cached split: computed once, not at every run
        saved = read_json(sidecar)
        if saved.get("fingerprint") == ds.fingerprint():
            return InputConvention(tuple(saved["mean"]), tuple(saved["std"]))
    if len(ds) == 0:
        raise DataError(f"{where} has no training images: cannot compute its mean and std")
    channels = ds.x.shape[1]
    total = torch.zeros(channels, dtype=torch.float64)
    total_sq = torch.zeros(channels, dtype=torch.float64)
    for start in range(0, len(ds), 4096):  # chunks: a float64 copy of a whole dataset is large
        chunk = ds.x[start : start + 4096].to(torch.float64).div_(255.0)
        total += chunk.sum(dim=(0, 2, 3))
        total_sq += chunk.square().sum(dim=(0, 2, 3))
    count = len(ds) * ds.x.shape[2] * ds.x.shape[3]
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0.0).sqrt()
    if bool((std == 0).any()):
        channels = torch.nonzero(std == 0).flatten().tolist()
        raise DataError(f"{where}: channel(s) {channels} hold one value in every training image; cannot "
                        "normalise by a std of 0")
    if sidecar is not None:
        write_json(sidecar, {"fingerprint": ds.fingerprint(), "mean": mean.tolist(), "std": std.tolist()})
    return InputConvention(tuple(mean.tolist()), tuple(std.tolist()))


# --------------------------------------------------------------------------------------------------
# Shared helpers


def _default_dirs(subdir: str) -> list[Path]:
    dirs = []
    if os.environ.get("IGKD_DATA"):
        dirs.append(Path(os.environ["IGKD_DATA"]).expanduser() / subdir)
    dirs.append(Path.home() / ".cache" / "igkd" / subdir)
    return dirs


def _download_target(root: Path | None, subdir: str) -> Path:
    return root if root is not None else _default_dirs(subdir)[0]


def _stat_key(paths: Sequence[Path]) -> tuple[tuple[str, int, int], ...]:
    """Cache key that changes when a file is replaced, so a re-download is never masked."""
    return tuple(_stat_triples(paths))


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")


def _searched(dirs: Sequence[Path]) -> str:
    return ", ".join(str(d) for d in dirs)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 (torchvision's python-pickle layout)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The CIFAR batches are pickles; only allow what numpy arrays need, never arbitrary code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}")


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = _NumpyOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - a corrupt pickle raises almost anything; all mean the same
        raise DataError(
            f"CIFAR-10 file {path} is unreadable ({_one_line(exc)}); delete it and re-download with --download"
        ) from None
    if not isinstance(obj, dict):
        raise DatasetNotFoundError(f"CIFAR-10 file {path} does not hold a dict; delete it and re-download")
    return obj


def _get(d: dict, key: str, path: Path):
    # Python 2 pickles (the real files) give bytes keys; files written by Python 3 may use str keys.
    for k in (key.encode(), key):
        if k in d:
            return d[k]
    raise DatasetNotFoundError(f"CIFAR-10 file {path} has no {key!r} entry; delete it and re-download")


def _cifar_files(batch_dir: Path, split: str) -> list[Path]:
    names = [f"data_batch_{i}" for i in range(1, 6)] if split == "train" else ["test_batch"]
    return [batch_dir / "batches.meta"] + [batch_dir / n for n in names]


def _find_cifar_dir(candidates: Sequence[Path]) -> Path | None:
    for c in candidates:
        for d in (c / _CIFAR_DIRNAME, c):
            if (d / "batches.meta").is_file():
                return d
    return None


@functools.lru_cache(maxsize=4)
def _read_cifar10(batch_dir: str, split: str, stat_key: tuple) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    del stat_key  # only part of the cache key
    files = _cifar_files(Path(batch_dir), split)
    meta = _read_pickle(files[0])
    classes = tuple(n.decode() if isinstance(n, bytes) else str(n) for n in _get(meta, "label_names", files[0]))
    xs, ys = [], []
    for path in files[1:]:
        batch = _read_pickle(path)
        data = np.asarray(_get(batch, "data", path))
        labels = np.asarray(_get(batch, "labels", path), dtype=np.int64)
        if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or len(labels) != len(data):
            raise DatasetNotFoundError(
                f"CIFAR-10 file {path} has data {data.dtype} {data.shape} and {len(labels)} labels, "
                "expected uint8 (N, 3072) and N labels; delete it and re-download"
            )
        xs.append(data)
        ys.append(labels)
    # Rows are channel-major: 1024 red, 1024 green, 1024 blue values, each plane row by row.
    x = torch.from_numpy(np.concatenate(xs).reshape(-1, 3, 32, 32))
    y = torch.from_numpy(np.concatenate(ys))
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= len(classes)):
        raise DatasetNotFoundError(f"CIFAR-10 labels in {batch_dir} fall outside 0..{len(classes) - 1}")
    return x, y, classes


def _torchvision_download(cls_name: str, label: str, target: Path, split: str, fix: str) -> None:
    """Fetch a split with torchvision into ``target``; any failure becomes one user-facing line."""
    try:
        import torchvision.datasets

        target.mkdir(parents=True, exist_ok=True)
        getattr(torchvision.datasets, cls_name)(str(target), train=split == "train", download=True)
    except Exception as exc:  # network, disk, checksum: all end in the same user-facing error
        raise DatasetNotFoundError(f"downloading {label} into {target} failed ({_one_line(exc)}); {fix}") from None


def _load_cifar10(split: str, root: Path | None, download: bool):
    candidates = [root] if root is not None else [*_default_dirs("cifar10"), Path("data"), Path("data") / "cifar10"]
    batch_dir = _find_cifar_dir(candidates)
    if batch_dir is None and download:
        target = _download_target(root, "cifar10")
        _torchvision_download("CIFAR10", "CIFAR-10", target, split,
                              f"download it by hand into {target / _CIFAR_DIRNAME}, or set IGKD_DATA / "
                              "data.root to a folder holding it")
        batch_dir = _find_cifar_dir([target])
    if batch_dir is None:
        raise DatasetNotFoundError(
            f"CIFAR-10 not found (looked for {_CIFAR_DIRNAME}/ in: {_searched(candidates)}); "
            "pass --download, or set IGKD_DATA / data.root to a folder holding cifar-10-batches-py"
        )
    files = _cifar_files(batch_dir, split)
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise DatasetNotFoundError(
            f"CIFAR-10 in {batch_dir} is incomplete (missing {', '.join(missing)}); delete it and pass --download"
        )
    return _read_cifar10(str(batch_dir.resolve()), split, _stat_key(files))


# --------------------------------------------------------------------------------------------------
# Fashion-MNIST (IDX files)

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (plain or gzipped), checking its header against its length.

    A truncated download otherwise surfaces as a reshape error far from its cause.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":  # gzip magic; decide by content, not by name
            raw = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as exc:
        raise DatasetNotFoundError(f"IDX file {path} is unreadable ({_one_line(exc)}); delete it and re-download") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise DatasetNotFoundError(f"IDX file {path} has a bad magic number {raw[:4].hex()!r}; delete it and re-download")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetNotFoundError(f"IDX file {path} is truncated inside its header; delete it and re-download")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + math.prod(shape) * dtype.itemsize
    if len(raw) != expected:
        raise DatasetNotFoundError(
            f"IDX file {path} holds {len(raw)} bytes, its header {shape} needs {expected}; "
            "it is truncated or corrupt, delete it and re-download"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _idx_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # plain first: no decompression
        if (folder / name).is_file():
            return folder / name
    return None


def _fashion_files(folder: Path, split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    images = _idx_file(folder, f"{prefix}-images-idx3-ubyte")
    labels = _idx_file(folder, f"{prefix}-labels-idx1-ubyte")
    return (images, labels) if images is not None and labels is not None else None


def _find_fashion_files(candidates: Sequence[Path], split: str) -> tuple[Path, Path] | None:
    prefix = "train" if split == "train" else "t10k"
    stems = (f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte")
    for c in candidates:
        for d in (c, c / "FashionMNIST" / "raw"):  # flat, or torchvision's layout
            files = _fashion_files(d, split)
            if files is not None:
                return files
            found = [_idx_file(d, stem) for stem in stems]
            if any(found):  # half a pair: name what is missing rather than look elsewhere
                missing = [f"{stem}(.gz)" for stem, f in zip(stems, found) if f is None]
                raise DatasetNotFoundError(f"Fashion-MNIST in {d} is incomplete: {', '.join(missing)} is missing; "
                                           "copy it there or delete the folder and pass --download")
    return None


@functools.lru_cache(maxsize=4)
def _read_fashion(images_path: str, labels_path: str, stat_key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    del stat_key  # only part of the cache key
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise DatasetNotFoundError(f"IDX file {images_path} holds {images.dtype} {images.shape}, expected uint8 (N, H, W)")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetNotFoundError(
            f"IDX file {labels_path} holds {labels.shape} labels for {len(images)} images in {images_path}"
        )
    y = torch.from_numpy(labels.astype(np.int64))
    if len(y) and (int(y.min()) < 0 or int(y.max()) >= FASHION_MNIST.num_classes):
        raise DatasetNotFoundError(f"IDX file {labels_path} has labels outside 0..9")
    return torch.from_numpy(images).unsqueeze(1), y


def _load_fashion_mnist(split: str, root: Path | None, download: bool):
    if root is not None:
        candidates = [root]
    else:
        candidates = [*_default_dirs("fashion_mnist"), _FASHION_SYSTEM_DIR, Path("data") / "fashion_mnist"]
    files = _find_fashion_files(candidates, split)
    if files is None and download:
        target = _download_target(root, "fashion_mnist")
        _torchvision_download("FashionMNIST", "Fashion-MNIST", target, split,
                              "install the Debian package dataset-fashion-mnist, or set IGKD_DATA / "
                              "data.root to a folder holding the IDX files")
        files = _find_fashion_files([target], split)
    if files is None:
        raise DatasetNotFoundError(
            f"Fashion-MNIST {split} IDX files not found (looked in: {_searched(candidates)}, and their "
            "FashionMNIST/raw); pass --download, install the Debian package dataset-fashion-mnist, "
            "or set IGKD_DATA / data.root"
        )
    x, y = _read_fashion(str(files[0]), str(files[1]), _stat_key(files))
    return x, y, FASHION_MNIST.classes


# --------------------------------------------------------------------------------------------------
# npz


@functools.lru_cache(maxsize=4)
def _read_npz(path: str, split: str, stat_key: tuple) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...]]:
    del stat_key  # only part of the cache key
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in archive.files]
            if missing:
                raise DataError(f"npz file {path} lacks the array(s) {', '.join(missing)} (needs x_train, y_train, "
                                "x_test, y_test; optional classes)")
            x = archive[f"x_{split}"]
            y = archive[f"y_{split}"]
            y_all = [archive["y_train"], archive["y_test"]]
            other_x = archive["x_test" if split == "train" else "x_train"]
            classes_arr = archive["classes"] if "classes" in archive.files else None
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - not a zip, truncated, bad member: numpy/zipfile raise many types
        raise DataError(f"npz file {path} is unreadable ({_one_line(exc)}): not an .npz archive, truncated or "
                        "holding pickled objects; re-create it with numpy.savez") from None
    key = f"x_{split}"
    if x.dtype != np.uint8 or x.ndim not in (3, 4):
        raise DataError(f"npz {path}: {key!r} must be uint8 images (N, H, W, C) or (N, H, W), got {x.dtype} {x.shape}")
    if other_x.ndim != x.ndim or other_x.shape[1:] != x.shape[1:]:
        raise DataError(f"npz {path}: x_train and x_test differ in image shape ({' x '.join(map(str, x.shape[1:]))} "
                        f"vs {' x '.join(map(str, other_x.shape[1:]))}); both splits need the same size and channels")
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    for name, arr in (("y_train", y_all[0]), ("y_test", y_all[1])):
        if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer) or (arr.size and arr.min() < 0):
            raise DataError(f"npz {path}: {name!r} must be 1-D non-negative integer labels, got {arr.dtype} {arr.shape}")
    if len(y) != len(x):
        raise DataError(f"npz {path}: 'y_{split}' has {len(y)} labels for {len(x)} images in {key!r}")
    if classes_arr is not None:
        if classes_arr.ndim != 1:
            raise DataError(f"npz {path}: 'classes' must be a 1-D array of names, got shape {classes_arr.shape}")
        classes = tuple(str(c) for c in classes_arr.tolist())
    else:
        top = max((int(a.max()) for a in y_all if a.size), default=-1)
        classes = tuple(str(i) for i in range(top + 1))
    if y.size and int(y.max()) >= len(classes):
        raise DataError(f"npz {path}: 'y_{split}' has label {int(y.max())} but only {len(classes)} classes")
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(y.astype(np.int64)), classes


def _load_npz(split: str, root: Path | None):
    if root is None:
        raise ConfigError("dataset 'npz' needs root (data.root) set to the path of an .npz file")
    if not root.is_file():
        raise DatasetNotFoundError(f"npz file {root} not found; set data.root to an .npz with x_train, y_train, x_test, y_test")
    return _read_npz(str(root.resolve()), split, _stat_key([root]))


# --------------------------------------------------------------------------------------------------
# image folder: <root>/<split>/<class>/<image>


def _class_dirs(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _folder_listing(split: str, root: Path | None) -> tuple[list[Path], list[int], list[str]]:
    """The image files of ``<root>/<split>/<class>/``, their labels, and the classes of both splits."""
    if root is None:
        raise ConfigError("dataset 'image_folder' needs root (data.root) set to a folder with train/ and test/")
    split_dir = root / split
    if not split_dir.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} has no {split}/ sub-folder; expected {root}/{split}/<class>/<image files>"
        )
    # Classes from both splits, so a label means the same class in train and test.
    classes = sorted({c for s in SPLITS if (root / s).is_dir() for c in _class_dirs(root / s)})
    if not classes:
        raise DatasetNotFoundError(f"image folder {split_dir} has no class sub-folders")
    files: list[Path] = []
    labels: list[int] = []
    for label, cls in enumerate(classes):
        cls_dir = split_dir / cls
        if not cls_dir.is_dir():
            continue
        with os.scandir(cls_dir) as entries:  # an entry knows its type: no system call a file
            names = sorted(e.name for e in entries
                           if e.is_file() and os.path.splitext(e.name)[1].lower() in _IMAGE_SUFFIXES)
        found = [cls_dir / name for name in names]  # one folder's paths sort as their names do
        if not found:
            raise DataError(f"class folder {cls_dir} holds no image files ({', '.join(sorted(_IMAGE_SUFFIXES))}); "
                            "add images or remove the folder")
        files += found
        labels += [label] * len(found)
    if not files:
        raise DataError(f"image folder {split_dir} holds no image files ({', '.join(sorted(_IMAGE_SUFFIXES))})")
    return files, labels, classes


def _load_image_folder(split: str, root: Path | None, size: tuple[int, int] | None = None):
    files, labels, classes = _folder_listing(split, root)
    key = _stat_key(files)
    x = _read_images(tuple(str(f) for f in files), key, size)
    return x, torch.tensor(labels, dtype=torch.int64), classes


def _open_image(f: str | Path, size, resize: tuple[int, int] | None):
    """The image at ``f``, loaded, and its size checked against ``size`` (the first image's) unless resized."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(f) as im:
            if size is not None and im.size != size and resize is None:
                raise DataError(f"image {f} is {im.size[0]}x{im.size[1]} (width x height), others are "
                                f"{size[0]}x{size[1]}; set data.image_size (a side, or [height, width]) to "
                                "resize all images on load")
            im.load()
            return im.copy()
    except (OSError, UnidentifiedImageError) as exc:
        raise DataError(f"image {f} is unreadable ({_one_line(exc)})") from None


def _pixels(im, mode: str, resize: tuple[int, int] | None) -> np.ndarray:
    """(H, W) or (H, W, 3) uint8 pixels of ``im`` in ``mode``, resized to ``resize`` (H, W) if given."""
    from PIL import Image

    im = im.convert(mode)  # before resizing: a palette image would be resized by its indices
    return np.asarray(im if resize is None else im.resize(resize[::-1], Image.Resampling.BILINEAR), dtype=np.uint8)


def _folder_source(split: str, root: Path | None, resize: tuple[int, int] | None):
    """The cache source of an image folder: decoded chunk by chunk, as :func:`_read_images` decodes it whole.

    Only to build the cache, the mode (grey-scale when every image is, else RGB) and the size are read from
    the files' headers first (PIL reads no pixels for that), so its shape is known before its first chunk;
    a built cache is found by the listing's digest alone."""
    from PIL import Image

    from .cache import CacheSource

    files, labels, classes = _folder_listing(split, root)

    def headers(batch: list[Path]) -> list[tuple[str, tuple[int, int]] | None]:
        """Each file's mode and size (None: unreadable), from its header alone."""
        out = []
        for f in batch:
            try:
                with Image.open(f) as im:
                    out.append((im.mode, im.size))
            except OSError:
                out.append(None)
        return out

    def layout():
        from .cache import decode_threads

        modes, size = set(), None
        batches = [files[i:i + 512] for i in range(0, len(files), 512)]
        pool = ThreadPoolExecutor(decode_threads(), thread_name_prefix="igkd-header")  # opening files waits on I/O
        try:  # in file order, so the first bad file is the one a single thread would name
            for batch, heads in zip(batches, pool.map(headers, batches)):
                for f, head in zip(batch, heads):
                    if head is None:
                        _open_image(f, size, resize)  # unreadable: its own error line
                        continue
                    modes.add(head[0])
                    if size is None:
                        size = head[1]
                    elif head[1] != size and resize is None:
                        _open_image(f, size, resize)  # the error of the in-memory load
        finally:
            pool.shutdown(cancel_futures=True)  # a bad file ends the pass without reading the rest
        mode = "L" if modes == {"L"} else "RGB"
        h, w = resize if resize is not None else size[::-1]

        def read(s: int, e: int) -> np.ndarray:
            stack = np.stack([_pixels(_open_image(f, size, resize), mode, resize) for f in files[s:e]])
            return stack[:, None] if mode == "L" else stack.transpose(0, 3, 1, 2)

        return (len(files), 1 if mode == "L" else 3, h, w), read

    key = {"dataset": "image_folder", "split": split, "resize": resize, "files": _stat_digest(files)}
    return CacheSource("image_folder", key, np.asarray(labels, dtype=np.int64), classes, layout)


@functools.lru_cache(maxsize=4)
def _read_images(files: tuple[str, ...], stat_key: tuple, resize: tuple[int, int] | None = None) -> torch.Tensor:
    """The images of ``files``, all of one size, or each resized to ``resize`` (H, W) (PIL, bilinear,
    antialiased), in one mode: grey-scale when all are, else RGB."""
    del stat_key  # only part of the cache key
    arrays = []
    size = None
    for f in files:
        arrays.append(_open_image(f, size, resize))
        size = size or arrays[0].size
    mode = "L" if {im.mode for im in arrays} == {"L"} else "RGB"
    stack = np.stack([_pixels(im, mode, resize) for im in arrays])
    x = stack[:, None] if mode == "L" else stack.transpose(0, 3, 1, 2)
    return torch.from_numpy(np.ascontiguousarray(x))
