"""Bad data files: each one line naming the file and the fix, exit status 2, nothing written."""

from __future__ import annotations

import gzip
import io
from pathlib import Path

import numpy as np
import pytest
import torch

from igkd.cli import main
from igkd.config import load_config
from igkd.pipeline import build_teacher

BASE = ["--set", "train.epochs=1", "--set", "train.device=cpu", "--set", "data.train_size=null",
        "--set", "data.test_size=null"]


def run_cli(capsys, tmp_path, dataset: str, root: Path, *extra: str, verb: str = "distill") -> str:
    """The one line a bad dataset gives, after checking exit status 2 and that nothing was written."""
    out = tmp_path / "out"
    args = [verb, "-c", "cpu-fashion-mnist", *BASE, "--set", f"data.name={dataset}", "--set", f"data.root={root}",
            *extra]
    if verb in ("distill", "train-teacher", "montecarlo"):
        args += ["--out", str(out)]
    if verb == "montecarlo":
        args += ["--methods", "student", "--runs", "1", "--workers", "1"]
    code = main(args)
    err = "".join(line for line in capsys.readouterr().err.splitlines(True)  # the preset's stride plan on
                  if not line.startswith("igkd: warning: teacher.strides"))  # 8x8 images is said, not an error
    assert code == 2, err
    assert err.count("\n") == 1 and err.startswith("igkd: error: "), err
    assert not out.exists(), "a failed command left files behind"
    return err


def npz(path: Path, **arrays) -> Path:
    rng = np.random.default_rng(0)
    default = {"x_train": rng.integers(0, 256, (12, 8, 8), dtype=np.uint8), "y_train": np.arange(12) % 3,
               "x_test": rng.integers(0, 256, (6, 8, 8), dtype=np.uint8), "y_test": np.arange(6) % 3}
    default.update(arrays)
    np.savez(path, **{k: v for k, v in default.items() if v is not None})
    return path


# ---------------------------------------------------------------------------------------------------
# .npz


@pytest.mark.parametrize("case,arrays,expect", [
    ("missing key", {"y_test": None}, "lacks the array(s) y_test"),
    ("float images", {"x_train": np.zeros((12, 8, 8), np.float32)}, "'x_train' must be uint8"),
    ("flat images", {"x_train": np.zeros((12, 64), np.uint8)}, "'x_train' must be uint8 images"),
    ("float labels", {"y_train": np.zeros(12, np.float32)}, "'y_train' must be 1-D non-negative integer"),
    ("negative labels", {"y_test": -np.ones(6, np.int64)}, "'y_test' must be 1-D non-negative integer"),
    ("label count", {"y_train": np.zeros(11, np.int64)}, "11 labels for 12 images"),
    ("label beyond classes", {"classes": np.array(["a", "b"])}, "has label 2 but only 2 classes"),
    ("sizes differ", {"x_test": np.zeros((6, 10, 10), np.uint8)}, "differ in image shape (8 x 8 vs 10 x 10)"),
    ("channels differ", {"x_test": np.zeros((6, 8, 8, 3), np.uint8)}, "differ in image shape"),
    ("no images", {"x_train": np.zeros((0, 8, 8), np.uint8), "y_train": np.zeros(0, np.int64)}, "no training images"),
    ("constant channel", {"x_train": np.full((12, 8, 8), 7, np.uint8)}, "channel(s) [0] hold one value"),
])
def test_malformed_npz(capsys, tmp_path, case, arrays, expect):
    path = npz(tmp_path / "data.npz", **arrays)
    err = run_cli(capsys, tmp_path, "npz", path)
    assert expect in err and str(path) in err, (case, err)


@pytest.mark.parametrize("damage", ["not an archive", "truncated", "empty", "pickled objects"])
def test_unreadable_npz(capsys, tmp_path, damage):
    path = npz(tmp_path / "data.npz")
    raw = path.read_bytes()
    if damage == "not an archive":
        path.write_bytes(b"this is a text file, not a zip archive\n" * 10)
    elif damage == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        np.savez(path, x_train=np.array([{"a": 1}], dtype=object), y_train=np.arange(1), x_test=np.zeros((1, 2, 2)),
                 y_test=np.arange(1))
    err = run_cli(capsys, tmp_path, "npz", path)
    assert f"npz file {path} is unreadable" in err and "re-create it" in err


def test_missing_npz(capsys, tmp_path):
    err = run_cli(capsys, tmp_path, "npz", tmp_path / "nowhere.npz")
    assert "nowhere.npz not found" in err


# ---------------------------------------------------------------------------------------------------
# Fashion-MNIST IDX files


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def fashion_dir(root: Path, n_train=20, n_test=10, labels=None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        (root / f"{prefix}-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(idx_bytes(rng.integers(0, 256, (n, 28, 28)))))
        y = np.arange(n) % 10 if labels is None else labels[:n]
        (root / f"{prefix}-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(y)))
    return root


def test_fashion_missing_and_partial(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "Fashion-MNIST train IDX files not found" in run_cli(capsys, tmp_path, "fashion_mnist", empty)
    part = fashion_dir(tmp_path / "part")
    (part / "train-labels-idx1-ubyte.gz").unlink()
    err = run_cli(capsys, tmp_path, "fashion_mnist", part)
    assert f"Fashion-MNIST in {part} is incomplete: train-labels-idx1-ubyte(.gz) is missing" in err


@pytest.mark.parametrize("damage,expect", [
    ("truncated gzip", "is unreadable"),
    ("truncated data", "it is truncated or corrupt"),
    ("not idx", "bad magic number"),
    ("labels out of range", "has labels outside 0..9"),
    ("label count", "labels for 20 images"),
])
def test_fashion_bad_files(capsys, tmp_path, damage, expect):
    root = fashion_dir(tmp_path / "fm", labels=np.full(20, 12) if damage == "labels out of range" else None)
    images, labels = root / "train-images-idx3-ubyte.gz", root / "train-labels-idx1-ubyte.gz"
    if damage == "truncated gzip":
        images.write_bytes(images.read_bytes()[:200])
    elif damage == "truncated data":
        images.write_bytes(gzip.compress(gzip.decompress(images.read_bytes())[:-100]))
    elif damage == "not idx":
        images.write_bytes(gzip.compress(b"<html>404 not found</html>"))
    elif damage == "label count":
        labels.write_bytes(gzip.compress(idx_bytes(np.arange(19) % 10)))
    err = run_cli(capsys, tmp_path, "fashion_mnist", root)
    assert expect in err and "train-" in err, err


# ---------------------------------------------------------------------------------------------------
# image folders and CIFAR-10


def png(path: Path, size=(6, 6)) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), 90, np.uint8), mode="RGB").save(path)


def image_folder(root: Path) -> Path:
    for split in ("train", "test"):
        for cls in ("cat", "dog"):
            for i in range(3):
                png(root / split / cls / f"{i}.png")
    return root


@pytest.mark.parametrize("damage,expect", [
    ("empty class folder", "class folder {root}/train/dog holds no image files"),
    ("text named png", "image {root}/train/cat/0.png is unreadable"),
    ("truncated png", "image {root}/train/cat/0.png is unreadable"),
    ("no test split", "has no test/ sub-folder"),
])
def test_bad_image_folder(capsys, tmp_path, damage, expect):
    root = image_folder(tmp_path / "imgs")
    if damage == "empty class folder":
        for f in (root / "train" / "dog").iterdir():
            f.unlink()
    elif damage == "text named png":
        (root / "train" / "cat" / "0.png").write_text("not an image")
    elif damage == "truncated png":
        p = root / "train" / "cat" / "0.png"
        p.write_bytes(p.read_bytes()[:40])
    else:
        import shutil

        shutil.rmtree(root / "test")
    err = run_cli(capsys, tmp_path, "image_folder", root)
    assert expect.format(root=root) in err, err


def test_truncated_cifar_batch(capsys, tmp_path):
    import pickle

    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    (folder / "batches.meta").write_bytes(pickle.dumps({b"label_names": [b"c%d" % i for i in range(10)]}))
    batch = pickle.dumps({b"data": np.zeros((4, 3072), np.uint8), b"labels": [0, 1, 2, 3]})
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(batch)
    (folder / "data_batch_3").write_bytes(batch[: len(batch) // 3])
    err = run_cli(capsys, tmp_path, "cifar10", tmp_path)
    assert f"CIFAR-10 file {folder / 'data_batch_3'} is unreadable" in err and "re-download" in err


# ---------------------------------------------------------------------------------------------------
# data against the teacher


@pytest.mark.parametrize("what,arrays,expect", [
    ("classes", {}, "is for 10 classes but the data has 3 (labels 0..2)"),
    ("channels", {"x_train": np.arange(12 * 64 * 3, dtype=np.uint8).reshape(12, 8, 8, 3),
                  "x_test": np.zeros((6, 8, 8, 3), np.uint8)},
     "takes 1-channel images but the data has 3 channels"),
])
def test_teacher_for_other_data(capsys, tmp_path, what, arrays, expect):
    cfg = load_config(None, [])
    teacher = tmp_path / "teacher.pt"
    torch.save(build_teacher(cfg, 10, 1).state_dict(), teacher)  # a Fashion-MNIST teacher
    path = npz(tmp_path / "data.npz", **arrays)
    err = run_cli(capsys, tmp_path, "npz", path, "--set", f"teacher.checkpoint={teacher}", "--method", "kd")
    assert expect in err and str(teacher) in err, (what, err)


def test_study_with_bad_data_writes_nothing(capsys, tmp_path):
    path = npz(tmp_path / "data.npz", y_test=None)
    assert "lacks the array(s) y_test" in run_cli(capsys, tmp_path, "npz", path, verb="montecarlo")


def test_teacher_training_with_bad_data_writes_nothing(capsys, tmp_path):
    path = tmp_path / "data.npz"
    path.write_bytes(io.BytesIO(b"PK\x03\x04 broken").getvalue())
    assert "is unreadable" in run_cli(capsys, tmp_path, "npz", path, verb="train-teacher")
