"""A study's result files without its weights, for a repository (``studies/<name>/``) where anyone can check
the numbers: ``igkd report`` reads the archive as it reads the study, and copied back as a study folder it
resumes (the same ``igkd montecarlo`` command skips the runs it holds). Never imports torch.

An archive holds::

    study.json, results.csv, results.csv.sha256   the plan, the config and the results, checked
    gallery.npz, bench*.json                      what the report shows beside the tables (when present)
    runs/<run>/config.yaml, metrics.jsonl, summary.json, env.json   each finished run's text files
    tune/   the search that chose the config (``--tune``): tune.json, trials.csv (+ .sha256), best.yaml,
            each trial's text files and the search's report.md
    report.md, report_files/*.png   the report, generated from the archive itself
    archive.json   where it came from and the sha256 of every other file in it (checked JSON)

Left out: weights (``*.pt``), TensorBoard event files, the teacher's folder (a ``teacher/`` without its
``model.pt`` would be taken for a finished teacher; its accuracy is in ``study.json``), the map stores,
Optuna's database, locks, and ``report.html`` (it embeds the same figures again as base64;
``igkd report`` on the archive rebuilds it).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ..errors import ConfigError, CorruptFileError
from ..fileio import (
    ensure_dir,
    file_sha256,
    read_checked_json,
    read_run_summary,
    write_checked_json,
)
from .report import write_report
from .results import read_results, read_study, read_tune

# A run's text files: what `igkd report` and a resumed study read (the summary checks the first two).
RUN_FILES = ("config.yaml", "metrics.jsonl", "summary.json", "env.json")
STUDY_FILES = ("study.json", "results.csv", "results.csv.sha256", "gallery.npz")
TUNE_FILES = ("tune.json", "trials.csv", "trials.csv.sha256", "best.yaml")
MANIFEST = "archive.json"


@dataclass
class Archive:
    """What :func:`archive_study` wrote: the folder, its files (relative paths) and the runs it holds."""

    path: Path
    files: list[str]
    runs: int
    trials: int


def archive_study(src: str | Path, dest: str | Path, tune: str | Path | None = None,
                  margin: float | None = None) -> Archive:
    """Copy the study in ``src`` (and the search in ``tune``) into ``dest`` without weights, generate its
    ``report.md`` there and record every file's sha256 in ``archive.json``.

    Every file is checked before it is copied (``results.csv`` against its sidecar, ``study.json`` and
    each run's ``summary.json`` against their checksums, a run's files against its summary) and the
    archive is built in a temporary folder beside ``dest`` and renamed into place, so ``dest`` is either
    the old archive or the complete new one. ``margin`` is passed to the report (default: the study's).
    """
    src, dest = Path(src), Path(dest)
    if not (src / "study.json").is_file():
        raise ConfigError(f"{src} holds no study.json: not a study folder (igkd montecarlo or sweep)")
    rows = read_results(src)  # checked against results.csv.sha256
    read_study(src)  # checked against its checksum
    run_dirs = sorted({r["run_dir"] for r in rows if r.get("run_dir")})
    if not run_dirs:
        raise ConfigError(f"{src / 'results.csv'} names no finished run: nothing to archive")
    if dest.exists() and not (dest / MANIFEST).is_file() and any(dest.iterdir()):
        raise ConfigError(f"{dest} exists and is not a study archive: choose another destination")
    ensure_dir(dest.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.tmp-", dir=dest.parent))
    try:
        for name in STUDY_FILES:
            _copy(src, tmp, name, required=name != "gallery.npz")
        for bench in sorted(src.glob("bench*.json")):
            _copy(src, tmp, bench.name)
        for run_dir in run_dirs:
            _copy_run(src, tmp, run_dir)
        trials = 0
        if tune is not None:
            trials = _copy_tune(Path(tune), tmp / "tune")
            write_report(tmp / "tune", html=False, name=f"{dest.parent.name}/{dest.name}/tune")
        write_report(tmp, margin=margin, html=False, name=dest.name)
        files = sorted(p.relative_to(tmp).as_posix() for p in tmp.rglob("*") if p.is_file())
        write_checked_json(tmp / MANIFEST, {
            "source": str(src.resolve()), "tune": str(Path(tune).resolve()) if tune is not None else None,
            "archived": datetime.now(timezone.utc).isoformat(timespec="seconds"), "runs": len(run_dirs),
            "trials": trials, "files": {f: file_sha256(tmp / f) for f in files}})
        os.chmod(tmp, 0o755)  # mkdtemp's 0700 would outlive the rename
        _replace(tmp, dest)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Archive(dest, [*files, MANIFEST], len(run_dirs), trials)


def check_archive(path: str | Path) -> dict:
    """``archive.json`` of an archive, with every file it lists checked against its sha256 (and
    ``results.csv`` against its sidecar, ``study.json`` against its checksum). Returns the manifest."""
    path = Path(path)
    fix = f"archive the study again into {path}"
    manifest = read_checked_json(path / MANIFEST, fix) if (path / MANIFEST).is_file() else None
    if manifest is None:
        raise ConfigError(f"{path} holds no {MANIFEST}: not a study archive (scripts/archive_study.py makes one)")
    for name, digest in manifest["files"].items():
        if not (path / name).is_file() or file_sha256(path / name) != digest:
            raise CorruptFileError(f"{path / name} is missing or does not match its sha256 in "
                                   f"{path / MANIFEST}; {fix}")
    read_results(path)
    read_study(path)
    return manifest


def _copy(src: Path, dest: Path, name: str, required: bool = False) -> None:
    if not (src / name).is_file():
        if required:
            raise ConfigError(f"{src / name} is missing: the study folder is incomplete")
        return
    ensure_dir((dest / name).parent)
    shutil.copyfile(src / name, dest / name)


def _copy_run(src: Path, dest: Path, run_dir: str) -> None:
    """A finished run's text files, checked against its summary before and after the copy."""
    read_run_summary(src / run_dir)
    for name in RUN_FILES:
        _copy(src / run_dir, dest / run_dir, name, required=name in ("config.yaml", "summary.json"))
    read_run_summary(dest / run_dir)


def _copy_tune(src: Path, dest: Path) -> int:
    """A search's text files and its finished trials'; returns how many trials."""
    _meta, rows = read_tune(src)  # checked: tune.json, trials.csv against its sidecar
    for name in TUNE_FILES:
        _copy(src, dest, name, required=name == "tune.json")
    run_dirs = sorted({r["run_dir"] for r in rows if r.get("run_dir")})
    for run_dir in run_dirs:
        if (src / run_dir / "summary.json").is_file():
            _copy_run(src, dest, run_dir)
    return len(run_dirs)


def _replace(tmp: Path, dest: Path) -> None:
    """Put the finished archive ``tmp`` at ``dest``, an old archive there moved aside first."""
    old = None
    if dest.exists():
        old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
        dest.rename(old)
    tmp.rename(dest)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


__all__ = ["MANIFEST", "RUN_FILES", "Archive", "archive_study", "check_archive"]
