#!/usr/bin/env python3
"""Regenerate (``--write``) or check (``--check``, the default) README.md's study tables from ``studies/``.

Each table sits between ``<!-- study-table: KIND STUDY... -->`` and ``<!-- /study-table -->``; the kinds
(summary, contrasts, answer) are described in :mod:`igkd.experiments.study_tables`. Study paths are
relative to the document's folder.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from igkd.errors import IgkdError
from igkd.experiments.study_tables import markers, regenerate, stale
from igkd.fileio import atomic_write_text

README = Path(__file__).resolve().parent.parent / "README.md"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if a table differs from its studies (default)")
    mode.add_argument("--write", action="store_true", help="rewrite the tables in place")
    parser.add_argument("--readme", type=Path, default=README, help=f"the document (default: {README})")
    args = parser.parse_args(argv)
    text = args.readme.read_text()
    root = args.readme.resolve().parent
    try:
        if args.write:
            new = regenerate(text, root)
            if new != text:
                atomic_write_text(args.readme, new)
            print(f"{args.readme}: {len(markers(text))} study tables written")
            return 0
        old = stale(text, root)
    except IgkdError as e:
        print(f"readme_tables: error: {e}", file=sys.stderr)
        return 2
    for m in old:
        print(f"{args.readme}: the table <!-- study-table: {m.spec} --> is not what its studies give; "
              "run scripts/readme_tables.py --write", file=sys.stderr)
    if not old:
        print(f"{args.readme}: {len(markers(text))} study tables, all current")
    return 1 if old else 0


if __name__ == "__main__":
    sys.exit(main())
