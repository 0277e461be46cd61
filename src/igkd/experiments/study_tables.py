"""Tables in a Markdown document (README.md) generated from archived studies (``studies/<name>/``, made by
:func:`igkd.experiments.archive.archive_study`), so that every number the document cites can be checked
against the study's files. Never imports torch.

A generated table sits between two markers; the opening one names its kind and its studies (paths relative
to the document's folder)::

    <!-- study-table: summary studies/converged -->

    | method | n | min | mean | ...

    <!-- /study-table -->

Kinds:

``summary STUDY``
    test accuracy per method (n, min / mean / max, sd, 95 % CI, and at the best validation epoch): the
    report's "Accuracy per method" table.
``contrasts STUDY``
    the planned comparisons (the study's ``--contrasts``; without any, each method against the baseline):
    mean difference with its 95 % CI, p (Holm), the 90 % CI, TOST p against the study's margin, the minimum
    detectable effect at 80 % power, the runs that would detect the margin, and the verdict.
``answer STUDY [STUDY ...]``
    one row per planned comparison of every study: the difference with its 95 % CI, the verdict, and the
    paper's figure for the same comparison (:data:`PAPER_FIGURES`) beside it. A study with too few runs so
    far gets one row that says so.

``contrasts`` and ``answer`` compare the test accuracy after the last epoch; ``value=best_val`` after the
studies compares it at the best validation epoch instead (``test_acc_at_best_val``), e.g.
``<!-- study-table: answer studies/converged studies/paper-recipe value=best_val -->``. A study with
several depths k gets a ``k`` column. ``python scripts/readme_tables.py --write`` rewrites the
tables, ``--check`` (and ``tests/test_readme_tables.py``) says whether they are current.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError
from ..reporting import format_table
from . import stats
from .report_data import (
    Study,
    comparison_samples,
    equivalence_table,
    fmt,
    fmt_ci,
    load_study,
    summary_table,
    verdict_text,
)
from .report_render import Table

KINDS = ("summary", "contrasts", "answer")
# value=NAME after the studies: which accuracy of results.csv the comparisons use.
VALUES = {"last": "test_acc_last", "best_val": "test_acc_at_best_val"}
# The paper's CIFAR-10 ablation (k = 5, 10 full-data runs each; METHOD.md): its differences of means, in
# points, for the comparisons it reports.
PAPER_FIGURES = {
    ("kd_ig", "kd"): "+0.40 (92.02 vs 91.62)",
    ("kd", "student"): "+0.44 (91.62 vs 91.18)",
    ("kd_ig", "student"): "+0.84 (92.02 vs 91.18)",
}
MARKER = re.compile(r"<!-- study-table: (?P<spec>[^>]*?) -->\n(?P<body>.*?)<!-- /study-table -->", re.S)


@dataclass(frozen=True)
class Marker:
    """One generated table of a document: its kind and the studies it reads (as written in the marker)."""

    kind: str
    studies: tuple[str, ...]
    value: str = "last"  # a key of VALUES: the accuracy the comparisons use

    @classmethod
    def parse(cls, spec: str) -> Marker:
        words = spec.split()
        options = dict(w.split("=", 1) for w in words if "=" in w)
        words = [w for w in words if "=" not in w]
        if not words or words[0] not in KINDS:
            raise ConfigError(f"study-table marker {spec!r}: the kind must be one of {', '.join(KINDS)}")
        if len(words) < 2 or (words[0] != "answer" and len(words) != 2):
            raise ConfigError(f"study-table marker {spec!r}: {words[0]} takes "
                              f"{'one or more studies' if words[0] == 'answer' else 'one study'}")
        value = options.pop("value", "last")
        if options or value not in VALUES or (value != "last" and words[0] == "summary"):
            raise ConfigError(f"study-table marker {spec!r}: the only option is value={'|'.join(VALUES)}, "
                              "for contrasts and answer tables")
        return cls(words[0], tuple(words[1:]), value)

    @property
    def spec(self) -> str:
        return " ".join((self.kind, *self.studies, *([f"value={self.value}"] if self.value != "last" else [])))


def markers(text: str) -> list[Marker]:
    """The generated tables of a document, in order."""
    return [Marker.parse(m["spec"]) for m in MARKER.finditer(text)]


class NoComparison(ConfigError):
    """Too few runs (so far) for a study's comparisons."""


def render(marker: Marker, root: str | Path) -> str:
    """The Markdown table of ``marker``, from the studies under ``root`` (the document's folder)."""
    studies = [_load(Path(root), path) for path in marker.studies]
    if marker.kind == "summary":
        return _md(_by_group(studies[0], lambda g: summary_table(studies[0], g)))
    column = VALUES[marker.value]
    note = ""
    if marker.kind == "contrasts":
        study = studies[0]
        waiting: list[str] = []

        def table_of(group: str) -> Table:
            results, later = _compare(study, group, column)
            waiting.extend(f"{a} - {b}" for a, b in later)
            return equivalence_table(study, results)

        try:
            table = _by_group(study, table_of)
        except NoComparison as exc:  # a study in progress: too few runs so far
            return f"*No comparison yet in {marker.studies[0]} ({exc}).*"
        if waiting:  # in progress: say what is not in the table (and that Holm covers only what is)
            note = (f"\n\n*Not compared yet (fewer than two runs so far): {', '.join(waiting)}; "
                    "Holm's correction covers the comparisons above.*")
    else:
        table = answer_table(studies, marker.studies, column)
    if marker.value != "last":  # the table says what it compares, not only its (hidden) marker
        table.headers = [h.replace("mean diff", "mean diff @ best val") for h in table.headers]
    return _md(table) + note


def regenerate(text: str, root: str | Path) -> str:
    """``text`` with every marked table replaced by what its studies give now."""
    def fill(m: re.Match) -> str:
        marker = Marker.parse(m["spec"])
        return f"<!-- study-table: {marker.spec} -->\n\n{render(marker, root)}\n\n<!-- /study-table -->"

    return MARKER.sub(fill, text)


def stale(text: str, root: str | Path) -> list[Marker]:
    """The marked tables of ``text`` that differ from what their studies give."""
    fresh = regenerate(text, root)
    old = [m["body"] for m in MARKER.finditer(text)]
    new = [m["body"] for m in MARKER.finditer(fresh)]
    return [mk for mk, a, b in zip(markers(text), old, new) if a != b]


def answer_table(studies: list[Study], names: tuple[str, ...], column: str = "test_acc_last") -> Table:
    """Every study's planned comparisons of ``column``, one row each, with the paper's figure beside them."""
    headers = ["study", "comparison", "n", "mean diff [95 % CI]", "verdict", "MDE (80 % power)",
               "the paper (CIFAR-10)"]
    rows = []
    for study, name in zip(studies, names):
        for group in study.groups:
            label = name if len(study.groups) == 1 else f"{name} (k = {group})"
            try:
                comparisons, waiting = _compare(study, group, column)
            except NoComparison as exc:  # a study in progress: says so in its row, the others still answer
                rows.append([label, f"no comparison yet ({exc})", "-", "-", "-", "-", "-"])
                continue
            for c in comparisons:
                rows.append([label, f"{c['method']} - {c['baseline']}", str(c["n_a"]),
                             f"{fmt(c['mean_diff'], signed=True)} {fmt_ci(c['diff_ci_low'], c['diff_ci_high'])}",
                             verdict_text(c), fmt(c["mde"]), PAPER_FIGURES.get((c["method"], c["baseline"]), "-")])
            for a, b in waiting:
                rows.append([label, f"{a} - {b}", "-", "-", "no comparison yet", "-", PAPER_FIGURES.get((a, b), "-")])
    return Table(headers, rows, align="llrllrl")


def _compare(study: Study, group: str, column: str) -> tuple[list[dict], list[tuple[str, str]]]:
    """The planned comparisons of one k (else each method against the baseline) of ``column``, with the
    study's margin; and the contrasts not compared yet: in a study still running, a contrast whose methods
    have fewer than two runs so far is left out, and Holm's correction covers those that are in."""
    try:
        samples = comparison_samples(study, group, column)
        pairs = study.contrasts or [(m, study.baseline) for m in samples if m != study.baseline]
        ready = [p for p in pairs if p[0] in samples and p[1] in samples]
        return (stats.compare_pairs(samples, ready, paired=study.paired, margin=study.margin),
                [p for p in pairs if p not in ready])
    except ValueError as exc:  # too few runs, a contrast without runs
        raise NoComparison(f"k = {group}: {exc}") from None


def _by_group(study: Study, table) -> Table:
    """``table(group)`` for a study of one k; with several, their rows under a leading ``k`` column."""
    if len(study.groups) == 1:
        return table(study.groups[0])
    tables = [(g, table(g)) for g in study.groups]
    first = tables[0][1]
    return Table(["k", *first.headers], [[g, *row] for g, t in tables for row in t.rows],
                 align=None if first.align is None else "r" + first.align)


def _load(root: Path, path: str) -> Study:
    folder = root / path
    if not (folder / "study.json").is_file():
        raise ConfigError(f"study-table marker names {path}, which holds no study.json (under {root})")
    return load_study(folder)  # results.csv checked against its sha256; the study's own margin


def _md(table: Table) -> str:
    return format_table(table.headers, table.rows, align=table.align)


__all__ = ["KINDS", "MARKER", "VALUES", "PAPER_FIGURES", "Marker", "answer_table", "markers", "regenerate", "render", "stale"]
