"""Render a study directory into ``report.html`` (self-contained) and ``report.md`` (a search directory's
sections are in :mod:`.tune_report`).

The report reads result files only: ``study.json``, ``results.csv``, each run's ``metrics.jsonl``
and, when present, ``gallery.npz`` and ``bench.json``. It never trains and never imports torch.

Each section is built once as a list of blocks (paragraphs, tables, figures) and then written
twice: into HTML with the plots embedded as base64 PNG data URIs, and into Markdown with the plots
saved under ``report_files/`` and linked.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import MaxNLocator, NullFormatter  # noqa: E402

from ..errors import ConfigError  # noqa: E402
from ..fileio import atomic_write_bytes, atomic_write_text, read_run_metrics  # noqa: E402
from ..reporting import format_table  # noqa: E402
from . import stats  # noqa: E402
from .results import read_results, read_study  # noqa: E402

FILES_DIR = "report_files"
DPI = 100
TEXT_COLUMNS = {"study", "method", "remove_blocks", "run_dir"}


# --------------------------------------------------------------------------------------------------
# Blocks: what a section is made of, independent of the output format.


@dataclass
class Table:
    headers: list[str]
    rows: list[list[str]]
    align: str | None = None  # one of l/r per column, as in igkd.reporting.format_table


@dataclass
class Heading:
    text: str  # a sub-heading inside a section (one per k)


@dataclass
class Figure:
    name: str  # file name stem under report_files/
    png: bytes
    caption: str


@dataclass
class Section:
    title: str
    blocks: list[str | Heading | Table | Figure] = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Reading the study.


@dataclass
class Study:
    dir: Path
    meta: dict
    rows: list[dict]

    @property
    def methods(self) -> list[str]:
        """Methods in study.json's order, then any others found in results.csv."""
        seen = [m for m in self.meta.get("methods", []) if any(r["method"] == m for r in self.rows)]
        for r in self.rows:
            if r["method"] not in seen:
                seen.append(r["method"])
        return seen

    @property
    def groups(self) -> list[str]:
        """The distinct ``remove_blocks`` values, in numeric order."""
        return sorted({r["remove_blocks"] for r in self.rows}, key=_group_key)

    @property
    def baseline(self) -> str:
        return self.meta.get("baseline") or "student"

    @property
    def paired(self) -> bool:
        return bool(self.meta.get("paired", False))

    def values(self, group: str, method: str, column: str = "test_acc_last") -> list[float]:
        return [r[column] for r in self.rows
                if r["remove_blocks"] == group and r["method"] == method and _finite(r[column])]

    def group_rows(self, group: str) -> list[dict]:
        return [r for r in self.rows if r["remove_blocks"] == group]

    def compression_factor(self, group: str) -> float | None:
        cfs = [r["compression_factor"] for r in self.group_rows(group) if _finite(r["compression_factor"])]
        return float(np.mean(cfs)) if cfs else None


def load_study(study_dir: str | Path) -> Study:
    study_dir = Path(study_dir)
    rows = [_parse_row(r) for r in read_results(study_dir)]
    rows = [r for r in rows if r.get("method") and _finite(r.get("test_acc_last"))]
    if not rows:
        raise ConfigError(f"{study_dir / 'results.csv'} holds no finished runs: nothing to report yet")
    return Study(study_dir, read_study(study_dir), rows)


def _parse_row(raw: dict) -> dict:
    row = {}
    for key, text in raw.items():
        text = (text or "").strip()
        if key in TEXT_COLUMNS:
            row[key] = text
        elif text == "":
            row[key] = None
        else:
            try:
                number = float(text)
            except ValueError:
                row[key] = text
                continue
            row[key] = int(number) if number.is_integer() and key in {"run", "seed", "epochs"} else number
    return row


def _group_key(group: str):
    try:
        return (0, float(group), group)
    except ValueError:
        return (1, 0.0, group)


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


# --------------------------------------------------------------------------------------------------
# Number formatting.


def fmt(x, signed: bool = False) -> str:
    """Two decimals; "-" for a missing or NaN value (inf stays visible as inf)."""
    if not isinstance(x, (int, float)) or math.isnan(x):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def fmt_p(p) -> str:
    """p-values: scientific below 0.001, else three decimals (two would turn 0.004 into 0.00)."""
    if not _finite(p):
        return "-"
    return f"{p:.2e}" if p < 0.001 else f"{p:.3f}"


def fmt_ci(low, high) -> str:
    return f"[{fmt(low)}, {fmt(high)}]" if _finite(low) and _finite(high) else "-"


def group_title(study: Study, group: str) -> str:
    cf = study.compression_factor(group)
    return f"k = {group} removed blocks" + (f" (CF {cf:.2f})" if cf is not None else "")


def figure(fig, name: str, caption: str) -> Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Figure(name, buf.getvalue(), caption)


# --------------------------------------------------------------------------------------------------
# Sections, in report order.


def header_section(study: Study) -> Section:
    meta = study.meta
    runs = meta.get("runs")
    design = "paired (all methods share seeds and splits per run)" if study.paired else "unpaired"
    lines = [
        f"Dataset: {meta.get('dataset', 'unknown')}. Study kind: {meta.get('kind', 'unknown')}.",
        f"Design: {design}; {runs if runs is not None else '?'} runs per method; "
        f"train fraction {meta.get('train_fraction', '?')}; "
        f"removed blocks k = {', '.join(study.groups)}.",
        f"Methods: {', '.join(study.methods)}; baseline for comparisons: {study.baseline}.",
    ]
    teacher = _teacher_accuracy(study)
    if teacher is not None:
        lines.append(f"Teacher test accuracy: {fmt(teacher)} %.")
    expected = (len(meta.get("methods", [])) * len(meta.get("remove_blocks", [])) * runs
                if runs and meta.get("methods") and meta.get("remove_blocks") else None)
    done = f"{len(study.rows)} of {expected}" if expected else f"{len(study.rows)}"
    lines.append(f"Finished runs: {done}. Accuracies are test accuracies in percent.")
    return Section("Study", lines)


def _teacher_accuracy(study: Study) -> float | None:
    teacher = study.meta.get("teacher") or {}
    if _finite(teacher.get("test_acc")):
        return float(teacher["test_acc"])
    accs = [r["teacher_test_acc"] for r in study.rows if _finite(r.get("teacher_test_acc"))]
    return float(np.mean(accs)) if accs else None


def summary_section(study: Study) -> Section:
    section = Section("Accuracy per method")
    section.blocks.append("Test accuracy after the last epoch over runs: n, min / mean / max, sd "
                          "and the 95 % confidence interval of the mean (t distribution).")
    for group in study.groups:
        best_val = any(_finite(r.get("test_acc_at_best_val")) for r in study.group_rows(group))
        headers = ["method", "n", "min", "mean", "max", "sd", "95 % CI"]
        if best_val:
            headers += ["mean @ best val", "95 % CI @ best val"]
        rows = []
        for method in study.methods:
            values = study.values(group, method)
            if not values:
                continue
            d = stats.describe(values)
            row = [method, str(d["n"]), fmt(d["min"]), fmt(d["mean"]), fmt(d["max"]), fmt(d["sd"]),
                   fmt_ci(d["ci_low"], d["ci_high"])]
            if best_val:
                bv = study.values(group, method, "test_acc_at_best_val")
                b = stats.describe(bv) if bv else {}
                row += [fmt(b.get("mean")), fmt_ci(b.get("ci_low"), b.get("ci_high"))]
            rows.append(row)
        section.blocks += [Heading(group_title(study, group)), Table(headers, rows)]
    return section


def sweep_section(study: Study) -> Section | None:
    """Mean accuracy per k (rows) and method (columns); sweeps only."""
    if len(study.groups) < 2:
        return None
    headers = ["k", "CF", *study.methods]
    rows = []
    for group in study.groups:
        means = [study.values(group, m) for m in study.methods]
        rows.append([group, fmt(study.compression_factor(group)),
                     *(fmt(float(np.mean(v))) if v else "-" for v in means)])
    return Section("Mean accuracy per k",
                   ["Mean test accuracy per number of removed blocks k and method.",
                    Table(headers, rows)])


def comparison_section(study: Study) -> Section:
    section = Section(f"Comparison with {study.baseline}")
    kind = "paired (matched by run)" if study.paired else "unpaired"
    section.blocks.append(f"Each method against {study.baseline}, {kind}; p-values are Holm-adjusted "
                          "within each k. Difference = method - baseline, in percentage points.")
    headers = ["method", "n", "mean diff [95 % CI]", "test", "statistic", "p", "p (Holm)",
               "nonparametric test (statistic)", "nonparametric p (Holm)", "effect", "significant"]
    whys: dict[str, list[str]] = {}  # each distinct reason for the test choice -> where it applies
    for group in study.groups:
        section.blocks.append(Heading(group_title(study, group)))
        try:
            samples = comparison_samples(study, group)
            results = stats.compare_to_baseline(samples, study.baseline, paired=study.paired)
        except ValueError as exc:  # too few runs so far, or none shared by all methods
            section.blocks.append(f"No comparison yet: {exc}.")
            continue
        rows = []
        for c in results:
            n = str(c["n_a"]) if study.paired else f"{c['n_a']} / {c['n_b']}"
            rows.append([
                c["method"], n,
                f"{fmt(c['mean_diff'], signed=True)} {fmt_ci(c['diff_ci_low'], c['diff_ci_high'])}",
                str(c["test"]), fmt(c["statistic"]), fmt_p(c["p"]), fmt_p(c["p_holm"]),
                f"{c['nonparametric_test']} ({fmt(c['nonparametric_statistic'])})",
                fmt_p(c["nonparametric_p_holm"]),
                f"{c['effect_name']} = {fmt(c['effect'])}",
                "yes" if c["significant"] else "no",
            ])
            if c.get("why"):
                where = c["method"] if len(study.groups) == 1 else f"{c['method']} at k = {group}"
                whys.setdefault(c["why"], []).append(where)
        section.blocks.append(Table(headers, rows, align="lr" + "l" * 2 + "r" * 3 + "lr" + "ll"))
    if len(whys) == 1:
        section.blocks.append(f"Test choice: {next(iter(whys))}")
    else:
        section.blocks += [f"Test choice for {', '.join(where)}: {why}" for why, where in whys.items()]
    return section


def comparison_samples(study: Study, group: str) -> dict[str, list[float]]:
    """``{method: accuracies}`` of one k, baseline included: aligned by run when paired, and only
    methods with at least two runs (fewer cannot be tested)."""
    if study.paired:
        samples = stats.paired_samples(study.group_rows(group), value="test_acc_last", key="run",
                                       group="method")
    else:
        samples = {m: study.values(group, m) for m in study.methods}
    samples = {m: samples[m] for m in study.methods if len(samples.get(m, [])) >= 2}
    if study.baseline not in samples or len(samples) < 2:
        raise ValueError(f"{study.baseline} and at least one other method need two or more "
                         "runs" + (" in common" if study.paired else ""))
    return samples


def accuracy_plot_section(study: Study) -> Section:
    groups = study.groups
    fig, axes = plt.subplots(1, len(groups), figsize=(1.2 + 1.4 * len(study.methods) * len(groups), 4),
                             sharey=True, squeeze=False)
    rng = np.random.default_rng(0)
    teacher = _teacher_accuracy(study)
    for ax, group in zip(axes[0], groups):
        for i, method in enumerate(study.methods):
            values = study.values(group, method)
            if not values:
                continue
            ax.scatter(i + rng.uniform(-0.15, 0.15, len(values)), values, s=14, alpha=0.6,
                       color=f"C{i}", edgecolors="none")
            d = stats.describe(values)
            if _finite(d["ci_low"]):
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
            lows.append(d["mean"] - d["ci_low"] if _finite(d["ci_low"]) else 0.0)
            highs.append(d["ci_high"] - d["mean"] if _finite(d["ci_high"]) else 0.0)
        if xs:
            ax.errorbar(xs, means, yerr=[lows, highs], marker="o", capsize=3, label=method,
                        color=f"C{i}")
    teacher = _teacher_accuracy(study)
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
    # curves[group][method][epoch] -> test accuracies of all runs at that epoch
    curves: dict[str, dict[str, dict[int, list[float]]]] = {}
    for r in study.rows:
        if not r.get("run_dir"):
            continue
        for m in read_run_metrics(study.dir / r["run_dir"]):
            if _finite(m.get("test_acc")) and m.get("epoch") is not None:
                by_epoch = curves.setdefault(r["remove_blocks"], {}).setdefault(r["method"], {})
                by_epoch.setdefault(int(m["epoch"]), []).append(float(m["test_acc"]))
    if not curves:
        return None
    groups = [g for g in study.groups if g in curves]
    fig, axes = plt.subplots(1, len(groups), figsize=(1 + 5 * len(groups), 4), sharey=True,
                             squeeze=False)
    for ax, group in zip(axes[0], groups):
        for i, method in enumerate(study.methods):
            by_epoch = curves[group].get(method)
            if not by_epoch:
                continue
            epochs = sorted(by_epoch)
            ax.plot(epochs, [np.mean(by_epoch[e]) for e in epochs], color=f"C{i}", label=method,
                    marker="o" if len(epochs) <= 20 else None, markersize=3)
            ax.fill_between(epochs, [min(by_epoch[e]) for e in epochs],
                            [max(by_epoch[e]) for e in epochs], color=f"C{i}", alpha=0.2, lw=0)
        ax.set_title(group_title(study, group), fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[0][0].set_ylabel("test accuracy (%)")
    return Section("Learning curves", [figure(fig, "learning_curves",
                                              "Mean test accuracy per epoch; band: min to max over runs.")])


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
    teacher_acc = _teacher_accuracy(study)
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


# --------------------------------------------------------------------------------------------------
# Writing.


HTML_TEMPLATE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }}
th {{ background: #f2f2f2; }}
td:first-child, th:first-child {{ text-align: left; }}
figure {{ margin: 1em 0; }}
img {{ max-width: 100%; }}
figcaption {{ font-size: 0.9em; color: #555; }}
</style>
</head>
<body>
<h1>{title}</h1>
{body}
</body>
</html>
"""


def to_html(title: str, sections: list[Section]) -> str:
    parts = []
    for section in sections:
        parts.append(f"<h2>{html.escape(section.title)}</h2>")
        for block in section.blocks:
            if isinstance(block, Heading):
                parts.append(f"<h3>{html.escape(block.text)}</h3>")
            elif isinstance(block, Table):
                head = "".join(f"<th>{html.escape(h)}</th>" for h in block.headers)
                body = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in row) + "</tr>"
                               for row in block.rows)
                parts.append(f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>")
            elif isinstance(block, Figure):
                data = base64.b64encode(block.png).decode("ascii")
                caption = html.escape(block.caption)
                parts.append(f'<figure><img alt="{caption}" src="data:image/png;base64,{data}">'
                             f"<figcaption>{caption}</figcaption></figure>")
            else:
                parts.append(f"<p>{html.escape(block)}</p>")
    return HTML_TEMPLATE.format(title=html.escape(title), body="\n".join(parts))


def to_markdown(title: str, sections: list[Section], files_dir: Path) -> str:
    parts = [f"# {title}"]
    for section in sections:
        parts.append(f"## {section.title}")
        for block in section.blocks:
            if isinstance(block, Heading):
                parts.append(f"### {block.text}")
            elif isinstance(block, Table):
                parts.append(format_table(block.headers, block.rows, align=block.align))
            elif isinstance(block, Figure):
                atomic_write_bytes(files_dir / f"{block.name}.png", block.png)
                parts.append(f"![{block.caption}]({files_dir.name}/{block.name}.png)\n\n"
                             f"*{block.caption}*")
            else:
                parts.append(block)
    return "\n\n".join(parts) + "\n"


def build_sections(study: Study) -> list[Section]:
    sections = [
        header_section(study),
        summary_section(study),
        sweep_section(study),
        comparison_section(study),
        accuracy_plot_section(study),
        compression_plot_section(study),
        learning_curves_section(study),
        gallery_section(study),
        bench_section(study),
    ]
    return [s for s in sections if s is not None]


def write_report(study_dir: str | Path) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` (plus ``report_files/``) into a study directory or a search
    directory (``igkd tune``: one with ``tune.json``)."""
    folder = Path(study_dir)
    if (folder / "tune.json").is_file():
        from .tune_report import tune_sections

        sections, title = tune_sections(folder), f"igkd search report: {folder.resolve().name}"
    else:
        study = load_study(folder)
        sections, title = build_sections(study), f"igkd study report: {study.dir.resolve().name}"
    html_path, md_path = folder / "report.html", folder / "report.md"
    atomic_write_text(html_path, to_html(title, sections))
    atomic_write_text(md_path, to_markdown(title, sections, folder / FILES_DIR))
    return html_path, md_path
