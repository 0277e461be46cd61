"""The report's blocks (paragraphs, headings, tables, figures) and their two renderings: HTML with the
plots embedded as base64 PNG data URIs, and Markdown with the plots saved under ``report_files/`` and
linked. A section is built once from blocks and written both ways; never imports torch."""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402

from ..fileio import atomic_write_bytes  # noqa: E402
from ..reporting import format_table  # noqa: E402

FILES_DIR = "report_files"
DPI = 100


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


def figure(fig, name: str, caption: str) -> Figure:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    return Figure(name, buf.getvalue(), caption)


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


__all__ = ["DPI", "FILES_DIR", "Figure", "Heading", "Section", "Table", "figure", "to_html", "to_markdown"]
