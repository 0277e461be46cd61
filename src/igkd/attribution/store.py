"""The IG map store: one memory-mapped (N, H, W) array, index-aligned with its dataset.

A store is a directory::

    maps.npy        (N, H, W) float16 or float32; maps[i] is the map of dataset position i divided by
                    its own maximum, so it lies in [0, 1] and float16 keeps its shape at any scale
    scales.npy      (N,) float64, written at finalisation: the maxima, so maps[i] * scales[i] is the map
    meta.json       what made it (the :class:`~igkd.attribution.identity.StoreIdentity`: dataset
                    fingerprint, teacher hash, IG settings, input convention), the chunk layout, the
                    compute settings, and, once finalised, ``complete: true``, the sha256 of the maps
                    and the convergence-delta summary
    done/           one small JSON completion record per finished chunk (written after its maps
                    are on disk), named ``<chunk>-<token>.json``

:class:`StoreWriter` owns every write (create or join, chunk maps and records, finalisation);
:class:`MapStore` reads a finished store. Every write that matters goes to a temporary name first
and is renamed (or hard-linked) into place, so a killed process never leaves a file that looks
complete but is not. A store is usable only when ``meta.json`` says ``complete``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import socket
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..errors import NumericalError, StaleStoreError
from ..fileio import NpyRows, atomic_write_bytes, ensure_dir, fsync_dir, guarded_write, write_json
from .identity import FIX, StoreIdentity

FORMAT = "igkd-map-store"
VERSION = 3  # 3: maps stored divided by their maxima, scales.npy
DTYPES = {"float16": np.float16, "float32": np.float32}
PERCENTILES = (50, 90, 99)
CONSTANT_LIMIT = 0.01  # more constant maps than this fraction is warned about


def write_json_atomic(path: Path, data: Mapping[str, Any]) -> None:
    """The store's JSON layout (sorted keys), written atomically."""
    write_json(path, data, indent=1, sort_keys=True)


def publish_exclusive(tmp: Path, final: Path) -> bool:
    """Move ``tmp`` to ``final`` unless ``final`` exists; True if this call put it there.

    A hard link fails atomically when the name exists, so two processes creating the same store at
    once cannot overwrite each other's file. File systems without hard links fall back to a check
    followed by a rename (not atomic: start one rank first there).
    """
    try:
        os.link(tmp, final)
        won = True
    except FileExistsError:
        won = False
    except OSError:
        won = not final.exists()
        if won:
            with guarded_write(final):
                os.replace(tmp, final)
            return True
    tmp.unlink(missing_ok=True)
    if won:
        fsync_dir(final.parent)
    return won


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / "meta.json"
    if not meta_path.exists():
        raise StaleStoreError(f"no IG map store at {path} (no meta.json): {FIX}")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise StaleStoreError(f"unreadable meta.json in {path} ({e}): delete the folder and {FIX}") from None
    if meta.get("format") != FORMAT:
        raise StaleStoreError(f"{path} is not an igkd map store: choose another folder or delete it")
    if meta.get("version") != VERSION:
        raise StaleStoreError(f"IG map store {path} has format version {meta.get('version')}, this igkd "
                              f"reads version {VERSION}: delete it and {FIX}")
    return meta


def who() -> dict[str, Any]:
    """Which process, on which host, with which versions: recorded with every write."""
    from ..version import __version__

    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid(),
            "igkd": __version__, "torch": torch.__version__, "threads": torch.get_num_threads()}


def _maps_sha256(maps: np.ndarray) -> str:
    digest = hashlib.sha256()
    step = max(1, (64 << 20) // max(1, maps[0].nbytes)) if len(maps) else 1
    for s in range(0, len(maps), step):
        digest.update(np.ascontiguousarray(maps[s:s + step]).tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Reading


class MapStore:
    """A complete, verified map store, read through a read-only memory map.

    ``get(positions)`` returns the maps of those dataset positions; position ``i`` is always the
    image at position ``i`` of the dataset whose fingerprint the store records.
    """

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self._maps: np.memmap | None = None
        self._scales: np.ndarray | None = None

    @classmethod
    def open(cls, path: str | os.PathLike, expect: StoreIdentity | None = None) -> MapStore:
        """Open a finished store; raise :class:`StaleStoreError` if it is unfinished or is not ``expect``."""
        path = Path(path)
        meta = read_meta(path)
        if not meta.get("complete"):
            done = len(list((path / "done").glob("*.json"))) if (path / "done").is_dir() else 0
            raise StaleStoreError(
                f"IG map store {path} is incomplete ({done} of {meta.get('num_chunks', '?')} chunks "
                f"recorded, not finalised): {FIX} to finish it")
        if expect is not None:
            expect.check(meta, path)
        store = cls(path, meta)
        maps = store.maps
        if list(maps.shape) != list(meta["shape"]) or str(maps.dtype) != meta["dtype"]:
            raise StaleStoreError(f"IG map store {path}: maps.npy is {maps.dtype} {list(maps.shape)}, "
                                  f"meta.json says {meta['dtype']} {meta['shape']}: {FIX}")
        return store

    @property
    def maps(self) -> np.memmap:
        if self._maps is None:  # opened lazily, so a pickled store (DataLoader worker) reopens it
            try:
                self._maps = np.load(self.path / "maps.npy", mmap_mode="r")
            except (OSError, ValueError, EOFError) as e:
                raise StaleStoreError(f"IG map store {self.path}: maps.npy is unreadable ({type(e).__name__}: "
                                      f"truncated or corrupt): delete the folder and {FIX}") from None
        return self._maps

    def __getstate__(self) -> dict[str, Any]:
        return {"path": self.path, "meta": self.meta, "_maps": None, "_scales": None}

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.meta["shape"])

    @property
    def dtype(self) -> torch.dtype:
        return {"float16": torch.float16, "float32": torch.float32}[self.meta["dtype"]]

    def __len__(self) -> int:
        return int(self.meta["shape"][0])

    @property
    def scales(self) -> np.ndarray:
        """(N,) float64: each map's maximum, by which its stored values were divided."""
        if self._scales is None:
            try:
                self._scales = np.load(self.path / "scales.npy")
            except (OSError, ValueError, EOFError) as e:
                raise StaleStoreError(f"IG map store {self.path}: scales.npy is unreadable ({type(e).__name__}): "
                                      f"delete the folder and {FIX}") from None
            if self._scales.shape != (len(self),) or _maps_sha256(self._scales) != self.meta.get("scales_sha256"):
                raise StaleStoreError(f"IG map store {self.path}: scales.npy does not match the sha256 recorded "
                                      f"when it was finalised (changed or corrupted on disk): delete it and {FIX}")
        return self._scales

    def get(self, positions: torch.Tensor | np.ndarray | list[int],
            device: torch.device | str | None = None) -> torch.Tensor:
        """Maps of the given dataset positions at their own scale (stored map x scale) as float32,
        shape (B, H, W), in the order given."""
        idx = torch.as_tensor(positions).detach().to("cpu", torch.int64).numpy().reshape(-1)
        n = len(self)
        if idx.size and (idx.min() < 0 or idx.max() >= n):
            raise IndexError(f"positions must be in [0, {n}), got min {idx.min()} max {idx.max()}")
        maps = np.asarray(self.maps[idx], dtype=np.float64) * self.scales[idx, None, None]
        out = torch.from_numpy(maps.astype(np.float32))
        return out if device is None else out.to(device)

    def load_all(self) -> torch.Tensor:
        """All maps in memory, (N, H, W), in the store's own dtype, each divided by its own maximum
        (what the overlay needs: it min-max normalises every map; :attr:`scales` has the maxima).

        Checked against the recorded sha256: a file changed after finalisation (truncated,
        bit-flipped, rewritten) or holding a non-finite value is refused, never used.
        """
        maps = np.array(self.maps)
        recorded = self.meta.get("maps_sha256")
        if recorded is None or _maps_sha256(maps) != recorded:
            raise StaleStoreError(f"IG map store {self.path}: maps.npy does not match the sha256 recorded "
                                  f"when it was finalised (changed or corrupted on disk): delete it and {FIX}")
        if not np.isfinite(maps).all():
            bad = np.flatnonzero(~np.isfinite(maps.reshape(len(maps), -1)).all(axis=1))
            raise NumericalError(f"IG map store {self.path} holds non-finite values (maps of positions "
                                 f"{bad[:5].tolist()}...): delete it and {FIX}")
        return torch.from_numpy(maps)

    def rows(self) -> NpyRows:
        """The maps read from disk a batch at a time by position (what :meth:`load_all` holds whole, read in
        chunks): checked against the recorded sha256 and for non-finite values first, a chunk at a time."""
        rows = NpyRows(self.path / "maps.npy")
        digest, step = hashlib.sha256(), max(1, (64 << 20) // max(1, rows.row_bytes))
        for s in range(0, len(rows), step):
            part = rows[s:s + step].numpy()
            digest.update(part)
            if not np.isfinite(part).all():
                bad = s + np.flatnonzero(~np.isfinite(part.reshape(len(part), -1)).all(axis=1))
                raise NumericalError(f"IG map store {self.path} holds non-finite values (maps of positions "
                                     f"{bad[:5].tolist()}...): delete it and {FIX}")
        if digest.hexdigest() != self.meta.get("maps_sha256"):
            raise StaleStoreError(f"IG map store {self.path}: maps.npy does not match the sha256 recorded "
                                  f"when it was finalised (changed or corrupted on disk): delete it and {FIX}")
        return rows

    def __repr__(self) -> str:
        return f"MapStore({str(self.path)!r}, shape={self.shape}, dtype={self.meta['dtype']})"


# --------------------------------------------------------------------------------------------------
# Writing


class StoreWriter:
    """Creates or joins a store, writes chunks of maps with their completion records, finalises it.

    The dataset is cut into fixed chunks of ``chunk_size`` positions. A chunk's maps are written into
    their byte range of ``maps.npy`` (``pwrite`` + ``fsync``: byte-range writes, so processes on other
    machines sharing the file system never rewrite each other's pages), and only then its record is
    written. After ``kill -9`` at any moment, exactly the chunks without a record are missing.
    """

    def __init__(self, path: Path, meta: dict[str, Any]):
        self.path = Path(path)
        self.meta = meta
        self.done_dir = self.path / "done"

    @staticmethod
    def existing_meta(path: str | os.PathLike) -> dict[str, Any] | None:
        """The metadata of a store already at ``path`` (None when there is none yet)."""
        return read_meta(path) if (Path(path) / "meta.json").exists() else None

    @classmethod
    def create_or_join(cls, path: str | os.PathLike, meta: dict[str, Any], identity: StoreIdentity,
                       explicit_chunk_size: int | None = None) -> StoreWriter:
        """Create the store (maps file, then metadata) or join an existing one with the same settings.

        Several processes may call this at once: each builds its files under unique temporary names
        and publishes them with an exclusive hard link, so exactly one version of each file wins.
        """
        path = Path(path)
        ensure_dir(path / "done")
        meta_path, maps_path = path / "meta.json", path / "maps.npy"
        shape, dtype = tuple(meta["shape"]), np.dtype(meta["dtype"])
        if not meta_path.exists():
            if not maps_path.exists():
                tmp = path / f".maps.npy.{uuid.uuid4().hex[:8]}.tmp"
                try:
                    with guarded_write(maps_path):
                        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
                        del arr  # a sparse file of the full size, zeros until written
                except BaseException:
                    tmp.unlink(missing_ok=True)
                    raise
                publish_exclusive(tmp, maps_path)
            existing = np.load(maps_path, mmap_mode="r")
            if existing.shape != shape or existing.dtype != dtype:
                raise StaleStoreError(f"{maps_path} holds {existing.dtype} {list(existing.shape)} maps, not "
                                      f"{dtype} {list(shape)}, and has no meta.json: delete {path} and rerun")
            del existing
            tmp = path / f".meta.json.{uuid.uuid4().hex[:8]}.tmp"
            write_json_atomic(tmp, meta)
            publish_exclusive(tmp, meta_path)
        stored = read_meta(path)
        diff = identity.mismatches(stored)
        for key in ("dtype", "shape", "autocast"):
            if stored.get(key) != meta[key]:
                diff.append(f"{key} {stored.get(key)} != requested {meta[key]}")
        if explicit_chunk_size is not None and stored["chunk_size"] != explicit_chunk_size:
            diff.append(f"chunk_size {stored['chunk_size']} != requested {explicit_chunk_size}")
        refuse_other_settings(path, diff)
        return cls(path, stored)

    @classmethod
    def open(cls, path: str | os.PathLike) -> StoreWriter:
        return cls(Path(path), read_meta(path))

    # -- layout ----------------------------------------------------------------------------------

    @property
    def num_chunks(self) -> int:
        return int(self.meta["num_chunks"])

    @property
    def complete(self) -> bool:
        return bool(self.meta.get("complete"))

    def bounds(self, c: int) -> tuple[int, int]:
        n, size = self.meta["shape"][0], self.meta["chunk_size"]
        return c * size, min(n, (c + 1) * size)

    def records(self) -> dict[int, list[Path]]:
        """Completion records by chunk number."""
        out: dict[int, list[Path]] = {}
        if not self.done_dir.is_dir():
            return out
        for p in self.done_dir.glob("*.json"):
            head = p.name.split("-", 1)[0]
            if head.isdigit():
                out.setdefault(int(head), []).append(p)
        return out

    def is_recorded(self, c: int) -> bool:
        return any(self.done_dir.glob(f"{c:06d}-*.json"))

    # -- writes ----------------------------------------------------------------------------------

    def write_chunk(self, c: int, maps: np.ndarray, record: dict[str, Any]) -> None:
        """Write chunk ``c``'s maps (checked finite), make them durable, then record the chunk."""
        s, e = self.bounds(c)
        dtype = np.dtype(self.meta["dtype"])
        if maps.shape != (e - s, *self.meta["shape"][1:]) or maps.dtype != dtype:
            raise ValueError(f"chunk {c} needs {dtype} {(e - s, *self.meta['shape'][1:])}, got "
                             f"{maps.dtype} {maps.shape}")
        if not np.isfinite(maps).all():
            raise NumericalError(f"IG maps of positions {s}..{e - 1} hold inf or NaN; nothing written "
                                 "for them (check the teacher's weights)")
        maps_path = self.path / "maps.npy"
        offset = int(np.load(maps_path, mmap_mode="r").offset) + s * maps[0].nbytes
        with guarded_write(maps_path):  # a chunk that fails here has no record: a rerun computes it again
            fd = os.open(maps_path, os.O_RDWR)
            try:
                data = memoryview(np.ascontiguousarray(maps).tobytes())
                while data:
                    written = os.pwrite(fd, data, offset)
                    data, offset = data[written:], offset + written
                os.fsync(fd)  # the maps are on disk before the record that says so
            finally:
                os.close(fd)
        # A unique name per record: two processes that computed the same chunk leave two records,
        # which finalisation refuses, instead of one silently replacing the other.
        write_json_atomic(self.done_dir / f"{c:06d}-{uuid.uuid4().hex[:8]}.json",
                          {"chunk": c, "start": s, "stop": e, **record})

    def finalize(self) -> MapStore:
        """Verify that every position was written exactly once, record the summaries, mark complete.

        Refuses (with :class:`StaleStoreError` saying what and how to fix) a store whose completion
        records miss a chunk, hold two records for one chunk (overlapping rank settings), or do not
        tile ``0..N-1``. Safe to call more than once and from several processes.
        """
        path, meta = self.path, read_meta(self.path)
        if meta.get("complete"):
            return MapStore.open(path)
        num_chunks = meta["num_chunks"]
        recorded = self.records()
        stray = sorted(c for c in recorded if not 0 <= c < num_chunks)
        missing = [c for c in range(num_chunks) if c not in recorded]
        doubled = {c: ps for c, ps in recorded.items() if len(ps) > 1}
        if stray:
            raise StaleStoreError(f"cannot finalise {path}: records for chunks {_list(stray)} that do not "
                                  f"exist (only {num_chunks}): delete those files in done/ and rerun "
                                  "`igkd precompute-ig`")
        if doubled:
            c, ps = next(iter(sorted(doubled.items())))
            raise StaleStoreError(
                f"cannot finalise {path}: chunks {_list(sorted(doubled))} were written more than once "
                f"(chunk {c}: {len(ps)} records), so the --rank/--world-size settings overlapped: delete "
                f"done/{c:06d}-*.json (and the other doubled chunks' records) and rerun `igkd precompute-ig`")
        if missing:
            raise StaleStoreError(f"cannot finalise {path}: chunks {_list(missing)} of {num_chunks} have no "
                                  "completion record: rerun `igkd precompute-ig` (every rank) to compute them")
        records = []
        for c in range(num_chunks):
            with open(recorded[c][0]) as f:
                rec = json.load(f)
            if (rec.get("chunk"), rec.get("start"), rec.get("stop")) != (c, *self.bounds(c)):
                raise StaleStoreError(f"cannot finalise {path}: {recorded[c][0].name} covers positions "
                                      f"{rec.get('start')}..{rec.get('stop')} but chunk {c} is "
                                      f"{self.bounds(c)}: delete it and rerun `igkd precompute-ig`")
            records.append(rec)

        maps = np.load(path / "maps.npy", mmap_mode="r")
        if list(maps.shape) != list(meta["shape"]) or str(maps.dtype) != meta["dtype"]:
            raise StaleStoreError(f"cannot finalise {path}: maps.npy is {maps.dtype} {list(maps.shape)}, "
                                  f"meta.json says {meta['dtype']} {meta['shape']}: delete it and rerun")
        meta["maps_sha256"] = _maps_sha256(maps)
        maps_size = int(maps.size)
        del maps
        scales = np.concatenate([np.asarray(r["scales"], dtype=np.float64) for r in records])
        if scales.shape != (meta["shape"][0],):
            raise StaleStoreError(f"cannot finalise {path}: the chunk records hold {scales.size} map scales for "
                                  f"{meta['shape'][0]} maps: delete the folder and rerun `igkd precompute-ig`")
        buf = io.BytesIO()
        np.save(buf, scales)
        atomic_write_bytes(path / "scales.npy", buf.getvalue())
        meta["scales_sha256"] = _maps_sha256(scales)

        constant = [p for r in records for p in r.get("constant", [])]
        meta["constant_maps"] = {"count": len(constant), "fraction": len(constant) / max(1, meta["shape"][0]),
                                 "positions": constant[:10]}
        meta["delta"] = delta_summary(records)
        flushed = sum(r["delta"].get("flushed_to_zero", 0) for r in records)
        meta["storage"] = {"values_flushed_to_zero": flushed, "fraction_flushed": flushed / max(1, maps_size)}
        meta["chunks"] = {"count": num_chunks, "ranks": sorted({r["rank"] for r in records}),
                          "seconds": round(sum(r["seconds"] for r in records), 3)}
        meta["finalized"] = who()
        meta["complete"] = True
        write_json_atomic(path / "meta.json", meta)
        self.meta = meta
        return MapStore.open(path)


def explanation_problems(meta: dict[str, Any]) -> list[str]:
    """Why a store's maps may explain little, in words: its teacher was at chance on its own training
    data (expected, and said so, for a teacher with random weights: ``teacher_check.random_weights``), or
    more than :data:`CONSTANT_LIMIT` of its maps are constant (one value at every pixel: all
    zero where a Grad-CAM teacher's evidence vanishes; an all-zero IG map is refused outright).
    ``igkd precompute-ig`` warns with these lines and the report prints them under the gallery."""
    out = []
    teacher = meta.get("teacher_check") or {}
    if teacher.get("at_chance") and teacher.get("random_weights"):
        out.append(f"the teacher has random weights (the randomised-teacher control) and is at chance on the "
                   f"training data ({teacher['accuracy']:.1f} % correct, the most frequent class "
                   f"{teacher['majority']:.1f} %), as this control expects: its maps show what a network that "
                   "learnt nothing attends to")
    elif teacher.get("at_chance"):
        out.append(f"the teacher is at chance on its own training data ({teacher['accuracy']:.1f} % correct, "
                   f"while always answering the most frequent class gives {teacher['majority']:.1f} %): its "
                   "maps explain nothing; train it longer or check teacher.checkpoint")
    constant = meta.get("constant_maps") or {}
    if constant.get("fraction", 0) > CONSTANT_LIMIT:
        out.append(f"{constant['count']} of {meta['shape'][0]} maps ({100 * constant['fraction']:.1f} %) are "
                   f"constant (one value at every pixel, e.g. positions {constant['positions'][:5]}): they show "
                   "the student nothing; check the teacher and the attribution layer")
    return out


def refuse_other_settings(path: Path, diff: list[str]) -> None:
    """Writing into a store made with other settings would mix two kinds of maps: refuse it."""
    if diff:
        raise StaleStoreError(f"the store at {path} was made with other settings ({'; '.join(diff)}): "
                              "choose another store folder, or delete this one to recompute it")


def delta_summary(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Percentiles of |delta| and of |delta| / (|F(x)| + |F(b)|) over every image of the store.

    The scaled form stays finite and meaningful for images whose logit barely moves from the
    baseline's, which make ``|delta| / |F(x) - F(b)|`` (and any mean of it) explode. None for a
    store of a source without a convergence delta (its records hold none: saliency, Grad-CAM, ...).
    """
    if not any("abs" in r["delta"] for r in records):
        return None
    abs_d = np.concatenate([np.asarray(r["delta"]["abs"], dtype=np.float64) for r in records])
    scaled = np.concatenate([np.asarray(r["delta"]["scaled"], dtype=np.float64) for r in records])

    def pct(values: np.ndarray) -> dict[str, float]:
        out = {f"p{q}": float(np.percentile(values, q)) for q in PERCENTILES}
        out["max"] = float(values.max())
        return out

    return {
        "definition": "delta = sum(attributions) - (F(x) - F(baseline)) per image, F the target logit; "
                      "scaled = |delta| / (|F(x)| + |F(baseline)|)",
        "images": int(abs_d.size),
        "abs": pct(abs_d),
        "scaled": pct(scaled),
    }


def finalize_store(store_dir: str | os.PathLike) -> MapStore:
    """:meth:`StoreWriter.finalize` of the store at ``store_dir``."""
    return StoreWriter.open(store_dir).finalize()


def _list(items: list[int], limit: int = 8) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")
