"""Real training on a Fashion-MNIST subset, resume, run directories."""

import json

import pytest
import torch

from igkd.config import load_config
from igkd.pipeline import distill, train_teacher
from igkd.runs import load_state_dict

from .conftest import FASHION_MNIST, require

TINY = [
    "data.name=fashion_mnist", "data.train_size=2000", "data.test_size=1000", "data.val_fraction=0.1",
    "teacher.width_mult=0.25", "teacher.strides=[2,2,2,1,1]",
    "teacher_train.epochs=6", "teacher_train.batch_size=64", "teacher_train.lr=0.003",
    "train.epochs=2", "train.batch_size=64", "train.device=cpu", "teacher_train.device=cpu",
    "augment.crop_padding=2",
]


class Interrupt(Exception):
    pass


@pytest.fixture(scope="module")
def teacher_run(tmp_path_factory):
    require(FASHION_MNIST, "Fashion-MNIST")
    out = tmp_path_factory.mktemp("teacher")
    summary = train_teacher(load_config(None, TINY), out, progress=False)
    return out, summary


def test_teacher_training_learns_real_data(teacher_run):
    out, summary = teacher_run
    assert summary["test_acc_last"] > 60.0  # chance is 10 %
    for name in ("config.yaml", "env.json", "metrics.jsonl", "summary.json", "model.pt", "last.pt", "best.pt"):
        assert (out / name).is_file(), name
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in lines] == [1, 2, 3, 4, 5, 6]
    assert {"loss_ce", "val_acc", "test_acc", "train_acc"} <= set(lines[0])
    assert summary["best_epoch"] in range(1, 7)
    best = max(lines, key=lambda h: h["val_acc"])
    assert summary["test_acc_at_best_val"] == best["test_acc"]
    env = json.loads((out / "env.json").read_text())
    assert env["seed"] == 0 and "torch" in env["packages"] and env["device"] == "cpu"


def test_resume_equals_uninterrupted(teacher_run, tmp_path):
    teacher_out, _ = teacher_run
    cfg = load_config(None, [*TINY, f"teacher.checkpoint={teacher_out / 'model.pt'}", "distill.method=kd",
                             "train.epochs=3"])
    full = distill(cfg, tmp_path / "full", progress=False)

    def stop_after_first(epoch, _record):
        if epoch == 1:
            raise Interrupt

    with pytest.raises(Interrupt):
        distill(cfg, tmp_path / "cut", progress=False, on_epoch_end=stop_after_first)
    assert not (tmp_path / "cut" / "summary.json").exists()
    resumed = distill(cfg, tmp_path / "cut", resume=True, progress=False)
    a = load_state_dict(tmp_path / "full" / "model.pt")
    b = load_state_dict(tmp_path / "cut" / "model.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["test_acc_last"] == full["test_acc_last"]
    hist = [json.loads(x)["epoch"] for x in (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()]
    assert hist == [1, 2, 3]


def test_run_dir_refuses_a_second_run(teacher_run, tmp_path):
    from igkd.errors import ConfigError

    teacher_out, _ = teacher_run
    cfg = load_config(None, [*TINY, "distill.method=student", "train.epochs=1"])
    distill(cfg, tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="already holds a run"):
        distill(cfg, tmp_path / "r", progress=False)
    other = load_config(None, [*TINY, "distill.method=student", "train.epochs=1", "train.lr=0.01"])
    with pytest.raises(ConfigError, match="another config"):
        distill(other, tmp_path / "r", resume=True, progress=False)
