"""Every config value is checked before any data is loaded: one line naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from igkd.cli import main


@pytest.mark.parametrize("override,allowed", [
    ("ig.method=simpson", "gausslegendre"),
    ("ig.n_steps=1", ">= 2 for Riemann"),  # with ig.method=riemann_trapezoid below
    ("ig.baseline=white", "zeros-normalized"),
    ("ig.dtype=float64", "float16"),
    ("teacher.arch=resnet_18", "cifar_mobilenet_v2"),
    ("teacher.strides=[1,1,3,2,2]", "each 1 or 2"),
    ("data.name=mnist", "fashion_mnist"),
    ("student.remove_blocks=19", "1..18"),
    ("student.remove_blocks=0", "1..18"),
    ("distill.at_layer=16", "0..13"),
    ("train.device=gpu", "cuda:N"),
    ("teacher_train.device=cuda:x", "cuda:N"),
    ("train.batch_size=1", ">= 2"),
    ("train.lr=0", "> 0"),
    ("augment.maps=random", "unrelated"),
    ("train.subset_fraction=0", "(0, 1]"),
])
def test_bad_value_is_one_line_before_any_data(tmp_path, capsys, override, allowed):
    key, value = override.split("=", 1)
    extra = ["--set", "ig.method=riemann_trapezoid"] if key == "ig.n_steps" else []
    out = tmp_path / "run"
    # data.root points nowhere: had the data been looked for first, the error would be about it
    code = main(["distill", "-c", "cpu-fashion-mnist", "--out", str(out), "--set", f"data.root={tmp_path / 'none'}",
                 *extra, "--set", override])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"bad value for {key}" in err and allowed in err and "not found" not in err
    assert value.strip("[]").split(",")[0] in err
    assert not out.exists()
