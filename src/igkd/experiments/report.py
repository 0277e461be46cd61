"""Render a study directory into ``report.html`` (self-contained) and ``report.md`` (a search directory's
sections are in :mod:`.tune_report`).

The report reads result files only: ``study.json``, ``results.csv``, each run's ``metrics.jsonl``
and, when present, ``gallery.npz`` and ``bench.json``. It never trains and never imports torch.

It is made in three parts: what the study says (:mod:`.report_data`: the results, tables and
comparisons), the figures (:mod:`.report_figures`), and the renderers (:mod:`.report_render`: the
blocks a section is made of, written as HTML and as Markdown). A section is a function of the study
that returns a :class:`Section` (or None when it has nothing to show); adding one is adding it to
``SECTIONS``.
"""

from __future__ import annotations

from pathlib import Path

from ..fileio import atomic_write_text
from .report_data import (
    Study,
    comparison_section,
    contrasts_section,
    fmt,
    fmt_p,
    header_section,
    load_study,
    summary_section,
    sweep_section,
)
from .report_figures import (
    accuracy_plot_section,
    bench_section,
    compression_plot_section,
    gallery_section,
    learning_curves_section,
)
from .report_render import FILES_DIR, Figure, Heading, Section, Table, figure, to_html, to_markdown

SECTIONS = (  # in report order
    header_section,
    summary_section,
    sweep_section,
    contrasts_section,
    comparison_section,
    accuracy_plot_section,
    compression_plot_section,
    learning_curves_section,
    gallery_section,
    bench_section,
)


def build_sections(study: Study) -> list[Section]:
    return [s for s in (make(study) for make in SECTIONS) if s is not None]


def write_report(study_dir: str | Path, margin: float | None = None, html: bool = True,
                 name: str | None = None) -> tuple[Path | None, Path]:
    """Write ``report.html`` and ``report.md`` (plus ``report_files/``) into a study directory or a search
    directory (``igkd tune``: one with ``tune.json``). ``margin`` (points) overrides the equivalence
    margin the study recorded (a search has none); ``html=False`` writes the Markdown only (returning None
    for the HTML); ``name`` is the study's name in the title (default: the folder's), and where a search's
    report says its best.yaml is."""
    folder = Path(study_dir)
    if (folder / "tune.json").is_file():
        from .tune_report import tune_sections

        sections, title = tune_sections(folder, name), f"igkd search report: {name or folder.resolve().name}"
    else:
        study = load_study(folder, margin)
        sections, title = build_sections(study), f"igkd study report: {name or study.dir.resolve().name}"
    html_path, md_path = (folder / "report.html" if html else None), folder / "report.md"
    if html_path is not None:
        atomic_write_text(html_path, to_html(title, sections))
    atomic_write_text(md_path, to_markdown(title, sections, folder / FILES_DIR))
    return html_path, md_path


__all__ = ["FILES_DIR", "SECTIONS", "Figure", "Heading", "Section", "Study", "Table", "build_sections", "figure",
           "fmt", "fmt_p", "gallery_section", "load_study", "write_report"]
