"""From a config to data, models, stores and finished runs: what the CLI and the experiments call."""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .attribution import IGOptions, MapStore, PrecomputeResult, StoreIdentity, precompute_ig
from .config import Config, TrainConfig
from .convention import InputConvention
from .data import (
    DATASETS,
    compute_convention,
    load_dataset,
    stratified_split,
    stratified_subset,
)
from .data.control_maps import control_maps
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
from .utils import derive_seed, setup_device


@dataclass
class Datasets:
    train: ImageDataset
    test: ImageDataset
    convention: InputConvention

    @property
    def shape(self) -> tuple[int, int]:
        """(number of classes, input channels): what a model for this data must take and give."""
        return self.train.num_classes, self.train.image_shape[0]


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


def training_data(ds: Datasets, val_fraction: float, seed: int, subset_fraction: float = 1.0) -> TrainingData:
    """Positions to train on and to validate on, both stratified and drawn from ``seed``.

    With ``subset_fraction`` < 1 a run trains on a fresh stratified fraction of the training split
    (the paper's Monte Carlo runs: 80 %); positions still index the full training set and its store.
    """
    if val_fraction > 0:
        train_pos, val_pos = stratified_split(ds.train.y, val_fraction, seed=derive_seed(seed, "split"))
    else:
        train_pos, val_pos = torch.arange(len(ds.train)), torch.zeros(0, dtype=torch.int64)
    if subset_fraction < 1.0:
        kept, _dropped = stratified_split(ds.train.y[train_pos], 1.0 - subset_fraction,
                                          seed=derive_seed(seed, "subset"))
        train_pos = train_pos[kept]
    return TrainingData(ds.train, ds.test, train_pos, val_pos, ds.convention)


def build_teacher(cfg: Config, num_classes: int, in_channels: int) -> torch.nn.Module:
    """The configured teacher architecture, randomly initialised."""
    t = cfg.teacher
    return create_model(t.arch, num_classes=num_classes, in_channels=in_channels, width_mult=t.width_mult,
                        strides=t.strides, dropout=t.dropout)


def load_teacher(cfg: Config, num_classes: int, in_channels: int,
                 device: torch.device) -> tuple[torch.nn.Module, str]:
    """The configured teacher with its weights, in eval mode, and the hash that names those weights."""
    if cfg.teacher.checkpoint is None:
        raise CheckpointError("no teacher: set teacher.checkpoint=PATH, or train one with `igkd train-teacher`")
    teacher = load_weights(build_teacher(cfg, num_classes, in_channels), cfg.teacher.checkpoint)
    return teacher.to(device).eval(), state_dict_hash(teacher)


def _prepare(cfg: Config, tc: TrainConfig) -> tuple[torch.device, Datasets, TrainingData]:
    """Device, threads and initialisation seed of a training run, then its data and split."""
    device = setup_device(tc.device, tc.threads)
    torch.manual_seed(derive_seed(tc.seed, "init"))
    ds = load_datasets(cfg)
    return device, ds, training_data(ds, cfg.data.val_fraction, tc.seed, tc.subset_fraction)


def _finish(run: RunDir, history: list[dict], extra: dict) -> dict:
    summary = {**extra, **summarize(history)}
    write_json(run.file("summary.json"), summary)
    return summary


TEACHER_SECTIONS = ("data", "teacher", "teacher_train", "augment")


def teacher_config(cfg: Config) -> Config:
    """The config of ``cfg``'s teacher run: the sections that make the teacher, everything else default.

    So a teacher is reused whatever the students' settings, and retrained when what makes it changes.
    """
    out = Config()
    for section in TEACHER_SECTIONS:
        setattr(out, section, copy.deepcopy(getattr(cfg, section)))
    out.teacher.checkpoint = None
    out.augment.overlay_p = Config().augment.overlay_p  # the teacher trains without the overlay
    out.augment.maps = Config().augment.maps
    return out


def run_or_reuse(out: Path, cfg: Config, fn, label: str, step: str = "", progress: bool | None = None) -> dict:
    """The summary of the finished run of ``cfg`` in ``out``; else run ``fn`` there (resuming if begun)."""
    run = RunDir(out)
    prefix = f"{step} " if step else ""
    if run.complete and run.saved_config() is not None and run.saved_config().to_dict() == cfg.to_dict():
        print(f"{prefix}{label}: reusing {out}", flush=True)
        return run.summary()
    print(f"{prefix}{label}: training -> {out}", flush=True)
    return fn(cfg, out, resume=run.checkpoint.is_file(), progress=progress)


def train_teacher(cfg: Config, out: str | Path, resume: bool = False, progress: bool | None = None,
                  on_epoch_end=None) -> dict:
    """Train the teacher architecture with cross-entropy (``teacher_train`` settings, no overlay)."""
    tc = cfg.teacher_train
    device, ds, data = _prepare(cfg, tc)
    teacher = build_teacher(cfg, *ds.shape)
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


def store_identity(cfg: Config, ds: Datasets, teacher_hash: str) -> StoreIdentity:
    """What the run's IG store must be of: built once, it names, writes and checks the store."""
    return StoreIdentity.of(ds.train, teacher_hash, ds.convention, n_steps=cfg.ig.n_steps, method=cfg.ig.method,
                            baseline=cfg.ig.baseline)


def store_path(cfg: Config, identity: StoreIdentity) -> Path:
    """``ig.store``, or a folder under ``ig.cache_dir`` named by the identity."""
    if cfg.ig.store:
        return Path(cfg.ig.store)
    root = Path(cfg.ig.cache_dir) if cfg.ig.cache_dir else default_cache_dir() / "ig"
    return root / identity.folder_name()


def default_cache_dir() -> Path:
    """Where igkd keeps what it can rebuild: ``$IGKD_CACHE``, else ``~/.cache/igkd``."""
    return Path(os.environ.get("IGKD_CACHE", Path.home() / ".cache" / "igkd"))


def ig_options(cfg: Config, device: torch.device) -> IGOptions:
    ig = cfg.ig
    return IGOptions(dtype=ig.dtype, chunk_size=ig.chunk_size, batch_size=ig.batch_size, fold_bn=ig.fold_bn,
                     channels_last=ig.channels_last, device=str(device))


def precompute(cfg: Config, rank: int | None = None, world_size: int | None = None,
               progress: bool | None = None) -> PrecomputeResult:
    """Write (or finish) the IG map store of the configured training set and teacher."""
    device = setup_device(cfg.train.device, cfg.train.threads)
    ds = load_datasets(cfg)
    teacher, teacher_hash = load_teacher(cfg, *ds.shape, device)
    identity = store_identity(cfg, ds, teacher_hash)
    return precompute_ig(teacher, ds.train, store_path(cfg, identity), identity, ig_options(cfg, device),
                         rank=rank, world_size=world_size, progress=progress)


def open_store(cfg: Config, ds: Datasets, teacher_hash: str) -> MapStore:
    identity = store_identity(cfg, ds, teacher_hash)
    path = store_path(cfg, identity)
    if not path.exists():
        raise StaleStoreError(f"no IG map store at {path}; run `igkd precompute-ig` with the same config first")
    return MapStore.open(path, expect=identity)


def overlay_maps(cfg: Config, ds: Datasets, teacher_hash: str | None) -> torch.Tensor:
    """The maps the overlay uses (``augment.maps``): the IG store's, or a control's (another image's, noise)."""
    source = cfg.augment.maps
    maps = open_store(cfg, ds, teacher_hash).load_all() if source != "noise" else None
    n, (_c, h, w) = len(ds.train), ds.train.image_shape
    return control_maps(source, maps, (n, h, w), derive_seed(cfg.train.seed, "control maps", source))


def distill(cfg: Config, out: str | Path, resume: bool = False, progress: bool | None = None,
            on_epoch_end=None) -> dict:
    """Train a truncated student by ``distill.method``; write the run directory; return its summary."""
    tc = cfg.train
    device, ds, data = _prepare(cfg, tc)
    method = cfg.distill.method
    spec = MethodSpec.parse(method)
    needs_teacher, uses_ig = spec.needs_teacher, spec.ig
    if needs_teacher or uses_ig:
        teacher, teacher_hash = load_teacher(cfg, *ds.shape, device)
    else:  # the architecture alone fixes the student's shape
        teacher, teacher_hash = build_teacher(cfg, *ds.shape), None
    maps = overlay_maps(cfg, ds, teacher_hash) if uses_ig else None
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
        "overlay_maps": cfg.augment.maps if uses_ig else None,
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
