"""``igkd evaluate``: how good is a checkpoint, on the configured test set or the ImageNet subset.

Accuracy, balanced accuracy, Cohen's kappa, per-class accuracy and the confusion matrix (scikit-learn's
metrics), for a teacher or a student (truncated or scaled): the checkpoint's own keys say which (a student keeps
``features.0`` .. ``features.{18-k}``). The input convention is explicit and reported: ``normalized``
(igkd's, ``(x - mean) / std``) or ``pixels01`` (un-normalised [0, 1], how the authors trained their
reference students).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import Config
from .convention import InputConvention
from .data.catalog import DATASETS, known_image_shape
from .data.image_dataset import ImageDataset
from .data.sources import read_ahead, spans_of
from .errors import CheckpointError, ConfigError
from .fileio import write_checked_json
from .models import (
    StudentSpec,
    compression_factor,
    count_macs,
    count_parameters,
    is_family,
    student_kind,
    student_spec,
    truncated_student,
)
from .pipeline import build_teacher, load_datasets, load_teacher
from .reporting import format_table
from .runs import load_state_dict, load_weights
from .utils import setup_device

INPUT_CONVENTIONS = ("normalized", "pixels01")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict:
    """Accuracy and balanced accuracy in percent, Cohen's kappa, per-class accuracy, confusion matrix."""
    from sklearn.metrics import balanced_accuracy_score, cohen_kappa_score, confusion_matrix

    if len(y_true) == 0:
        raise ConfigError("no images to evaluate")
    labels = list(range(len(classes)))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    support = cm.sum(axis=1)
    present = support > 0
    per_class = {c: (100.0 * cm[i, i] / support[i]) if present[i] else None for i, c in enumerate(classes)}
    return {
        "images": int(len(y_true)),
        "accuracy": 100.0 * float(np.mean(y_true == y_pred)),
        # over the classes present in y_true, as scikit-learn defines it
        "balanced_accuracy": 100.0 * float(_quiet(balanced_accuracy_score, y_true, y_pred)),
        "cohen_kappa": float(cohen_kappa_score(y_true, y_pred, labels=labels)),
        "per_class_accuracy": per_class,
        "confusion_matrix": cm.tolist(),
        "classes": list(classes),
    }


def _quiet(fn, *args):
    """scikit-learn warns when predictions name a class absent from the truth (the ImageNet subset has
    no deer or horse): expected here, and balanced accuracy is defined over the classes present."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return fn(*args)


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, convention: InputConvention, device: torch.device,
            batch_size: int = 1000, workers: int = 0) -> np.ndarray:
    """Predicted classes of uint8 images (N, C, H, W), the model in eval mode on ``device``. Images not in
    memory are read ahead of the model (:func:`~igkd.data.sources.read_ahead`; ``workers`` processes)."""
    model.eval()
    out = []
    labels = torch.zeros(len(x), dtype=torch.int64)  # read_ahead carries labels; predictions need none
    for xb, _ in read_ahead(x, labels, spans_of(0, len(x), batch_size), device, workers):
        out.append(model(convention.from_uint8(xb)).argmax(1).cpu())
    return torch.cat(out).numpy() if out else np.zeros(0, dtype=np.int64)


@dataclass
class LoadedModel:
    model: torch.nn.Module
    role: str  # teacher | student
    student: StudentSpec | None  # the student's architecture; None for a teacher


def load_model(cfg: Config, num_classes: int, in_channels: int, path: str | Path,
               image_shape: tuple[int, int, int] | None = None) -> LoadedModel:
    """The teacher or student whose weights ``path`` holds, told apart by the checkpoint's keys.

    A student keeps ``features.0`` .. ``features.{18-k}``: that gives k. Its architecture is the
    configured student kind at that k (a scaled one's MAC budget resolved on ``image_shape``, by
    default the dataset's); a scaled config also accepts the teacher's truncated student at that k.
    Networks named by ``teacher.arch`` / ``student.arch`` (torchvision, timm) are told apart by their
    state-dict keys.
    """
    state = load_state_dict(path)
    shape = image_shape or known_image_shape(cfg.data.name, cfg.data.image_size)
    teacher = build_teacher(cfg, num_classes, in_channels, None if shape is None else shape[1:])
    if student_kind(cfg) == "arch" or not is_family(cfg.teacher.arch):
        return _load_named(cfg, num_classes, in_channels, path, state, teacher, shape)
    feature_ids = {int(k.split(".")[1]) for k in state if k.startswith("features.") and k.split(".")[1].isdigit()}
    if not feature_ids:
        raise CheckpointError(f"checkpoint {path} has no features.* weights: not a teacher or student of "
                              f"{cfg.teacher.arch}")
    kept = max(feature_ids) + 1
    if kept == len(teacher.features):
        return LoadedModel(load_weights(teacher, path, state), "teacher", None)
    k = len(teacher.features) - kept
    if cfg.student.kind != "truncated" and shape is None:
        raise ConfigError(f"the image shape of {cfg.data.name} is read from its files: load the dataset first")
    candidates = [student_spec(cfg, shape, num_classes, remove_blocks=k)]
    if candidates[0].kind != "truncated":
        candidates.append(StudentSpec("truncated", k))
    errors = []
    for spec in candidates:
        try:
            return LoadedModel(load_weights(spec.build(teacher), path, state), "student", spec)
        except CheckpointError as e:
            errors.append(e)
    raise errors[0]  # what does not fit the configured student


def _load_named(cfg: Config, num_classes: int, in_channels: int, path: str | Path, state: dict,
                teacher: torch.nn.Module, shape: tuple[int, int, int] | None) -> LoadedModel:
    """The teacher or the configured student, whichever has exactly the checkpoint's keys."""
    if shape is None and student_kind(cfg) == "scaled":
        raise ConfigError(f"the image shape of {cfg.data.name} is read from its files: load the dataset first")
    spec = student_spec(cfg, shape, num_classes)
    student = spec.build(teacher, num_classes, in_channels)
    keys = set(state)
    if keys == set(teacher.state_dict()):
        return LoadedModel(load_weights(teacher, path, state), "teacher", None)
    if keys == set(student.state_dict()):
        return LoadedModel(load_weights(student, path, state), "student", spec)
    # Neither: the error of the closer one says what does not fit.
    closer = max((teacher, student), key=lambda m: len(keys & set(m.state_dict())))
    load_weights(closer, path, state)
    raise CheckpointError(f"checkpoint {path} is neither teacher {cfg.teacher.arch} nor student {spec.label}")


def model_from_checkpoint(cfg: Config, num_classes: int, in_channels: int, path: str | Path,
                          image_shape: tuple[int, int, int] | None = None
                          ) -> tuple[torch.nn.Module, str, int | None]:
    """(model with the checkpoint's weights, "teacher" or "student", remove_blocks of a student)."""
    m = load_model(cfg, num_classes, in_channels, path, image_shape)
    return m.model, m.role, None if m.student is None else m.student.remove_blocks


def convention_for(name: str, trained: InputConvention) -> InputConvention:
    if name == "normalized":
        return trained
    if name == "pixels01":
        channels = len(trained.mean)
        return InputConvention((0.0,) * channels, (1.0,) * channels)
    raise ConfigError(f"unknown input convention {name!r}; choose one of {', '.join(INPUT_CONVENTIONS)}")


def evaluate_checkpoint(cfg: Config, checkpoint: str | Path, input_convention: str = "normalized",
                        imagenet: str | Path | None = None, keep_teacher_correct: bool = False,
                        json_out: str | Path | None = None) -> dict:
    """Evaluate ``checkpoint`` on the configured test set, or on the ImageNet classes mapped onto CIFAR-10.

    With ``imagenet`` (a downsampled-ImageNet file/folder or a folder of WordNet-id folders), the
    images are labelled by CIFAR-10 class; ``keep_teacher_correct`` keeps only those the configured
    teacher (``teacher.checkpoint``) classifies correctly, as the paper did.
    """
    device = setup_device(cfg.train.device, cfg.train.threads)
    if input_convention not in INPUT_CONVENTIONS:
        raise ConfigError(f"unknown input convention {input_convention!r}; choose one of "
                          f"{', '.join(INPUT_CONVENTIONS)}")
    if imagenet is not None:
        from .data.imagenet import keep_correct, load_imagenet_cifar10

        info = DATASETS[cfg.data.name]
        if cfg.data.name != "cifar10":
            raise ConfigError("the ImageNet subset is labelled by CIFAR-10 class: use a cifar10 config")
        size = known_image_shape(cfg.data.name, cfg.data.image_size)[1]  # the size the model was trained on
        test: ImageDataset = load_imagenet_cifar10(imagenet, image_size=size, streaming=cfg.data.streaming is True)
        trained = info.convention
        num_classes, in_channels = info.num_classes, info.image_shape[0]
        shown = f"ImageNet classes mapped onto CIFAR-10 ({imagenet})"
        if keep_teacher_correct:
            teacher, _ = load_teacher(cfg, num_classes, in_channels, device)
            before = len(test)
            test = keep_correct(test, teacher, trained, device=device)
            if len(test) == 0:
                raise ConfigError(f"the teacher classifies none of the {before:,} ImageNet images correctly: "
                                  "check teacher.checkpoint")
            shown += f", {len(test):,} of {before:,} images that the teacher classifies correctly"
    else:
        if keep_teacher_correct:
            raise ConfigError("--keep-teacher-correct applies to the ImageNet subset (--imagenet) only")
        ds = load_datasets(cfg)
        test, trained = ds.test, ds.convention
        num_classes, in_channels = ds.train.num_classes, ds.train.image_shape[0]
        shown = f"{cfg.data.name} test set"
    loaded = load_model(cfg, num_classes, in_channels, checkpoint, test.image_shape)
    conv = convention_for(input_convention, trained)
    pred = predict(loaded.model.to(device), test.x, conv, device, cfg.train.eval_batch_size, cfg.data.loader_workers)
    result = {
        "checkpoint": str(checkpoint),
        "role": loaded.role,
        "remove_blocks": None if loaded.student is None else loaded.student.remove_blocks,
        "student": None if loaded.student is None else loaded.student.to_dict(),
        "dataset": shown,
        "input_convention": {"name": input_convention, **conv.to_dict()},
        **classification_metrics(test.y.numpy(), pred, list(test.classes)),
    }
    if json_out is not None:
        write_checked_json(json_out, result)
    return result


def format_evaluation(r: dict) -> str:
    conv = r["input_convention"]
    student = r.get("student")
    role = r["role"] if student is None else f"{r['role']} ({StudentSpec(**student).label})"
    lines = [
        f"{role} from {r['checkpoint']}",
        f"data: {r['dataset']}, {r['images']:,} images",
        f"input convention: {conv['name']} (mean {conv['mean']}, std {conv['std']} on pixels in [0, 1])",
        f"accuracy {r['accuracy']:.2f} %, balanced accuracy {r['balanced_accuracy']:.2f} %, "
        f"Cohen's kappa {r['cohen_kappa']:.3f}",
        "",
        format_table(["class", "accuracy %"], [(c, a) for c, a in r["per_class_accuracy"].items()]),
        "",
        "confusion matrix (rows: true class, columns: predicted)",
        format_table(["", *range(len(r["classes"]))],
                     [(f"{i} {c}", *row) for i, (c, row) in enumerate(zip(r["classes"], r["confusion_matrix"]))]),
    ]
    return "\n".join(lines)


__all__ = ["INPUT_CONVENTIONS", "LoadedModel", "classification_metrics", "evaluate_checkpoint",
           "format_evaluation", "load_model", "model_from_checkpoint", "predict"]


def compression_table(cfg: Config) -> str:
    """Student size and cost for every k of the configured teacher (METHOD.md's CF table)."""
    info = DATASETS[cfg.data.name]
    if info.image_shape is None:
        known = ", ".join(k for k, v in DATASETS.items() if v.image_shape is not None)
        raise ConfigError(f"compression-table knows the image shape of {known} only, not {cfg.data.name}")
    if not is_family(cfg.teacher.arch):
        raise ConfigError(f"compression-table lists the truncated students of cifar_mobilenet_v2, not "
                          f"{cfg.teacher.arch}")
    shape, classes = known_image_shape(cfg.data.name, cfg.data.image_size), info.num_classes
    teacher = build_teacher(cfg, classes, shape[0], shape[1:])
    rows = [("teacher", count_parameters(teacher), 1.0, count_macs(teacher, shape) / 1e6)]
    for k in range(1, len(teacher.features)):
        s = truncated_student(teacher, k)
        rows.append((f"k={k}", count_parameters(s), compression_factor(teacher, s), count_macs(s, shape) / 1e6))
    return format_table(["model", "parameters", "CF", "MMACs / image"], rows)
