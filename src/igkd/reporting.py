"""Plain-text tables for the terminal and Markdown files."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the report imports this module and must not pull in torch
    from .config import Config


def format_table(headers: Sequence[str], rows: Sequence[Sequence[object]], align: str | None = None) -> str:
    """A Markdown table that also reads well in a terminal; ``align`` is one of l/r per column."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    align = align or "l" + "r" * (len(headers) - 1)

    def line(r):
        return "| " + " | ".join(c.ljust(w) if a == "l" else c.rjust(w) for c, w, a in zip(r, widths, align)) + " |"

    rule = "|" + "|".join(("-" * (w + 1) + ":") if a == "r" else ("-" * (w + 2)) for w, a in zip(widths, align)) + "|"
    return "\n".join([line(cells[0]), rule, *(line(r) for r in cells[1:])])


def _fmt(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def compression_table(cfg: Config) -> str:
    """Student size and cost for every k of the configured teacher (METHOD.md's CF table)."""
    from .data.catalog import DATASETS, known_image_shape
    from .errors import ConfigError
    from .models import (
        compression_factor,
        count_macs,
        count_parameters,
        is_family,
        truncated_student,
    )
    from .pipeline import build_teacher

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
