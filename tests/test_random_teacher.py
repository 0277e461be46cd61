"""The randomised-teacher control (``kd_ig+random_teacher_maps``, ``ig.teacher_weights=random``): maps made as
the IG maps are, by the teacher's architecture with fresh seeded weights; on the toy task, in seconds."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest
import torch
import yaml

from igkd.attribution import MapStore, explanation_problems
from igkd.cli import main
from igkd.config import load_config
from igkd.errors import IgkdWarning, forget_warnings
from igkd.pipeline import load_datasets, load_teacher, map_teacher, precompute
from igkd.runs import RunDir

from .toy_data import toy_settings, write_quadrants_npz


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """Toy data and a trained toy teacher; returns (tmp, settings with teacher.checkpoint)."""
    tmp = tmp_path_factory.mktemp("random_teacher")
    settings = [*toy_settings(write_quadrants_npz(tmp / "q.npz", n_train=160, n_test=80), tmp),
                "teacher_train.epochs=4", "ig.chunk_size=80", "distill.teacher_runtime=torch"]
    assert main(["train-teacher", "--out", str(tmp / "teacher"), *[x for s in settings for x in ("--set", s)]]) == 0
    return tmp, [*settings, f"teacher.checkpoint={tmp / 'teacher' / 'model.pt'}"]


def _store(settings, *extra):
    forget_warnings()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        result = precompute(load_config(None, [*settings, *extra]), progress=False)
    assert result.complete
    return result.path, result.store, [str(w.message) for w in said if issubclass(w.category, IgkdWarning)]


def test_the_random_teacher_is_the_architecture_with_fresh_seeded_weights(toy):
    _, settings = toy
    cfg = load_config(None, [*settings, "ig.teacher_weights=random"])
    ds = load_datasets(cfg)
    trained, trained_hash = load_teacher(cfg, *ds.shape, torch.device("cpu"), ds.train.image_shape[1:])
    before = torch.random.get_rng_state()
    net, h = map_teacher(cfg, ds, trained, trained_hash)
    assert torch.equal(torch.random.get_rng_state(), before)  # the caller's generator is left alone
    again, h2 = map_teacher(cfg, ds, trained, trained_hash)
    assert h == h2 != trained_hash
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), again.state_dict().values()))
    assert [k for k in net.state_dict()] == [k for k in trained.state_dict()]  # the same architecture
    other, h3 = map_teacher(load_config(None, [*settings, "ig.teacher_weights=random", "ig.random_teacher_seed=1"]),
                            ds, trained, trained_hash)
    assert h3 not in (h, trained_hash)
    assert not torch.equal(next(iter(other.parameters())), next(iter(net.parameters())))
    # the trained setting gives the trained teacher itself
    assert map_teacher(load_config(None, settings), ds, trained, trained_hash) == (trained, trained_hash)


def test_random_teacher_maps_differ_from_the_trained_teachers_and_are_deterministic(toy):
    tmp, settings = toy
    trained_path, trained, trained_said = _store(settings)
    random_path, rand, random_said = _store(settings, "ig.teacher_weights=random")
    assert random_path != trained_path and random_path.parent == trained_path.parent  # stored like any store
    assert rand.meta["teacher_hash"] != trained.meta["teacher_hash"]
    a, b = trained.load_all().numpy(), rand.load_all().numpy()
    assert a.shape == b.shape and np.isfinite(b).all()
    corr = [np.corrcoef(x.ravel(), y.ravel())[0, 1] for x, y in zip(a, b)]
    assert np.abs(a - b).mean() > 0.05 and float(np.mean(corr)) < 0.9  # other maps, not a rescaling
    # made twice, in another cache folder: the same store identity (folder name) and the same maps, bit for bit
    again_path, again, _ = _store(settings, "ig.teacher_weights=random", f"ig.cache_dir={tmp / 'ig2'}")
    assert again_path.name == random_path.name and again_path != random_path
    assert np.array_equal(again.load_all().numpy(), b)
    # another seed: another network, another store, other maps
    seed_path, seeded, _ = _store(settings, "ig.teacher_weights=random", "ig.random_teacher_seed=1")
    assert seed_path.name not in (random_path.name, trained_path.name)
    assert not np.array_equal(seeded.load_all().numpy(), b)
    # the store says its teacher was random on purpose; the trained one's does not
    assert rand.meta["teacher_check"]["random_weights"] is True
    assert "random_weights" not in trained.meta["teacher_check"]
    # a random network is at chance, and the warning says that this is what the control expects
    assert rand.meta["teacher_check"]["at_chance"]
    assert any("as this control expects" in w for w in random_said)
    assert not any("train it longer" in w for w in random_said)
    assert not any("as this control expects" in w for w in trained_said)


def test_a_teacher_at_chance_is_expected_only_for_the_random_control():
    check = {"at_chance": True, "accuracy": 25.0, "majority": 25.0}
    [fault] = explanation_problems({"teacher_check": check})
    assert "train it longer or check teacher.checkpoint" in fault
    [expected] = explanation_problems({"teacher_check": {**check, "random_weights": True}})
    assert "as this control expects" in expected and "train it longer" not in expected
    assert "25.0 %" in expected
    assert explanation_problems({"teacher_check": {**check, "at_chance": False, "random_weights": True}}) == []


def test_a_study_runs_the_random_teacher_arm_and_records_it(toy, capsys):
    tmp, settings = toy
    out = tmp / "study"
    argv = ["montecarlo", "--methods", "kd_ig,kd_ig+random_teacher_maps", "--runs", "1", "--out", str(out),
            "--workers", "1", "--threads-per-run", "1", "--contrasts", "kd_ig-kd_ig+random_teacher_maps",
            *[x for s in settings for x in ("--set", s)]]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "IG maps (random teacher):" in printed and "IG maps:" in printed
    with open(out / "results.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"kd_ig", "kd_ig+random_teacher_maps"}
    runs = {m: RunDir(out / r["run_dir"]) for m, r in rows.items()}
    summaries = {m: run.summary() for m, run in runs.items()}
    assert summaries["kd_ig"]["map_teacher"] == "trained"
    assert summaries["kd_ig+random_teacher_maps"]["map_teacher"] == "random"
    # KD still distils from the trained teacher: both runs name the same teacher
    assert summaries["kd_ig"]["teacher_hash"] == summaries["kd_ig+random_teacher_maps"]["teacher_hash"]
    config = yaml.safe_load((runs["kd_ig+random_teacher_maps"].path / "config.yaml").read_text())
    assert config["ig"]["teacher_weights"] == "random" and config["augment"]["maps"] == "ig"
    plan = json.loads((out / "study.json").read_text())
    assert plan["methods"] == ["kd_ig", "kd_ig+random_teacher_maps"]
    assert plan["contrasts"] == [["kd_ig", "kd_ig+random_teacher_maps"]]
    stores = [MapStore.open(p) for p in (tmp / "ig").iterdir() if (p / "meta.json").is_file()]
    assert {s.meta["teacher_check"].get("random_weights", False) for s in stores} == {True, False}
    # the same command finds both stores and both runs done
    assert main(argv) == 0
    assert "2 runs, 2 already finished" in capsys.readouterr().out
