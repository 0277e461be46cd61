"""What a study says: its results read back (``study.json``, ``results.csv``), numbers formatted, and the
report's sections of text and tables: the study, accuracy per method, accuracy per k, the comparisons
with the baseline. Never imports torch."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError
from . import stats
from .report_render import Heading, Section, Table
from .results import read_results, read_study, study_parts

TEXT_COLUMNS = {"study", "method", "remove_blocks", "run_dir"}


@dataclass
class Study:
    dir: Path
    meta: dict
    rows: list[dict]
    margin_given: float | None = None  # ``igkd report --margin``: overrides the one study.json records

    @property
    def margin(self) -> float:
        """The equivalence margin in points: ``--margin`` of ``igkd report``, else the one the study recorded
        (``--margin`` of ``igkd montecarlo``/``sweep``), else :data:`stats.DEFAULT_MARGIN` (the paper's
        KD+IG - KD, 0.40)."""
        if self.margin_given is not None:
            return float(self.margin_given)
        recorded = self.meta.get("margin")
        return float(recorded) if finite(recorded) and recorded > 0 else stats.DEFAULT_MARGIN

    @property
    def margin_source(self) -> str:
        if self.margin_given is not None:
            return "given to igkd report"
        if finite(self.meta.get("margin")) and self.meta["margin"] > 0:
            return "recorded in study.json"
        return "the default: the paper's KD+IG - KD"

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
    def contrasts(self) -> list[tuple[str, str]]:
        """The planned comparisons (method, baseline) recorded in study.json; [] when none were named."""
        return [(str(a), str(b)) for a, b in self.meta.get("contrasts") or []]

    @property
    def paired(self) -> bool:
        return bool(self.meta.get("paired", False))

    def values(self, group: str, method: str, column: str = "test_acc_last") -> list[float]:
        return [r[column] for r in self.rows
                if r["remove_blocks"] == group and r["method"] == method and finite(r[column])]

    def group_rows(self, group: str) -> list[dict]:
        return [r for r in self.rows if r["remove_blocks"] == group]

    def compression_factor(self, group: str) -> float | None:
        cfs = [r["compression_factor"] for r in self.group_rows(group) if finite(r["compression_factor"])]
        return float(np.mean(cfs)) if cfs else None


def load_study(study_dir: str | Path, margin: float | None = None) -> Study:
    """The study in ``study_dir`` (results checked against their checksums); ``margin`` overrides the
    equivalence margin the study recorded."""
    if margin is not None and not (finite(margin) and margin > 0):
        raise ConfigError(f"--margin must be a positive number of percentage points, got {margin!r}")
    study_dir = Path(study_dir)
    rows = [_parse_row(r) for r in read_results(study_dir)]
    rows = [r for r in rows if r.get("method") and finite(r.get("test_acc_last"))]
    if not rows:
        raise ConfigError(f"{study_dir / 'results.csv'} holds no finished runs: nothing to report yet")
    return Study(study_dir, read_study(study_dir), rows, margin)


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


def finite(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def fmt(x, signed: bool = False) -> str:
    """Two decimals; "-" for a missing or NaN value (inf stays visible as inf)."""
    if not isinstance(x, (int, float)) or math.isnan(x):
        return "-"
    return f"{x:+.2f}" if signed else f"{x:.2f}"


def fmt_p(p) -> str:
    """p-values: scientific below 0.001, else three decimals (two would turn 0.004 into 0.00)."""
    if not finite(p):
        return "-"
    return f"{p:.2e}" if p < 0.001 else f"{p:.3f}"


def fmt_ci(low, high) -> str:
    return f"[{fmt(low)}, {fmt(high)}]" if finite(low) and finite(high) else "-"


def group_title(study: Study, group: str) -> str:
    cf = study.compression_factor(group)
    return f"k = {group} removed blocks" + (f" (CF {cf:.2f})" if cf is not None else "")


def planned_runs(meta: dict) -> tuple[dict[str, int], int | None]:
    """Runs per method, and the runs the study plans in all: over the parts of an extended study (a part
    adds runs of some methods, so methods may have different counts)."""
    per_method: dict[str, int] = {}
    planned = set()
    for part in study_parts(meta):
        for m in part["methods"]:
            per_method[m] = max(per_method.get(m, 0), int(part["runs"]))
            planned |= {(m, str(k), r) for k in part["remove_blocks"] for r in range(int(part["runs"]))}
    return per_method, (len(planned) or None)


def header_section(study: Study) -> Section:
    meta = study.meta
    per_method, expected = planned_runs(meta)
    counts = sorted(set(per_method.values()))
    if len(counts) == 1:
        runs = f"{counts[0]} runs per method"
    elif counts:
        runs = "runs per method: " + ", ".join(f"{m} {n}" for m, n in per_method.items())
    else:
        runs = "? runs per method"
    parts = len(study_parts(meta))
    if parts > 1:
        runs += f" (in {parts} parts)"
    design = "paired (all methods share seeds and splits per run)" if study.paired else "unpaired"
    lines = [
        f"Dataset: {meta.get('dataset', 'unknown')}. Study kind: {meta.get('kind', 'unknown')}.",
        f"Design: {design}; {runs}; "
        f"train fraction {meta.get('train_fraction', '?')}; "
        f"removed blocks k = {', '.join(study.groups)}.",
        f"Methods: {', '.join(study.methods)}; baseline for comparisons: {study.baseline}.",
    ]
    teacher = teacher_accuracy(study)
    if teacher is not None:
        lines.append(f"Teacher test accuracy: {fmt(teacher)} %.")
    done = f"{len(study.rows)} of {expected}" if expected else f"{len(study.rows)}"
    lines.append(f"Finished runs: {done}. Accuracies are test accuracies in percent.")
    return Section("Study", lines)


def teacher_accuracy(study: Study) -> float | None:
    teacher = study.meta.get("teacher") or {}
    if finite(teacher.get("test_acc")):
        return float(teacher["test_acc"])
    accs = [r["teacher_test_acc"] for r in study.rows if finite(r.get("teacher_test_acc"))]
    return float(np.mean(accs)) if accs else None


def summary_section(study: Study) -> Section:
    section = Section("Accuracy per method")
    section.blocks.append("Test accuracy after the last epoch over runs: n, min / mean / max, sd "
                          "and the 95 % confidence interval of the mean (t distribution).")
    for group in study.groups:
        section.blocks += [Heading(group_title(study, group)), summary_table(study, group)]
    return section


def summary_table(study: Study, group: str) -> Table:
    """One k's accuracy per method: n, min / mean / max, sd, 95 % CI (and at the best validation epoch)."""
    best_val = any(finite(r.get("test_acc_at_best_val")) for r in study.group_rows(group))
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
    return Table(headers, rows)


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
    kind = "paired (matched by run)" if study.paired else "unpaired"
    intro = (f"Each method against {study.baseline}, {kind}; p-values are Holm-adjusted within each k. "
             "Difference = method - baseline, in percentage points.")
    return _comparisons(study, f"Comparison with {study.baseline}", intro, "method",
                        lambda samples: stats.compare_to_baseline(samples, study.baseline, paired=study.paired,
                                                                  margin=study.margin))


def contrasts_section(study: Study) -> Section | None:
    """The comparisons the study named before its runs (``--contrasts``), Holm-adjusted together."""
    pairs = study.contrasts
    if not pairs:
        return None
    kind = "paired (matched by run)" if study.paired else "unpaired"
    intro = (f"The comparisons named before the runs (--contrasts), {kind}; p-values are Holm-adjusted across "
             "these comparisons within each k. Difference = first - second, in percentage points.")
    return _comparisons(study, "Planned comparisons", intro, "comparison",
                        lambda samples: stats.compare_pairs(samples, pairs, paired=study.paired,
                                                            margin=study.margin))


def _comparisons(study: Study, title: str, intro: str, first_column: str, compare) -> Section:
    """A comparison table per k: ``compare(samples)`` gives the results (``stats.compare_pairs``'s)."""
    section = Section(title, [intro])
    headers = [first_column, "n", "mean diff [95 % CI]", "test", "statistic", "p", "p (Holm)",
               "nonparametric test (statistic)", "nonparametric p (Holm)", "effect", "significant"]
    whys: dict[str, list[str]] = {}  # each distinct reason for the test choice -> where it applies
    for group in study.groups:
        section.blocks.append(Heading(group_title(study, group)))
        try:
            results = compare(comparison_samples(study, group))
        except ValueError as exc:  # too few runs so far, or none shared by all methods
            section.blocks.append(f"No comparison yet: {exc}.")
            continue
        rows = []
        for c in results:
            name = comparison_name(c, first_column)
            n = str(c["n_a"]) if study.paired else f"{c['n_a']} / {c['n_b']}"
            rows.append([
                name, n,
                f"{fmt(c['mean_diff'], signed=True)} {fmt_ci(c['diff_ci_low'], c['diff_ci_high'])}",
                str(c["test"]), fmt(c["statistic"]), fmt_p(c["p"]), fmt_p(c["p_holm"]),
                f"{c['nonparametric_test']} ({fmt(c['nonparametric_statistic'])})",
                fmt_p(c["nonparametric_p_holm"]),
                f"{c['effect_name']} = {fmt(c['effect'])}",
                "yes" if c["significant"] else "no",
            ])
            if c.get("why"):
                where = name if len(study.groups) == 1 else f"{name} at k = {group}"
                whys.setdefault(c["why"], []).append(where)
        section.blocks.append(Table(headers, rows, align="lr" + "l" * 2 + "r" * 3 + "lr" + "ll"))
        section.blocks.append(f"Equivalence within ±{fmt(study.margin)} points and power:")
        section.blocks.append(equivalence_table(study, results, first_column))
    if len(whys) == 1:
        section.blocks.append(f"Test choice: {next(iter(whys))}")
    else:
        section.blocks += [f"Test choice for {', '.join(where)}: {why}" for why, where in whys.items()]
    section.blocks.append(margin_note(study))
    return section


def comparison_name(c: dict, first_column: str = "comparison") -> str:
    return c["method"] if first_column == "method" else f"{c['method']} - {c['baseline']}"


def verdict_text(c: dict) -> str:
    """The verdict in words: better, worse, equivalent within ±m, inconclusive."""
    return f"equivalent within ±{fmt(c['margin'])}" if c["verdict"] == "equivalent" else c["verdict"]


def fmt_runs(n) -> str:
    return str(int(n)) if finite(n) else "-"


def equivalence_table(study: Study, results: list[dict], first_column: str = "comparison") -> Table:
    """Per comparison (``stats.compare_pairs`` with a margin): the mean difference with its 95 % CI, the
    90 % CI and p of the two one-sided tests against ±m, the minimum detectable effect at 80 % power,
    the runs that would detect m, and the verdict."""
    m = fmt(study.margin)
    headers = [first_column, "n", "mean diff [95 % CI]", "p (Holm)", "90 % CI", f"TOST p (±{m})",
               "MDE (80 % power)", f"runs to detect {m}", "verdict"]
    rows = [[comparison_name(c, first_column), str(c["n_a"]) if study.paired else f"{c['n_a']} / {c['n_b']}",
             f"{fmt(c['mean_diff'], signed=True)} {fmt_ci(c['diff_ci_low'], c['diff_ci_high'])}",
             fmt_p(c["p_holm"]), fmt_ci(c["tost_ci_low"], c["tost_ci_high"]), fmt_p(c["tost_p"]),
             fmt(c["mde"]), fmt_runs(c["n_for_margin"]), verdict_text(c)] for c in results]
    return Table(headers, rows, align="lrlrlrrrl")


def margin_note(study: Study) -> str:
    per = "pairs" if study.paired else "runs per method"
    return (f"Margin m = {fmt(study.margin)} points ({study.margin_source}). Verdicts - {stats.VERDICT_RULE}. "
            "TOST: statsmodels' ttost_paired (paired) or ttost_ind with unequal variances, at alpha 0.05, "
            "not adjusted. MDE: the smallest true difference a two-sided t-test at alpha 0.05 detects with "
            f"80 % power at this n, given the {'sd of the paired differences' if study.paired else 'pooled sd'} "
            f"(statsmodels' {'TTestPower' if study.paired else 'TTestIndPower'}); runs to detect m: the {per} "
            "at which a true difference of m would be detected with that power.")


def comparison_samples(study: Study, group: str, column: str = "test_acc_last") -> dict[str, list[float]]:
    """``{method: accuracies}`` of one k, baseline included (when paired, ``{method: {run: accuracy}}``:
    each comparison uses the runs its two methods share), and only methods with at least two runs (fewer
    cannot be tested). ``column``: which accuracy of results.csv
    (``test_acc_at_best_val``: at the best validation epoch)."""
    if study.paired:  # each comparison pairs the runs its two methods share (an extended study has more of some)
        samples = stats.runs_by_group(study.group_rows(group), value=column, key="run", group="method")
    else:
        samples = {m: study.values(group, m, column) for m in study.methods}
    samples = {m: samples[m] for m in study.methods if len(samples.get(m, [])) >= 2}
    base = samples.get(study.baseline)
    others = [s for m, s in samples.items() if m != study.baseline]
    if base is None or not others or (study.paired and not any(len(set(base) & set(s)) >= 2 for s in others)):
        raise ValueError(f"{study.baseline} and at least one other method need two or more "
                         "runs" + (" in common" if study.paired else ""))
    return samples


__all__ = ["Study", "comparison_name", "comparison_section", "comparison_samples", "contrasts_section",
           "equivalence_table", "finite", "fmt", "fmt_ci", "fmt_p", "fmt_runs", "group_title", "header_section",
           "load_study", "margin_note", "summary_section", "summary_table", "sweep_section", "teacher_accuracy",
           "verdict_text"]
