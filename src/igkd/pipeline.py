"""From a config to data, models, stores and finished runs: what the CLI and the experiments call."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .config import Config, TrainConfig
from .convention import InputConvention
from .data import (
    DATASETS,
    compute_convention,
    load_dataset,
    stratified_split,
    stratified_subset,
)
from .data.image_dataset import ImageDataset
from .distill.methods import Distiller, MethodSpec
from .distill.trainer import TrainingData, evaluate, fit, summarize
from .errors import CheckpointError, StaleStoreError
from .fileio import write_json
from .models import (
    at_layer_for,
    compression_factor,
    count_macs,
    count_parameters,
    create_model,
    state_dict_hash,
    truncated_student,
)
from .runs import RunDir, environment, load_weights
from .utils import derive_seed, resolve_device


@dataclass
class Datasets:
    train: ImageDataset
    test: ImageDataset
    convention: InputConvention


def load_datasets(cfg: Config) -> Datasets:
    """The configured training and test sets (subsets when sizes are set) and their input convention."""
    d = cfg.data
    train = load_dataset(d.name, "train", root=d.root, download=d.download)
    test = load_dataset(d.name, "test", root=d.root, download=d.download)
    if d.train_size is not None and d.train_size < len(train):
        train = stratified_subset(train, d.train_size, seed=d.subset_seed)
    if d.test_size is not None and d.test_size < len(test):
        test = stratified_subset(test, d.test_size, seed=d.subset_seed)
    convention = DATASETS[d.name].convention or compute_convention(train)
    return Datasets(train, test, convention)


def training_data(ds: Datasets, val_fraction: float, seed: int) -> TrainingData:
    if val_fraction > 0:
        train_pos, val_pos = stratified_split(ds.train.y, val_fraction, seed=derive_seed(seed, "split"))
    else:
        train_pos, val_pos = torch.arange(len(ds.train)), torch.zeros(0, dtype=torch.int64)
    return TrainingData(ds.train, ds.test, train_pos, val_pos, ds.convention)


def build_teacher(cfg: Config, ds: Datasets) -> torch.nn.Module:
    t = cfg.teacher
    return create_model(t.arch, num_classes=ds.train.num_classes, in_channels=ds.train.image_shape[0],
                        width_mult=t.width_mult, strides=t.strides, dropout=t.dropout)


def load_teacher(cfg: Config, ds: Datasets, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The configured teacher with its weights, in eval mode, and the hash that names those weights."""
    if cfg.teacher.checkpoint is None:
        raise CheckpointError("no teacher: set teacher.checkpoint=PATH, or train one with `igkd train-teacher`")
    teacher = load_weights(build_teacher(cfg, ds), cfg.teacher.checkpoint)
    return teacher.to(device).eval(), state_dict_hash(teacher)


def _prepare(cfg: Config, tc: TrainConfig) -> tuple[torch.device, Datasets, TrainingData]:
    """Device, threads and initialisation seed of a training run, then its data and split."""
    device = resolve_device(tc.device)
    if tc.threads:
        torch.set_num_threads(tc.threads)
    torch.manual_seed(derive_seed(tc.seed, "init"))
    ds = load_datasets(cfg)
    return device, ds, training_data(ds, cfg.data.val_fraction, tc.seed)


def _finish(run: RunDir, history: list[dict], extra: dict) -> dict:
    summary = {**extra, **summarize(history)}
    write_json(run.file("summary.json"), summary)
    return summary


def train_teacher(cfg: Config, out: str | Path, resume: bool = False, progress: bool | None = None,
                  on_epoch_end=None) -> dict:
    """Train the teacher architecture with cross-entropy (``teacher_train`` settings, no overlay)."""
    tc = cfg.teacher_train
    device, ds, data = _prepare(cfg, tc)
    teacher = build_teacher(cfg, ds)
    run = RunDir(out)
    run.start(cfg, resume, environment(device, tc.seed))
    t0 = time.perf_counter()
    history = fit(Distiller(teacher, None, "student", cfg.distill), data, tc, cfg.augment, run, device,
                  resume=resume, progress=progress, desc="teacher", on_epoch_end=on_epoch_end)
    return _finish(run, history, {
        "role": "teacher",
        "dataset": ds.train.name,
        "dataset_fingerprint": ds.train.fingerprint(),
        "params": count_parameters(teacher),
        "macs": count_macs(teacher, ds.train.image_shape),
        "teacher_hash": state_dict_hash(teacher),
        "wall_time_s": time.perf_counter() - t0,
        "seed": tc.seed,
    })


def ig_settings(cfg: Config, ds: Datasets, teacher_hash: str) -> dict:
    return {"dataset": ds.train.name, "fingerprint": ds.train.fingerprint(), "teacher_hash": teacher_hash,
            "n_steps": cfg.ig.n_steps, "method": cfg.ig.method, "baseline": cfg.ig.baseline,
            "convention": ds.convention.to_dict()}


def store_path(cfg: Config, ds: Datasets, teacher_hash: str) -> Path:
    """``ig.store``, or a cache folder whose name says which dataset, teacher and settings made it."""
    if cfg.ig.store:
        return Path(cfg.ig.store)
    from .cache import cache_dir

    name = (f"{ds.train.name}-{ds.train.fingerprint()[:10]}-t{teacher_hash[:10]}-"
            f"{cfg.ig.method}{cfg.ig.n_steps}-{cfg.ig.baseline}")
    return cache_dir() / "ig" / name


def precompute(cfg: Config, rank: int | None = None, world_size: int | None = None,
               progress: bool | None = None):
    """Write (or finish) the IG map store of the configured training set and teacher.

    Returns the :class:`~igkd.attribution.PrecomputeResult` of this worker."""
    from .attribution import precompute_ig

    device = resolve_device(cfg.train.device)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    ds = load_datasets(cfg)
    teacher, teacher_hash = load_teacher(cfg, ds, device)
    path = store_path(cfg, ds, teacher_hash)
    return precompute_ig(teacher, ds.train, ds.convention, path, teacher_hash=teacher_hash, n_steps=cfg.ig.n_steps,
                  method=cfg.ig.method, baseline=cfg.ig.baseline, dtype=cfg.ig.dtype,
                  batch_size=cfg.ig.batch_size, chunk_size=cfg.ig.chunk_size, rank=rank,
                  world_size=world_size, device=str(device), fold_bn=cfg.ig.fold_bn,
                  progress=progress is not False)


def open_store(cfg: Config, ds: Datasets, teacher_hash: str):
    from .attribution import MapStore

    path = store_path(cfg, ds, teacher_hash)
    if not path.exists():
        raise StaleStoreError(f"no IG map store at {path}; run `igkd precompute-ig` with the same config first")
    return MapStore.open(path, expect=ig_settings(cfg, ds, teacher_hash))


def distill(cfg: Config, out: str | Path, resume: bool = False, progress: bool | None = None,
            on_epoch_end=None) -> dict:
    """Train a truncated student by ``distill.method``; write the run directory; return its summary."""
    tc = cfg.train
    device, ds, data = _prepare(cfg, tc)
    method = cfg.distill.method
    spec = MethodSpec.parse(method)
    needs_teacher, uses_ig = spec.needs_teacher, spec.ig
    if needs_teacher or uses_ig:
        teacher, teacher_hash = load_teacher(cfg, ds, device)
    else:  # the architecture alone fixes the student's shape
        teacher, teacher_hash = build_teacher(cfg, ds), None
    maps = open_store(cfg, ds, teacher_hash).load_all(torch.float16) if uses_ig else None
    student = truncated_student(teacher, cfg.student.remove_blocks)
    at_layer = cfg.distill.at_layer
    if at_layer is None and spec.at:
        at_layer = at_layer_for(cfg.student.remove_blocks, len(teacher.features))
    distiller = Distiller(student, teacher if needs_teacher else None, method, cfg.distill, at_layer=at_layer)
    run = RunDir(out)
    run.start(cfg, resume, environment(device, tc.seed))
    t0 = time.perf_counter()
    history = fit(distiller, data, tc, cfg.augment, run, device,
                  maps=maps.to(device) if maps is not None else None, resume=resume, progress=progress,
                  desc=method, on_epoch_end=on_epoch_end)
    teacher_acc = None
    if teacher_hash is not None:
        teacher_acc = evaluate(teacher, ds.test.x.to(device), ds.test.y.to(device), ds.convention,
                               tc.eval_batch_size)
    shape = ds.train.image_shape
    return _finish(run, history, {
        "role": "student",
        "method": method,
        "remove_blocks": cfg.student.remove_blocks,
        "dataset": ds.train.name,
        "dataset_fingerprint": ds.train.fingerprint(),
        "train_images": len(data.train_pos),
        "test_images": len(ds.test),
        "params": count_parameters(student),
        "macs": count_macs(student, shape),
        "teacher_params": count_parameters(teacher),
        "teacher_macs": count_macs(teacher, shape),
        "compression_factor": compression_factor(teacher, student),
        "teacher_hash": teacher_hash,
        "teacher_test_acc": teacher_acc,
        "at_layer": at_layer,
        "wall_time_s": time.perf_counter() - t0,
        "seed": tc.seed,
    })
