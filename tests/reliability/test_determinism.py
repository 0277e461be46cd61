"""The same config and seed give identical metrics and weights on the CPU, run after run."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from igkd.config import load_config
from igkd.pipeline import distill, precompute
from igkd.runs import load_state_dict

from .test_corruption import overrides, tiny_npz


@pytest.mark.parametrize("method", ["kd_ig_at", "student"])
def test_same_seed_same_run(tmp_path, method):
    over = overrides(tiny_npz(tmp_path / "data.npz"))
    teacher = tmp_path / "teacher.pt"
    if method != "student":
        from igkd.pipeline import build_teacher

        torch.manual_seed(3)
        torch.save(build_teacher(load_config(None, over), 2, 1).state_dict(), teacher)
        over += [f"teacher.checkpoint={teacher}", f"ig.cache_dir={tmp_path / 'ig'}", "ig.n_steps=4",
                 "augment.overlay_p=0.5", "train.checkpoint_every=2"]
        precompute(load_config(None, over), progress=False)
    cfg = load_config(None, [*over, f"distill.method={method}", "teacher.dropout=0.2"])
    a = distill(cfg, tmp_path / "a", progress=False)
    b = distill(cfg, tmp_path / "b", progress=False)
    times = {"epoch_time_s", "train_time_s", "wall_time_s", "files"}
    assert {k: v for k, v in a.items() if k not in times} == {k: v for k, v in b.items() if k not in times}
    ma, mb = (load_state_dict(tmp_path / r / "model.pt") for r in "ab")
    assert all(torch.equal(ma[k], mb[k]) for k in ma)
    curves = [[{k: v for k, v in json.loads(line).items() if k not in times}
               for line in (tmp_path / r / "metrics.jsonl").read_text().splitlines()] for r in "ab"]
    assert curves[0] == curves[1]
    # and another seed gives another run: the test could fail
    c = distill(load_config(None, [*over, f"distill.method={method}", "train.seed=1"]), tmp_path / "c",
                progress=False)
    mc = load_state_dict(tmp_path / "c" / "model.pt")
    assert not all(torch.equal(ma[k], mc[k]) for k in ma) and c["seed"] == 1
    assert np.isfinite(a["test_acc_last"])


def test_deterministic_mode_is_an_option_and_recorded(tmp_path):
    over = overrides(tiny_npz(tmp_path / "data.npz"))
    was = torch.are_deterministic_algorithms_enabled()
    try:
        distill(load_config(None, [*over, "train.deterministic=true", "train.epochs=1"]), tmp_path / "d",
                progress=False)
        env = json.loads((tmp_path / "d" / "env.json").read_text())
        assert env["deterministic_algorithms"] is True and torch.backends.cudnn.deterministic
    finally:
        torch.use_deterministic_algorithms(was)
        torch.backends.cudnn.deterministic = False
    distill(load_config(None, [*over, "train.epochs=1"]), tmp_path / "n", progress=False)
    assert json.loads((tmp_path / "n" / "env.json").read_text())["deterministic_algorithms"] is False
