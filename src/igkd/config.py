"""Typed configuration, declared with pydantic: YAML via ``yaml.safe_load``, ``--set a.b=value`` overrides.

Each key's type, range and choices sit beside it; rules that relate keys are model validators beside
those keys. The lists of choices are imported from the modules that own them, all below this one.
The declaration gives the checks, the one-line errors (key, value, what is allowed) and the JSON
Schema (``igkd config --schema``). An unknown key or a bad value is a :class:`ConfigError` naming it.
"""

from __future__ import annotations

import copy
import hashlib
import json
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from pydantic.fields import FieldInfo

from .attribution.identity import BASELINES
from .attribution.ig import SUPPORTED_METHODS
from .attribution.saliency import ATTRIBUTIONS
from .attribution.store import DTYPES
from .data.augment import plan_padding
from .data.catalog import DATASETS, KNOWN_DATASETS, known_image_shape
from .data.control_maps import MAP_SOURCES
from .errors import ConfigError, warn_once
from .models import (
    ARCH_HELP,
    NUM_FEATURE_MODULES,
    STUDENT_KINDS,
    is_family,
    model_name_problem,
    resolved_kind,
    student_kind,
    student_spec,
)
from .models.inference import TEACHER_RUNTIMES
from .utils import AMP_MODES

METHODS = ("student", "kd", "ig", "at", "kd_ig", "kd_at", "ig_at", "kd_ig_at")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "cosine")
IG_DTYPES = tuple(DTYPES)
TEACHER_WEIGHTS = ("trained", "random")
TEST_EVALS = ("every_epoch", "end")


@dataclass(frozen=True)
class Allowed:
    """A key's allowed values in words, where its type and bounds alone do not say it well."""

    text: str


@dataclass(frozen=True)
class Hint:
    """Why a bound is what it is, appended to the allowed values in an error."""

    text: str


def _refuse(key: str, value: Any, allowed: str) -> typing.NoReturn:
    raise ConfigError(f"bad value for {key}: {value!r} (allowed: {allowed})")


def _arch_problem(key: str, name: str | None) -> None:
    problem = model_name_problem(name) if name is not None else None
    if problem is not None:
        _refuse(key, name, f"{ARCH_HELP}; {problem}")


def _one_of(values) -> str:
    return "one of " + ", ".join(str(v) for v in values)


def _choice(values: tuple) -> Any:
    return Literal[values]  # Literal[("a", "b")] is Literal["a", "b"]


_STRICT = ConfigDict(extra="forbid", strict=True)
# Keys added after run identities were first pinned (tests/test_config.py): part of a run's identity only
# when set away from their defaults (Config.identity).
LATER_KEYS = (("ig", "teacher_weights"), ("ig", "random_teacher_seed"), ("train", "test_eval"),
              ("teacher_train", "test_eval"), ("data", "streaming"), ("augment", "crop_padding_for"),
              ("data", "loader_workers"))
# Keys that say where a run's data lives, not what it computes (the same seed gives the same run either way):
# never part of its identity.
PLACEMENT_KEYS = (("data", "streaming"), ("data", "loader_workers"))
Strides = Annotated[list[Literal[1, 2]], Field(min_length=5, max_length=5)]
Side = Annotated[int, Field(ge=1, le=8192)]
ModuleName = Annotated[str, Field(min_length=1)]
Device = Annotated[str, Field(pattern=r"^(auto|cpu|cuda|cuda:[0-9]+)$"), Allowed("auto, cpu, cuda or cuda:N")]


class DataConfig(BaseModel):
    model_config = _STRICT
    name: _choice(KNOWN_DATASETS) = "cifar10"
    root: str | None = Field(None, description="folder (or .npz file); null searches the usual places")
    download: bool = False
    train_size: Annotated[int | None, Field(ge=1)] = Field(
        None, description="stratified subset of the training set; null = all of it")
    test_size: Annotated[int | None, Field(ge=1)] = None
    subset_seed: int = Field(0, description="fixes the subset, so teacher, IG store and students share it")
    val_fraction: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(
        0.0, description="stratified hold-out from the training set, drawn from train.seed")
    image_size: Annotated[Side | Annotated[list[Side], Field(min_length=1, max_length=2)] | None,
                          Allowed("a side, or [height, width], each in 1..8192, or null")] = Field(
        None, description="resize every image to this side or [H, W] on load; null = as stored")
    streaming: Annotated[Literal["auto"] | bool, Allowed("auto, true or false")] = Field(
        "auto", description="true: read the images (and IG maps) from disk a batch at a time, from a decoded "
        "cache built on first use; false: hold them in memory (and on the device); auto: stream when they "
        "would fill more than half the free memory (a printed line says so). The same seed gives the same "
        "run either way")
    loader_workers: Annotated[int, Field(ge=0, le=256)] = Field(
        0, description="a streamed run's training batches (and precompute-ig's images, when not held in "
        "memory) are read ahead by this many DataLoader worker processes; 0: by one background thread "
        "(enough for the decoded cache; a dataset that decodes as it reads gains from a few). The same run "
        "and maps either way")


class TeacherConfig(BaseModel):
    model_config = _STRICT
    arch: Annotated[str, Allowed(ARCH_HELP)] = Field(
        "cifar_mobilenet_v2", description="cifar_mobilenet_v2, a torchvision classification model name, "
        "or timm:<name>")
    width_mult: Annotated[float, Field(gt=0)] = Field(1.0, description="shapes cifar_mobilenet_v2 only")
    strides: Annotated[Literal["auto"] | Strides, Allowed("auto, or five values, each 1 or 2")] = Field(
        "auto", description="cifar_mobilenet_v2 only: five values, each 1 or 2, or auto: chosen from the "
        "image size")
    strides_for: Annotated[Side | Annotated[list[Side], Field(min_length=1, max_length=2)] | None,
                           Allowed("a side, or [height, width], each in 1..8192, or null")] = Field(
        None, description="the image side or [H, W] explicit strides were written for; on images of another "
        "size the plan becomes auto (a printed line says so); null: any size")
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = Field(0.2, description="cifar_mobilenet_v2 only")
    checkpoint: str | None = Field(
        None, description="a state dict to load; null = train one with `igkd train-teacher`")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str) -> str:
        _arch_problem("teacher.arch", name)
        return name

    @model_validator(mode="after")
    def _family_only(self) -> TeacherConfig:
        """width_mult, strides and dropout shape cifar_mobilenet_v2; another arch must leave them alone."""
        if not is_family(self.arch):
            for key, default in (("width_mult", 1.0), ("strides", "auto"), ("dropout", 0.2)):
                if getattr(self, key) != default:
                    _refuse(f"teacher.{key}", getattr(self, key),
                            f"{default}: it shapes cifar_mobilenet_v2 only, not teacher.arch={self.arch}")
        return self


class StudentConfig(BaseModel):
    model_config = _STRICT
    remove_blocks: Annotated[int, Field(ge=1, lt=NUM_FEATURE_MODULES),
                             Allowed(f"in 1..{NUM_FEATURE_MODULES - 1}")] = Field(
        5, description="k: the last k of the 19 feature modules are removed")
    kind: _choice(STUDENT_KINDS) = Field(
        "truncated", description="truncated: the teacher's layers | scaled: a MobileNetV2 of its own "
        "width/strides | arch: student.arch, built fresh")
    width_mult: float | None = Field(
        None, description="scaled: null = the teacher's (or chosen by budget_macs)")
    strides: Annotated[Literal["auto"] | Strides | None, Allowed("auto, five values, each 1 or 2, or null")] = Field(
        None, description="scaled: five values, each 1 or 2, or auto; null = the teacher's")
    budget_macs: float | None = Field(
        None, description="scaled: the widest width doing at most this many multiply-adds per image")
    arch: str | None = Field(
        None, description="a model name (as teacher.arch): the student is that network, built fresh")

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, name: str | None) -> str | None:
        _arch_problem("student.arch", name)
        return name

    @model_validator(mode="after")
    def _kind_decides(self) -> StudentConfig:
        """arch goes with kind=arch; width, strides and budget with kind=scaled."""
        if self.arch is None and self.kind == "arch":
            _refuse("student.arch", None, "a model name when student.kind=arch")
        if self.arch is not None and self.kind == "scaled":
            _refuse("student.arch", self.arch, "null when student.kind=scaled")
        scaled, only_scaled = resolved_kind(self) == "scaled", "null unless student.kind=scaled"
        if self.width_mult is not None and not (scaled and self.width_mult > 0):
            _refuse("student.width_mult", self.width_mult, "> 0" if scaled else only_scaled)
        if self.width_mult is not None and self.budget_macs is not None:
            _refuse("student.width_mult", self.width_mult,
                    "null when student.budget_macs is set: the budget chooses the width")
        if self.strides is not None and not scaled:
            _refuse("student.strides", self.strides, only_scaled)
        if self.budget_macs is not None and not (scaled and self.budget_macs >= 1):
            _refuse("student.budget_macs", self.budget_macs, ">= 1 or null" if scaled else only_scaled)
        return self


class IGConfig(BaseModel):
    model_config = _STRICT
    n_steps: Annotated[int, Field(ge=1), Allowed(">= 1 (>= 2 for Riemann methods)")] = 50
    method: _choice(SUPPORTED_METHODS) = "gausslegendre"
    baseline: _choice(tuple(BASELINES)) = Field(
        "zeros-normalized", description="the paper's: zero in normalised space = the mean colour")
    dtype: _choice(IG_DTYPES) = Field(
        "float16", description="each map is stored divided by its maximum; float32 for more mantissa")
    batch_size: Annotated[int | None, Field(ge=1)] = Field(
        None, description="images per IG call; null = chosen automatically")
    chunk_size: Annotated[int | None, Field(ge=1)] = Field(
        None, description="images per resumable chunk of the store; null = 256 on CPU, 2048 on GPU")
    fold_bn: bool = Field(
        True, description="batch norm folded into the convolutions for the IG passes (float32 rounding only)")
    channels_last: bool = Field(
        True, description="channels-last memory for the IG passes (together with fold_bn ~2x on CPU)")
    store: str | None = Field(
        None, description="the store folder; null = <cache_dir>/<name from dataset, teacher, settings>")
    cache_dir: str | None = Field(
        None, description="where named stores go; null = $IGKD_CACHE/ig (~/.cache/igkd/ig)")
    attribution: _choice(ATTRIBUTIONS) = Field(
        "integrated_gradients", description="the maps' source: igkd's integrated gradients, or a Captum "
        "source (igkd.attribution.saliency)")
    smoothgrad_samples: Annotated[int, Field(ge=1)] = Field(
        50, description="noisy copies per image (Smilkov et al. 2017: 50)")
    smoothgrad_noise: Annotated[float, Field(gt=0, le=1), Hint("the noise sd as a fraction of the input range")] = (
        Field(0.15, description="noise sd as a fraction of the input range (Smilkov et al.: 0.1-0.2)"))
    smoothgrad_seed: int = Field(0, description="each image's noise is drawn from this and its dataset position")
    gradcam_layer: Annotated[ModuleName | None, Allowed("a module name of the teacher, or null")] = Field(
        None, description="null = the last convolutional block (features.18 of cifar_mobilenet_v2)")
    teacher_weights: _choice(TEACHER_WEIGHTS) = Field(
        "trained", description="whose maps: the trained teacher's, or (random) those of its architecture freshly "
        "initialised from random_teacher_seed (the sanity control of Adebayo et al. 2018); KD still uses the "
        "trained teacher")
    random_teacher_seed: int = Field(0, description="the initialisation of the random teacher (teacher_weights=random)")

    @model_validator(mode="after")
    def _steps_for_method(self) -> IGConfig:
        if self.method != "gausslegendre" and self.n_steps < 2:
            _refuse("ig.n_steps", self.n_steps, ">= 1 (>= 2 for Riemann methods)")
        return self


class AugmentConfig(BaseModel):
    model_config = _STRICT
    crop_padding: Annotated[Annotated[int, Field(ge=0)] | Literal["auto"], Allowed("an integer >= 0, or auto")] = Field(
        4, description="random-crop zero padding in pixels; auto: one eighth of the image's smaller side")
    crop_padding_for: Annotated[Side | None, Allowed("a side in 1..8192, or null")] = Field(
        None, description="the image side crop_padding was written for (set by the presets); on images of "
        "another size it is scaled to theirs (a printed line says so); null: any size")
    flip: bool = True
    overlay_p: Annotated[float, Field(ge=0.0, le=1.0)] = 0.1
    power_range: Annotated[list[float], Field(min_length=2, max_length=2),
                           Allowed("[lo, hi] with 0 < lo <= hi")] = Field(default_factory=lambda: [1.0, 2.0])
    mix: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    maps: _choice(MAP_SOURCES) = Field(
        "ig", description="the overlay's maps: ig | unrelated (another image's IG map) | noise (controls)")

    @field_validator("power_range")
    @classmethod
    def _ordered(cls, value: list[float]) -> list[float]:
        if not 0 < value[0] <= value[1]:
            _refuse("augment.power_range", value, "[lo, hi] with 0 < lo <= hi")
        return value


class DistillConfig(BaseModel):
    model_config = _STRICT
    method: _choice(METHODS) = "kd_ig"
    alpha: Annotated[float, Field(ge=0.0, le=1.0)] = Field(
        0.01, description="weight of the KD term (torchdistill uses 1 - alpha)")
    temperature: Annotated[float, Field(gt=0)] = 2.5
    gamma: Annotated[float, Field(ge=0)] = Field(0.8, description="weight of the attention-transfer term")
    at_layer: Annotated[int | None, Field(ge=0)] = Field(
        None, description="a feature module the student keeps; null = METHOD.md's rule features[19 // d]")
    at_student_layer: Annotated[ModuleName | None, Allowed("a module name or null")] = Field(
        None, description="AT by module name (any architecture); null = chosen by spatial size")
    at_teacher_layer: Annotated[ModuleName | None, Allowed("a module name or null")] = Field(
        None, description="null = the teacher's module of the nearest spatial size")
    teacher_runtime: _choice(TEACHER_RUNTIMES) = Field(
        "auto", description="the teacher's forward in every step: auto = ONNX Runtime on the CPU where "
        "installed, else torch (an inference copy: BN folded, channels-last); eager = the module as it is")

    @model_validator(mode="after")
    def _one_way_to_name_the_at_layer(self) -> DistillConfig:
        if self.at_layer is not None and self.at_student_layer is not None:
            _refuse("distill.at_layer", self.at_layer,
                    "null when distill.at_student_layer names the student's AT module")
        return self


class TrainConfig(BaseModel):
    model_config = _STRICT
    epochs: Annotated[int, Field(ge=1)] = 100
    batch_size: Annotated[int, Field(ge=2), Hint("batch norm")] = 64
    optimizer: _choice(OPTIMIZERS) = "adam"
    lr: Annotated[float, Field(gt=0)] = 1e-3
    weight_decay: Annotated[float, Field(ge=0)] = 0.0
    momentum: float = 0.9
    schedule: _choice(SCHEDULES) = "constant"
    eval_batch_size: Annotated[int, Field(ge=1)] = Field(
        128, description="larger batches run up to 4x slower per image on a CPU (cache)")
    subset_fraction: Annotated[float, Field(gt=0.0, le=1.0)] = Field(
        1.0, description="train on a fresh stratified fraction of the training split, drawn from seed")
    seed: int = 0
    device: Device = "auto"
    threads: Annotated[int | None, Field(ge=1)] = None
    checkpoint_every: Annotated[int, Field(ge=0), Hint("steps; 0: per epoch")] = Field(
        0, description="also checkpoint every N steps within an epoch (0: after each epoch only)")
    deterministic: bool = Field(
        False, description="deterministic algorithms only (CUDA: slower; CPU results are already repeatable)")
    amp: _choice(AMP_MODES) = Field(
        "none", description="autocast of the training and evaluation forward (fp16 with a grad scaler)")
    channels_last: bool = Field(False, description="NHWC memory for the models and batches (faster on GPUs)")
    compile: bool = Field(False, description="torch.compile the training forward (student, teacher and losses)")
    check_finite_every: Annotated[int, Field(ge=0), Hint("steps; 0: at checkpoints and epoch ends only")] = Field(
        1, description="loss checks: every step, before the update (1), every N steps, or at epoch end (0)")
    test_eval: _choice(TEST_EVALS) = Field(
        "every_epoch", description="when the test set is evaluated: after every epoch, or (end) only after the "
        "last epoch and on the best-validation epoch's weights (best.pt): the same two summary numbers, two "
        "test passes instead of one per epoch")
    sync_bn: bool | None = Field(
        None, description="data-parallel: batch norm over the global batch; null = on CUDA (GPU-only in torch)")


class TrackConfig(BaseModel):
    """Where runs are also shown; not part of what makes a run (:meth:`Config.identity`)."""

    model_config = _STRICT
    tensorboard: bool = Field(True, description="TensorBoard event files in every run directory")
    mlflow_uri: Annotated[str | None, Field(min_length=1), Allowed("a tracking URI or null")] = Field(
        None, description="an MLflow tracking URI (server or file store); null: $MLFLOW_TRACKING_URI if set")
    mlflow_experiment: str = Field("igkd", description="the MLflow experiment runs are logged to")
    mlflow_parent_run: str | None = Field(
        None, description="the MLflow run this one nests under (a study sets it for its runs)")


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid", title="igkd config")
    data: DataConfig = Field(default_factory=DataConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    student: StudentConfig = Field(default_factory=StudentConfig)
    ig: IGConfig = Field(default_factory=IGConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    distill: DistillConfig = Field(default_factory=DistillConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    teacher_train: TrainConfig = Field(default_factory=TrainConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)

    @model_validator(mode="after")
    def _truncated_needs_the_family(self) -> Config:
        """student.kind=truncated cuts the student from a cifar_mobilenet_v2 teacher."""
        if not is_family(self.teacher.arch) and student_kind(self) == "truncated":
            _refuse("student.kind", self.student.kind,
                    f"scaled or arch: a truncated student is cut from a cifar_mobilenet_v2 teacher, not "
                    f"{self.teacher.arch}; set student.arch=NAME (e.g. mobilenet_v3_small)")
        return self

    @model_validator(mode="after")
    def _at_layer_is_kept_by_the_student(self) -> Config:
        """distill.at_layer names a feature module the student (student.remove_blocks) keeps."""
        at, k = self.distill.at_layer, self.student.remove_blocks
        if at is not None and at >= NUM_FEATURE_MODULES - k:
            _refuse("distill.at_layer", at, f"null or a feature module the student keeps "
                    f"(0..{NUM_FEATURE_MODULES - k - 1} for remove_blocks={k})")
        if at is not None and student_kind(self) == "arch":
            _refuse("distill.at_layer", at, "null for a student.arch student: name its module with "
                    "distill.at_student_layer")
        return self

    @model_validator(mode="after")
    def _budget_can_be_met(self) -> Config:
        """A MAC budget no student can meet is refused before anything runs, where the image shape is known."""
        shape = known_image_shape(self.data.name, self.data.image_size)
        if self.student.budget_macs is not None and shape is not None:
            student_spec(self, shape, DATASETS[self.data.name].num_classes)  # raises ConfigError naming the key
        return self

    def to_dict(self) -> dict:
        return self.model_dump()

    def identity(self) -> dict:
        """What makes a run: every section but ``track`` (where it is shown, not what it computes). Keys
        added since runs were first keyed (:data:`LATER_KEYS`) count only when set away from their default,
        so a run, study or cache made before they existed keeps its identity; where the data lives
        (:data:`PLACEMENT_KEYS`) never counts."""
        d = {k: v for k, v in self.to_dict().items() if k != "track"}
        for section, key in LATER_KEYS:
            if d[section][key] == type(getattr(self, section)).model_fields[key].default:
                del d[section][key]
        for section, key in PLACEMENT_KEYS:
            d[section].pop(key, None)
        shape, a = known_image_shape(self.data.name, self.data.image_size), self.augment
        if shape is not None and plan_padding(a.crop_padding, a.crop_padding_for, shape[1:]) == a.crop_padding:
            d["augment"].pop("crop_padding_for", None)  # it changes nothing on these images
        return d

    def digest(self, *sections: str) -> str:
        """A short hash of the named sections (all that make a run when none), to tell runs and caches apart."""
        d = self.identity()
        if sections:
            d = {s: d[s] for s in sections}
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:12]


def json_schema() -> dict:
    """The JSON Schema of a config file (editors complete and check YAML against it)."""
    schema = Config.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


# ---- one line per error: key, value, what is allowed ----

def _unwrap(tp: Any) -> Any:
    while typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return tp


def _type_name(tp: Any) -> str:
    tp = _unwrap(tp)
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is Literal:
        return ", ".join(str(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    return "null" if tp is type(None) else getattr(tp, "__name__", str(tp))


def _bounds_text(metadata: list) -> str:
    b = {name: f"{getattr(m, name):g}" for m in metadata for name in ("ge", "gt", "le", "lt") if hasattr(m, name)}
    lo = ("[", b["ge"]) if "ge" in b else ("(", b["gt"]) if "gt" in b else None
    hi = (b["le"], "]") if "le" in b else (b["lt"], ")") if "lt" in b else None
    if lo and hi:
        return f"in {lo[0]}{lo[1]}, {hi[0]}{hi[1]}"
    if lo:
        return (">= " if lo[0] == "[" else "> ") + str(lo[1])
    if hi:
        return ("<= " if hi[1] == "]" else "< ") + str(hi[0])
    return ""


def _metadata(tp: Any) -> list:
    """Every Annotated metadata item of ``tp`` and of the members of its unions."""
    out = []
    while typing.get_origin(tp) is Annotated:
        out += list(tp.__metadata__)
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            if typing.get_origin(arg) is Annotated:
                out += list(arg.__metadata__)
    return out


def allowed_text(info: FieldInfo) -> str:
    """A key's allowed values in words, from its declaration."""
    metadata = [*info.metadata, *_metadata(info.annotation)]
    for m in metadata:
        if isinstance(m, Allowed):
            return m.text
    tp = _unwrap(info.annotation)
    args = typing.get_args(tp) if typing.get_origin(tp) in (typing.Union, types.UnionType) else (tp,)
    optional = type(None) in args
    args = tuple(_unwrap(a) for a in args if a is not type(None))
    if len(args) == 1 and typing.get_origin(args[0]) is Literal:
        text = _one_of(typing.get_args(args[0]))
    else:
        text = _bounds_text(metadata) or _type_name(tp)
    hints = [m.text for m in metadata if isinstance(m, Hint)]
    return text + (" or null" if optional else "") + (f" ({hints[0]})" if hints else "")


_TYPE_ERRORS = ("int_type", "float_type", "string_type", "bool_type", "list_type", "none_required",
                "int_from_float", "float_parsing", "int_parsing", "bool_parsing")


def _one_line(e: ValidationError, data: dict) -> ConfigError:
    """The first problem of a pydantic error as one line: key, value, what is allowed."""
    errors = e.errors(include_url=False)
    loc = errors[0]["loc"]
    if errors[0]["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
        where, known = ".".join(map(str, loc)), Config.model_fields
        if len(loc) > 1 and loc[0] in known:
            known = typing.cast(type[BaseModel], known[loc[0]].annotation).model_fields
        return ConfigError(f"unknown config key {where!r}; known here: {', '.join(sorted(known))}")
    section = loc[0]
    if len(loc) == 1:
        return ConfigError(f"section {section} must be a mapping, got {data.get(section)!r}")
    key = loc[1]
    where = f"{section}.{key}"
    info = typing.cast(type[BaseModel], Config.model_fields[section].annotation).model_fields[key]
    value = data[section][key]
    same = [x for x in errors if tuple(x["loc"][:2]) == (section, key)]
    if all(x["type"] in _TYPE_ERRORS for x in same):
        return ConfigError(f"bad value for {where}: {value!r} (expected {_type_name(info.annotation)})")
    return ConfigError(f"bad value for {where}: {value!r} (allowed: {allowed_text(info)})")


def _merge(into: dict, data: Any, prefix: str = "") -> None:
    """Deep-merge ``data`` into ``into``: sections merge key by key, values replace."""
    if not isinstance(data, dict):
        raise ConfigError(f"section {prefix.rstrip('.') or 'top level'} must be a mapping, got {data!r}")
    for key, value in data.items():
        if not prefix and key in Config.model_fields and not isinstance(value, dict):
            raise ConfigError(f"section {key} must be a mapping, got {value!r}")
        if isinstance(value, dict) and isinstance(into.get(key), dict):
            _merge(into[key], value, f"{prefix}{key}.")
        else:
            into[key] = value


def config_from_dict(data: dict) -> Config:
    """A validated config from nested plain values (a YAML file's, or a recorded ``to_dict``)."""
    if not isinstance(data, dict):
        raise ConfigError(f"section top level must be a mapping, got {data!r}")
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        raise _one_line(e, data) from None


def parse_override(text: str) -> tuple[list[str], Any]:
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else None
    except yaml.YAMLError:
        value = raw
    return key.strip().split("."), value


PRESET_DIR = Path(__file__).resolve().parent / "configs"
FAMILY_KEYS = ("width_mult", "strides", "strides_for", "dropout")  # teacher keys that shape cifar_mobilenet_v2 only


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file, then ``key=value`` overrides, then validation.

    A preset's (a file shipped with igkd) teacher keys that shape cifar_mobilenet_v2 only step aside, with
    one printed line, when the overrides name another ``teacher.arch``; the same keys set by the user
    (in the overrides, or in a file of their own) are still refused."""
    data: dict = {}
    user: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"config file {path} is not valid YAML: {str(e).splitlines()[0]}") from None
        _merge(data, loaded)
        if path.resolve().parent != PRESET_DIR:
            _merge(user, copy.deepcopy(loaded))
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for k in reversed(keys):
            nested = {k: nested}
        _merge(data, nested)
        _merge(user, copy.deepcopy(nested))
    _preset_family_keys_step_aside(data, user)
    return config_from_dict(data)


def _preset_family_keys_step_aside(data: dict, user: dict) -> None:
    """Drop the preset's cifar_mobilenet_v2-only teacher keys when the user names another architecture."""
    teacher, own = data.get("teacher"), user.get("teacher")
    if not isinstance(teacher, dict) or not isinstance(own, dict) or not isinstance(own.get("arch"), str):
        return
    if is_family(own["arch"]) or model_name_problem(own["arch"]) is not None:
        return  # the family keeps its keys; a bad name is refused as such
    aside = [k for k in FAMILY_KEYS if k in teacher and k not in own]
    for k in aside:
        del teacher[k]
    if aside:
        warn_once(f"teacher.arch={own['arch']}: the preset's {', '.join(f'teacher.{k}' for k in aside)} shape "
                  "cifar_mobilenet_v2 only and are left out")


# What a run of :func:`igkd.fit` records of its config: the sections (and their keys; None: all) that
# describe it. The rest (the data source, the teacher, the student, IG, the overlay's map source) describe
# runs igkd builds itself; a Python run's datasets and networks are described by its ``inputs.json``.
PYTHON_RUN_KEYS: dict[str, tuple[str, ...] | None] = {
    "data": ("streaming", "loader_workers"),
    "augment": ("crop_padding", "crop_padding_for", "flip", "overlay_p", "power_range", "mix"),
    "distill": ("method", "alpha", "temperature", "gamma", "teacher_runtime"),
    "train": None,
    "track": None,
}


def only_keys(tree: dict, keys: dict[str, tuple[str, ...] | None] | None) -> dict:
    """``tree`` (a config's nested dict) with only the sections and keys of ``keys``; None: all of it."""
    if keys is None:
        return tree
    return {section: (dict(tree[section]) if names is None else {k: tree[section][k] for k in names})
            for section, names in keys.items() if section in tree}


def dump_config(cfg: Config, keys: dict[str, tuple[str, ...] | None] | None = None) -> str:
    """``cfg`` as YAML; with ``keys``, only those sections and keys (:data:`PYTHON_RUN_KEYS`): reading it
    back fills the rest with their defaults, so the identity is the same."""
    return yaml.safe_dump(only_keys(cfg.to_dict(), keys), sort_keys=False)
