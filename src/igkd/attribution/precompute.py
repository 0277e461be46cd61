"""Compute the IG maps of a whole dataset into a store: chunked, resumable, spread over processes.

The dataset is cut into fixed chunks of ``chunk_size`` positions. Chunk ``c`` belongs to rank
``c % world_size``; each rank computes its chunks that have no completion record yet, writes their maps
into its byte range of ``maps.npy`` (``pwrite`` + ``fsync``: byte-range writes, so ranks on other
machines sharing the file system never rewrite each other's pages), and only then writes the chunk's
record. After ``kill -9`` at any moment, a rerun recomputes exactly the chunks without a record.
The last rank to finish (or :func:`finalize_store`) checks that the records tile ``0..N-1`` exactly
once, merges their convergence-delta statistics into ``meta.json`` and marks the store complete.

Reproducibility: a chunk is also the unit of batching (its (image, step) pairs are cut into passes of
``internal_batch_size`` in a fixed order), so a chunk's maps do not depend on which process computed
it, on resumption, or on ``world_size`` -- only on the settings, which the store records and a resumed
run adopts, and on the thread count (oneDNN may split reductions differently).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import __version__
from ..convention import InputConvention
from ..data.image_dataset import ImageDataset
from ..errors import StaleStoreError
from .ig import (
    PreparedModel,
    attribution_map,
    default_internal_batch_size,
    integrated_gradients_detailed,
    prepare_for_ig,
    quadrature,
    tune_cpu_allocator,
)
from .store import (
    FORMAT,
    IDENTITY_KEYS,
    VERSION,
    MapStore,
    baseline_spec,
    data_offset,
    mismatches,
    publish_exclusive,
    read_meta,
    write_json_atomic,
)

DTYPES = {"float16": np.float16, "float32": np.float32}
FLOAT16_MAX = float(np.finfo(np.float16).max)


@dataclass
class PrecomputeResult:
    """What one call of :func:`precompute_ig` did. ``store`` is set once the store is complete."""

    path: Path
    rank: int
    world_size: int
    num_chunks: int
    computed: list[int] = field(default_factory=list)  # chunks this call computed
    skipped: list[int] = field(default_factory=list)  # chunks of this rank already recorded
    complete: bool = False
    store: MapStore | None = None
    seconds: float = 0.0


def _resolve_rank(rank: int | None, world_size: int | None) -> tuple[int, int]:
    # torchrun sets RANK and WORLD_SIZE; explicit arguments win.
    if world_size is None:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
    return rank, world_size


def _resolve_device(device: str | torch.device, world_size: int) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and device.index is None and world_size > 1 and "LOCAL_RANK" in os.environ:
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def baseline_tensor(baseline: str, convention: InputConvention, image_shape: tuple[int, ...]) -> torch.Tensor:
    """The baseline image in network-input space, (1, C, H, W)."""
    spec = baseline_spec(baseline)
    zeros = torch.zeros((1, *image_shape))
    return zeros if spec["space"] == "normalized" else convention.normalize(zeros)


def estimate_sample_bytes(module: nn.Module, sample_shape: tuple[int, ...], device: torch.device) -> int:
    """Rough memory of one step-sample in a forward+input-gradient pass.

    Sums the outputs of every leaf module for one sample and triples it (activations kept for
    backward, their gradients, temporaries). An estimate for ``max_memory_mb``, not a guarantee.
    """
    total = 0

    def hook(_m, _i, out):
        nonlocal total
        if isinstance(out, torch.Tensor):
            total += out.numel() * out.element_size()

    handles = [m.register_forward_hook(hook) for m in module.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            module(torch.zeros((1, *sample_shape), device=device))
    finally:
        for h in handles:
            h.remove()
    return 3 * total + 4 * int(np.prod(sample_shape))


def _chunk_bounds(c: int, chunk_size: int, n: int) -> tuple[int, int]:
    return c * chunk_size, min(n, (c + 1) * chunk_size)


def _records(done_dir: Path) -> dict[int, list[Path]]:
    """Completion records by chunk number."""
    out: dict[int, list[Path]] = {}
    if not done_dir.is_dir():
        return out
    for p in done_dir.glob("*.json"):
        head = p.name.split("-", 1)[0]
        if head.isdigit():
            out.setdefault(int(head), []).append(p)
    return out


def _chunk_recorded(done_dir: Path, c: int) -> bool:
    return any(done_dir.glob(f"{c:06d}-*.json"))


def _create_or_join(path: Path, meta: dict[str, Any], explicit: dict[str, Any]) -> dict[str, Any]:
    """Create the store (maps file, then metadata) or join an existing one; return its metadata.

    Several processes may call this at once: each builds its files under unique temporary names and
    publishes them with an exclusive hard link, so exactly one version of each file wins.
    """
    path.mkdir(parents=True, exist_ok=True)
    (path / "done").mkdir(exist_ok=True)
    meta_path, maps_path = path / "meta.json", path / "maps.npy"
    shape, dtype = tuple(meta["shape"]), np.dtype(meta["dtype"])
    if not meta_path.exists():
        if not maps_path.exists():
            tmp = path / f".maps.npy.{uuid.uuid4().hex[:8]}.tmp"
            arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype, shape=shape)
            del arr  # a sparse file of the full size, zeros until written
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
    identity = {k: meta[k] for k in IDENTITY_KEYS}
    diff = mismatches(stored, identity)
    for key in ("dtype", "shape", "autocast"):
        if stored.get(key) != meta[key]:
            diff.append(f"{key} {stored.get(key)} != requested {meta[key]}")
    if explicit.get("chunk_size") is not None and stored["chunk_size"] != explicit["chunk_size"]:
        diff.append(f"chunk_size {stored['chunk_size']} != requested {explicit['chunk_size']}")
    if diff:
        raise StaleStoreError(f"the store at {path} was made with other settings ({'; '.join(diff)}): "
                              "choose another store folder, or delete this one to recompute it")
    return stored


def precompute_ig(
    model: nn.Module,
    dataset: ImageDataset,
    convention: InputConvention,
    store_dir: str | os.PathLike,
    *,
    teacher_hash: str,
    n_steps: int = 50,
    method: str = "gausslegendre",
    baseline: str = "zeros-normalized",
    dtype: str = "float16",
    batch_size: int | None = None,
    internal_batch_size: int | None = None,
    chunk_size: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    device: str | torch.device = "cpu",
    fold_bn: bool = True,
    channels_last: bool | None = None,
    autocast: bool = False,
    max_memory_mb: float | None = None,
    tune_allocator: bool = True,
    progress: bool = True,
    finalize: bool = True,
    on_chunk_done: Callable[[int], None] | None = None,
) -> PrecomputeResult:
    """Write (or finish) the IG maps of ``dataset`` for ``model`` into the store at ``store_dir``.

    Targets are the true labels; inputs are ``convention.from_uint8(dataset.x)``; ``baseline`` is
    ``"zeros-normalized"`` (zero in network-input space: the mean-colour image, the paper's choice) or
    ``"black"`` (pixel zeros). ``dtype`` is the stored map type (``"float16"`` or ``"float32"``).

    Work: ``chunk_size`` positions per resumable chunk (default 256 on CPU, 2048 on CUDA, or the
    store's); ``batch_size`` images per IG call inside a chunk (default the whole chunk);
    ``internal_batch_size`` step-samples per forward pass (default: see
    :func:`default_internal_batch_size`, capped by ``max_memory_mb``, which also caps ``batch_size``).
    Settings left None are taken from the store when it exists, so a resumed run computes exactly what
    the first run would have. ``rank``/``world_size`` (default: ``RANK``/``WORLD_SIZE`` from the
    environment, else 0/1) split the chunks; ``device`` ``"cuda"`` becomes ``cuda:LOCAL_RANK`` under
    torchrun. ``autocast`` (CUDA only) trades precision for speed and is recorded in the store.
    ``tune_allocator`` applies :func:`tune_cpu_allocator` on CPU (speed only; results unchanged).

    Returns what this call did; the store is complete (``result.store`` set) once every chunk has
    been recorded and, with ``finalize``, verified. ``on_chunk_done(chunk)`` is called after each
    chunk's record is written.
    """
    t_start = time.perf_counter()
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    quadrature(method, n_steps)  # validates method and n_steps before anything is written
    rank, world_size = _resolve_rank(rank, world_size)
    device = _resolve_device(device, world_size)
    if autocast and device.type != "cuda":
        raise ValueError("autocast is a CUDA-only option")
    if tune_allocator and device.type == "cpu":
        tune_cpu_allocator()
    path = Path(store_dir)
    n = len(dataset)
    if n == 0:
        raise ValueError("the dataset is empty")
    c_, h, w = dataset.image_shape
    explicit = {"chunk_size": chunk_size}
    if chunk_size is None:
        chunk_size = 2048 if device.type == "cuda" else 256
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    prepared = prepare_for_ig(model, fold_bn=fold_bn, channels_last=channels_last, device=device)
    sample_shape = (c_, h, w)
    compute = _compute_settings(prepared, sample_shape, device, batch_size, internal_batch_size,
                                max_memory_mb, chunk_size)
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "complete": False,
        "dataset": dataset.name,
        "fingerprint": dataset.fingerprint(),
        "teacher_hash": teacher_hash,
        "n_steps": n_steps,
        "method": method,
        "baseline": baseline_spec(baseline),
        "convention": convention.to_dict(),
        "target": "true label (logit attributed)",
        "map": "sum over channels of |attribution|",
        "dtype": dtype,
        "shape": [n, h, w],
        "chunk_size": chunk_size,
        "num_chunks": math.ceil(n / chunk_size),
        "autocast": str(autocast) if autocast else False,
        "compute": compute,
        "created": _who(),
    }
    stored = _create_or_join(path, meta, explicit)
    chunk_size, num_chunks = stored["chunk_size"], stored["num_chunks"]
    # Adopt the store's settings for anything the caller left open: a resume reproduces the first run.
    if batch_size is None:
        compute["batch_size"] = stored["compute"].get("batch_size", compute["batch_size"])
    if internal_batch_size is None:
        compute["internal_batch_size"] = stored["compute"].get("internal_batch_size",
                                                                compute["internal_batch_size"])
    if channels_last is None and stored["compute"].get("channels_last") != prepared.channels_last:
        prepared = prepare_for_ig(model, fold_bn=fold_bn, channels_last=stored["compute"]["channels_last"],
                                  device=device)
        compute["channels_last"] = prepared.channels_last

    result = PrecomputeResult(path, rank, world_size, num_chunks)
    if stored.get("complete"):
        result.complete, result.store = True, MapStore.open(path)
        result.seconds = time.perf_counter() - t_start
        return result

    done_dir = path / "done"
    mine = [c for c in range(num_chunks) if c % world_size == rank]
    recorded = _records(done_dir)
    todo = [c for c in mine if c not in recorded]
    result.skipped = [c for c in mine if c in recorded]
    base = baseline_tensor(baseline, convention, sample_shape).to(device)
    maps_path = path / "maps.npy"
    offset, row_bytes = data_offset(maps_path), h * w * np.dtype(dtype).itemsize
    np_dtype = DTYPES[dtype]

    bar = _progress_bar(progress, sum(_size(c, chunk_size, n) for c in mine),
                        sum(_size(c, chunk_size, n) for c in result.skipped), rank, world_size)
    fd = os.open(maps_path, os.O_RDWR)
    try:
        for c in todo:
            if _chunk_recorded(done_dir, c):  # done meanwhile by another process (resume overlap)
                result.skipped.append(c)
                bar.update(_size(c, chunk_size, n))
                continue
            t0 = time.perf_counter()
            s, e = _chunk_bounds(c, chunk_size, n)
            maps, stats = _compute_chunk(prepared, dataset, convention, s, e, base, n_steps, method,
                                         compute, autocast, np_dtype, bar)
            _pwrite_all(fd, maps.tobytes(), offset + s * row_bytes)
            os.fsync(fd)  # the maps are on disk before the record that says so
            record = {"chunk": c, "start": s, "stop": e, "rank": rank, "world_size": world_size,
                      "delta": stats, "seconds": round(time.perf_counter() - t0, 3), "compute": compute,
                      **_who()}
            # A unique name per record: two processes that computed the same chunk leave two records,
            # which finalisation refuses, instead of one silently replacing the other.
            write_json_atomic(done_dir / f"{c:06d}-{uuid.uuid4().hex[:8]}.json", record)
            result.computed.append(c)
            if on_chunk_done is not None:
                on_chunk_done(c)
    finally:
        os.close(fd)
        bar.close()

    recorded = _records(done_dir)
    if finalize and all(c in recorded for c in range(num_chunks)):
        result.store = finalize_store(path)
        result.complete = True
    result.seconds = time.perf_counter() - t_start
    return result


def _size(c: int, chunk_size: int, n: int) -> int:
    s, e = _chunk_bounds(c, chunk_size, n)
    return e - s


def _who() -> dict[str, Any]:
    return {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": socket.gethostname(), "pid": os.getpid(),
            "igkd": __version__, "torch": torch.__version__, "threads": torch.get_num_threads()}


def _compute_settings(prepared: PreparedModel, sample_shape: tuple[int, ...], device: torch.device,
                      batch_size: int | None, internal_batch_size: int | None, max_memory_mb: float | None,
                      chunk_size: int) -> dict[str, Any]:
    ibs = internal_batch_size or default_internal_batch_size((1, *sample_shape), device)
    bs = batch_size or chunk_size
    budget = None
    if max_memory_mb is not None:
        budget = max_memory_mb * 2**20
    elif device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = 0.6 * free
    if budget is not None:
        per_sample = estimate_sample_bytes(prepared.module, sample_shape, device)
        params = sum(p.numel() * p.element_size() for p in prepared.module.parameters())
        # A quarter of the budget for the call's input/gradient/map buffers, the rest for the passes.
        per_image = 5 * 4 * int(np.prod(sample_shape))
        bs = max(1, min(bs, int(0.25 * budget // per_image)))
        ibs = max(1, min(ibs, int((0.75 * budget - 2 * params) // per_sample)))
    return {"internal_batch_size": int(ibs), "batch_size": int(bs), "fold_bn": prepared.folded,
            "channels_last": prepared.channels_last, "device": str(device), "max_memory_mb": max_memory_mb}


def _compute_chunk(prepared: PreparedModel, dataset: ImageDataset, convention: InputConvention, s: int, e: int,
                   base: torch.Tensor, n_steps: int, method: str, compute: dict[str, Any],
                   autocast: bool, np_dtype: type, bar) -> tuple[np.ndarray, dict[str, Any]]:
    """Maps of positions s..e-1 and their convergence-delta statistics."""
    device = base.device
    out = np.empty((e - s, *dataset.image_shape[1:]), dtype=np_dtype)
    abs_d, rel_d = [], []
    seen = flushed = 0

    def advance(samples: int) -> None:  # progress in whole images
        nonlocal seen
        before = seen // n_steps
        seen += samples
        bar.update(seen // n_steps - before)

    for a in range(s, e, compute["batch_size"]):
        b = min(e, a + compute["batch_size"])
        x = convention.from_uint8(dataset.x[a:b].to(device))
        y = dataset.y[a:b].to(device)
        res = integrated_gradients_detailed(prepared, x, y, base, n_steps, method, compute["internal_batch_size"],
                                            True, autocast=autocast, progress_callback=advance)
        m = attribution_map(res.attributions).float().cpu().numpy()
        if np_dtype is np.float16 and not np.all(m <= FLOAT16_MAX):
            raise ValueError(f"IG maps of images {a}..{b - 1} exceed the float16 range (max {m.max():.3g}): "
                             "use dtype float32")
        stored = m.astype(np_dtype)
        flushed += int(np.count_nonzero((m > 0) & (stored == 0)))  # float16 underflow, recorded
        out[a - s:b - s] = stored
        d = res.delta.detach().double().abs().cpu()
        abs_d.append(d)
        rel_d.append(d / res.output_difference.detach().double().abs().cpu())
    d, r = torch.cat(abs_d), torch.cat(rel_d)
    finite = torch.isfinite(r)  # F(x) == F(b) leaves the relative delta undefined
    stats = {"count": int(d.numel()), "sum_abs": float(d.sum()), "max_abs": float(d.max()),
             "count_rel": int(finite.sum()), "sum_rel": float(r[finite].sum()),
             "max_rel": float(r[finite].max()) if finite.any() else None, "flushed_to_zero": flushed}
    return out, stats


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(progress: bool, total: int, initial: int, rank: int, world_size: int):
    if not progress or not sys.stderr.isatty():
        return _NoBar()
    from tqdm import tqdm

    desc = "IG maps" if world_size == 1 else f"IG maps rank {rank}/{world_size}"
    return tqdm(total=total, initial=initial, unit="img", desc=desc, dynamic_ncols=True, smoothing=0.1)


def finalize_store(store_dir: str | os.PathLike) -> MapStore:
    """Verify that every position was written exactly once, record the delta summary, mark complete.

    Refuses (with :class:`StaleStoreError` saying what and how to fix) a store whose completion
    records miss a chunk, hold two records for one chunk (overlapping rank settings), or do not tile
    ``0..N-1``. Safe to call more than once and from several processes.
    """
    path = Path(store_dir)
    meta = read_meta(path)
    if meta.get("complete"):
        return MapStore.open(path)
    n, chunk_size, num_chunks = meta["shape"][0], meta["chunk_size"], meta["num_chunks"]
    recorded = _records(path / "done")
    stray = sorted(c for c in recorded if not 0 <= c < num_chunks)
    missing = [c for c in range(num_chunks) if c not in recorded]
    doubled = {c: ps for c, ps in recorded.items() if len(ps) > 1}
    if stray:
        raise StaleStoreError(f"cannot finalise {path}: records for chunks {_list(stray)} that do not exist "
                              f"(only {num_chunks}): delete those files in done/ and rerun `igkd precompute-ig`")
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
        if (rec.get("chunk"), rec.get("start"), rec.get("stop")) != (c, *_chunk_bounds(c, chunk_size, n)):
            raise StaleStoreError(f"cannot finalise {path}: {recorded[c][0].name} covers positions "
                                  f"{rec.get('start')}..{rec.get('stop')} but chunk {c} is "
                                  f"{_chunk_bounds(c, chunk_size, n)}: delete it and rerun `igkd precompute-ig`")
        records.append(rec)
    # The layout check above implies this; kept as the literal statement of "each index exactly once".
    covered = 0
    for rec in sorted(records, key=lambda r: r["start"]):
        if rec["start"] != covered:
            raise StaleStoreError(f"cannot finalise {path}: positions {covered}..{rec['start'] - 1} "
                                  "are not covered exactly once: rerun `igkd precompute-ig`")
        covered = rec["stop"]
    if covered != n:
        raise StaleStoreError(f"cannot finalise {path}: records end at {covered}, not {n}: rerun `igkd precompute-ig`")

    maps = np.load(path / "maps.npy", mmap_mode="r")
    if list(maps.shape) != list(meta["shape"]) or str(maps.dtype) != meta["dtype"]:
        raise StaleStoreError(f"cannot finalise {path}: maps.npy is {maps.dtype} {list(maps.shape)}, "
                              f"meta.json says {meta['dtype']} {meta['shape']}: delete it and rerun")
    maps_size = int(maps.size)
    digest = hashlib.sha256()
    step = max(1, (64 << 20) // max(1, maps[0].nbytes))
    for s in range(0, n, step):
        digest.update(np.ascontiguousarray(maps[s:s + step]).tobytes())
    del maps

    count = sum(r["delta"]["count"] for r in records)
    count_rel = sum(r["delta"]["count_rel"] for r in records)
    max_rels = [r["delta"]["max_rel"] for r in records if r["delta"]["max_rel"] is not None]
    meta["delta"] = {
        "definition": "delta = sum(attributions) - (F(x) - F(baseline)), per image; "
                      "relative = |delta| / |F(x) - F(baseline)|",
        "images": count,
        "mean_abs": sum(r["delta"]["sum_abs"] for r in records) / count,
        "max_abs": max(r["delta"]["max_abs"] for r in records),
        "mean_rel": sum(r["delta"]["sum_rel"] for r in records) / count_rel if count_rel else None,
        "max_rel": max(max_rels) if max_rels else None,
        "images_with_rel": count_rel,
    }
    flushed = sum(r["delta"].get("flushed_to_zero", 0) for r in records)
    meta["storage"] = {"values_flushed_to_zero": flushed, "fraction_flushed": flushed / max(1, maps_size)}
    meta["maps_sha256"] = digest.hexdigest()
    meta["chunks"] = {"count": num_chunks, "ranks": sorted({r["rank"] for r in records}),
                      "seconds": round(sum(r["seconds"] for r in records), 3)}
    meta["finalized"] = _who()
    meta["complete"] = True
    write_json_atomic(path / "meta.json", meta)
    return MapStore.open(path)


def _list(items: list[int], limit: int = 8) -> str:
    text = ", ".join(str(i) for i in items[:limit])
    return text + (f", ... ({len(items)} in all)" if len(items) > limit else "")
