"""From a config to data, models, stores and finished runs: what the CLI and the experiments call."""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .attribution import (
    AttributionSource,
    IGOptions,
    MapStore,
    PrecomputeResult,
    StoreIdentity,
    default_gradcam_layer,
    precompute_ig,
)
from .config import PYTHON_RUN_KEYS, AugmentConfig, Config, TrainConfig
from .convention import InputConvention
from .data import (
    DATASETS,
    check_classes,
    compute_convention,
    load_dataset,
    stratified_split,
    stratified_subset,
)
from .data.augment import example_overlays, plan_padding
from .data.catalog import known_image_shape
from .data.control_maps import control_maps, derangement, streamed_noise_maps
from .data.image_dataset import ImageDataset
from .distill.methods import Distiller, MethodSpec
from .distill.trainer import TrainingData, evaluate, fit, summarize, training_environment
from .errors import CheckpointError, ConfigError, DataError, StaleStoreError, warn_once
from .fileio import NpyRows
from .models import (
    STAGE_STARTS,
    at_layer_for,
    at_pair_of,
    auto_strides,
    check_input,
    compression_factor,
    count_macs,
    count_parameters,
    create_model,
    is_family,
    pair_at_layers,
    paired_at_layer,
    plan_for,
    resolve_strides,
    smallest_side,
    state_dict_hash,
    student_spec,
)
from .runs import RunDir, environment, load_weights
from .tracking import RunTracker
from .utils import default_cache_dir, derive_seed, setup_device


@dataclass
class Datasets:
    train: ImageDataset
    test: ImageDataset
    convention: InputConvention

    @property
    def streaming(self) -> bool:
        """Whether the images are read from disk a batch at a time (``data.streaming``)."""
        return self.train.on_disk

    @property
    def shape(self) -> tuple[int, int]:
        """(number of classes, input channels): what a model for this data must take and give."""
        return self.train.num_classes, self.train.image_shape[0]


def streams(cfg: Config, device: torch.device | None = None) -> bool:
    """``data.streaming``; ``auto`` streams when the decoded training and test images (and float16 maps)
    would fill more than half the free memory, or of the free memory of ``device`` (a GPU), where the
    in-memory path holds them; a printed line says so."""
    d = cfg.data
    if d.streaming != "auto":
        return bool(d.streaming)
    need = _decoded_bytes(cfg)
    free = {"memory": _available_memory()}
    if device is not None and device.type == "cuda":
        free[str(device)] = torch.cuda.mem_get_info(device)[0]
    full = [where for where, have in free.items() if have is not None and need > have / 2]
    if full:
        warn_once(f"data.streaming=auto: the data is {need / 2**30:.1f} GiB decoded, more than half the free "
                  f"{' and '.join(full)}: streaming it from disk a batch at a time (set data.streaming=false to "
                  "hold it in memory)")
    return bool(full)


def _decoded_bytes(cfg: Config) -> int:
    """Bytes of the decoded training and test images, and float16 maps: an estimate from the number of
    files and the first one's size for an image folder (the formats of the others are small archives)."""
    d = cfg.data
    if d.name != "image_folder" or d.root is None:
        return 0  # read whole from their files by their loaders anyway
    root = Path(d.root).expanduser()
    files = [os.path.join(dirpath, f) for split in ("train", "test") for dirpath, _dirs, names
             in os.walk(root / split) for f in names if not f.startswith(".")]
    if not files:
        return 0
    shape = known_image_shape(d.name, d.image_size)
    if shape is None:
        from PIL import Image

        try:
            with Image.open(files[0]) as im:
                c, (w, h) = len(im.getbands()), im.size
        except OSError:
            return 0  # the loader says what is wrong with it
        hw = d.image_size if d.image_size is not None else (h, w)
        hw = (hw, hw) if isinstance(hw, int) else hw
        shape = (3 if c > 1 else 1, *hw[-2:])
    return len(files) * (shape[0] + 2) * shape[1] * shape[2]  # uint8 pixels and a float16 map each


def _available_memory() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux); None elsewhere."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def load_datasets(cfg: Config, streaming: bool | None = None, progress: bool | None = None) -> Datasets:
    """The configured training and test sets (subsets when sizes are set) and their input convention; read
    from disk a batch at a time (from a decoded cache built on first use) when ``streaming`` (by default
    :func:`streams`)."""
    d = cfg.data
    streaming = streams(cfg) if streaming is None else streaming
    train, test = (load_dataset(d.name, split, root=d.root, download=d.download, image_size=d.image_size,
                                streaming=streaming, progress=progress) for split in ("train", "test"))
    if train.image_shape != test.image_shape:
        shape = " x ".join(map(str, train.image_shape)), " x ".join(map(str, test.image_shape))
        raise DataError(f"dataset {d.name} ({d.root or 'default location'}): training images are {shape[0]} "
                        f"(channels x height x width) but test images are {shape[1]}; both splits need one size")
    full_train = train
    if d.train_size is not None and d.train_size < len(train):
        train = stratified_subset(train, d.train_size, seed=d.subset_seed)
    if d.test_size is not None and d.test_size < len(test):
        test = stratified_subset(test, d.test_size, seed=d.subset_seed)
    check_classes(train, test, f"dataset {d.name} ({d.root or 'default location'})", full_train)
    convention = DATASETS[d.name].convention or compute_convention(train, d.root)
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


def _image_size(cfg: Config, image_size) -> tuple[int, int] | None:
    """(H, W) of the images: given, else the dataset's as configured (None where only the files tell)."""
    if image_size is not None:
        return tuple(image_size)[-2:]
    shape = known_image_shape(cfg.data.name, cfg.data.image_size)
    return None if shape is None else shape[1:]


def teacher_strides(cfg: Config, size: tuple[int, int] | None) -> list[int] | str:
    """``teacher.strides`` for images of ``size`` (H, W): a plan written for another size
    (``teacher.strides_for``, set by the presets) becomes ``auto``, with a line saying so."""
    t = cfg.teacher
    plan = plan_for(t.strides, t.strides_for, size)
    if plan != t.strides:
        sides = [t.strides_for] if isinstance(t.strides_for, int) else t.strides_for
        warn_once(f"teacher.strides {t.strides} was written for {sides[0]}x{sides[-1]} images "
                  f"(teacher.strides_for), these are {size[0]}x{size[1]}: using teacher.strides=auto "
                  f"({list(resolve_strides(plan, size))}) instead")
    return plan


def augment_for(cfg: Config, size: tuple[int, int]) -> AugmentConfig:
    """``augment`` for images of ``size`` (H, W): a crop padding written for another side
    (``augment.crop_padding_for``, set by the presets) scaled to theirs, or ``auto`` (one eighth of the
    smaller side) resolved, with a line saying so."""
    a = cfg.augment
    padding = plan_padding(a.crop_padding, a.crop_padding_for, size)
    if a.crop_padding == "auto":
        warn_once(f"augment.crop_padding=auto: {padding} pixels for {size[0]}x{size[1]} images")
    elif padding != a.crop_padding:
        warn_once(f"augment.crop_padding {a.crop_padding} was written for {a.crop_padding_for}x{a.crop_padding_for} "
                  f"images (augment.crop_padding_for), these are {size[0]}x{size[1]}: using {padding} instead")
    return a.model_copy(update={"crop_padding": padding, "crop_padding_for": None})


def teacher_arch(cfg: Config, image_size=None) -> dict:
    """What the teacher is, as recorded in runs: its name and, for the cifar_mobilenet_v2 family, its width
    and stride plan (``auto`` resolved on ``image_size`` (H, W), by default the dataset's)."""
    t = cfg.teacher
    if not is_family(t.arch):
        return {"arch": t.arch}
    size = _image_size(cfg, image_size)
    if t.strides == "auto" and size is None:
        raise ConfigError(f"teacher.strides=auto is chosen from the image size, which {cfg.data.name} tells only "
                          "once loaded: load the dataset first, or set data.image_size")
    return {"arch": t.arch, "width_mult": t.width_mult,
            "strides": list(resolve_strides(teacher_strides(cfg, size), size)), "dropout": t.dropout}


def build_teacher(cfg: Config, num_classes: int, in_channels: int, image_size=None) -> torch.nn.Module:
    """The configured teacher architecture, randomly initialised, for images of ``image_size`` (H, W; by
    default the dataset's): a network that cannot take them is refused here, with what to set."""
    arch = teacher_arch(cfg, image_size)
    family = {k: v for k, v in arch.items() if k != "arch"}
    teacher = create_model(arch["arch"], num_classes=num_classes, in_channels=in_channels, **family)
    size = _image_size(cfg, image_size)
    if size is not None:
        check_fits(teacher, (in_channels, *size), num_classes, f"teacher {cfg.teacher.arch}", cfg.teacher.arch,
                   "teacher", explicit_strides=teacher_strides(cfg, size) != "auto")
    return teacher


def check_fits(model: torch.nn.Module, shape: tuple[int, int, int], num_classes: int, who: str, arch: str,
               section: str, explicit_strides: bool = False) -> None:
    """Refuse, before training, a ``section`` (teacher or student) model that cannot take the data's images
    (one whose map reaches 1x1 before its last stage: for the CIFAR MobileNetV2 family before features.14
    whatever the plan's strides), saying what to set: ``strides=auto`` for an explicit CIFAR MobileNetV2
    plan, else ``data.image_size``."""
    def fix() -> str:
        if is_family(arch) and explicit_strides:
            plan = list(auto_strides(shape[1:]))
            return f"set {section}.strides=auto (it chooses {plan} for {shape[1]}x{shape[2]} images)"
        side = smallest_side(model, shape[0], num_classes)
        if side is None:
            return f"choose another {section}.arch"
        return (f"set data.image_size={side} to resize the images ({arch} takes {side}x{side}), or choose another "
                f"{section}.arch (cifar_mobilenet_v2 takes any size)")

    check_input(model, shape, num_classes, who, fix, STAGE_STARTS if is_family(arch) else ())


def load_teacher(cfg: Config, num_classes: int, in_channels: int, device: torch.device,
                 image_size=None) -> tuple[torch.nn.Module, str]:
    """The configured teacher with its weights, in eval mode, and the hash that names those weights."""
    if cfg.teacher.checkpoint is None:
        raise CheckpointError("no teacher: set teacher.checkpoint=PATH, or train one with `igkd train-teacher`")
    teacher = load_weights(build_teacher(cfg, num_classes, in_channels, image_size), cfg.teacher.checkpoint)
    return teacher.to(device).eval(), state_dict_hash(teacher)


def map_teacher(cfg: Config, ds: Datasets, teacher: torch.nn.Module, teacher_hash: str) -> tuple[torch.nn.Module, str]:
    """The network whose maps the overlay uses, and the hash that names its weights: the trained teacher, or
    with ``ig.teacher_weights=random`` its architecture freshly initialised from ``ig.random_teacher_seed``
    (the model-randomisation sanity check of Adebayo et al. 2018: maps made exactly as the IG maps are, by
    a network that learnt nothing). Its store is named by its own hash, so it is stored like any other."""
    if cfg.ig.teacher_weights == "trained":
        return teacher, teacher_hash
    device = next(teacher.parameters()).device
    with torch.random.fork_rng(devices=[]):  # the caller's generators are left as they were
        torch.manual_seed(derive_seed(cfg.ig.random_teacher_seed, "random teacher"))
        random_teacher = build_teacher(cfg, *ds.shape, ds.train.image_shape[1:])
    return random_teacher.to(device).eval(), state_dict_hash(random_teacher)


def _prepare(cfg: Config, tc: TrainConfig, progress: bool | None = None) -> tuple[torch.device, Datasets, TrainingData]:
    """Device, threads and initialisation seed of a training run, then its data and split."""
    device = setup_device(tc.device, tc.threads, tc.deterministic)
    torch.manual_seed(derive_seed(tc.seed, "init"))
    ds = load_datasets(cfg, streams(cfg, device), progress)
    return device, ds, training_data(ds, cfg.data.val_fraction, tc.seed, tc.subset_fraction)


@contextmanager
def _claim(run: RunDir, cfg: Config, tc: TrainConfig, resume: bool, device: torch.device,
           streaming: bool = False, inputs: dict | None = None) -> Iterator[distributed.DistContext]:
    """Join torchrun's processes when launched by it, then hold the run directory (rank 0) for the block."""
    with distributed.session(device) as ctx:
        env = {**environment(device, tc.seed), **training_environment(tc, ctx, device, streaming)}
        with distributed.main_only(ctx, lambda: run.claim(cfg, resume, env, inputs)):
            yield ctx


def _finish(run: RunDir, history: list[dict], tracker: RunTracker, extra: dict,
            ctx: distributed.DistContext) -> dict:
    summary = {**extra, **summarize(history)}
    return tracker.finish(run.write_summary(summary)) if ctx.is_main else summary


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
    out.track = copy.deepcopy(cfg.track)  # shown where the students are (not part of its identity)
    return out


def run_or_reuse(out: Path, cfg: Config, fn, label: str, step: str = "", progress: bool | None = None) -> dict:
    """The summary of the finished run of ``cfg`` in ``out``; else run ``fn`` there (resuming if begun)."""
    run = RunDir(out)
    prefix = f"{step} " if step else ""
    if run.complete and run.saved_config() is not None and run.saved_config().identity() == cfg.identity():
        print(f"{prefix}{label}: reusing {out}", flush=True)
        return run.summary()
    print(f"{prefix}{label}: training -> {out}", flush=True)
    return fn(cfg, out, resume=run.begun, progress=progress)


def train_teacher(cfg: Config, out: str | Path, resume: bool = False, progress: bool | None = None,
                  on_epoch_end=None) -> dict:
    """Train the teacher architecture with cross-entropy (``teacher_train`` settings, no overlay)."""
    tc = cfg.teacher_train
    device, ds, data = _prepare(cfg, tc, progress)
    teacher = build_teacher(cfg, *ds.shape, ds.train.image_shape[1:])
    run = RunDir(out)
    with _claim(run, cfg, tc, resume, device, ds.streaming) as ctx, \
            RunTracker(run, cfg, active=ctx.is_main, role="teacher") as tracker:
        t0 = time.perf_counter()
        history = fit(Distiller.from_config(teacher, None, "student", cfg.distill), data, tc,
                      augment_for(cfg, ds.train.image_shape[1:]), run, device,
                      resume=resume, progress=progress, desc="teacher", on_epoch_end=tracker.follow(on_epoch_end))
        return _finish(run, history, tracker, ctx=ctx, extra={
            "role": "teacher",
            "arch": teacher_arch(cfg, ds.train.image_shape[1:]),
            "dataset": ds.train.name,
            "dataset_fingerprint": ds.train.fingerprint(),
            "input_shape": list(ds.train.image_shape),
            "params": count_parameters(teacher),
            "macs": count_macs(teacher, ds.train.image_shape),
            "teacher_hash": state_dict_hash(teacher),
            "wall_time_s": time.perf_counter() - t0,
            "seed": tc.seed,
        })


def attribution_source(cfg: Config, ds: Datasets, teacher: torch.nn.Module | None = None) -> AttributionSource:
    """``ig.attribution`` with its settings; Grad-CAM's layer is ``ig.gradcam_layer`` or, unset, the teacher's
    last convolutional block (the architecture is built when ``teacher`` is not given)."""
    ig = cfg.ig
    if ig.attribution == "gradcam":
        layer = ig.gradcam_layer
        if layer is None:
            if teacher is None:
                teacher = build_teacher(cfg, *ds.shape, ds.train.image_shape[1:])
            layer = default_gradcam_layer(teacher)
        return AttributionSource.of("gradcam", layer=layer)
    return AttributionSource.of(ig.attribution, nt_samples=ig.smoothgrad_samples, noise_level=ig.smoothgrad_noise,
                                seed=ig.smoothgrad_seed)


def store_identity(cfg: Config, ds: Datasets, teacher_hash: str,
                   teacher: torch.nn.Module | None = None) -> StoreIdentity:
    """What the run's map store must be of: built once, it names, writes and checks the store."""
    return StoreIdentity.of(ds.train, teacher_hash, ds.convention, n_steps=cfg.ig.n_steps, method=cfg.ig.method,
                            baseline=cfg.ig.baseline, attribution=attribution_source(cfg, ds, teacher))


def store_path(cfg: Config, identity: StoreIdentity) -> Path:
    """``ig.store``, or a folder under ``ig.cache_dir`` named by the identity."""
    if cfg.ig.store:
        return Path(cfg.ig.store)
    root = Path(cfg.ig.cache_dir) if cfg.ig.cache_dir else default_cache_dir() / "ig"
    return root / identity.folder_name()


def ig_options(cfg: Config, device: torch.device) -> IGOptions:
    ig = cfg.ig
    return IGOptions(dtype=ig.dtype, chunk_size=ig.chunk_size, batch_size=ig.batch_size, fold_bn=ig.fold_bn,
                     channels_last=ig.channels_last, device=str(device), loader_workers=cfg.data.loader_workers)


def precompute(cfg: Config, rank: int | None = None, world_size: int | None = None,
               progress: bool | None = None) -> PrecomputeResult:
    """Write (or finish) the map store (``ig.attribution``; IG by default) of the configured training set
    and teacher."""
    device = setup_device(cfg.train.device, cfg.train.threads)
    ds = load_datasets(cfg, streams(cfg, device), progress)  # read a chunk at a time: never held whole when streamed
    teacher, teacher_hash = map_teacher(cfg, ds, *load_teacher(cfg, *ds.shape, device, ds.train.image_shape[1:]))
    identity = store_identity(cfg, ds, teacher_hash, teacher)
    return precompute_ig(teacher, ds.train, store_path(cfg, identity), identity, ig_options(cfg, device),
                         rank=rank, world_size=world_size, progress=progress,
                         random_weights=cfg.ig.teacher_weights == "random")


def open_store(cfg: Config, ds: Datasets, teacher_hash: str, teacher: torch.nn.Module | None = None) -> MapStore:
    identity = store_identity(cfg, ds, teacher_hash, teacher)
    path = store_path(cfg, identity)
    if not path.exists():
        raise StaleStoreError(f"no IG map store at {path}; run `igkd precompute-ig` with the same config first")
    return MapStore.open(path, expect=identity)


def overlay_maps(cfg: Config, ds: Datasets, teacher_hash: str, teacher: torch.nn.Module) -> torch.Tensor | NpyRows:
    """The maps the overlay uses (``augment.maps``): the store's (of ``ig.attribution``, by the network
    ``ig.teacher_weights`` names), or a control's (another image's, noise). Streamed data has its maps read
    by position too: the store's, or the noise maps' from a file of their low-resolution noise (the same
    values as the in-memory maps)."""
    source = cfg.augment.maps
    maps = None
    seed = derive_seed(cfg.train.seed, "control maps", source)
    if source != "noise":
        map_net, map_hash = map_teacher(cfg, ds, teacher, teacher_hash)
        store = open_store(cfg, ds, map_hash, map_net)
        if ds.streaming:
            rows = store.rows()
            return rows.subset(derangement(len(rows), seed)) if source == "unrelated" else rows
        maps = store.load_all()
    n, (_c, h, w) = len(ds.train), ds.train.image_shape
    if source == "noise" and ds.streaming:
        return streamed_noise_maps(n, h, w, seed)
    return control_maps(source, maps, (n, h, w), seed)


def distill(cfg: Config, out: str | Path, resume: bool = False, progress: bool | None = None,
            on_epoch_end=None) -> dict:
    """Train the configured student (truncated or scaled) by ``distill.method``; write the run directory;
    return its summary."""
    tc = cfg.train
    device, ds, data = _prepare(cfg, tc, progress)
    method = cfg.distill.method
    spec = MethodSpec.parse(method)
    needs_teacher, uses_ig = spec.needs_teacher, spec.ig
    shape = ds.train.image_shape
    if needs_teacher or uses_ig:
        teacher, teacher_hash = load_teacher(cfg, *ds.shape, device, shape[1:])
    else:  # the architecture alone fixes the student's shape
        teacher, teacher_hash = build_teacher(cfg, *ds.shape, shape[1:]), None
    arch = student_spec(cfg, shape, ds.train.num_classes)
    student = arch.build(teacher, *ds.shape)
    if arch.kind != "truncated":  # a truncated student takes what its teacher takes
        plan = cfg.student.strides if cfg.student.strides is not None else teacher_strides(cfg, shape[1:])
        check_fits(student, shape, ds.train.num_classes, f"student {arch.label}", arch.arch or "cifar_mobilenet_v2",
                   "student", explicit_strides=arch.kind == "scaled" and plan != "auto")
    maps = overlay_maps(cfg, ds, teacher_hash, teacher) if uses_ig else None
    at_layer, teacher_at_layer, at_pair = (at_layers(cfg, arch.kind, student, teacher, shape) if spec.at
                                           else (cfg.distill.at_layer, None, None))
    by_name = at_pair is not None and at_layer is None  # any architecture: modules by name, maps resized
    distiller = Distiller.from_config(student, teacher if needs_teacher else None, method, cfg.distill,
                                      at_layer=at_layer, teacher_at_layer=teacher_at_layer,
                                      at_modules=(at_pair.student, at_pair.teacher) if by_name else None)

    def extra(_history: list[dict]) -> dict:
        teacher_acc = None
        if teacher_hash is not None:
            teacher_acc = evaluate(teacher, ds.test.x, ds.test.y, ds.convention, tc.eval_batch_size)
        return {
            "role": "student",
            "method": method,
            "overlay_maps": cfg.augment.maps if uses_ig else None,
            "attribution": cfg.ig.attribution if uses_ig and cfg.augment.maps != "noise" else None,
            "map_teacher": cfg.ig.teacher_weights if uses_ig and cfg.augment.maps != "noise" else None,
            "remove_blocks": arch.remove_blocks,
            "student": arch.to_dict(),
            "teacher": teacher_arch(cfg, shape[1:]),
            "dataset": ds.train.name,
            "dataset_fingerprint": ds.train.fingerprint(),
            "input_shape": list(shape),
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
            "teacher_at_layer": at_layer if teacher_at_layer is None else teacher_at_layer,
            "at_pair": at_pair.to_dict() if at_pair is not None else None,
        }

    return run_fit(cfg, out, distiller, data, device, maps, resume=resume, progress=progress,
                   on_epoch_end=on_epoch_end, extra=extra, streaming=ds.streaming)


def run_fit(cfg: Config, out: str | Path, distiller: Distiller, data: TrainingData, device: torch.device,
            maps: torch.Tensor | NpyRows | None = None, *, resume: bool = False, progress: bool | None = None,
            on_epoch_end=None, extra=None, streaming: bool = False, inputs: dict | None = None) -> dict:
    """Train ``distiller`` on ``data`` into the run directory ``out`` with ``cfg``'s ``train`` and ``augment``
    settings: claim the directory (config, environment), show the run (TensorBoard, MLflow), run the loop
    (:func:`~igkd.distill.trainer.fit`), write the summary. ``igkd distill`` and ``igkd.fit`` both train
    here, so the same seed and data give the same run through either door. ``extra(history)`` adds to the
    summary (with ``wall_time_s`` and ``seed``). ``inputs``: a run on Python objects' description of them
    (``inputs.json``; :meth:`~igkd.runs.RunDir.claim`)."""
    tc = cfg.train
    run = RunDir(out)
    keys = PYTHON_RUN_KEYS if inputs is not None else None
    with _claim(run, cfg, tc, resume, device, streaming, inputs) as ctx, \
            RunTracker(run, cfg, active=ctx.is_main, keys=keys) as tracker:
        picks = [] if maps is None else [p for p in data.train.first_of_each_class(8) if p < len(maps)]
        if picks:  # (a streamed store's maps cover the training images only)
            x = data.train.x[picks]
            tracker.show_examples(x, maps[picks], example_overlays(x, maps[picks], cfg.augment.mix))
        t0 = time.perf_counter()
        history = fit(distiller, data, tc, augment_for(cfg, data.train.image_shape[1:]), run, device, maps=maps,
                      resume=resume, progress=progress, desc=distiller.method,
                      on_epoch_end=tracker.follow(on_epoch_end),
                      loader_workers=cfg.data.loader_workers)
        more = extra(history) if extra is not None else {}
        return _finish(run, history, tracker, ctx=ctx, extra={
            **more, "wall_time_s": time.perf_counter() - t0, "seed": tc.seed})


def at_layers(cfg: Config, kind: str, student: torch.nn.Module, teacher: torch.nn.Module,
              shape: tuple[int, int, int]):
    """The attention-transfer layers: (student ``features`` index, teacher index, the pair by module name).

    The cifar_mobilenet_v2 family keeps the paper's rule: ``distill.at_layer`` (default METHOD.md's
    ``features[19 // d]``) of both nets for a truncated student, the teacher's module of the nearest
    spatial size for a scaled one. Any other pair, or one named by ``distill.at_student_layer`` /
    ``distill.at_teacher_layer``, is chosen by :func:`~igkd.models.taps.pair_at_layers`; the indices
    are then None.
    """
    dc = cfg.distill
    named = dc.at_student_layer is not None or dc.at_teacher_layer is not None
    if kind == "arch" or not is_family(cfg.teacher.arch) or named:
        student_layer = dc.at_student_layer or (f"features.{dc.at_layer}" if dc.at_layer is not None else None)
        pair = pair_at_layers(student, teacher, shape, student_layer, dc.at_teacher_layer,
                              names=("student", f"teacher {cfg.teacher.arch}"))
        return None, None, pair
    at_layer = dc.at_layer if dc.at_layer is not None else at_layer_for(cfg.student.remove_blocks,
                                                                        len(teacher.features))
    teacher_at_layer = paired_at_layer(student, teacher, at_layer, shape) if kind != "truncated" else None
    pair = at_pair_of(student, teacher, shape, f"features.{at_layer}",
                      f"features.{at_layer if teacher_at_layer is None else teacher_at_layer}")
    return at_layer, teacher_at_layer, pair
