"""igkd tune on a toy task: grid and TPE on Optuna, resume after a kill, parallel workers, best.yaml taken by
montecarlo, and a choice made on validation accuracy only."""

from __future__ import annotations

import csv
import itertools
import json
import os
import subprocess
import sys
import time

import pytest
import yaml

from igkd.cli import main
from igkd.config import load_config
from igkd.errors import ConfigError
from igkd.experiments import study as study_module
from igkd.experiments import tune as tune_module
from igkd.experiments.tune import SearchSpace, TunePlan, run_tune, split_values

from .toy_data import toy_settings, write_quadrants_npz

optuna = pytest.importorskip("optuna")

LR, ALPHA = [0.005, 0.02], [0.01, 0.5]
GRID = ["--space", "train.lr=0.005,0.02", "--space", "distill.alpha=0.01,0.5"]


def _sets(items):
    return [x for item in items for x in ("--set", item)]


def _rows(out):
    with open(out / "trials.csv", newline="") as f:
        return list(csv.DictReader(f))


def _points(rows):
    return sorted((float(r["train.lr"]), float(r["distill.alpha"])) for r in rows)


def _trials(out, db=None):
    storage = f"sqlite:///{db or out / 'optuna.db'}"
    (summary,) = optuna.get_all_study_summaries(storage)
    return optuna.load_study(study_name=summary.study_name, storage=storage).get_trials()


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("toy")
    data = write_quadrants_npz(tmp / "q.npz")
    return [*toy_settings(data, tmp), "data.val_fraction=0.25", "train.epochs=2", "teacher_train.epochs=2"]


@pytest.fixture(scope="module")
def grid(toy, tmp_path_factory):
    """A 2 x 2 grid of kd runs, in-process; the teacher is trained once in the search folder."""
    out = tmp_path_factory.mktemp("grid")
    assert main(["tune", "-m", "kd", *GRID, "--out", str(out), "--workers", "1", *_sets(toy)]) == 0
    return out


@pytest.fixture(scope="module")
def shared(toy, grid):
    """The toy settings with the grid's teacher, so that other searches train none."""
    return [*toy, f"teacher.checkpoint={grid / 'teacher' / 'model.pt'}"]


def test_grid_runs_every_combination_once_with_one_seed(toy, grid, capsys):
    rows = _rows(grid)
    assert _points(rows) == sorted(itertools.product(LR, ALPHA))
    assert all(r["state"] == "complete" for r in rows)
    for r in rows:
        run_cfg = yaml.safe_load((grid / r["run_dir"] / "config.yaml").read_text())
        assert run_cfg["train"]["seed"] == 0 and run_cfg["distill"]["method"] == "kd"
        assert (run_cfg["train"]["lr"], run_cfg["distill"]["alpha"]) == (float(r["train.lr"]), float(r["distill.alpha"]))
        assert r["run_dir"].startswith(f"trials/{int(r['number']):04d}-")
    tune = json.loads((grid / "tune.json").read_text())
    assert tune["sampler"] == "grid" and tune["finished"] == 4 and tune["space"] == {"train.lr": LR,
                                                                                       "distill.alpha": ALPHA}
    # the same command again runs nothing
    assert main(["tune", "-m", "kd", *GRID, "--out", str(grid), "--workers", "1", *_sets(toy)]) == 0
    assert "4 trials, 4 finished, 0 to run" in capsys.readouterr().out
    assert len(_trials(grid)) == 4


def test_the_objective_is_the_runs_validation_accuracy(grid):
    rows = _rows(grid)
    for r in rows:
        summary = json.loads((grid / r["run_dir"] / "summary.json").read_text())
        assert float(r["val_acc"]) == summary["val_acc_best"]
        assert float(r["test_acc"]) == summary["test_acc_at_best_val"]
    tune = json.loads((grid / "tune.json").read_text())
    best = max(rows, key=lambda r: (float(r["val_acc"]), -int(r["number"])))
    assert tune["best"]["number"] == int(best["number"]) and tune["best"]["val_acc"] == float(best["val_acc"])


def test_the_choice_ignores_test_accuracy(toy, shared, tmp_path, monkeypatch):
    """Runs whose validation and test accuracies disagree: the best validation accuracy wins."""
    def fake_run(cfg_dict, run_dir, threads=None):
        alpha = cfg_dict["distill"]["alpha"]
        return {"val_acc_best": 90.0 - 100 * alpha, "test_acc_at_best_val": 50.0 + 100 * alpha,
                "test_acc_last": 0.0}

    monkeypatch.setattr(tune_module, "run_job", fake_run)
    cfg = load_config(None, shared)
    plan = TunePlan("kd", SearchSpace.parse(["distill.alpha=0.01,0.05,0.25"], cfg))
    result = run_tune(cfg, plan, tmp_path / "s", workers=1)
    assert result.best["values"] == {"distill.alpha": 0.01} and result.best["val_acc"] == pytest.approx(89.0)
    best = yaml.safe_load((tmp_path / "s" / "best.yaml").read_text())
    assert best["distill"]["alpha"] == 0.01


def test_report_of_a_search(grid):
    md = (grid / "report.md").read_text()
    html = (grid / "report.html").read_text()
    assert "## Chosen values" in md and "## Trials" in md and "data:image/png;base64," in html
    for i, key in enumerate(("train.lr", "distill.alpha")):
        assert (grid / "report_files" / f"val_acc_vs_{i}_{key.replace('.', '_')}.png").is_file()
    best = json.loads((grid / "tune.json").read_text())["best"]
    assert f"Trial {best['number']}: validation accuracy" in md
    assert md.count("| trials/") == 4


def test_best_yaml_is_taken_by_montecarlo(grid, tmp_path):
    best_yaml = grid / "best.yaml"
    best = json.loads((grid / "tune.json").read_text())["best"]
    mc = tmp_path / "mc"
    assert main(["montecarlo", "-c", str(best_yaml), "--methods", "student,kd", "--runs", "1", "--out", str(mc),
                 "--workers", "1"]) == 0
    with open(mc / "results.csv", newline="") as f:
        assert sorted(r["method"] for r in csv.DictReader(f)) == ["kd", "student"]
    study = json.loads((mc / "study.json").read_text())
    assert study["config"]["train"]["lr"] == best["values"]["train.lr"]
    assert study["config"]["distill"]["alpha"] == best["values"]["distill.alpha"]
    assert not (mc / "teacher").exists()  # best.yaml names the search's teacher


def test_tpe_draws_the_listed_values_and_extends(shared, tmp_path, capsys):
    out = tmp_path / "tpe"
    argv = ["tune", "-m", "kd", "--space", "distill.temperature=1.5,2,2.5,3,4", "--sampler", "tpe", "--seed", "3",
            "--out", str(out), "--workers", "1", *_sets([*shared, "train.epochs=1"])]
    assert main([*argv, "--trials", "3"]) == 0
    rows = _rows(out)
    assert len(rows) == 3 and {float(r["distill.temperature"]) for r in rows} <= {1.5, 2.0, 2.5, 3.0, 4.0}
    assert main([*argv, "--trials", "4"]) == 0  # more trials extend the search
    assert "4 trials, 3 finished, 1 to run" in capsys.readouterr().out
    assert len(_rows(out)) == 4
    assert main(["tune", "-m", "kd", "--space", "distill.temperature=1.5,2", "--sampler", "tpe", "--trials", "4",
                 "--out", str(out), "--workers", "1", *_sets([*shared, "train.epochs=1"])]) == 2
    assert "holds another search" in capsys.readouterr().err


class Killed(BaseException):
    """What a kill looks like to the search: its process stops in the middle of a trial."""


@pytest.mark.parametrize("storage, space, kill", [(None, GRID, 3), ("shared", ["--space", "train.lr=0.005,0.02"], 2)])
def test_resume_after_a_kill_continues_the_trial_and_repeats_no_grid_point(shared, tmp_path, monkeypatch, capsys,
                                                                           storage, space, kill):
    """The process dies after the first epoch of run ``kill``. The default storage: the rerun knows the
    running trial is stale (it holds the folder). A shared storage (several drivers): the trial is stale
    once its heartbeat has been silent for the grace period."""
    out, db = tmp_path / "killed", None
    argv = ["tune", "-m", "kd", *space, "--out", str(out), "--workers", "1", *_sets([*shared, "distill.alpha=0.01"])]
    if storage:
        monkeypatch.setattr(tune_module, "HEARTBEAT_S", 1)
        monkeypatch.setattr(tune_module, "GRACE_S", 1)
        db = tmp_path / "shared.db"
        argv += ["--storage", f"sqlite:///{db}"]
    points = len(LR) * (len(ALPHA) if space == GRID else 1)
    real_distill = study_module.distill
    started = []

    def dies_in_a_run(cfg, run_dir, resume=False, progress=None, on_epoch_end=None):
        started.append(run_dir)

        def after_epoch(epoch, record):
            if len(started) == kill and epoch == 1:
                raise Killed
        return real_distill(cfg, run_dir, resume=resume, progress=progress, on_epoch_end=after_epoch)

    monkeypatch.setattr(study_module, "distill", dies_in_a_run)
    with pytest.raises(Killed):
        main(argv)
    trials = _trials(out, db)
    assert [t.state.name for t in trials] == ["COMPLETE"] * (kill - 1) + ["RUNNING"]
    killed = trials[-1].user_attrs["run_dir"]
    first_epoch = (out / killed / "metrics.jsonl").read_text().splitlines()
    assert len(first_epoch) == 1 and not (out / killed / "summary.json").exists()

    monkeypatch.setattr(study_module, "distill", real_distill)
    if storage:
        # the dead driver's heartbeat falls silent for the grace period (1 s) as the database's clock sees it:
        # SQLite's now() has whole seconds, so a heartbeat at t.1 and a check at t+1.6 differ by only 1 s
        time.sleep(2.5)
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert f"continuing interrupted trials {kill - 1}" in printed
    assert f"{points} trials, {kill - 1} finished, {points - kill + 1} to run" in printed
    rows = _rows(out)
    assert len(rows) == points and len({(r["train.lr"], r.get("distill.alpha")) for r in rows}) == points  # once
    trials = _trials(out, db)
    assert [t.state.name for t in trials].count("FAIL") == 1 and len(trials) == points + 1
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == kill - 1)
    assert retry.user_attrs["run_dir"] == killed  # the retry continued the killed trial's run
    metrics = (out / killed / "metrics.jsonl").read_text().splitlines()
    assert len(metrics) == 2 and metrics[0] == first_epoch[0]


@pytest.mark.slow
def test_two_workers_run_trials_at_once_on_ray(grid, shared, tmp_path):
    """Two Ray workers give the in-process grid's accuracies. Run as a user runs it: Ray's workers do not
    start under pytest's capture of the file descriptors."""
    pytest.importorskip("ray")
    out = tmp_path / "ray"
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    proc = subprocess.run(
        [sys.executable, "-m", "igkd.cli", "tune", "-m", "kd", "--space", "train.lr=0.005,0.02", "--out", str(out),
         "--workers", "2", "--threads-per-run", "1", *_sets([*shared, "distill.alpha=0.01"])],
        capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = _trials(out)
    assert len(trials) == 2 and all(t.state.name == "COMPLETE" for t in trials)
    a, b = trials
    assert a.datetime_start < b.datetime_complete and b.datetime_start < a.datetime_complete  # at once
    ours = {float(r["train.lr"]): r["val_acc"] for r in _rows(out)}
    theirs = {float(r["train.lr"]): r["val_acc"] for r in _rows(grid) if float(r["distill.alpha"]) == 0.01}
    assert ours == theirs


# -- the space and the plan, fast -----------------------------------------------------------------


def test_split_values_keeps_lists_whole():
    assert split_values("0.1, 0.25") == ["0.1", "0.25"]
    assert split_values("[2,2,2,2,1],auto,'a,b'") == ["[2,2,2,2,1]", "auto", "'a,b'"]


def test_space_is_checked_up_front(shared):
    cfg = load_config(None, shared)
    space = SearchSpace.parse(["distill.temperature=1.5,2,2.5", "augment.overlay_p=0.1,0.25"], cfg)
    assert space.values == {"distill.temperature": [1.5, 2.0, 2.5], "augment.overlay_p": [0.1, 0.25]}
    assert space.size == 6
    assert SearchSpace.parse(["augment.mix=0.3,0.5"], cfg).values == {"augment.mix": [0.3, 0.5]}  # student-side
    for texts, message in [
        (["distill.alhpa=0.1"], "unknown config key 'distill.alhpa'"),
        (["distill.alpha=0.1,2"], "bad value for distill.alpha"),
        (["distill.alpha=0.1,0.10"], "lists 0.1 twice"),
        (["train.seed=1,2"], "same train.seed"),
        (["teacher_train.epochs=1,2"], "one teacher, one IG store"),
        (["ig.n_steps=8,16"], "one teacher, one IG store"),
        (["data.val_fraction=0.1,0.2"], "one data split"),
        (["distill.alpha"], "KEY=v1,v2"),
        ([], "--space"),
    ]:
        with pytest.raises(ConfigError, match=message):
            SearchSpace.parse(texts, cfg)
    with pytest.raises(ConfigError, match="needs --trials"):
        TunePlan("kd", space, sampler="tpe")
    with pytest.raises(ConfigError, match="unknown method"):
        TunePlan("kd_xx", space)
    assert TunePlan("kd", space).target == 6 and TunePlan("kd", space, trials=100).target == 6


def test_a_search_needs_a_validation_split(shared, tmp_path, capsys):
    code = main(["tune", "-m", "kd", "--space", "distill.alpha=0.01,0.1", "--out", str(tmp_path / "t"),
                 "--workers", "1", *_sets([*shared, "data.val_fraction=0"])])
    err = capsys.readouterr().err
    assert code == 2 and "data.val_fraction" in err and err.count("\n") == 1
    assert not (tmp_path / "t").exists()
