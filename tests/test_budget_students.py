"""Scaled students built to a budget: MAC budgets, config checks, AT layer pairing, training, loading."""

from __future__ import annotations

import json

import pytest
import torch

from igkd.cli import main, resolve_config_path
from igkd.config import load_config
from igkd.distill.losses import at_loss
from igkd.evaluate import load_model
from igkd.models import (
    StudentSpec,
    cifar_mobilenet_v2,
    count_macs,
    paired_at_layer,
    scaled_student,
    student_spec,
    truncated_student,
    width_for_macs,
)
from igkd.models.students import WIDTH_GRID, feature_sizes
from igkd.pipeline import distill, precompute

from .toy_data import toy_settings, write_quadrants_npz

FMNIST = (1, 28, 28)
STUDY = resolve_config_path("cpu-study-fashion-mnist")


def test_width_for_macs_is_the_widest_within_budget():
    strides, k, budget = (2, 2, 2, 2, 1), 14, 1.4e6
    width = width_for_macs(budget, strides, k, FMNIST)
    assert count_macs(scaled_student(10, 1, width, strides, k), FMNIST) <= budget
    wider = WIDTH_GRID[WIDTH_GRID.index(width) + 1]
    assert count_macs(scaled_student(10, 1, wider, strides, k), FMNIST) > budget


def test_config_resolves_the_budget_and_defaults():
    cfg = load_config(STUDY, ["student.kind=scaled", "student.remove_blocks=14",
                                                  "student.strides=[2,2,2,2,1]", "student.budget_macs=1400000"])
    spec = student_spec(cfg, FMNIST)
    assert spec == StudentSpec("scaled", 14, width_for_macs(1.4e6, (2, 2, 2, 2, 1), 14, FMNIST), (2, 2, 2, 2, 1))
    plain = student_spec(load_config(STUDY, ["student.kind=scaled"]), FMNIST)
    assert plain == StudentSpec("scaled", 11, 0.5, (2, 1, 2, 2, 1))  # the teacher's width and strides
    assert student_spec(load_config(STUDY), FMNIST) == StudentSpec("truncated", 11)
    # A scaled student of the teacher's width and strides is the truncated student, layer for layer.
    teacher = cifar_mobilenet_v2(num_classes=10, in_channels=1, width_mult=0.5, strides=[2, 1, 2, 2, 1])
    a, b = plain.build(teacher), StudentSpec("truncated", 11).build(teacher)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}


@pytest.mark.parametrize("overrides,key,allowed", [
    (["student.width_mult=0.5"], "student.width_mult", "null unless student.kind=scaled"),
    (["student.strides=[2,2,2,2,1]"], "student.strides", "null unless student.kind=scaled"),
    (["student.kind=wide"], "student.kind", "truncated, scaled"),
    (["student.kind=scaled", "student.strides=[2,2,3,2,1]"], "student.strides", "each 1 or 2"),
    (["student.kind=scaled", "student.width_mult=0"], "student.width_mult", "> 0"),
    (["student.kind=scaled", "student.width_mult=1.0", "student.budget_macs=1000000"], "student.width_mult",
     "the budget chooses the width"),
    (["student.kind=scaled", "student.budget_macs=1000"], "student.budget_macs", "allowed: >= "),
])
def test_bad_student_values_are_one_line_before_any_data(tmp_path, capsys, overrides, key, allowed):
    out = tmp_path / "run"
    code = main(["distill", "-c", "cpu-fashion-mnist", "--out", str(out), "--set", f"data.root={tmp_path / 'none'}",
                 *[x for o in overrides for x in ("--set", o)]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert f"bad value for {key}" in err and allowed in err and "not found" not in err
    assert not out.exists()


def test_at_layers_pair_by_spatial_size():
    shape = (1, 12, 12)
    teacher = cifar_mobilenet_v2(num_classes=4, in_channels=1, width_mult=0.25, strides=[1, 1, 2, 2, 1])
    truncated = truncated_student(teacher, 11)
    assert paired_at_layer(truncated, teacher, 4, shape) == 4  # METHOD.md: the same module
    student = scaled_student(4, 1, 0.5, (2, 2, 2, 2, 1), 14)
    s_sizes, t_sizes = feature_sizes(student, shape), feature_sizes(teacher, shape)
    assert s_sizes[2] == (3, 3) and t_sizes[2] == (12, 12)
    assert paired_at_layer(student, teacher, 2, shape) == max(i for i, hw in enumerate(t_sizes) if hw == (3, 3))
    assert s_sizes[1] == (6, 6)  # the teacher's last 6x6 module: the end of that stage
    assert paired_at_layer(student, teacher, 1, shape) == max(i for i, hw in enumerate(t_sizes) if hw == (6, 6))


def test_attention_maps_of_different_sizes_are_resized():
    s = torch.rand(2, 8, 3, 3)
    t = s.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # the same map at twice the resolution
    assert at_loss(s, t, resize=True).item() == pytest.approx(0.0, abs=1e-6)
    assert at_loss(t, s, resize=True).item() < 0.01  # bilinear upsampling: close, not exact
    assert at_loss(s, torch.rand(2, 4, 6, 6), resize=True).item() > 0
    with pytest.raises(ValueError, match="differ in size"):
        at_loss(s, t)


@pytest.fixture(scope="module")
def toy_teacher(tmp_path_factory):
    """Toy data, a (randomly initialised) teacher checkpoint and its IG store."""
    tmp = tmp_path_factory.mktemp("budget")
    torch.manual_seed(0)
    teacher = cifar_mobilenet_v2(num_classes=4, in_channels=1, width_mult=0.25, strides=[1, 1, 2, 2, 1])
    torch.save(teacher.state_dict(), tmp / "teacher.pt")
    settings = [*toy_settings(write_quadrants_npz(tmp / "q.npz"), tmp), f"teacher.checkpoint={tmp / 'teacher.pt'}"]
    precompute(load_config(None, settings), progress=False)
    return tmp, settings


BUDGET = ["student.kind=scaled", "student.strides=[2,2,2,2,1]", "student.remove_blocks=14",
          "student.budget_macs=150000"]


@pytest.mark.parametrize("method", ["kd_ig", "kd_ig_at"])
def test_budget_student_trains_by_kd_ig_and_at(toy_teacher, tmp_path, method):
    root, settings = toy_teacher
    cfg = load_config(None, [*settings, *BUDGET, f"distill.method={method}"])
    summary = distill(cfg, tmp_path / method, progress=False)
    assert summary["student"]["kind"] == "scaled" and summary["student"]["strides"] == [2, 2, 2, 2, 1]
    assert summary["macs"] <= 150_000 < summary["teacher_macs"]
    metrics = [json.loads(line) for line in (tmp_path / method / "metrics.jsonl").read_text().splitlines()]
    assert metrics[0]["loss_kd"] > 0 and 0 <= summary["test_acc_last"] <= 100
    if method.endswith("_at"):
        assert metrics[0]["loss_at"] > 0
        student = scaled_student(4, 1, summary["student"]["width_mult"], (2, 2, 2, 2, 1), 14)
        t_sizes = feature_sizes(cifar_mobilenet_v2(4, 1, 0.25, (1, 1, 2, 2, 1)), (1, 12, 12))
        at = summary["at_layer"]
        assert t_sizes[summary["teacher_at_layer"]] == feature_sizes(student, (1, 12, 12))[at]
    # The checkpoint loads back as the configured scaled student.
    loaded = load_model(cfg, 4, 1, tmp_path / method / "model.pt", (1, 12, 12))
    assert loaded.role == "student" and loaded.student.to_dict() == summary["student"]


def test_scaled_config_still_loads_a_truncated_checkpoint(toy_teacher, tmp_path, capsys):
    root, settings = toy_teacher
    teacher = cifar_mobilenet_v2(num_classes=4, in_channels=1, width_mult=0.25, strides=[1, 1, 2, 2, 1])
    torch.save(truncated_student(teacher, 14).state_dict(), tmp_path / "k14.pt")
    cfg = load_config(None, [*settings, *BUDGET])
    assert load_model(cfg, 4, 1, tmp_path / "k14.pt", (1, 12, 12)).student == StudentSpec("truncated", 14)
    torch.save(scaled_student(4, 1, 1.0, (1, 1, 1, 1, 1), 14).state_dict(), tmp_path / "other.pt")
    code = main(["evaluate", "--checkpoint", str(tmp_path / "other.pt"),
                 *[x for o in [*settings, *BUDGET] for x in ("--set", o)]])
    err = capsys.readouterr().err
    assert code == 2 and "does not fit the model" in err and err.count("\n") == 1


def test_latency_budget_search(tmp_path, capsys):
    base = ["bench", "-c", "cpu-study-fashion-mnist", "--runtimes", "torch", "--batch-sizes", "1", "--threads", "1",
            "--warmup", "1", "--min-repeats", "3", "--min-time", "0", "--set", "student.kind=scaled",
            "--set", "student.remove_blocks=17"]
    code = main([*base, "--latency-budget-ms", "1e-6", "--out", str(tmp_path / "a.json")])
    err = capsys.readouterr().err
    assert code == 2 and "bad value for --latency-budget-ms" in err and err.count("\n") == 1
    assert not (tmp_path / "a.json").exists()
    code = main([*base, "--latency-budget-ms", "1000", "--out", str(tmp_path / "b.json")])
    assert code == 0
    bench = json.loads((tmp_path / "b.json").read_text())
    assert bench["models"][-1]["student"]["width_mult"] == WIDTH_GRID[-1]  # a budget that does not bind
    assert "the budget does not bind" in bench["notes"][0] and "student.width_mult=3" in bench["notes"][0]
