"""Classes checked across splits, for every data kind: a test class without a training image is one
line naming it (before anything trains); a class with fewer than 2 training images is a warning."""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from igkd.config import load_config
from igkd.errors import DataError, IgkdWarning
from igkd.pipeline import load_datasets

from ..conftest import FASHION_MNIST, require
from ..test_data import _write_fake_cifar
from ..toy_data import quadrant_images, write_image_folder


@pytest.fixture(autouse=True)
def _warnings_said_afresh(monkeypatch):
    monkeypatch.setattr("igkd.errors._said", set())  # each test sees the warnings it causes


def npz(path: Path, y_train: np.ndarray, y_test: np.ndarray, size: int = 8) -> Path:
    x_train, _ = quadrant_images(len(y_train), size, 1)
    x_test, _ = quadrant_images(len(y_test), size, 1, seed=1)
    np.savez(path, x_train=x_train[..., 0], y_train=y_train, x_test=x_test[..., 0], y_test=y_test)
    return path


def datasets(*overrides: str):
    return load_datasets(load_config(None, list(overrides)))


def test_npz_test_labels_absent_from_training_are_refused_naming_them(tmp_path):
    data = npz(tmp_path / "d.npz", np.arange(40) % 3, np.arange(20) % 5)  # test has 3 and 4, training not
    with pytest.raises(DataError, match=r"test class\(es\) 3, 4 have no training image.*add training images"):
        datasets("data.name=npz", f"data.root={data}")


def test_npz_class_names_are_shown_with_their_labels(tmp_path):
    data = npz(tmp_path / "d.npz", np.arange(40) % 2, np.arange(20) % 3)
    with np.load(data) as f:
        arrays = dict(f)
    np.savez(data, **arrays, classes=np.array(["shirt", "shoe", "bag"]))
    with pytest.raises(DataError, match=r"bag \(label 2\) have no training image"):
        datasets("data.name=npz", f"data.root={data}")


def test_image_folder_test_class_missing_from_train_is_refused(tmp_path):
    root = write_image_folder(tmp_path / "photos", sizes=(12,), per_class=2)
    extra = root / "test" / "zebra"
    extra.mkdir()
    shutil.copy(next((root / "test" / "class0").iterdir()), extra / "000.png")
    with pytest.raises(DataError, match=r"test class\(es\) zebra \(label 4\) have no training image"):
        datasets("data.name=image_folder", f"data.root={root}")


def test_cifar10_test_class_missing_from_train_is_refused(tmp_path):
    _write_fake_cifar(tmp_path)  # training labels 0..6, test labels 5, 6, 7
    with pytest.raises(DataError, match=r"horse \(label 7\) have no training image"):
        datasets("data.name=cifar10", f"data.root={tmp_path}")


def test_fashion_mnist_subset_too_small_for_its_classes_says_to_raise_train_size():
    require(FASHION_MNIST, "Fashion-MNIST")
    with pytest.raises(DataError, match=r"have no training image.*raise data\.train_size"):
        datasets("data.name=fashion_mnist", f"data.root={FASHION_MNIST}", "data.train_size=5")


def test_a_class_with_one_training_image_is_a_warning_and_loading_goes_on(tmp_path):
    y_train = np.array([0] * 10 + [1] * 10 + [2])  # class 2: one image
    data = npz(tmp_path / "d.npz", y_train, np.arange(9) % 3)
    with pytest.warns(IgkdWarning, match=r"fewer than 2 training images \(2: 1\)"):
        ds = datasets("data.name=npz", f"data.root={data}")
    assert len(ds.train) == 21
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # every class with 2 or more images: no warning
        datasets("data.name=npz", f"data.root={npz(tmp_path / 'ok.npz', np.arange(30) % 3, np.arange(9) % 3)}")


def test_cli_says_both_in_one_line(tmp_path):
    bad = npz(tmp_path / "bad.npz", np.arange(40) % 3, np.arange(20) % 4)
    base = [sys.executable, "-m", "igkd.cli", "train-teacher", "--set", "data.name=npz", "--set",
            "teacher_train.epochs=1", "--set", "teacher.width_mult=0.25", "--set", "teacher_train.device=cpu"]
    p = subprocess.run([*base, "--set", f"data.root={bad}", "--out", str(tmp_path / "run")], capture_output=True,
                       text=True)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    assert p.stderr.strip().splitlines() == [
        f"igkd: error: dataset npz ({bad}): test class(es) 3 have no training image, so no model can learn them and "
        "the test accuracy would mislead: add training images of them, or remove them from the test split"
        ]
    assert not (tmp_path / "run").exists()  # refused before anything was written

    few = npz(tmp_path / "few.npz", np.array([0] * 8 + [1] * 8 + [2]), np.arange(6) % 3)
    p = subprocess.run([*base, "--set", f"data.root={few}", "--out", str(tmp_path / "run2")], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
    lines = [line for line in p.stderr.splitlines() if "fewer than 2 training images" in line]
    assert len(lines) == 1 and lines[0].startswith("igkd: warning: dataset npz") and "(2: 1)" in lines[0]
