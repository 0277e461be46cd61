"""Reading the result files of a study or a search, checked against their checksums (no torch: the report
uses this)."""

from __future__ import annotations

import csv
import io
import json
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


def study_parts(meta: dict) -> list[dict]:
    """A study's parts (each command's ``methods``, ``runs`` and ``remove_blocks``): ``parts`` of its
    ``study.json``; for a study.json of an older igkd, which has none, its one plan ([] when it names none)."""
    if meta.get("parts"):
        return list(meta["parts"])
    if all(meta.get(key) for key in ("methods", "runs", "remove_blocks")):
        return [{"methods": meta["methods"], "runs": meta["runs"], "remove_blocks": meta["remove_blocks"]}]
    return []


def value_text(value) -> str:
    """How a searched config value is written in ``trials.csv`` and shown in the report: a string as it
    is, anything else as JSON (``0.01``, ``2.0``, ``[2, 2, 2, 2, 1]``, ``null``)."""
    return value if isinstance(value, str) else json.dumps(value)


def read_tune(out: str | Path) -> tuple[dict, list[dict]]:
    """A search's ``tune.json`` and the rows of its ``trials.csv`` (as text), each checked against its
    checksum."""
    out = Path(out)
    path = out / "tune.json"
    if not path.is_file():
        raise ConfigError(f"no tune.json in {out}: run `igkd tune` there first")
    meta = read_checked_json(path, f"move {out} aside and run the search again")
    trials = out / "trials.csv"
    if not trials.is_file():
        return meta, []
    data = read_with_sidecar(trials, "rerun the search's command to rebuild it from its Optuna storage")
    try:
        return meta, list(csv.DictReader(io.StringIO(data.decode())))
    except (UnicodeDecodeError, csv.Error) as e:
        raise CorruptFileError(f"{trials} is not a CSV file ({type(e).__name__}); rerun the search's "
                               "command") from None
