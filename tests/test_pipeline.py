"""End to end on a small real subset: teacher -> IG store -> students, the demo table, stale stores."""

import json

import pytest

from igkd.cli import main

from .conftest import FASHION_MNIST, require

SMALL = ["data.train_size=600", "data.test_size=500", "train.epochs=1", "teacher_train.epochs=1",
         "teacher.width_mult=0.25", "train.device=cpu", "teacher_train.device=cpu", "ig.chunk_size=256",
         "ig.n_steps=10"]  # the preset's 50 steps would only make the test slower


def _sets(items):
    return [x for item in items for x in ("--set", item)]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    require(FASHION_MNIST, "Fashion-MNIST")
    out = tmp_path_factory.mktemp("demo")
    assert main(["demo", "-c", "cpu-fashion-mnist", "--out", str(out), *_sets(SMALL)]) == 0
    return out


def test_demo_prints_a_table_of_real_runs(demo_dir, capsys):
    summary = json.loads((demo_dir / "demo_summary.json").read_text())
    methods = [s["method"] for s in summary["students"]]
    assert methods == ["student", "kd", "kd_ig", "kd_ig+noise_maps"]
    for s in summary["students"]:
        assert s["params"] < summary["teacher"]["params"]
        assert s["compression_factor"] == pytest.approx(summary["teacher"]["params"] / s["params"])
        assert 0.0 <= s["test_acc_last"] <= 100.0 and s["test_images"] == 500
    # A second run reuses every stage and prints the same table.
    assert main(["demo", "-c", "cpu-fashion-mnist", "--out", str(demo_dir), *_sets(SMALL)]) == 0
    out = capsys.readouterr().out
    assert out.count("reusing") == 5
    table = (demo_dir / "demo_table.md").read_text()
    assert table.strip() in out and "kd_ig+noise_maps" in table
    noise = summary["students"][3]
    assert noise["overlay_maps"] == "noise" and noise["attribution"] is None


def test_demo_with_the_shipped_teacher(tmp_path, capsys):
    """The demo's preset uses igkd's own teacher, shipped as package data and checked by its sha256: no
    teacher is trained, and the table's teacher row comes from the students' runs."""
    require(FASHION_MNIST, "Fashion-MNIST")
    from igkd.weights import SHIPPED, resolve_checkpoint

    sets = ["data.train_size=300", "data.test_size=300", "train.epochs=1", "train.device=cpu", "ig.n_steps=4"]
    assert main(["demo", "--out", str(tmp_path), "--methods", "kd,kd_ig+noise_maps", *_sets(sets)]) == 0
    out = capsys.readouterr().out
    assert "teacher: igkd:fashion-mnist-teacher-w0.5" in out and not list(tmp_path.glob("teacher-*"))
    summary = json.loads((tmp_path / "demo_summary.json").read_text())
    kd = summary["students"][0]
    assert kd["teacher_test_acc"] == summary["teacher"]["test_acc_last"] > 88  # a teacher worth distilling
    assert kd["compression_factor"] > 20
    assert resolve_checkpoint("igkd:fashion-mnist-teacher-w0.5").is_file() and SHIPPED


def test_ig_store_matches_teacher_and_data(demo_dir):
    from igkd.attribution import MapStore

    (store_dir,) = list((demo_dir / "ig").iterdir())
    store = MapStore.open(store_dir)
    assert store.shape == (600, 28, 28)
    assert store.meta["n_steps"] == 10 and store.meta["method"] == "gausslegendre"
    teacher = json.loads(next(demo_dir.glob("teacher-*/summary.json")).read_text())
    assert store.meta["teacher_hash"] == teacher["teacher_hash"]
    assert store.meta["fingerprint"] == teacher["dataset_fingerprint"]


def test_stale_store_is_refused(demo_dir, capsys, tmp_path):
    (store_dir,) = list((demo_dir / "ig").iterdir())
    (teacher_dir,) = list(demo_dir.glob("teacher-*"))
    base = [*SMALL, f"teacher.checkpoint={teacher_dir / 'model.pt'}", f"ig.store={store_dir}"]
    code = main(["distill", "-c", "cpu-fashion-mnist", "-m", "kd_ig", "--out", str(tmp_path / "a"),
                 *_sets([*base, "ig.n_steps=20"])])
    err = capsys.readouterr().err
    assert code == 2 and "n_steps" in err and err.count("\n") == 1
    code = main(["distill", "-c", "cpu-fashion-mnist", "-m", "kd_ig", "--out", str(tmp_path / "b"),
                 *_sets([*base, "data.train_size=500"])])
    err = capsys.readouterr().err
    assert code == 2 and "fingerprint" in err
    assert not (tmp_path / "a" / "summary.json").exists() and not (tmp_path / "b").exists()


def test_precompute_cli_two_ranks_equal_one_process(tmp_path):
    """`igkd precompute-ig --rank R --world-size 2` in two concurrent processes builds the same store."""
    import os
    import subprocess
    import sys

    import numpy as np
    import torch

    from igkd.attribution import MapStore
    from igkd.models import cifar_mobilenet_v2

    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x_train=rng.integers(0, 256, (40, 12, 12, 3), dtype=np.uint8),
             y_train=np.arange(40) % 4, x_test=rng.integers(0, 256, (8, 12, 12, 3), dtype=np.uint8),
             y_test=np.arange(8) % 4)
    torch.manual_seed(0)
    torch.save(cifar_mobilenet_v2(num_classes=4, width_mult=0.25).state_dict(), tmp_path / "t.pt")
    sets = _sets(["data.name=npz", f"data.root={tmp_path / 'd.npz'}", "teacher.width_mult=0.25",
                  f"teacher.checkpoint={tmp_path / 't.pt'}", "ig.chunk_size=8", "ig.n_steps=8",
                  "ig.dtype=float32", "train.device=cpu"])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "IGKD_CACHE": str(tmp_path / "cache")}
    cmd = [sys.executable, "-m", "igkd.cli", "precompute-ig", *sets]
    procs = [subprocess.Popen([*cmd, "--store", str(tmp_path / "two"), "--rank", str(r), "--world-size", "2"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    one = subprocess.run([*cmd, "--store", str(tmp_path / "one")], env=env, capture_output=True, text=True,
                         timeout=300)
    assert one.returncode == 0, one.stderr
    assert "complete" in one.stdout
    a, b = MapStore.open(tmp_path / "two"), MapStore.open(tmp_path / "one")
    assert a.shape == (40, 12, 12)
    assert np.array_equal(np.asarray(a.maps), np.asarray(b.maps))


def test_shipped_weights_are_checked(tmp_path, monkeypatch):
    import hashlib

    from igkd import weights
    from igkd.errors import CheckpointError
    from igkd.runs import load_checkpoint

    with pytest.raises(CheckpointError, match="no shipped weights 'igkd:nope'; igkd ships: igkd:"):
        load_checkpoint("igkd:nope")
    (tmp_path / "w.pt").write_bytes(b"weights")
    good = hashlib.sha256(b"weights").hexdigest()
    monkeypatch.setattr(weights, "HERE", tmp_path)
    monkeypatch.setitem(weights.SHIPPED, "toy", ("w.pt", good, "test", "test"))
    assert weights.resolve_checkpoint("igkd:toy") == tmp_path / "w.pt"
    (tmp_path / "w.pt").write_bytes(b"weightz")  # altered after it was shipped
    with pytest.raises(CheckpointError, match="do not match their sha256"):
        load_checkpoint("igkd:toy")
