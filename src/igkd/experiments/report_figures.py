"""The report's figures, each a section: every run's accuracy, accuracy against compression, learning
curves, the IG gallery, and latency against accuracy (``bench*.json``). Never imports torch."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from ..fileio import read_run_metrics  # noqa: E402
from . import stats  # noqa: E402
from .report_data import Study, finite, fmt, group_title, teacher_accuracy  # noqa: E402
from .report_render import Heading, Section, Table, figure  # noqa: E402


def accuracy_plot_section(study: Study) -> Section:
    groups = study.groups
    fig, axes = plt.subplots(1, len(groups), figsize=(1.2 + 1.4 * len(study.methods) * len(groups), 4),
                             sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    teacher = teacher_accuracy(study)
    for ax, group in zip(axes[0], groups):
        for i, method in enumerate(study.methods):
            values = study.values(group, method)
            if not values:
                continue
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=14, alpha=0.6,
                       color=f"C{i}", edgecolors="none")
            d = stats.describe(values)
            if finite(d["ci_low"]):
                yerr = [[d["mean"] - d["ci_low"]], [d["ci_high"] - d["mean"]]]
            else:
                yerr = None
            ax.errorbar(i + 0.3, d["mean"], yerr=yerr, fmt="o", color="black", capsize=4, ms=5)
        if teacher is not None:
            ax.axhline(teacher, color="gray", ls="--", lw=1, label="teacher")
            ax.legend(loc="lower right", fontsize=8)
        ax.set_xticks(range(len(study.methods)))
        ax.set_xticklabels(study.methods, rotation=30, ha="right", fontsize=8)
        ax.set_title(group_title(study, group), fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test accuracy (%)")
    caption = ("Test accuracy of every run (dots); black: mean with 95 % CI."
               + (" Dashed: teacher." if teacher is not None else ""))
    return Section("Runs", [figure(fig, "accuracy_per_method", caption)])


def compression_plot_section(study: Study) -> Section | None:
    groups = [g for g in study.groups if study.compression_factor(g) is not None]
    if len(study.groups) < 2 or len(groups) < 2:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for i, method in enumerate(study.methods):
        # Nudge each method sideways a little so that error bars at the same CF do not overlap.
        nudge = 1.0 + 0.012 * (i - (len(study.methods) - 1) / 2)
        xs, means, lows, highs = [], [], [], []
        for group in groups:
            values = study.values(group, method)
            if not values:
                continue
            d = stats.describe(values)
            xs.append(study.compression_factor(group) * nudge)
            means.append(d["mean"])
            lows.append(d["mean"] - d["ci_low"] if finite(d["ci_low"]) else 0.0)
            highs.append(d["ci_high"] - d["mean"] if finite(d["ci_high"]) else 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=3, label=method,
                        color=f"C{i}")
    teacher = teacher_accuracy(study)
    if teacher is not None:
        ax.axhline(teacher, color="gray", ls="--", lw=1, label="teacher")
    ax.set_xscale("log")
    cfs = [study.compression_factor(g) for g in groups]
    ax.set_xticks(cfs, [f"{cf:.2f}" for cf in cfs])
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("compression factor (log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return Section("Accuracy against compression factor",
                   [figure(fig, "accuracy_vs_compression", "Mean test accuracy with 95 % CI.")])


def learning_curves_section(study: Study) -> Section | None:
    """Mean accuracy per epoch of each method (band: min to max over runs): the test set's when every epoch
    was tested, else (``train.test_eval=end``) the validation set's; dashed: accuracy on the training
    batches, so the gap between the two shows how far the students fit their training set."""
    metrics = {r["run_dir"]: read_run_metrics(study.dir / r["run_dir"]) for r in study.rows if r.get("run_dir")}
    every_epoch_tested = all(finite(m.get("test_acc")) for ms in metrics.values() for m in ms)
    key, label = ("test_acc", "test") if every_epoch_tested else ("val_acc", "validation")
    # curves[group][method][split][epoch] -> accuracies of all runs at that epoch
    curves: dict[str, dict[str, dict[str, dict[int, list[float]]]]] = {}
    for r in study.rows:
        for m in metrics.get(r.get("run_dir"), []):
            if m.get("epoch") is None:
                continue
            for split in (key, "train_acc"):
                if finite(m.get(split)):
                    by_epoch = curves.setdefault(r["remove_blocks"], {}).setdefault(r["method"], {})
                    by_epoch.setdefault(split, {}).setdefault(int(m["epoch"]), []).append(float(m[split]))
    if not any(key in by_split for methods in curves.values() for by_split in methods.values()):
        return None
    groups = [g for g in study.groups if g in curves]
    fig, axes = plt.subplots(1, len(groups), figsize=(1 + 5 * len(groups), 4), sharey=True,
                             squeeze=False)
    for ax, group in zip(axes[0], groups):
        for i, method in enumerate(study.methods):
            for split, style in ((key, "-"), ("train_acc", "--")):
                by_epoch = curves[group].get(method, {}).get(split)
                if not by_epoch:
                    continue
                epochs = sorted(by_epoch)
                ax.plot(epochs, [np.mean(by_epoch[e]) for e in epochs], color=f"C{i}", ls=style, lw=1 if
                        style == "--" else 1.5, label=method if split == key else None,
                        marker="o" if len(epochs) <= 20 and split == key else None, markersize=3)
                if split == key:
                    ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs],
                                    [max(by_epoch[e]) for e in epochs], color=f"C{i}", alpha=0.2, lw=0)
        ax.set_title(group_title(study, group), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("accuracy (%)")
    caption = (f"Mean {label} accuracy per epoch; band: min to max over runs. Dashed: accuracy on the "
               "(augmented) training batches.")
    if not every_epoch_tested:
        caption += " The test set was evaluated at the last and the best-validation epochs only (train.test_eval=end)."
    return Section("Learning curves", [figure(fig, "learning_curves", caption)])


def gallery_section(study: Study, max_images: int = 12) -> Section | None:
    path = study.dir / "gallery.npz"
    if not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as g:
        images, maps, overlays = g["images"], g["maps"], g["overlays"]
        labels = g["labels"] if "labels" in g.files else None
        try:
            classes = g["classes"] if "classes" in g.files else None
        except ValueError:  # an object array would need pickle; go without names
            classes = None
    k = min(len(images), max_images)
    fig, axes = plt.subplots(k, 3, figsize=(6, 2 * k), squeeze=False)
    signed = bool((maps < 0).any())  # igkd's maps are sums of |attribution|: non-negative
    for i in range(k):
        limit = float(np.abs(maps[i]).max()) or 1.0
        scale = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit} if signed else {"cmap": "magma", "vmin": 0,
                                                                                  "vmax": limit}
        panels = [(_as_image(images[i]), {}), (maps[i], scale), (_as_image(overlays[i]), {})]
        for j, (picture, kwargs) in enumerate(panels):
            ax = axes[i][j]
            if picture.ndim == 2 and not kwargs:
                kwargs = {"cmap": "gray", "vmin": 0, "vmax": 255}
            ax.imshow(picture, **kwargs)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[i][0].set_ylabel(_class_name(classes, labels, i), fontsize=8)
    for j, title in enumerate(["image", "IG map", "overlay"]):
        axes[0][j].set_title(title, fontsize=9)
    what = "red positive, blue negative" if signed else "sum over channels of |attribution|, bright = large"
    caption = f"Gallery: input, integrated-gradients map ({what}; each map on its own scale), overlay (s = 1.5)."
    return Section("Integrated-gradients gallery", [figure(fig, "gallery", caption), *gallery_notes(path)])


def gallery_notes(path: Path) -> list[str]:
    """What the map store said makes its maps explain little (a teacher at chance, constant maps)."""
    with np.load(path, allow_pickle=False) as g:
        return [f"Warning: {note}." for note in g["notes"].tolist()] if "notes" in g.files else []


def _as_image(chw: np.ndarray) -> np.ndarray:
    """(C,H,W) uint8 -> (H,W) for one channel, (H,W,C) otherwise."""
    return chw[0] if chw.shape[0] == 1 else np.transpose(chw, (1, 2, 0))


def _class_name(classes, labels, i: int) -> str:
    """``classes`` may hold one name per image or one name per class (indexed by label)."""
    label = int(labels[i]) if labels is not None else None
    if classes is None or len(classes) == 0:
        return "" if label is None else f"class {label}"
    if label is not None and 0 <= label < len(classes) and len(classes) != len(labels):
        return str(classes[label])
    if i < len(classes):
        return str(classes[i])
    return "" if label is None else f"class {label}"


def bench_section(study: Study) -> Section | None:
    """Latency results (every ``bench*.json`` that ``igkd bench`` wrote into the study folder): per file
    the table, the export and int8 checks, and test accuracy against measured latency with its Pareto
    front. Models benched without an accuracy take the study's: the teacher's, and per method the mean
    of the runs of the study's student at the same k (same kind, width and strides)."""
    from ..deploy.results import (
        accuracy_latency_figure,
        bench_table,
        check_lines,
        environment_line,
        load_bench,
    )

    paths = sorted(study.dir.glob("bench*.json"))
    if not paths:
        return None
    section = Section("Latency and accuracy")
    for path in paths:
        try:
            bench = _with_study_accuracy(load_bench(path), study)
        except ConfigError:  # not written by `igkd bench`: show whatever records it holds
            section.blocks += _plain_records(path)
            continue
        headers, rows, align = bench_table(bench)
        section.blocks += [Heading(bench.get("title") or path.stem), environment_line(bench),
                           Table(headers, rows, align), *check_lines(bench), *bench.get("notes", [])]
        fig = accuracy_latency_figure(bench)
        if fig is not None:
            section.blocks.append(figure(fig, f"accuracy_vs_latency_{path.stem}",
                                         "Test accuracy against median latency at the smallest batch; "
                                         "dashed: the Pareto front (no other model is both faster and "
                                         "more accurate)."))
    return section


def _plain_records(path: Path) -> list:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        return [f"{path.name} skipped: unreadable ({type(exc).__name__})"]
    records = data.get("results", data) if isinstance(data, dict) else data
    if isinstance(records, dict):
        records = [{"name": k, **v} if isinstance(v, dict) else {"name": k, "value": v}
                   for k, v in records.items()]
    records = [r for r in records if isinstance(r, dict)] if isinstance(records, list) else []
    if not records:
        return [f"{path.name} skipped: no records"]
    headers = list(dict.fromkeys(k for r in records for k in r))
    rows = [[fmt(r.get(h)) if isinstance(r.get(h), float) else str(r.get(h, "-")) for h in headers]
            for r in records]
    return [Heading(path.stem), Table(headers, rows)]


def _with_study_accuracy(bench: dict, study: Study) -> dict:
    bench = json.loads(json.dumps(bench))  # a copy
    cfg = study.meta.get("config") or {}
    student, teacher = cfg.get("student") or {}, cfg.get("teacher") or {}
    teacher_acc = teacher_accuracy(study)
    for rec in bench["models"]:
        if rec.get("accuracy"):
            continue
        if rec["role"] == "teacher" and teacher_acc is not None:
            rec["accuracy"] = {"teacher": teacher_acc}
        elif rec["role"] == "student" and _is_study_student(rec.get("student") or {}, student, teacher):
            group = str(rec["student"]["remove_blocks"])
            rec["accuracy"] = {m: float(np.mean(v)) for m in study.methods if (v := study.values(group, m))}
    return bench


def _is_study_student(spec: dict, student: dict, teacher: dict) -> bool:
    """Whether a benched architecture is the study's student (a study varies k, not kind or width)."""
    kind = student.get("kind", "truncated")
    if spec.get("kind") != kind:
        return False
    if kind == "truncated":
        return True
    if student.get("budget_macs") is not None:  # the width was resolved by the runs, not recorded here
        return False
    width = student.get("width_mult") if student.get("width_mult") is not None else teacher.get("width_mult")
    strides = student.get("strides") if student.get("strides") is not None else teacher.get("strides")
    return spec.get("width_mult") == width and list(spec.get("strides") or []) == list(strides or [])


__all__ = ["accuracy_plot_section", "bench_section", "compression_plot_section", "gallery_section",
           "learning_curves_section"]
