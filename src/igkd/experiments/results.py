"""Reading a study's result files, checked against their checksums (no torch: the report uses this)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from ..errors import ConfigError, CorruptFileError
from ..fileio import read_checked_json, read_with_sidecar


def read_results(out: str | Path) -> list[dict]:
    """The rows of ``results.csv`` (as text), checked against ``results.csv.sha256``."""
    path = Path(out) / "results.csv"
    if not path.exists():
        raise ConfigError(f"no results.csv in {out}: run `igkd montecarlo` or `igkd sweep` there first")
    data = read_with_sidecar(path, "rerun the study's command to rebuild it from the runs' summaries")
    try:
        return list(csv.DictReader(io.StringIO(data.decode())))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CorruptFileError(f"{path} is not a CSV file ({type(e).__name__}); rerun the study's command") from None


def read_study(out: str | Path) -> dict:
    """``study.json``, checked against its checksum ({} when there is none)."""
    path = Path(out) / "study.json"
    return read_checked_json(path, f"move {out} aside and run the study again") if path.is_file() else {}
