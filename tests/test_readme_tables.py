"""Results anyone can check: a study archived without weights (``scripts/archive_study.py``), read back by
``igkd report``, resumed from the archive, and README.md's study tables generated from the archives
(``scripts/readme_tables.py``), checked here against the files they cite."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pytest

from igkd.cli import main
from igkd.errors import ConfigError, CorruptFileError
from igkd.experiments import stats
from igkd.experiments.archive import MANIFEST, archive_study, check_archive
from igkd.experiments.study_tables import Marker, markers, regenerate, render, stale

from .test_report import md_rows
from .toy_data import toy_settings, write_quadrants_npz

REPO = Path(__file__).resolve().parent.parent
SCRIPTS = REPO / "scripts"


def _script(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _sets(items):
    return [x for item in items for x in ("--set", item)]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A toy paired study (student and kd_ig, 3 runs, planned contrast, margin 0.5) with a 1-trial search
    beside it, archived into ``repo/studies/toy``. Returns (tmp, study command, study, tune, archive)."""
    tmp = tmp_path_factory.mktemp("toy_archive")
    settings = [*toy_settings(write_quadrants_npz(tmp / "q.npz"), tmp), "data.val_fraction=0.25",
                "train.epochs=3", "train.lr=0.01", "train.batch_size=16", "student.remove_blocks=7",
                "teacher_train.epochs=3", "distill.teacher_runtime=torch"]  # no ONNX export per run: seconds
    assert main(["train-teacher", "--out", str(tmp / "teacher"), *_sets(settings)]) == 0
    settings.append(f"teacher.checkpoint={tmp / 'teacher' / 'model.pt'}")
    assert main(["tune", "-m", "kd_ig", "--space", "distill.alpha=0.1,0.5", "--sampler", "tpe", "--trials", "1", "--out", str(tmp / "tune"),
                 "--workers", "1", "--threads-per-run", "1", *_sets(settings)]) == 0
    command = ["montecarlo", "--methods", "student,kd_ig", "--runs", "3", "--workers", "1",
               "--threads-per-run", "1", "--contrasts", "kd_ig-student", "--margin", "0.5", *_sets(settings)]
    assert main([*command, "--out", str(tmp / "study")]) == 0
    archive = archive_study(tmp / "study", tmp / "repo" / "studies" / "toy", tune=tmp / "tune")
    return tmp, command, tmp / "study", tmp / "tune", archive


def _rows(folder: Path) -> list[dict]:
    """results.csv's rows, less the study column (the folder's name)."""
    with open(folder / "results.csv", newline="") as f:
        return [{k: v for k, v in r.items() if k != "study"} for r in csv.DictReader(f)]


def test_archive_holds_the_text_files_and_no_weights(toy):
    tmp, _, study, _, archive = toy
    dest = archive.path
    files = {p.relative_to(dest).as_posix() for p in dest.rglob("*") if p.is_file()}
    assert files == set(archive.files)
    assert not [f for f in files if f.endswith(".pt") or "tfevents" in f or f.endswith(".db")]
    assert {"study.json", "results.csv", "results.csv.sha256", "gallery.npz", "report.md", MANIFEST} <= files
    assert "report.html" not in files and any(f.startswith("report_files/") for f in files)
    assert not any(f.startswith(("teacher/", "ig/")) for f in files)
    # every run of results.csv with its four text files, byte for byte
    for row in _rows(study):
        for name in ("config.yaml", "metrics.jsonl", "summary.json", "env.json"):
            assert (dest / row["run_dir"] / name).read_bytes() == (study / row["run_dir"] / name).read_bytes()
    assert (dest / "results.csv").read_bytes() == (study / "results.csv").read_bytes()
    # the search: its files and each trial's text files, with its own report
    assert {"tune/tune.json", "tune/trials.csv", "tune/trials.csv.sha256", "tune/best.yaml", "tune/report.md"} <= files
    tune_report = (dest / "tune" / "report.md").read_text()
    assert "studies/toy/tune/best.yaml" in tune_report and ".tmp" not in tune_report  # where it ends up
    trials = [f for f in files if f.startswith("tune/trials/") and f.endswith("summary.json")]
    assert len(trials) == archive.trials == 1
    manifest = check_archive(dest)
    assert manifest["runs"] == 6 and manifest["files"]["results.csv"] == \
        (dest / "results.csv.sha256").read_text().split()[0]
    md = (dest / "report.md").read_text()
    assert md.startswith("# igkd study report: toy\n") and "Margin m = 0.50 points (recorded in study.json)" in md


def test_archive_is_read_by_igkd_report_and_checked(toy, tmp_path):
    _, _, _, _, archive = toy
    copy = tmp_path / "toy"
    shutil.copytree(archive.path, copy)
    assert main(["report", str(copy)]) == 0
    assert (copy / "report.html").is_file()
    assert md_rows((copy / "report.md").read_text(), "kd_ig - student")
    # an edited number in a run's metrics, or in results.csv, is caught
    metrics = next(copy.glob("runs/*/metrics.jsonl"))
    metrics.write_text(metrics.read_text().replace('"epoch": 1', '"epoch": 9', 1))
    with pytest.raises(CorruptFileError, match="metrics.jsonl"):
        check_archive(copy)
    results = copy / "results.csv"
    results.write_text(results.read_text().replace("kd_ig", "kd", 1))
    with pytest.raises(CorruptFileError, match="results.csv"):
        render(Marker("summary", ("toy",)), tmp_path)


def test_archive_resumes_as_a_study_folder(toy, tmp_path, capsys):
    """Copied back as a study folder, the same command finds every run finished and adds a fourth."""
    _, command, study, _, archive = toy
    resumed = tmp_path / "resumed"
    shutil.copytree(archive.path, resumed)
    capsys.readouterr()
    assert main([*command, "--out", str(resumed)]) == 0
    assert "6 runs, 6 already finished" in capsys.readouterr().out
    assert _rows(resumed) == _rows(study)
    # more runs extend it: only the new ones train
    more = [*command, "--out", str(resumed)]
    more[more.index("--runs") + 1] = "4"
    assert main(more) == 0
    out = capsys.readouterr().out
    assert "8 runs, 6 already finished" in out and out.count("  done ") == 2


def test_archive_refuses_what_is_not_a_study_and_keeps_the_old_archive(toy, tmp_path):
    tmp, _, study, _, archive = toy
    with pytest.raises(ConfigError, match="study.json"):
        archive_study(tmp / "tune", tmp_path / "x")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a study archive"):
        archive_study(study, tmp_path / "busy")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"
    # archiving again over an archive replaces it whole
    again = tmp_path / "again"
    archive_study(study, again)
    (again / "stray.txt").write_text("x")
    archive_study(study, again)
    assert not (again / "stray.txt").exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    assert _script("archive_study").main([str(tmp_path / "nowhere"), str(tmp_path / "y")]) == 2


README_TEMPLATE = """# A document

Some text.

<!-- study-table: summary studies/toy -->
<!-- /study-table -->

More text.

<!-- study-table: contrasts studies/toy -->
<!-- /study-table -->

<!-- study-table: answer studies/toy studies/toy -->
<!-- /study-table -->
"""


def _tables_checked_against_results(readme: Path, study: Path) -> None:
    """The generated tables hold the numbers computed here from results.csv, not just any table."""
    text = readme.read_text()
    acc = {m: [float(r["test_acc_last"]) for r in sorted(_rows(study), key=lambda r: int(r["run"]))
               if r["method"] == m] for m in ("student", "kd_ig")}
    for m, values in acc.items():
        row = md_rows(text, m)[0]
        assert row[1] == "3" and row[3] == f"{np.mean(values):.2f}" and row[5] == f"{np.std(values, ddof=1):.2f}"
    d = np.subtract(acc["kd_ig"], acc["student"])
    contrast, answer, answer2 = md_rows(text, "kd_ig - student")[0], *md_rows(text, "studies/toy")
    assert contrast[2].startswith(f"{d.mean():+.2f}") and answer[3].startswith(f"{d.mean():+.2f}")
    expected = stats.compare_pairs(acc, [("kd_ig", "student")], paired=True, margin=0.5)[0]["verdict"]
    assert contrast[-1].startswith(expected) and answer[4].startswith(expected) and answer == answer2
    assert answer[-1] == "+0.84 (92.02 vs 91.18)"  # the paper's KD+IG - student beside it
    assert "TOST p (±0.50)" in text


def test_tables_are_generated_from_the_archive_and_checked(toy, tmp_path, capsys):
    _, _, study, _, archive = toy
    repo = archive.path.parent.parent
    readme = repo / "README.md"
    readme.write_text(README_TEMPLATE)
    assert markers(README_TEMPLATE) == [Marker("summary", ("studies/toy",)), Marker("contrasts", ("studies/toy",)),
                                        Marker("answer", ("studies/toy", "studies/toy"))]
    assert len(stale(README_TEMPLATE, repo)) == 3  # empty tables are not current
    script = _script("readme_tables")
    assert script.main(["--check", "--readme", str(readme)]) == 1
    assert script.main(["--write", "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert text.startswith("# A document\n\nSome text.\n\n<!-- study-table: summary studies/toy -->\n\n| method")
    _tables_checked_against_results(readme, study)
    assert stale(text, repo) == [] and script.main(["--readme", str(readme)]) == 0
    assert regenerate(text, repo) == text
    # a hand-edited number is caught and named
    readme.write_text(text.replace(md_rows(text, "kd_ig")[0][3], "99.99", 1))
    capsys.readouterr()
    assert script.main(["--check", "--readme", str(readme)]) == 1
    assert "summary studies/toy" in capsys.readouterr().err
    # markers that name nothing, or no kind, are one clear error
    with pytest.raises(ConfigError, match="kind"):
        markers("<!-- study-table: table studies/toy -->\n<!-- /study-table -->")
    with pytest.raises(ConfigError, match="one study"):
        markers("<!-- study-table: summary studies/toy studies/toy -->\n<!-- /study-table -->")
    with pytest.raises(ConfigError, match="no study.json"):
        render(Marker("summary", ("studies/none",)), repo)
    for bad in ("contrasts studies/toy value=best", "summary studies/toy value=best_val",
                "contrasts studies/toy colour=red"):
        with pytest.raises(ConfigError, match="value="):
            Marker.parse(bad)


def test_comparisons_at_the_best_validation_epoch(toy):
    """value=best_val: the same tables of the accuracy at the best validation epoch (the paper recipe reports
    both); the marker keeps its option when rewritten."""
    _, _, study, _, archive = toy
    repo = archive.path.parent.parent
    spec = "answer studies/toy value=best_val"
    marker = Marker.parse(spec)
    assert marker == Marker("answer", ("studies/toy",), "best_val") and marker.spec == spec
    text = regenerate(f"<!-- study-table: {spec} -->\n<!-- /study-table -->\n", repo)
    assert text.startswith(f"<!-- study-table: {spec} -->\n\n| study")
    rows = sorted(_rows(study), key=lambda r: int(r["run"]))
    best = {m: [float(r["test_acc_at_best_val"]) for r in rows if r["method"] == m] for m in ("student", "kd_ig")}
    d = np.subtract(best["kd_ig"], best["student"])
    assert md_rows(text, "studies/toy")[0][3].startswith(f"{d.mean():+.2f}") and "mean diff @ best val" in text
    contrasts = render(Marker("contrasts", ("studies/toy",), "best_val"), repo)
    assert md_rows(contrasts, "kd_ig - student")[0][2].startswith(f"{d.mean():+.2f}")


def test_readme_tables_are_what_the_studies_give(toy, tmp_path):
    """Every study table of the real README.md is current, and every study it cites passes its checksums.
    With no table yet, the generator still has to reproduce the toy study's tables (so this cannot pass by
    checking nothing)."""
    readme = REPO / "README.md"
    text = readme.read_text()
    cited = sorted({s for m in markers(text) for s in m.studies})
    for path in cited:
        check_archive(REPO / path)  # results.csv and every archived file against their sha256
    assert [m.spec for m in stale(text, REPO)] == []
    if not cited:
        _, _, study, _, archive = toy
        doc = archive.path.parent.parent / "README-generated.md"
        doc.write_text(regenerate(README_TEMPLATE, doc.parent))
        _tables_checked_against_results(doc, study)


def test_a_study_in_progress_says_so_and_the_others_still_answer(toy):
    """One run per method so far: its contrasts table says there is no comparison yet, and in the answer table
    it gets one row saying so, under the finished study's rows."""
    tmp, command, _, _, archive = toy
    repo = archive.path.parent.parent
    one = [("1" if a == "3" and command[i - 1] == "--runs" else a) for i, a in enumerate(command)]
    assert main([*one, "--out", str(tmp / "partial")]) == 0
    archive_study(tmp / "partial", repo / "studies" / "partial")
    assert render(Marker("contrasts", ("studies/partial",)), repo).startswith(
        "*No comparison yet in studies/partial (k = 7:")
    table = render(Marker("answer", ("studies/toy", "studies/partial")), repo)
    toy_rows, partial_rows = md_rows(table, "studies/toy"), md_rows(table, "studies/partial")
    assert len(toy_rows) == 1 and toy_rows[0][1] == "kd_ig - student" and toy_rows[0][2] == "3"
    assert len(partial_rows) == 1 and partial_rows[0][1].startswith("no comparison yet (k = 7:")


def test_a_contrast_still_waiting_for_runs_is_named_and_the_others_are_tested(toy, tmp_path):
    """The toy study extended by one run of a noise-map arm and a contrast with it: kd_ig - student is tested
    (3 pairs), kd_ig - kd_ig+noise_maps is named as not compared yet, in both kinds of table."""
    tmp, command, study, _, archive = toy
    repo = archive.path.parent.parent
    mixed = tmp_path / "mixed"
    shutil.copytree(study, mixed)
    swap = {"student,kd_ig": "student,kd_ig,kd_ig+noise_maps", "3": "1", "kd_ig-student": "kd_ig-kd_ig+noise_maps"}
    extended = [swap.get(a, a) if i and command[i - 1] in ("--methods", "--runs", "--contrasts") else a
                for i, a in enumerate(command)]
    assert main([*extended, "--out", str(mixed)]) == 0
    archive_study(mixed, repo / "studies" / "mixed")
    contrasts = render(Marker("contrasts", ("studies/mixed",)), repo)
    table, note = contrasts.split("\n\n")
    assert md_rows(table, "kd_ig - student")[0][1] == "3" and "noise" not in table
    assert contrasts.endswith("*Not compared yet (fewer than two runs so far): kd_ig - kd_ig+noise_maps; "
                              "Holm's correction covers the comparisons above.*")
    answer = md_rows(render(Marker("answer", ("studies/mixed",)), repo), "studies/mixed")
    assert [(r[1], r[3]) for r in answer][1] == ("kd_ig - kd_ig+noise_maps", "-")
    assert answer[1][4] == "no comparison yet" and answer[0][1] == "kd_ig - student" and answer[0][2] == "3"
