"""A decoded image cache: one uint8 (N, C, H, W) ``.npy`` per dataset split, written once, read by position.

Decoding a JPEG or PNG costs far more than reading its pixels back, and holding every decoded image in
memory stops at the machine's size. The cache decodes a split once, chunk by chunk (never the whole
split in memory; each chunk by several threads at once, :func:`decode_threads`), into a file that :class:`~igkd.fileio.NpyRows` then reads a batch at a time. Its
layout copies the IG map store's (checksummed, resumable, atomic)::

    images.npy   (N, C, H, W) uint8, filled chunk by chunk (pwrite + fsync)
    labels.npy   (N,) int64
    meta.json    what made it (the source's key: files, sizes, modification times, resize), the shape,
                 the classes, the chunk layout and, once finalised, ``complete: true`` and the
                 dataset's fingerprint (the sha256 :meth:`ImageDataset.fingerprint` gives the same
                 images in memory, so a map store built either way fits both)
    done/        one record per chunk written: a killed build resumes where it stopped

Why our own file and not an ecosystem format: see README's "Data at scale" (measured: Arrow's
memory-mapped table gathers a random batch no faster than ``preadv`` and maps pages into the process's
resident memory; a batch here is one read per image, with no format between the file and the tensor).
"""

from __future__ import annotations

import hashlib
import os
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import DataError, LockedError
from ..fileio import NpyRows, ensure_dir, fsync_dir, guarded_write, read_json, write_json
from ..locks import FileLock
from ..utils import progress_bar
from .image_dataset import ImageDataset

FORMAT = "igkd-image-cache"
VERSION = 1
CHUNK_BYTES = 64 << 20  # a chunk's decoded images: what a build holds in memory at once


@dataclass
class CacheSource:
    """What a cache is built from. ``layout()``, called only to build it, gives the images' shape
    (N, C, H, W) and ``read(start, stop)``: images ``start..stop-1`` as uint8 (B, C, H, W)."""

    name: str
    key: dict  # what identifies the source's contents (a digest of files, sizes, times; resize): a new key, a new cache
    labels: np.ndarray
    classes: list[str]
    layout: Callable[[], tuple[tuple[int, int, int, int], Callable[[int, int], np.ndarray]]]

    def digest(self) -> str:
        return hashlib.sha256(repr(sorted(self.key.items())).encode()).hexdigest()


def cache_folder(root: Path, source: CacheSource, split: str) -> Path:
    """The cache of ``source`` under ``root``: named by the dataset, the split and the source's key."""
    return Path(root) / "images" / f"{source.name}-{split}-{source.digest()[:16]}"


def open_or_build(folder: str | Path, source: CacheSource, progress: bool | None = None) -> ImageDataset:
    """The dataset of ``source`` read from its cache in ``folder``: built first if missing (or finished if
    a build was killed). One process builds; others started at once (torchrun's ranks) wait for it."""
    folder = Path(folder)
    while not _complete(folder, source):
        try:
            with FileLock(folder, "image cache"):
                if not _complete(folder, source):
                    _build(folder, source, progress)
        except LockedError:
            time.sleep(1.0)  # another process is building it
    return _open(folder, source)


def _meta(folder: Path) -> dict | None:
    try:
        meta = read_json(folder / "meta.json")
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise DataError(f"image cache {folder}: meta.json is unreadable; delete the folder to rebuild it") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DataError(f"{folder} is not an igkd image cache of version {VERSION}; delete it to rebuild it")
    return meta


def _complete(folder: Path, source: CacheSource) -> bool:
    meta = _meta(folder)
    if meta is not None and meta["key"] != source.digest():
        raise DataError(f"image cache {folder} was built from other files (key {meta['key'][:12]}, these are "
                        f"{source.digest()[:12]}); delete it to rebuild it")
    return bool(meta and meta.get("complete"))


def _build(folder: Path, source: CacheSource, progress: bool | None) -> None:
    shape, read = source.layout()
    n = shape[0]
    row = int(np.prod(shape[1:]))
    chunk = max(1, CHUNK_BYTES // max(row, 1))
    images, done = folder / "images.npy", ensure_dir(folder / "done")
    meta = _meta(folder)
    if meta is None:  # a fresh build: the (sparse) images file, the labels, then the metadata that names them
        tmp = folder / f".images.npy.{uuid.uuid4().hex[:8]}.tmp"
        with guarded_write(images):
            np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape).flush()
            os.replace(tmp, images)
            tmp = folder / f".labels.npy.{uuid.uuid4().hex[:8]}.tmp"
            with open(tmp, "wb") as f:  # a file object: np.save would add ".npy" to a name
                np.save(f, source.labels.astype(np.int64))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, folder / "labels.npy")
        fsync_dir(folder)
        meta = {"format": FORMAT, "version": VERSION, "key": source.digest(), "source": source.key,
                "name": source.name, "shape": list(shape), "classes": list(source.classes),
                "chunk_size": chunk, "complete": False}
        write_json(folder / "meta.json", meta, indent=1)
    chunk = meta["chunk_size"]
    offset = int(np.load(images, mmap_mode="r").offset)
    todo = [c for c in range(-(-n // chunk)) if not (done / f"{c:06d}.json").exists()]
    print(f"{source.name}: decoding {n:,} images into the cache {folder} (once; {len(todo)} of "
          f"{-(-n // chunk)} chunks to go)", flush=True)
    threads = decode_threads()
    with guarded_write(images), ThreadPoolExecutor(threads, thread_name_prefix="igkd-decode") as pool:
        fd = os.open(images, os.O_RDWR)
        try:
            for c in progress_bar(todo, desc=f"caching {source.name}", unit="chunk", enabled=progress, leave=False):
                s, e = c * chunk, min(n, (c + 1) * chunk)
                part = _decode(read, s, e, pool, threads)
                if part.shape != (e - s, *shape[1:]):
                    raise DataError(f"{source.name}: images {s}..{e - 1} decode to {part.shape}, expected "
                                    f"{(e - s, *shape[1:])}")
                view, at = memoryview(part.reshape(-1)), offset + s * row
                while len(view):
                    written = os.pwrite(fd, view, at)
                    view, at = view[written:], at + written
                os.fsync(fd)  # the pixels are on disk before the record that says so
                write_json(done / f"{c:06d}.json", {"chunk": c, "start": s, "stop": e})
        finally:
            os.close(fd)
    labels = torch.from_numpy(np.load(folder / "labels.npy"))
    dataset = ImageDataset(source.name, NpyRows(images), labels, list(source.classes))
    write_json(folder / "meta.json", {**meta, "complete": True, "fingerprint": dataset.fingerprint(),
                                      "stat": _stat(folder)}, indent=1)


def decode_threads() -> int:
    """Threads that decode a chunk's images at once (Pillow releases the GIL while it decodes and resizes):
    the CPUs this process may use, at most 8, or ``IGKD_DECODE_THREADS``."""
    if os.environ.get("IGKD_DECODE_THREADS"):
        try:
            return max(1, int(os.environ["IGKD_DECODE_THREADS"]))
        except ValueError:
            raise DataError(f"IGKD_DECODE_THREADS must be a whole number, got "
                            f"{os.environ['IGKD_DECODE_THREADS']!r}") from None
    return max(1, min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1))


def _decode(read: Callable[[int, int], np.ndarray], s: int, e: int, pool: ThreadPoolExecutor,
            threads: int) -> np.ndarray:
    """Images ``s..e-1`` as one contiguous uint8 array, decoded in ``threads`` equal slices at once (the
    same pixels as one ``read(s, e)``; memory stays about one chunk)."""
    bounds = np.linspace(s, e, min(threads, e - s) + 1).round().astype(int)
    if len(bounds) <= 2:
        return np.ascontiguousarray(read(s, e), dtype=np.uint8)
    parts = list(pool.map(lambda lo_hi: read(*lo_hi), zip(bounds[:-1].tolist(), bounds[1:].tolist())))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.uint8)


def _stat(folder: Path) -> list[list[int]]:
    """Sizes and modification times of the cache's data files: unchanged, the checksum need not be read again."""
    return [[st.st_size, st.st_mtime_ns] for st in ((folder / f).stat() for f in ("images.npy", "labels.npy"))]


def _open(folder: Path, source: CacheSource) -> ImageDataset:
    meta = _meta(folder)
    images = folder / "images.npy"
    try:
        x, y = NpyRows(images), torch.from_numpy(np.load(folder / "labels.npy"))
    except (OSError, ValueError) as e:
        raise DataError(f"image cache {folder} is unreadable ({type(e).__name__}); delete it to rebuild it") from None
    if list(x.shape) != meta["shape"] or y.shape != (meta["shape"][0],):
        raise DataError(f"image cache {folder}: its files hold {list(x.shape)} images and {list(y.shape)} labels, "
                        f"meta.json says {meta['shape']}; delete it to rebuild it")
    if _stat(folder) != meta["stat"]:
        # touched since it was finalised (copied, or changed): its checksum says whether it is still the cache
        if ImageDataset(meta["name"], x, y, list(meta["classes"])).fingerprint() != meta["fingerprint"]:
            raise DataError(f"image cache {folder}: its images or labels do not match the sha256 recorded when "
                            "it was built (changed or corrupted on disk); delete it to rebuild it")
    return ImageDataset(meta["name"], x, y, list(meta["classes"]), known_fingerprint=meta["fingerprint"])
