"""Stride plans follow the images: a preset's explicit plan applies to the image size it was written
for (``teacher.strides_for``) and becomes ``auto`` on others, with a line saying so; the dry-run check
refuses a network whose map reaches 1x1 before its last stage, even where a stride-1 plan hides the
stage boundary."""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

from igkd.cli import resolve_config_path
from igkd.config import load_config
from igkd.data import load_dataset
from igkd.errors import ConfigError, IgkdWarning
from igkd.models import STAGE_STARTS, create_model, input_problem
from igkd.pipeline import build_teacher, teacher_arch

from ..conftest import FASHION_MNIST, require


@pytest.fixture(autouse=True)
def _warnings_said_afresh(monkeypatch):
    monkeypatch.setattr("igkd.errors._said", set())  # each test sees the warnings it causes


def test_an_explicit_plan_that_leaves_more_than_the_last_stage_at_1x1_is_refused():
    # [2, 1, 2, 2, 1] on 8x8: 8 -> 4 -> 4 -> 2 -> 1 at features.7; features.14 (stride 1 here) starts
    # a stage on one pixel, so twelve of the nineteen modules see 1x1. No strided layer gets 1x1.
    cfg = load_config(None, ["data.name=npz", "teacher.width_mult=0.25", "teacher.strides=[2,1,2,2,1]"])
    with pytest.raises(ConfigError, match=r"1x1 before its last stage \(features\.14 \(where a stage begins\).*"
                                          r"set teacher\.strides=auto \(it chooses \[1, 1, 1, 1, 2\]"):
        build_teacher(cfg, 10, 1, (8, 8))
    assert build_teacher(cfg, 10, 1, (28, 28)) is not None  # the size the plan was written for


def test_a_last_stage_at_1x1_is_still_allowed():
    """The ImageNet plan on 32x32 reaches 1x1 inside features.14, its last stage: accepted, as before."""
    net = create_model("cifar_mobilenet_v2", num_classes=10, in_channels=3, strides=(2, 2, 2, 2, 2), width_mult=0.25)
    assert input_problem(net, (3, 32, 32), 10, STAGE_STARTS) is None
    assert "features.14" in input_problem(net, (3, 16, 16), 10, STAGE_STARTS)


def test_a_preset_plan_keeps_its_size_and_becomes_auto_on_others_with_a_line():
    cfg = load_config(resolve_config_path("cpu-fashion-mnist"), ["data.name=npz"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the size it was written for: no line
        assert teacher_arch(cfg, (28, 28))["strides"] == [2, 1, 2, 2, 1]
    with pytest.warns(IgkdWarning, match=r"written for 28x28 images .*these are 8x8: using teacher\.strides=auto "
                                         r"\(\[1, 1, 1, 1, 2\]\)"):
        assert teacher_arch(cfg, (8, 8))["strides"] == [1, 1, 1, 1, 2]
    with pytest.warns(IgkdWarning, match="these are 64x64"):
        assert teacher_arch(cfg, (64, 64))["strides"] == [1, 2, 2, 2, 2]
    own = load_config(None, ["data.name=npz", "teacher.strides=[1,1,1,2,2]"])  # a user's own plan: kept
    assert teacher_arch(own, (64, 64))["strides"] == [1, 1, 1, 2, 2]


@pytest.mark.slow
def test_grey_8x8_npz_through_the_fashion_mnist_preset_trains_a_teacher_that_learns(tmp_path):
    require(FASHION_MNIST, "Fashion-MNIST")
    train = load_dataset("fashion_mnist", "train", root=str(FASHION_MNIST))
    test = load_dataset("fashion_mnist", "test", root=str(FASHION_MNIST))

    def small(ds, n):  # the first n images, averaged down to 8x8 grey
        x = torch.nn.functional.adaptive_avg_pool2d(ds.x[:n].float(), 8).round().to(torch.uint8)
        return x[:, 0].numpy(), ds.y[:n].numpy()

    (xa, ya), (xb, yb) = small(train, 2000), small(test, 1000)
    data = tmp_path / "grey8.npz"
    np.savez(data, x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    cmd = [sys.executable, "-m", "igkd.cli", "train-teacher", "-c", "cpu-fashion-mnist", "--set", "data.name=npz",
           "--set", f"data.root={data}", "--set", "teacher_train.device=cpu", "--set", "teacher_train.threads=1",
           "--set", "teacher_train.epochs=4",  # of the preset's 12: enough to be far above chance
           "--out", str(tmp_path / "teacher")]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr
    said = [line for line in p.stderr.splitlines() if "teacher.strides_for" in line]
    assert len(said) == 1 and said[0].startswith("igkd: warning: teacher.strides [2, 1, 2, 2, 1] was written for "
                                                 "28x28 images"), p.stderr
    summary = json.loads((tmp_path / "teacher" / "summary.json").read_text())
    assert summary["arch"]["strides"] == [1, 1, 1, 1, 2]
    assert summary["test_acc_last"] > 50.0, summary["test_acc_last"]  # chance: 10 %


def test_a_bad_strides_for_is_one_line():
    with pytest.raises(ConfigError, match=r"teacher\.strides_for.*a side, or \[height, width\]"):
        load_config(None, ["teacher.strides_for=0"])
