"""The report of a search directory (``igkd tune``): its trials, accuracy against each searched value,
the chosen values. Built from ``tune.json`` and ``trials.csv`` into the blocks of :mod:`.report`, which
writes them as it writes a study's. Reads result files only; never imports torch."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from .report_data import Study, fmt  # noqa: E402
from .report_figures import gallery_section  # noqa: E402
from .report_render import Section, Table, figure  # noqa: E402
from .results import read_tune, value_text  # noqa: E402

NUMBER_COLUMNS = ("number", "val_acc", "test_acc", "test_acc_last", "best_epoch", "epochs", "train_time_s",
                  "duplicate_of")


def tune_sections(folder: str | Path, shown: str | Path | None = None) -> list[Section]:
    """The search report's sections; ``shown`` is the folder as the report names it (default: ``folder``)."""
    folder = Path(folder)
    meta, raw = read_tune(folder)
    rows = [_parse(r) for r in raw]
    space = {key: [value_text(v) for v in values] for key, values in (meta.get("space") or {}).items()}
    complete = [r for r in rows if r.get("state") == "complete" and _finite(r.get("val_acc"))]
    sections = [header_section(meta, rows, space), chosen_section(meta, Path(shown or folder)), trials_section(rows, space)]
    runs = [r for r in complete if r.get("duplicate_of") is None]  # each run once
    if runs:
        sections.append(parameter_plots_section(runs, space, meta.get("best")))
        sections.append(importance_section(runs, space))
    sections.append(gallery_section(Study(folder, meta, [])))
    return [s for s in sections if s is not None]


def _parse(row: dict) -> dict:
    out = {}
    for key, text in row.items():
        text = (text or "").strip()
        if key in NUMBER_COLUMNS:
            try:
                number = float(text) if text else None
            except ValueError:
                number = None
            if number is not None and number.is_integer() and key in ("number", "best_epoch", "epochs",
                                                                       "duplicate_of"):
                number = int(number)
            out[key] = number
        else:
            out[key] = text
    return out


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def header_section(meta: dict, rows: list[dict], space: dict[str, list[str]]) -> Section:
    size = math.prod(len(v) for v in space.values()) if space else 0
    sampler = {"grid": "grid", "tpe": "TPE"}.get(meta.get("sampler"), meta.get("sampler", "?"))
    val_fraction = (meta.get("config") or {}).get("data", {}).get("val_fraction", "?")
    failed = sum(r.get("state") == "failed" for r in rows)
    lines = [
        f"Dataset: {meta.get('dataset', 'unknown')}. Method: {meta.get('method', '?')}. Optuna's {sampler} "
        f"sampler (seed {meta.get('seed', 0)}) over {size} combinations.",
        "Space: " + "; ".join(f"{key} in {{{', '.join(values)}}}" for key, values in space.items()) + ".",
        f"Objective: each run's best-on-validation accuracy (validation split data.val_fraction = {val_fraction}). "
        "Test accuracies are shown for information only and never choose. "
        f"Every trial trains with train.seed = {meta.get('train_seed', '?')}.",
        f"Finished trials: {len(rows)} of {meta.get('trials', '?')}" + (f", {failed} of them failed" if failed else "")
        + ". Accuracies are in percent.",
    ]
    teacher = (meta.get("teacher") or {}).get("test_acc")
    if _finite(teacher):
        lines.append(f"Teacher test accuracy: {fmt(teacher)} %.")
    return Section("Search", lines)


def chosen_section(meta: dict, folder: Path) -> Section:
    best = meta.get("best")
    if not best:
        return Section("Chosen values", ["No trial has finished with a result yet."])
    rows = [[key, value_text(value)] for key, value in best["values"].items()]
    test = best.get("test_acc")
    return Section("Chosen values", [
        f"Trial {best['number']}: validation accuracy {fmt(best['val_acc'])} %"
        + (f", test accuracy {fmt(test)} % (for information)" if _finite(test) else "") + f"; run {best.get('run_dir')}.",
        Table(["key", "value"], rows),
        f"The complete config with these values is {folder / 'best.yaml'}: `igkd montecarlo -c "
        f"{folder / 'best.yaml'} ...` takes it as it is.",
    ])


def trials_section(rows: list[dict], space: dict[str, list[str]]) -> Section:
    ordered = sorted(rows, key=lambda r: (r.get("state") != "complete", -(r.get("val_acc") or 0.0), r["number"]))
    headers = ["trial", *space, "val acc", "test acc", "best epoch", "run", "note"]
    table = []
    for r in ordered:
        note = r.get("note") or (f"same values as trial {r['duplicate_of']}" if r.get("duplicate_of") is not None
                                 else "")
        table.append([str(r["number"]), *(r.get(k, "") for k in space), fmt(r.get("val_acc")),
                      fmt(r.get("test_acc")), "-" if r.get("best_epoch") is None else str(r["best_epoch"]),
                      r.get("run_dir", ""), note])
    align = "r" + "r" * len(space) + "rrrll"
    return Section("Trials", ["Every finished trial, best validation accuracy first; test accuracy at the "
                              "best-on-validation epoch.", Table(headers, table, align=align)])


def parameter_plots_section(runs: list[dict], space: dict[str, list[str]], best: dict | None) -> Section:
    section = Section("Validation accuracy against each value")
    section.blocks.append("Each dot is a trial (a run); the line joins the mean at each value, the star is "
                          "the chosen trial.")
    rng = np.random.default_rng(0)
    best_number = best.get("number") if best else None
    for i, (key, values) in enumerate(space.items()):
        fig, ax = plt.subplots(figsize=(1.5 + 0.8 * len(values), 3.5))
        xs = np.array([values.index(r[key]) if r.get(key) in values else -1 for r in runs], dtype=float)
        ys = np.array([r["val_acc"] for r in runs])
        known = xs >= 0
        jittered = xs + rng.uniform(-0.12, 0.12, len(xs))
        ax.scatter(jittered[known], ys[known], s=16, alpha=0.6, color="C0", edgecolors="none")
        means = [(j, float(ys[known & (xs == j)].mean())) for j in range(len(values)) if (known & (xs == j)).any()]
        if means:
            ax.plot(*zip(*means), color="black", marker="o", ms=4, lw=1)
        chosen = [(x, y) for x, y, r, ok in zip(jittered, ys, runs, known) if r["number"] == best_number and ok]
        if chosen:
            ax.scatter(*zip(*chosen), marker="*", s=160, color="C3", zorder=3, label="chosen")
            ax.legend(fontsize=8, loc="lower right")
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels(values, rotation=30 if len(values) > 5 else 0, fontsize=8)
        ax.set_xlabel(key)
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        section.blocks.append(figure(fig, f"val_acc_vs_{i}_{key.replace('.', '_')}",
                                     f"Validation accuracy against {key}."))
    return section


def importance_section(runs: list[dict], space: dict[str, list[str]]) -> Section | None:
    """Optuna's fANOVA importance of each searched key, when there is something to apportion: two keys or
    more that vary, and a few trials."""
    varied = [k for k, values in space.items() if len(values) > 1 and len({r.get(k) for r in runs}) > 1]
    if len(varied) < 2 or len(runs) < 4:
        return None
    try:
        import optuna
        from optuna.distributions import CategoricalDistribution
        from optuna.importance import FanovaImportanceEvaluator
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize")
    distributions = {k: CategoricalDistribution(space[k]) for k in varied}
    for r in runs:
        if all(r.get(k) in space[k] for k in varied):
            study.add_trial(optuna.trial.create_trial(params={k: r[k] for k in varied}, distributions=distributions,
                                                      value=r["val_acc"]))
    try:
        importances = optuna.importance.get_param_importances(
            study, evaluator=FanovaImportanceEvaluator(n_trees=16, seed=0))
    except (RuntimeError, ValueError) as exc:  # e.g. every trial with the same accuracy
        return Section("Importance of each key", [f"Not computed: {exc}."])
    rows = [[k, f"{float(v):.3f}"] for k, v in importances.items()]
    return Section("Importance of each key", [
        "Share of the variance of validation accuracy over the searched values that each key explains "
        "(Optuna's fANOVA importance, 16 trees, seed 0; a rough guide on few trials).",
        Table(["key", "importance"], rows)])
