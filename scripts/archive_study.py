#!/usr/bin/env python3
"""Put a study's result files (no weights) into ``studies/NAME`` with its report, for the repository:

    python scripts/archive_study.py runs/study-converged studies/converged --tune runs/tune-converged

What is copied and why: :mod:`igkd.experiments.archive`. Then ``python scripts/readme_tables.py --write``
regenerates README.md's tables from ``studies/``.
"""

from __future__ import annotations

import argparse
import sys

from igkd.errors import IgkdError
from igkd.experiments.archive import archive_study


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("src", help="the study folder (igkd montecarlo / sweep --out)")
    parser.add_argument("dest", help="the archive folder, e.g. studies/converged (replaced if it is an archive)")
    parser.add_argument("--tune", help="the search folder (igkd tune --out) whose best.yaml the study ran")
    parser.add_argument("--margin", type=float, default=None,
                        help="equivalence margin of the report (default: the one the study recorded)")
    args = parser.parse_args(argv)
    try:
        a = archive_study(args.src, args.dest, tune=args.tune, margin=args.margin)
    except IgkdError as e:
        print(f"archive_study: error: {e}", file=sys.stderr)
        return 2
    size = sum((a.path / f).stat().st_size for f in a.files)
    print(f"{a.path}: {a.runs} runs" + (f", {a.trials} trials" if args.tune else "")
          + f", {len(a.files)} files, {size / 1e6:.1f} MB; report: {a.path / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
