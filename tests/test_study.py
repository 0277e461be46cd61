"""Studies end to end on a small real subset: montecarlo -> results.csv -> report -> evaluate; controls."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from igkd.cli import main
from igkd.data.control_maps import derangement, noise_maps, unrelated_maps
from igkd.errors import ConfigError
from igkd.experiments.study import Arm, StudyPlan, parse_contrasts, parse_depths

from .conftest import FASHION_MNIST, require

SMALL = ["data.train_size=400", "data.test_size=300", "data.val_fraction=0.1", "train.epochs=1",
         "teacher_train.epochs=1", "teacher.width_mult=0.25", "train.device=cpu", "teacher_train.device=cpu",
         "ig.n_steps=8", "ig.chunk_size=256"]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def _rows(study):
    with open(study / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A paired study, 2 runs x 2 methods (and the unrelated-maps control), 1 epoch, in-process."""
    require(FASHION_MNIST, "Fashion-MNIST")
    out = tmp_path_factory.mktemp("study")
    assert main(["montecarlo", "-c", "cpu-fashion-mnist", "--methods", "student,kd_ig,kd_ig+unrelated_maps",
                 "--runs", "2", "--out", str(out), "--workers", "1", "--threads-per-run", "1",
                 *_sets(SMALL)]) == 0
    return out


def test_montecarlo_writes_one_row_per_run_with_a_paired_design(study):
    rows = _rows(study)
    assert sorted((r["method"], r["run"]) for r in rows) == sorted(
        (m, str(i)) for m in ("student", "kd_ig", "kd_ig+unrelated_maps") for i in range(2))
    by_run = {}
    for r in rows:
        by_run.setdefault(r["run"], set()).add((r["seed"], r["train_images"]))
        assert 0 <= float(r["test_acc_last"]) <= 100 and r["test_images"] == "300"
        assert (study / r["run_dir"] / "metrics.jsonl").is_file()
    # paired: every method of run i shares its seed and its subset size; runs differ in seed
    assert all(len(v) == 1 for v in by_run.values())
    assert len({next(iter(v))[0] for v in by_run.values()}) == 2
    # 0.8 of the 360-image training split (400 less the 10 % validation split), stratified:
    # each class keeps 36 - round(0.2 * 36) = 29 images
    assert {r["train_images"] for r in rows} == {"290"}
    plan = json.loads((study / "study.json").read_text())
    assert plan["paired"] and plan["teacher"]["test_acc"] is not None
    gallery = torch.from_numpy(__import__("numpy").load(study / "gallery.npz")["maps"])
    assert gallery.shape[1:] == (28, 28) and torch.isfinite(gallery).all()


def test_same_command_resumes_and_skips_finished_runs(study, capsys):
    before = {r["run_dir"]: r["test_acc_last"] for r in _rows(study)}
    assert main(["montecarlo", "-c", "cpu-fashion-mnist", "--methods", "student,kd_ig,kd_ig+unrelated_maps",
                 "--runs", "2", "--out", str(study), "--workers", "1", "--threads-per-run", "1",
                 *_sets(SMALL)]) == 0
    out = capsys.readouterr().out
    assert "6 runs, 6 already finished" in out and "reusing" in out
    assert {r["run_dir"]: r["test_acc_last"] for r in _rows(study)} == before
    # another design in the same folder is refused, not mixed in
    code = main(["montecarlo", "-c", "cpu-fashion-mnist", "--methods", "student", "--runs", "2", "--unpaired",
                 "--out", str(study), "--workers", "1", *_sets(SMALL)])
    assert code == 2 and "another study" in capsys.readouterr().err


def test_more_runs_of_some_methods_extend_the_study_and_their_comparisons(study, tmp_path, capsys):
    """``--methods student,kd_ig --runs 3`` on the 2-run study adds one pair: results.csv keeps every part's runs,
    study.json the union of methods and contrasts, and kd_ig - student is tested on 3 pairs while the control,
    with 2 runs, is tested on its 2."""
    from igkd.experiments import stats
    from igkd.experiments.report_data import comparison_samples, load_study

    ext = tmp_path / "study"
    shutil.copytree(study, ext)
    first = ["montecarlo", "-c", "cpu-fashion-mnist", "--out", str(ext), "--workers", "1", "--threads-per-run", "1",
             *_sets(SMALL)]
    assert main([*first, "--methods", "student,kd_ig", "--runs", "3", "--contrasts", "kd_ig-student"]) == 0
    out = capsys.readouterr().out
    assert "4 runs, 4 already finished" not in out
    done = [line for line in out.splitlines() if line.strip().startswith("done ")]
    assert len(done) == 2 and "left)" in done[0] and "left" not in done[1]  # the pace so far, until the end
    rows = _rows(ext)
    assert sorted((r["method"], r["run"]) for r in rows) == sorted(
        [(m, str(i)) for m in ("student", "kd_ig") for i in range(3)] + [("kd_ig+unrelated_maps", "0"),
                                                                          ("kd_ig+unrelated_maps", "1")])
    record = json.loads((ext / "study.json").read_text())
    assert record["methods"] == ["student", "kd_ig", "kd_ig+unrelated_maps"] and record["runs"] == 3
    assert record["baseline"] == "student" and record["contrasts"] == [["kd_ig", "student"]]
    assert [p["runs"] for p in record["parts"]] == [2, 3]
    assert main(["report", str(ext)]) == 0
    report = (ext / "report.md").read_text()  # each method's own count, and the runs of both parts in all
    assert "runs per method: student 3, kd_ig 3, kd_ig+unrelated_maps 2 (in 2 parts)" in report
    assert "Finished runs: 8 of 8." in report
    loaded = load_study(ext)
    samples = comparison_samples(loaded, loaded.groups[0])
    n = {c["method"]: c["n_a"] for c in stats.compare_to_baseline(samples, "student", paired=True)}
    assert n == {"kd_ig": 3, "kd_ig+unrelated_maps": 2}
    # the first command again: nothing to run, and the extension's runs stay in results.csv
    assert main([*first, "--methods", "student,kd_ig,kd_ig+unrelated_maps", "--runs", "2"]) == 0
    assert "6 runs, 6 already finished" in capsys.readouterr().out
    assert sorted(map(str, _rows(ext))) == sorted(map(str, rows))
    assert len(json.loads((ext / "study.json").read_text())["parts"]) == 2


def test_tensorboard_on_the_study_folder_compares_its_runs(study):
    """``tensorboard --logdir STUDY``: one event stream per run (and the teacher's), named by its folder."""
    from tensorboard.backend.event_processing.event_multiplexer import EventMultiplexer

    mux = EventMultiplexer().AddRunsFromDirectory(str(study))
    mux.Reload()
    rows = _rows(study)
    assert set(mux.Runs()) == {"teacher", *(r["run_dir"] for r in rows)}
    for r in rows:
        accuracy = [e.value for e in mux.Scalars(r["run_dir"], "accuracy/test")]
        assert accuracy == [pytest.approx(float(r["test_acc_last"]), rel=1e-6)]
    ig_runs = {r["run_dir"] for r in rows if r["method"] != "student"}
    assert {run for run in mux.Runs() if "ig/overlays" in mux.Runs()[run]["images"]} == ig_runs


def test_report_and_evaluate_from_the_study(study, capsys):
    assert main(["report", str(study)]) == 0
    html = (study / "report.html").read_text()
    assert "data:image/png;base64," in html and "kd_ig+unrelated_maps" in html
    md = (study / "report.md").read_text()
    assert "paired t-test" in md or "Wilcoxon" in md
    run_dir = study / _rows(study)[0]["run_dir"]
    out_json = study / "eval.json"
    assert main(["evaluate", "-c", "cpu-fashion-mnist", "--checkpoint", str(run_dir / "model.pt"),
                 "--json", str(out_json), *_sets(SMALL)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out_json.read_text())
    summary = json.loads((run_dir / "summary.json").read_text())
    assert r["role"] == "student" and r["remove_blocks"] == 5 and r["images"] == 300
    assert r["accuracy"] == pytest.approx(summary["test_acc_last"])  # the run's own number, recomputed
    assert r["input_convention"]["name"] == "normalized" and "input convention: normalized" in printed
    assert sum(map(sum, r["confusion_matrix"])) == 300


def _losses(study):
    return {(r["method"], r["run"]): [json.loads(line)["loss"] for line in
                                      (study / r["run_dir"] / "metrics.jsonl").read_text().splitlines()]
            for r in _rows(study)}


@pytest.mark.slow
def test_ray_workers_give_the_same_results_as_in_process(study, tmp_path):
    """Two Ray workers of one thread each reproduce the in-process study run for run.

    Run as a subprocess, as a user runs it: Ray's workers do not start under pytest's capture of
    the file descriptors."""
    pytest.importorskip("ray")
    ray_dir = tmp_path / "ray"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "igkd.cli", "montecarlo", "-c", "cpu-fashion-mnist", "--methods",
         "student,kd_ig,kd_ig+unrelated_maps", "--runs", "2", "--out", str(ray_dir), "--workers", "2",
         "--threads-per-run", "1", "--set", f"teacher.checkpoint={study / 'teacher' / 'model.pt'}",
         *_sets(SMALL)], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Started a local Ray instance" in proc.stderr + proc.stdout
    ours = {(r["method"], r["run"]): r["test_acc_last"] for r in _rows(ray_dir)}
    assert ours == {(r["method"], r["run"]): r["test_acc_last"] for r in _rows(study)}
    assert _losses(ray_dir) == _losses(study)  # bit for bit, epoch by epoch


# -- controls and plans, fast ---------------------------------------------------------------------


def test_time_left_is_this_commands_pace_times_the_runs_left():
    from igkd.experiments.study import time_left

    assert time_left(600.0, 2, 3) == "about 15 min left"
    assert time_left(1200.0, 1, 7) == "about 2 h 20 min left"
    assert time_left(3000.0, 1, 1) == "about 50 min left" and time_left(10.0, 1, 1) == "under a minute left"
    assert time_left(600.0, 0, 3) == "" and time_left(600.0, 4, 0) == ""


def test_derangement_moves_every_image_and_is_seeded():
    for n in (2, 3, 10, 1000):
        p = derangement(n, seed=n)
        assert sorted(p.tolist()) == list(range(n)) and bool((p != torch.arange(n)).all())
    assert torch.equal(derangement(50, 1), derangement(50, 1)) and not torch.equal(derangement(50, 1),
                                                                                     derangement(50, 2))
    maps = torch.arange(5.0).view(5, 1, 1).expand(5, 2, 2)
    moved = unrelated_maps(maps, 0)
    assert all(moved[i, 0, 0] != i for i in range(5))


def test_noise_maps_are_smooth_non_negative_and_seeded():
    m = noise_maps(4, 28, 28, seed=0)
    assert m.shape == (4, 28, 28) and bool((m >= 0).all())
    assert torch.equal(m, noise_maps(4, 28, 28, seed=0))
    # smooth: neighbouring pixels differ far less than in independent noise of the same kind

    def roughness(t):
        return float((t[:, 1:] - t[:, :-1]).abs().mean() / t.std())

    iid = torch.randn(4, 28, 28, generator=torch.Generator().manual_seed(0)).abs()
    assert roughness(m) < 0.5 * roughness(iid)


def test_plans_and_arms_are_checked_up_front():
    assert Arm.parse("kd_ig+noise_maps") == Arm("kd_ig+noise_maps", "kd_ig", "noise")
    with pytest.raises(ConfigError, match="needs a method with the IG overlay"):
        Arm.parse("kd+unrelated_maps")
    with pytest.raises(ConfigError, match="unknown control"):
        Arm.parse("kd_ig+random")
    with pytest.raises(ConfigError, match="unknown method"):
        StudyPlan("montecarlo", ["student", "kdig"], 2, [5])
    with pytest.raises(ConfigError, match="out of range"):
        StudyPlan("sweep", ["student"], 2, [19])
    assert parse_depths("paper") == [3, 5, 7, 9, 11, 13, 15, 17] and parse_depths("3,5") == [3, 5]
    paired = StudyPlan("montecarlo", ["student", "kd"], 3, [5])
    assert paired.seed_of(Arm.parse("student"), 5, 1) == paired.seed_of(Arm.parse("kd"), 5, 1)
    unpaired = StudyPlan("montecarlo", ["student", "kd"], 3, [5], paired=False)
    assert unpaired.seed_of(Arm.parse("student"), 5, 1) != unpaired.seed_of(Arm.parse("kd"), 5, 1)


def test_planned_contrasts_are_parsed_and_checked_against_the_methods():
    pairs = parse_contrasts(" kd_ig-kd , kd_ig-kd_ig+noise_maps,")
    assert pairs == [("kd_ig", "kd"), ("kd_ig", "kd_ig+noise_maps")]
    assert parse_contrasts(None) == [] and parse_contrasts("") == []
    methods = ["student", "kd", "kd_ig", "kd_ig+noise_maps"]
    assert StudyPlan("montecarlo", methods, 2, [5], contrasts=pairs).contrasts == pairs
    with pytest.raises(ConfigError, match="A-B pairs"):
        parse_contrasts("kd_ig")
    with pytest.raises(ConfigError, match="A-B pairs"):
        parse_contrasts("kd_ig-kd-student")
    with pytest.raises(ConfigError, match="gradcam_maps not among"):
        StudyPlan("montecarlo", methods, 2, [5], contrasts=[("kd_ig", "kd_ig+gradcam_maps")])
    with pytest.raises(ConfigError, match="with itself"):
        StudyPlan("montecarlo", methods, 2, [5], contrasts=[("kd", "kd")])


def test_the_equivalence_margin_is_checked_up_front(capsys):
    assert StudyPlan("montecarlo", ["student", "kd"], 2, [5]).margin == 0.40  # the paper's KD+IG - KD
    for bad in (0.0, -0.4, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--margin"):
            StudyPlan("montecarlo", ["student", "kd"], 2, [5], margin=bad)
    assert main(["montecarlo", "--methods", "student,kd", "--margin", "0", "--out", "/nonexistent/x"]) == 2
    assert "--margin must be a positive number" in capsys.readouterr().err
