"""Compute the IG maps of a whole dataset into a store: chunked, resumable, spread over processes.

The files are :class:`~igkd.attribution.store.StoreWriter`'s business; this module computes. Chunk
``c`` belongs to rank ``c % world_size``; each rank computes its chunks that have no completion record
yet and hands them to the writer. After ``kill -9`` at any moment, a rerun recomputes exactly the
chunks without a record. The last rank to finish (or :func:`finalize_store`) checks that the records
tile ``0..N-1`` exactly once, merges their convergence-delta statistics and marks the store complete.

Reproducibility: a chunk is also the unit of batching (its (image, step) pairs are cut into passes of
``internal_batch_size`` in a fixed order), so a chunk's maps do not depend on which process computed
it, on resumption, or on ``world_size`` -- only on the settings, which the store records and a resumed
run adopts, and on the thread count (oneDNN may split reductions differently).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..convention import InputConvention
from ..data.image_dataset import ImageDataset
from ..data.sources import read_ahead, spans_of
from ..distributed import resolve_rank
from ..errors import ConfigError, NumericalError, StaleStoreError, warn_once
from ..locks import FileLock
from ..utils import progress_bar, resolve_device
from .identity import StoreIdentity, baseline_spec
from .ig import (
    PreparedModel,
    attribution_map,
    default_internal_batch_size,
    integrated_gradients_detailed,
    prepare_for_ig,
    tune_cpu_allocator,
)
from .saliency import attribution_maps, check_gradcam_layer
from .store import (
    DTYPES,
    FORMAT,
    VERSION,
    MapStore,
    StoreWriter,
    explanation_problems,
    finalize_store,
    refuse_other_settings,
    who,
)


@dataclass
class IGOptions:
    """How maps are computed and stored (what they are maps *of* is the :class:`StoreIdentity`).

    Options left ``None`` are taken from an existing store, so a resumed run computes exactly what
    the first run would have, else from the defaults:

    * ``dtype``: stored map type, ``"float16"`` (default) or ``"float32"``;
    * ``chunk_size``: positions per resumable chunk (256 on CPU, 2048 on CUDA);
    * ``batch_size``: images per IG call inside a chunk (the whole chunk);
    * ``internal_batch_size``: step-samples per forward pass (:func:`default_internal_batch_size`,
      capped by ``max_memory_mb``, which also caps ``batch_size``);
    * ``fold_bn``: fold eval-mode batch norm into the convolutions (default True);
    * ``channels_last``: channels-last memory format for the passes (default True). Both change
      float32 rounding only, 50x below the 50-step quadrature's own error, and together make IG about
      2x faster on CPU (``benchmarks/ig_throughput.py``; README, "IG speed and exactness").

    ``autocast`` (CUDA only) trades precision for speed and is recorded in the store.
    ``tune_allocator`` applies :func:`tune_cpu_allocator` on CPU (speed only; results unchanged).
    ``loader_workers``: images not held in memory are read ahead of the computation by a background
    thread (0), or by that many DataLoader processes (a user's dataset that decodes as it is read); the
    same maps, and not recorded in the store.
    """

    dtype: str | None = None
    chunk_size: int | None = None
    batch_size: int | None = None
    internal_batch_size: int | None = None
    fold_bn: bool | None = None
    channels_last: bool | None = None
    device: str = "cpu"
    autocast: bool = False
    max_memory_mb: float | None = None
    tune_allocator: bool = True
    loader_workers: int = 0


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


def baseline_tensor(baseline: str, convention: InputConvention, image_shape: tuple[int, ...]) -> torch.Tensor:
    """The baseline image in network-input space, (1, C, H, W)."""
    zeros = torch.zeros((1, *image_shape))
    return zeros if baseline_spec(baseline)["space"] == "normalized" else convention.normalize(zeros)


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


def _adopt(options: IGOptions, stored: dict[str, Any] | None, device: torch.device) -> IGOptions:
    """Fill the options left open from an existing store, then from the defaults."""
    compute = (stored or {}).get("compute", {})
    o = replace(options)
    if o.dtype is None:
        o.dtype = stored["dtype"] if stored else "float16"
    if o.chunk_size is None:
        o.chunk_size = stored["chunk_size"] if stored else (2048 if device.type == "cuda" else 256)
    for key in ("batch_size", "internal_batch_size", "fold_bn", "channels_last"):
        if getattr(o, key) is None and compute.get(key) is not None:
            setattr(o, key, compute[key])
    if o.fold_bn is None:
        o.fold_bn = True
    if o.channels_last is None:
        o.channels_last = True
    if o.dtype not in DTYPES:
        raise ConfigError(f"ig.dtype must be one of {', '.join(DTYPES)}, got {o.dtype!r}")
    if o.chunk_size < 1:
        raise ConfigError(f"ig.chunk_size must be >= 1, got {o.chunk_size}")
    return o


def _compute_settings(prepared: PreparedModel, sample_shape: tuple[int, ...], device: torch.device,
                      o: IGOptions) -> dict[str, Any]:
    ibs = o.internal_batch_size or default_internal_batch_size((1, *sample_shape), device)
    bs = o.batch_size or o.chunk_size
    budget = None
    if o.max_memory_mb is not None:
        budget = o.max_memory_mb * 2**20
    elif device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        budget = 0.6 * free
    if budget is not None:
        per_sample = estimate_sample_bytes(prepared.module, sample_shape, device)
        params = sum(p.numel() * p.element_size() for p in prepared.module.parameters())
        # A quarter of the budget for the call's input/gradient/map buffers, the rest for the passes.
        per_image = 5 * 4 * int(np.prod(sample_shape))
        if o.batch_size is None:
            bs = max(1, min(bs, int(0.25 * budget // per_image)))
        if o.internal_batch_size is None:
            ibs = max(1, min(ibs, int((0.75 * budget - 2 * params) // per_sample)))
    return {"internal_batch_size": int(ibs), "batch_size": int(bs), "fold_bn": prepared.folded,
            "channels_last": prepared.channels_last, "device": str(device), "max_memory_mb": o.max_memory_mb}


def precompute_ig(
    model: nn.Module,
    dataset: ImageDataset,
    store_dir: str | os.PathLike,
    identity: StoreIdentity,
    options: IGOptions | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    progress: bool | None = None,
    finalize: bool = True,
    on_chunk_done: Callable[[int], None] | None = None,
    random_weights: bool = False,
) -> PrecomputeResult:
    """Write (or finish) the attribution maps of ``dataset`` for ``model`` into the store at ``store_dir``.

    Named for integrated gradients, the default; it computes whichever source ``identity.attribution``
    names (IG, or a Captum source of :mod:`igkd.attribution.saliency`) through the same chunks, records,
    checks and finalisation. ``identity`` says what the maps are: targets are the true labels, inputs are
    ``identity.convention.from_uint8(dataset.x)``, and the source's settings (IG: steps, quadrature and
    baseline) are its own.
    ``options`` says how they are computed (:class:`IGOptions`). ``rank``/``world_size`` (default:
    ``RANK``/``WORLD_SIZE`` from the environment, else 0/1) split the chunks.

    Returns what this call did; the store is complete (``result.store`` set) once every chunk has
    been recorded and, with ``finalize``, verified. ``on_chunk_done(chunk)`` is called after each
    chunk's record is written. ``random_weights`` says that ``model`` is meant to know nothing (the
    randomised-teacher control): recorded in the teacher check, so that a teacher at chance is reported
    as expected rather than as a fault.
    """
    t_start = time.perf_counter()
    rank, world_size = resolve_rank(rank, world_size)
    options = options or IGOptions()
    device = resolve_device(options.device)
    if options.autocast and device.type != "cuda":
        raise ConfigError("IG autocast is a CUDA-only option")
    if options.autocast and not identity.attribution.is_ig:
        raise ConfigError(f"IG autocast applies to integrated gradients only, not to {identity.attribution.name}")
    if dataset.fingerprint() != identity.fingerprint:
        raise StaleStoreError("the dataset given to precompute_ig is not the one the store identity names")
    path = Path(store_dir)
    n = len(dataset)
    if n == 0:
        raise ConfigError("the dataset is empty: nothing to attribute")
    stored = StoreWriter.existing_meta(path)
    if stored is not None and stored.get("complete"):  # nothing to do but check it is the right store
        diff = identity.mismatches(stored)
        diff += [f"{key} {stored[key]} != requested {want}" for key, want in
                 (("dtype", options.dtype), ("chunk_size", options.chunk_size))
                 if want is not None and stored[key] != want]
        refuse_other_settings(path, diff)
        store = MapStore.open(path, expect=identity)
        for problem in explanation_problems(store.meta):
            warn_once(f"IG map store {path}: {problem}")
        num = stored["num_chunks"]
        mine = [c for c in range(num) if c % world_size == rank]
        return PrecomputeResult(path, rank, world_size, num, [], mine, True, store,
                                time.perf_counter() - t_start)
    o = _adopt(options, stored, device)
    if o.tune_allocator and device.type == "cpu":
        tune_cpu_allocator()

    c_, h, w = dataset.image_shape
    prepared = prepare_for_ig(model, fold_bn=o.fold_bn, channels_last=o.channels_last, device=device)
    compute = _compute_settings(prepared, (c_, h, w), device, o)
    if identity.attribution.name == "gradcam":  # a layer without a feature map is refused before any work
        check_gradcam_layer(prepared.module, identity.attribution.layer, (c_, h, w))
    teacher_check = check_teacher(prepared.module, dataset, identity.convention, compute["batch_size"],
                                  o.loader_workers)
    if random_weights:
        teacher_check["random_weights"] = True
    for problem in explanation_problems({"teacher_check": teacher_check}):  # said before the long part
        warn_once(f"IG map store {path}: {problem}")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "complete": False,
        **identity.to_meta(),
        "target": "true label (logit attributed)",
        "map": "sum over channels of |attribution|, divided by its own maximum (kept in scales.npy)",
        "dtype": o.dtype,
        "shape": [n, h, w],
        "chunk_size": o.chunk_size,
        "num_chunks": math.ceil(n / o.chunk_size),
        "autocast": str(o.autocast) if o.autocast else False,
        "compute": compute,
        "teacher_check": teacher_check,
        "created": who(),
    }
    writer = StoreWriter.create_or_join(path, meta, identity, options.chunk_size)
    result = PrecomputeResult(path, rank, world_size, writer.num_chunks)
    if writer.complete:  # finished by another process meanwhile
        result.complete, result.store = True, MapStore.open(path)
        result.seconds = time.perf_counter() - t_start
        return result

    mine = [c for c in range(writer.num_chunks) if c % world_size == rank]
    recorded = writer.records()
    todo = [c for c in mine if c not in recorded]
    result.skipped = [c for c in mine if c in recorded]
    base = baseline_tensor(identity.baseline, identity.convention, (c_, h, w)).to(device)

    def size(c: int) -> int:
        s, e = writer.bounds(c)
        return e - s

    def batch_spans(c: int) -> list[tuple[int, int]]:
        return spans_of(*writer.bounds(c), compute["batch_size"])

    # Every batch this call computes, read ahead of the computation (for images that are not in memory).
    reads = read_ahead(dataset.x, dataset.y, [span for c in todo for span in batch_spans(c)], device,
                       o.loader_workers)

    desc = f"{'IG' if identity.attribution.is_ig else identity.attribution.name} maps"
    desc += "" if world_size == 1 else f" rank {rank}/{world_size}"
    bar = progress_bar(total=sum(size(c) for c in mine), initial=sum(size(c) for c in result.skipped),
                       unit="img", desc=desc, smoothing=0.1, enabled=progress)
    # One process per rank: a second one (same rank, same store) is refused; a killed one's lock is taken over.
    lock = FileLock(path, f"IG store (rank {rank} of {world_size})", name=f".igkd.lock.rank{rank}-of-{world_size}")
    with lock, bar, closing(reads):
        for c in todo:
            if writer.is_recorded(c):  # done meanwhile by another process (resume overlap)
                for _ in batch_spans(c):
                    next(reads)
                result.skipped.append(c)
                bar.update(size(c))
                continue
            t0 = time.perf_counter()
            maps, stats, scales, constant = _compute_chunk(prepared, dataset, identity, batch_spans(c), reads, base,
                                                           compute, o, bar)
            writer.write_chunk(c, maps, {"rank": rank, "world_size": world_size, "delta": stats, "scales": scales,
                                         "constant": constant,
                                         "seconds": round(time.perf_counter() - t0, 3), "compute": compute,
                                         **who()})
            result.computed.append(c)
            if on_chunk_done is not None:
                on_chunk_done(c)
        bar.close()
        if finalize and all(c in writer.records() for c in range(writer.num_chunks)):
            result.store = writer.finalize()
            result.complete = True
            for problem in explanation_problems(result.store.meta):
                warn_once(f"IG map store {path}: {problem}")
    result.seconds = time.perf_counter() - t_start
    return result


@torch.no_grad()
def check_teacher(module: nn.Module, dataset: ImageDataset, convention: InputConvention,
                  batch_size: int, workers: int = 0) -> dict[str, Any]:
    """The teacher's accuracy (%) on the images it is to explain, against always answering the most
    frequent class; ``at_chance`` when it is not clearly above that (by 2 points and 3 standard errors).
    Images not in memory are read ahead (:func:`~igkd.data.sources.read_ahead`, ``workers`` processes)."""
    device = next(module.parameters()).device
    correct = 0
    for xb, yb in read_ahead(dataset.x, dataset.y, spans_of(0, len(dataset), batch_size), device, workers):
        correct += int((module(convention.from_uint8(xb)).argmax(1) == yb).sum())
    n = len(dataset)
    majority = float(torch.bincount(dataset.y).max()) / n
    margin = max(0.02, 3 * math.sqrt(majority * (1 - majority) / n))
    return {"accuracy": 100.0 * correct / n, "majority": 100.0 * majority, "at_chance": correct / n <= majority + margin}


def _compute_chunk(prepared: PreparedModel, dataset: ImageDataset, identity: StoreIdentity,
                   spans: list[tuple[int, int]], reads, base: torch.Tensor, compute: dict[str, Any], o: IGOptions,
                   bar) -> tuple[np.ndarray, dict[str, Any], list[float], list[int]]:
    """Maps of a chunk's positions (its batches' ``spans``, whose images and labels ``reads`` gives in
    order), each divided by its maximum, their convergence deltas, the maxima, and the positions whose
    map is constant (one value at every pixel)."""
    n_steps, np_dtype = identity.n_steps, DTYPES[o.dtype]
    s, e = spans[0][0], spans[-1][1]
    out = np.empty((e - s, *dataset.image_shape[1:]), dtype=np_dtype)
    abs_d, scaled, scales, constant = [], [], [], []
    seen = flushed = 0

    def advance(samples: int) -> None:  # progress in whole images
        nonlocal seen
        before = seen // n_steps
        seen += samples
        bar.update(seen // n_steps - before)

    for a, b in spans:
        xb, y = next(reads)
        x = identity.convention.from_uint8(xb)
        if identity.attribution.is_ig:
            res = integrated_gradients_detailed(prepared, x, y, base, n_steps, identity.method,
                                                compute["internal_batch_size"], True, autocast=o.autocast,
                                                progress_callback=advance)
            m = attribution_map(res.attributions).float().cpu().numpy()
        else:  # a Captum source: no convergence delta (only a path integral has one)
            res = None
            m = attribution_maps(identity.attribution, prepared.module, x, y, convention=identity.convention,
                                 positions=list(range(a, b)),
                                 internal_batch_size=compute["internal_batch_size"]).float().cpu().numpy()
            bar.update(b - a)
        if not np.isfinite(m).all():
            raise NumericalError(f"IG maps of images {a}..{b - 1} hold inf or NaN: check the teacher's weights")
        peak = m.reshape(len(m), -1).max(axis=1).astype(np.float64)
        constant += [a + int(i) for i in np.flatnonzero(peak == m.reshape(len(m), -1).min(axis=1))]
        if not (peak > 0).all() and identity.attribution.name != "gradcam":  # Grad-CAM: ReLU can zero a map
            zero = [a + int(i) for i in np.flatnonzero(peak <= 0)]
            raise NumericalError(f"IG maps of training positions {zero[:5]} are all zero (the teacher's gradient "
                                 "vanishes there): check that the teacher is trained and loaded")
        # Stored divided by its own maximum, so float16 keeps every map's shape at any teacher scale
        # (its smallest normal number is 6e-5); the maxima are kept exactly, in the chunk record.
        stored = (m / np.where(peak > 0, peak, 1.0).astype(np.float32)[:, None, None]).astype(np_dtype)
        flushed += int(np.count_nonzero((m > 0) & (stored == 0)))  # below 2^-24 of its map's maximum
        out[a - s:b - s] = stored
        scales += peak.tolist()
        if res is None:
            continue
        d = res.delta.detach().double().abs().cpu()
        abs_d += d.tolist()
        size = res.outputs.detach().double().abs().cpu() + res.baseline_outputs.detach().double().abs().cpu()
        scaled += (d / size.clamp_min(1e-30)).tolist()
    stats = {"abs": abs_d, "scaled": scaled} if identity.attribution.is_ig else {}
    return out, {**stats, "flushed_to_zero": flushed}, scales, constant


__all__ = ["IGOptions", "PrecomputeResult", "baseline_tensor", "finalize_store", "precompute_ig",
           "resolve_rank"]
