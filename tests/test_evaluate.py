"""igkd evaluate: metrics against scikit-learn's definitions, the authors' students, the ImageNet subset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from igkd.cli import main
from igkd.evaluate import classification_metrics
from igkd.models import cifar_mobilenet_v2

from .conftest import REFERENCE, require
from .test_imagenet import (
    AIRLINER,
    GARBAGE_TRUCK,
    GOLDFINCH,
    KIT_FOX,
    label_of,
    write_pickle,
    write_png,
)

STUDENT = REFERENCE / "CIFAR10_KD_IG_T2.5_alpha0.01_p0.1_gamma0_TestAcc92.28.pt"


def test_metrics_by_hand():
    y = np.array([0, 0, 0, 1, 1, 2])
    p = np.array([0, 0, 1, 1, 1, 0])
    m = classification_metrics(y, p, ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(100 * 4 / 6)
    assert m["per_class_accuracy"] == pytest.approx({"a": 100 * 2 / 3, "b": 100.0, "c": 0.0})
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 1 + 0) / 3 * 100)
    # kappa = (p_o - p_e) / (1 - p_e): p_o = 4/6; p_e = sum_k (true_k / n)(pred_k / n)
    p_o, p_e = 4 / 6, (3 * 3 + 2 * 3 + 1 * 0) / 36
    assert m["cohen_kappa"] == pytest.approx((p_o - p_e) / (1 - p_e))
    assert m["confusion_matrix"] == [[2, 1, 0], [0, 2, 0], [1, 0, 0]]


def _imagenet_downsampled(root, n_per=3):
    """A fake 32x32 downsampled-ImageNet val_data: mapped (airliner, goldfinch, garbage truck) and not."""
    wnids = [AIRLINER, GOLDFINCH, GARBAGE_TRUCK, KIT_FOX] * n_per
    g = np.random.default_rng(0)
    data = g.integers(0, 256, (len(wnids), 3 * 32 * 32), dtype=np.uint8)
    write_pickle(root / "val_data", data, [label_of(w) for w in wnids])
    return sum(w != KIT_FOX for w in wnids)


@pytest.mark.parametrize("layout", ["downsampled", "folder"])
def test_evaluate_authors_student_on_the_imagenet_subset(tmp_path, capsys, layout):
    require(STUDENT, "the authors' reference student")
    if layout == "downsampled":
        mapped = _imagenet_downsampled(tmp_path)
    else:
        for i, w in enumerate([AIRLINER, GOLDFINCH, KIT_FOX]):
            write_png(tmp_path / w / f"{i}.png", (40 + i, 36), (30 * i, 100, 200))
        mapped = 2
    out = tmp_path / "eval.json"
    code = main(["evaluate", "-c", "paper-cifar10", "--checkpoint", str(STUDENT), "--input-convention",
                 "pixels01", "--imagenet", str(tmp_path), "--json", str(out), "--set", "train.device=cpu"])
    assert code == 0
    r = json.loads(out.read_text())
    assert r["role"] == "student" and r["remove_blocks"] == 5 and r["images"] == mapped
    assert r["input_convention"]["name"] == "pixels01" and r["input_convention"]["mean"] == [0.0, 0.0, 0.0]
    assert "input convention: pixels01" in capsys.readouterr().out
    assert len(r["confusion_matrix"]) == 10 and sum(map(sum, r["confusion_matrix"])) == mapped
    assert r["per_class_accuracy"]["deer"] is None  # no ImageNet class maps onto deer


def test_keep_teacher_correct_filters_by_the_teacher(tmp_path, capsys):
    require(STUDENT, "the authors' reference student")
    mapped = _imagenet_downsampled(tmp_path)
    model = cifar_mobilenet_v2()
    with torch.no_grad():  # a teacher that calls everything an airplane
        model.classifier[1].weight.zero_()
        model.classifier[1].bias.copy_(torch.arange(10) == 0)
    teacher = tmp_path / "teacher.pt"
    torch.save(model.state_dict(), teacher)
    out = tmp_path / "eval.json"
    assert main(["evaluate", "-c", "paper-cifar10", "--checkpoint", str(STUDENT), "--imagenet", str(tmp_path),
                 "--keep-teacher-correct", "--json", str(out), "--set", f"teacher.checkpoint={teacher}",
                 "--set", "train.device=cpu"]) == 0
    r = json.loads(out.read_text())
    assert r["images"] == mapped // 3 and "that the teacher classifies correctly" in r["dataset"]
    assert r["confusion_matrix"][0][0] + sum(r["confusion_matrix"][0][1:]) == mapped // 3
    assert r["input_convention"]["name"] == "normalized"
    # the filter needs the ImageNet subset, and a cifar10 config
    assert main(["evaluate", "-c", "cpu-fashion-mnist", "--checkpoint", str(STUDENT), "--imagenet",
                 str(tmp_path)]) == 2
    assert "cifar10 config" in capsys.readouterr().err
