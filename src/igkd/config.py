"""Typed configuration: dataclasses, YAML via ``yaml.safe_load``, ``--set a.b=value`` overrides.

An unknown key or a value of the wrong type is a :class:`ConfigError` that names it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .data.control_maps import MAP_SOURCES
from .errors import ConfigError

METHODS = ("student", "kd", "ig", "at", "kd_ig", "kd_at", "ig_at", "kd_ig_at")


@dataclass
class DataConfig:
    name: str = "cifar10"  # cifar10 | fashion_mnist | npz | image_folder
    root: str | None = None  # folder (or .npz file); None searches the usual places
    download: bool = False
    train_size: int | None = None  # stratified subset of the training set; None = all of it
    test_size: int | None = None
    subset_seed: int = 0  # fixes the subset, so teacher, IG store and students share it
    val_fraction: float = 0.0  # stratified hold-out from the training set, drawn from train.seed
    image_size: int | list[int] | None = None  # resize every image to this side or [H, W] on load; None = as stored


@dataclass
class TeacherConfig:
    arch: str = "cifar_mobilenet_v2"  # or a torchvision classification model name, or timm:<name>
    width_mult: float = 1.0  # width_mult, strides and dropout shape cifar_mobilenet_v2 only
    strides: list[int] | str = "auto"  # five values, each 1 or 2, or auto: chosen from the image size
    dropout: float = 0.2
    checkpoint: str | None = None  # a state dict to load; None = train one with `igkd train-teacher`


@dataclass
class StudentConfig:
    remove_blocks: int = 5  # k: the last k of the 19 feature modules are removed
    kind: str = "truncated"  # truncated: the teacher's layers | scaled: a MobileNetV2 of its own width/strides
    width_mult: float | None = None  # scaled: None = the teacher's (or chosen by budget_macs)
    strides: list[int] | str | None = None  # scaled: five values, each 1 or 2, or auto; None = the teacher's
    budget_macs: float | None = None  # scaled: the widest width doing at most this many multiply-adds per image
    arch: str | None = None  # a model name (as teacher.arch): the student is that network, built fresh (kind arch)


@dataclass
class IGConfig:
    n_steps: int = 50
    method: str = "gausslegendre"
    baseline: str = "zeros-normalized"  # the paper's: zero in normalised space = the mean colour
    dtype: str = "float16"  # each map is stored divided by its maximum; float32 for more mantissa
    batch_size: int | None = None  # images per IG call; None = chosen automatically
    chunk_size: int | None = None  # images per resumable chunk of the store; None = 256 on CPU, 2048 on GPU
    fold_bn: bool = True  # batch norm folded into the convolutions for the IG passes (float32 rounding only)
    channels_last: bool = True  # channels-last memory for the IG passes (together with fold_bn ~2x on CPU)
    store: str | None = None  # the store folder; None = <cache_dir>/<name from dataset, teacher, settings>
    cache_dir: str | None = None  # where named stores go; None = $IGKD_CACHE/ig (~/.cache/igkd/ig)
    # The maps' source: igkd's integrated gradients, or a Captum source (igkd.attribution.saliency)
    attribution: str = "integrated_gradients"  # | saliency | input_x_gradient | smoothgrad | gradcam
    smoothgrad_samples: int = 50  # noisy copies per image (Smilkov et al. 2017: 50)
    smoothgrad_noise: float = 0.15  # noise sd as a fraction of the input range (Smilkov et al.: 0.1-0.2)
    smoothgrad_seed: int = 0  # each image's noise is drawn from this and its dataset position
    gradcam_layer: str | None = None  # None = the last convolutional block (features.18 of cifar_mobilenet_v2)


@dataclass
class AugmentConfig:
    crop_padding: int = 4
    flip: bool = True
    overlay_p: float = 0.1
    power_range: list[float] = field(default_factory=lambda: [1.0, 2.0])
    mix: float = 0.5
    maps: str = "ig"  # the overlay's maps: ig | unrelated (another image's IG map) | noise (controls)


@dataclass
class DistillConfig:
    method: str = "kd_ig"
    alpha: float = 0.01  # weight of the KD term (torchdistill uses 1 - alpha)
    temperature: float = 2.5
    gamma: float = 0.8  # weight of the attention-transfer term
    at_layer: int | None = None  # None = METHOD.md's rule features[19 // d]
    at_student_layer: str | None = None  # AT by module name (any architecture); None = chosen by spatial size
    at_teacher_layer: str | None = None  # None = the teacher's module of the nearest spatial size
    # The teacher's forward in every step: auto = ONNX Runtime on the CPU where installed, else torch (an
    # inference copy: BN folded, channels-last); eager = the module as it is. All within 1e-4 of eager.
    teacher_runtime: str = "auto"  # auto | onnxruntime | torch | eager


@dataclass
class TrainConfig:
    epochs: int = 100
    batch_size: int = 64
    optimizer: str = "adam"  # adam | sgd
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    schedule: str = "constant"  # constant | cosine
    eval_batch_size: int = 128  # larger batches run up to 4x slower per image on a CPU (cache)
    subset_fraction: float = 1.0  # train on a fresh stratified fraction of the training split, drawn from seed
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None
    checkpoint_every: int = 0  # also checkpoint every N steps within an epoch (0: after each epoch only)
    deterministic: bool = False  # deterministic algorithms only (CUDA: slower; CPU results are already repeatable)
    # The GPU fast path: each is an explicit choice, recorded; the defaults compute exactly as before.
    amp: str = "none"  # none | bf16 | fp16: autocast of the training and evaluation forward (fp16 with a grad scaler)
    channels_last: bool = False  # NHWC memory for the models and batches (faster convolutions on GPUs)
    compile: bool = False  # torch.compile the training forward (student, teacher and losses together)
    check_finite_every: int = 1  # loss checks: every step, before the update (1), every N steps, or at epoch end (0)
    sync_bn: bool | None = None  # data-parallel: batch norm over the global batch; null = on CUDA (GPU-only in torch)


@dataclass
class TrackConfig:
    """Where runs are also shown; not part of what makes a run (:meth:`Config.identity`)."""

    tensorboard: bool = True  # TensorBoard event files in every run directory
    mlflow_uri: str | None = None  # an MLflow tracking URI (server or file store); null: $MLFLOW_TRACKING_URI if set
    mlflow_experiment: str = "igkd"
    mlflow_parent_run: str | None = None  # the MLflow run this one nests under (a study sets it for its runs)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    ig: IGConfig = field(default_factory=IGConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    teacher_train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def identity(self) -> dict:
        """What makes a run: every section but ``track`` (where it is shown, not what it computes)."""
        return {k: v for k, v in self.to_dict().items() if k != "track"}

    def digest(self, *sections: str) -> str:
        """A short hash of the named sections (all that make a run when none), to tell runs and caches apart."""
        d = self.identity()
        if sections:
            d = {s: d[s] for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def _check_value(where: str, tp: Any, value: Any) -> Any:
    """Return ``value`` converted to ``tp`` or raise ConfigError naming ``where``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _check_value(where, arg, value)
            except ConfigError:
                pass
        raise ConfigError(f"bad value for {where}: {value!r} (expected {_type_name(tp)})")
    if origin is list:
        (item,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"bad value for {where}: {value!r} (expected a list)")
        return [_check_value(f"{where}[{i}]", item, v) for i, v in enumerate(value)]
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp in (str, bool) and isinstance(value, tp):
        return value
    raise ConfigError(f"bad value for {where}: {value!r} (expected {_type_name(tp)})")


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _apply(obj: Any, data: dict, prefix: str = "") -> None:
    if not isinstance(data, dict):
        raise ConfigError(f"section {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(type(obj))
    names = {f.name for f in dataclasses.fields(obj)}
    for key, value in data.items():
        where = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {where!r}; known here: {', '.join(sorted(names))}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            _apply(current, value, where + ".")
        else:
            setattr(obj, key, _check_value(where, hints[key], value))


OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
IG_DTYPES = ("float16", "float32")


def _device_ok(name: str) -> bool:
    if name in ("auto", "cpu", "cuda"):
        return True
    head, _, index = name.partition(":")
    return head == "cuda" and index.isdigit()


def _strides_ok(value) -> bool:
    return value == "auto" or (isinstance(value, list) and len(value) == 5 and all(v in (1, 2) for v in value))


def _image_size_ok(value) -> bool:
    sides = [value] if isinstance(value, int) else value
    return len(sides) in (1, 2) and all(1 <= v <= 8192 for v in sides)


def _one_of(values) -> str:
    return "one of " + ", ".join(str(v) for v in values)


def _validate(cfg: Config) -> None:
    """Every value checked against the lists owned by the code that uses it, before anything runs."""
    # Imported here: the owners of these lists import the config module themselves.
    from .attribution.identity import BASELINES
    from .attribution.ig import SUPPORTED_METHODS
    from .attribution.saliency import ATTRIBUTIONS
    from .data.catalog import KNOWN_DATASETS
    from .distill.trainer import AMP_MODES
    from .models import (
        ARCH_HELP,
        NUM_FEATURE_MODULES,
        STUDENT_KINDS,
        is_family,
        model_name_problem,
        student_kind,
    )
    from .models.inference import TEACHER_RUNTIMES

    d, t, ig, a, k = cfg.data, cfg.teacher, cfg.ig, cfg.augment, cfg.student.remove_blocks
    s, kind, family = cfg.student, student_kind(cfg), is_family(t.arch)
    scaled, dc = kind == "scaled", cfg.distill
    only_scaled = "null unless student.kind=scaled"
    not_family = f"{{}}: it shapes cifar_mobilenet_v2 only, not teacher.arch={t.arch}"

    def arch_allowed(name: str | None) -> str:
        problem = model_name_problem(name) if isinstance(name, str) else None
        return ARCH_HELP + (f"; {problem}" if problem else "")
    checks = [
        ("data.name", d.name, d.name in KNOWN_DATASETS, _one_of(KNOWN_DATASETS)),
        ("data.train_size", d.train_size, d.train_size is None or d.train_size >= 1, ">= 1 or null"),
        ("data.test_size", d.test_size, d.test_size is None or d.test_size >= 1, ">= 1 or null"),
        ("data.val_fraction", d.val_fraction, 0.0 <= d.val_fraction < 1.0, "in [0, 1)"),
        ("data.image_size", d.image_size, d.image_size is None or _image_size_ok(d.image_size),
         "a side, or [height, width], each in 1..8192, or null"),
        ("teacher.arch", t.arch, model_name_problem(t.arch) is None, arch_allowed(t.arch)),
        ("teacher.width_mult", t.width_mult, t.width_mult > 0, "> 0"),
        ("teacher.width_mult", t.width_mult, family or t.width_mult == 1.0, not_family.format("1.0")),
        ("teacher.strides", t.strides, _strides_ok(t.strides), "auto, or five values, each 1 or 2"),
        ("teacher.strides", t.strides, family or t.strides == "auto", not_family.format("auto")),
        ("teacher.dropout", t.dropout, 0.0 <= t.dropout < 1.0, "in [0, 1)"),
        ("teacher.dropout", t.dropout, family or t.dropout == TeacherConfig.dropout, not_family.format("0.2")),
        ("student.remove_blocks", k, 1 <= k < NUM_FEATURE_MODULES, f"in 1..{NUM_FEATURE_MODULES - 1}"),
        ("student.kind", s.kind, s.kind in STUDENT_KINDS, _one_of(STUDENT_KINDS)),
        ("student.arch", s.arch, s.arch is None or model_name_problem(s.arch) is None, arch_allowed(s.arch)),
        ("student.arch", s.arch, s.arch is not None or s.kind != "arch", "a model name when student.kind=arch"),
        ("student.arch", s.arch, s.arch is None or s.kind != "scaled", "null when student.kind=scaled"),
        ("student.kind", s.kind, family or kind != "truncated",
         f"scaled or arch: a truncated student is cut from a cifar_mobilenet_v2 teacher, not {t.arch}; "
         "set student.arch=NAME (e.g. mobilenet_v3_small)"),
        ("student.width_mult", s.width_mult, s.width_mult is None or (scaled and s.width_mult > 0),
         "> 0" if scaled else only_scaled),
        ("student.width_mult", s.width_mult, s.width_mult is None or s.budget_macs is None,
         "null when student.budget_macs is set: the budget chooses the width"),
        ("student.strides", s.strides, s.strides is None or (scaled and _strides_ok(s.strides)),
         "auto, five values, each 1 or 2, or null" if scaled else only_scaled),
        ("student.budget_macs", s.budget_macs, s.budget_macs is None or (scaled and s.budget_macs >= 1),
         ">= 1 or null" if scaled else only_scaled),
        ("ig.method", ig.method, ig.method in SUPPORTED_METHODS, _one_of(SUPPORTED_METHODS)),
        ("ig.n_steps", ig.n_steps, ig.n_steps >= (1 if ig.method == "gausslegendre" else 2),
         ">= 1 (>= 2 for Riemann methods)"),
        ("ig.baseline", ig.baseline, ig.baseline in BASELINES, _one_of(BASELINES)),
        ("ig.dtype", ig.dtype, ig.dtype in IG_DTYPES, _one_of(IG_DTYPES)),
        ("ig.batch_size", ig.batch_size, ig.batch_size is None or ig.batch_size >= 1, ">= 1 or null"),
        ("ig.chunk_size", ig.chunk_size, ig.chunk_size is None or ig.chunk_size >= 1, ">= 1 or null"),
        ("ig.attribution", ig.attribution, ig.attribution in ATTRIBUTIONS, _one_of(ATTRIBUTIONS)),
        ("ig.smoothgrad_samples", ig.smoothgrad_samples, ig.smoothgrad_samples >= 1, ">= 1"),
        ("ig.smoothgrad_noise", ig.smoothgrad_noise, 0 < ig.smoothgrad_noise <= 1,
         "in (0, 1]: the noise sd as a fraction of the input range"),
        ("ig.gradcam_layer", ig.gradcam_layer, ig.gradcam_layer != "", "a module name of the teacher, or null"),
        ("augment.crop_padding", a.crop_padding, a.crop_padding >= 0, ">= 0"),
        ("augment.overlay_p", a.overlay_p, 0.0 <= a.overlay_p <= 1.0, "in [0, 1]"),
        ("augment.power_range", a.power_range,
         len(a.power_range) == 2 and 0 < a.power_range[0] <= a.power_range[1], "[lo, hi] with 0 < lo <= hi"),
        ("augment.mix", a.mix, 0.0 <= a.mix <= 1.0, "in [0, 1]"),
        ("augment.maps", a.maps, a.maps in MAP_SOURCES, _one_of(MAP_SOURCES)),
        ("distill.method", cfg.distill.method, cfg.distill.method in METHODS, _one_of(METHODS)),
        ("distill.alpha", cfg.distill.alpha, 0.0 <= cfg.distill.alpha <= 1.0, "in [0, 1]"),
        ("distill.temperature", cfg.distill.temperature, cfg.distill.temperature > 0, "> 0"),
        ("distill.gamma", cfg.distill.gamma, cfg.distill.gamma >= 0, ">= 0"),
        ("distill.teacher_runtime", dc.teacher_runtime, dc.teacher_runtime in TEACHER_RUNTIMES,
         _one_of(TEACHER_RUNTIMES)),
        ("distill.at_layer", cfg.distill.at_layer,
         cfg.distill.at_layer is None or 0 <= cfg.distill.at_layer < NUM_FEATURE_MODULES - k,
         f"null or a feature module the student keeps (0..{NUM_FEATURE_MODULES - k - 1} for remove_blocks={k})"),
        ("distill.at_layer", dc.at_layer, dc.at_layer is None or kind != "arch",
         "null for a student.arch student: name its module with distill.at_student_layer"),
        ("distill.at_layer", dc.at_layer, dc.at_layer is None or dc.at_student_layer is None,
         "null when distill.at_student_layer names the student's AT module"),
        ("distill.at_student_layer", dc.at_student_layer, dc.at_student_layer != "", "a module name or null"),
        ("distill.at_teacher_layer", dc.at_teacher_layer, dc.at_teacher_layer != "", "a module name or null"),
        ("track.mlflow_uri", cfg.track.mlflow_uri, cfg.track.mlflow_uri != "", "a tracking URI or null"),
    ]
    for name in ("train", "teacher_train"):
        tc: TrainConfig = getattr(cfg, name)
        checks += [
            (f"{name}.epochs", tc.epochs, tc.epochs >= 1, ">= 1"),
            (f"{name}.batch_size", tc.batch_size, tc.batch_size >= 2, ">= 2 (batch norm)"),
            (f"{name}.eval_batch_size", tc.eval_batch_size, tc.eval_batch_size >= 1, ">= 1"),
            (f"{name}.optimizer", tc.optimizer, tc.optimizer in OPTIMIZERS, _one_of(OPTIMIZERS)),
            (f"{name}.schedule", tc.schedule, tc.schedule in SCHEDULES, _one_of(SCHEDULES)),
            (f"{name}.lr", tc.lr, tc.lr > 0, "> 0"),
            (f"{name}.weight_decay", tc.weight_decay, tc.weight_decay >= 0, ">= 0"),
            (f"{name}.subset_fraction", tc.subset_fraction, 0.0 < tc.subset_fraction <= 1.0, "in (0, 1]"),
            (f"{name}.device", tc.device, _device_ok(tc.device), "auto, cpu, cuda or cuda:N"),
            (f"{name}.threads", tc.threads, tc.threads is None or tc.threads >= 1, ">= 1 or null"),
            (f"{name}.checkpoint_every", tc.checkpoint_every, tc.checkpoint_every >= 0, ">= 0 (steps; 0: per epoch)"),
            (f"{name}.amp", tc.amp, tc.amp in AMP_MODES, _one_of(AMP_MODES)),
            (f"{name}.check_finite_every", tc.check_finite_every, tc.check_finite_every >= 0,
             ">= 0 (steps; 0: at checkpoints and epoch ends only)"),
        ]
    for key, value, ok, allowed in checks:
        if not ok:
            raise ConfigError(f"bad value for {key}: {value!r} (allowed: {allowed})")
    _check_budget(cfg)


def _check_budget(cfg: Config) -> None:
    """A MAC budget no student can meet is refused before anything runs, where the image shape is known."""
    from .data.catalog import DATASETS, known_image_shape
    from .models import student_spec

    shape = known_image_shape(cfg.data.name, cfg.data.image_size)
    if cfg.student.budget_macs is not None and shape is not None:
        student_spec(cfg, shape, DATASETS[cfg.data.name].num_classes)  # raises ConfigError naming the key


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then ``key=value`` overrides, then validation."""
    cfg = Config()
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        _apply(cfg, data)
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _apply(cfg, nested)
    _validate(cfg)
    return cfg


def config_from_dict(data: dict) -> Config:
    cfg = Config()
    _apply(cfg, data)
    _validate(cfg)
    return cfg


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
