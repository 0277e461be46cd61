"""Dataset loaders, splits and fingerprints."""

from __future__ import annotations

import gzip
import pickle
import struct
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from igkd.data import (
    DATASETS,
    ImageDataset,
    compute_convention,
    load_dataset,
    read_idx,
    stratified_split,
    stratified_subset,
)
from igkd.errors import ConfigError, DataError, DatasetNotFoundError

FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")


@pytest.fixture
def no_default_data(tmp_path, monkeypatch):
    """Make every default search place empty, so only what a test writes can be found."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("IGKD_DATA", raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


# ---------------------------------------------------------------------------------------------
# Fashion-MNIST: the real files (installed by the Debian package; CI installs it, so no skip)


def test_fashion_mnist_real_files_load():
    train = load_dataset("fashion_mnist", "train", root=FASHION_DIR)
    test = load_dataset("fashion_mnist", "test", root=FASHION_DIR)
    assert (len(train), len(test)) == (60000, 10000)
    for ds, per_class in ((train, 6000), (test, 1000)):
        assert ds.x.shape[1:] == (1, 28, 28)
        assert ds.x.dtype == torch.uint8 and ds.y.dtype == torch.int64
        assert int(ds.y.min()) == 0 and int(ds.y.max()) == 9
        assert torch.bincount(ds.y).tolist() == [per_class] * 10
        assert torch.equal(ds.index, torch.arange(len(ds)))
        assert ds.classes == list(DATASETS['fashion_mnist'].classes)
        assert ds.name == "fashion_mnist"
    assert train.y[:5].tolist() == [9, 0, 0, 3, 0]  # the file's known first labels (Ankle boot, T-shirt, ...)
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0


def test_fashion_mnist_default_search_finds_system_package(no_default_data):
    ds = load_dataset("fashion_mnist", "test")
    assert len(ds) == 10000


def test_fashion_mnist_is_cached_and_conventions_match():
    a = load_dataset("fashion_mnist", "train", root=FASHION_DIR)
    b = load_dataset("fashion_mnist", "train", root=FASHION_DIR)
    assert a is not b and a.x.data_ptr() == b.x.data_ptr()  # parsed once per process
    conv = compute_convention(a)
    published = DATASETS["fashion_mnist"].convention
    assert conv.mean == pytest.approx(published.mean, abs=1e-3)
    assert conv.std == pytest.approx(published.std, abs=1e-3)


# ---------------------------------------------------------------------------------------------
# IDX parsing on hand-written files


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def _write_fashion(folder: Path, images: np.ndarray, labels: np.ndarray, gz: bool, prefix: str = "train") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for stem, arr in ((f"{prefix}-images-idx3-ubyte", images), (f"{prefix}-labels-idx1-ubyte", labels)):
        data = _idx_bytes(arr)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)


@pytest.mark.parametrize("gz", [True, False])
def test_idx_parse_gz_and_plain(tmp_path, gz):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(5, 3, 4), dtype=np.uint8)  # non-square: catches swapped H/W
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    _write_fashion(tmp_path, images, labels, gz)
    ds = load_dataset("fashion_mnist", "train", root=tmp_path)
    assert ds.x.shape == (5, 1, 3, 4)
    assert np.array_equal(ds.x[:, 0].numpy(), images)
    assert ds.y.tolist() == [3, 1, 4, 1, 5]
    stem = tmp_path / "train-images-idx3-ubyte"
    assert np.array_equal(read_idx(stem.with_name(stem.name + ".gz") if gz else stem), images)


def test_idx_torchvision_raw_layout(tmp_path):
    images = np.arange(2 * 2 * 2, dtype=np.uint8).reshape(2, 2, 2)
    _write_fashion(tmp_path / "FashionMNIST" / "raw", images, np.array([0, 9], np.uint8), gz=False, prefix="t10k")
    ds = load_dataset("fashion_mnist", "test", root=tmp_path)
    assert ds.y.tolist() == [0, 9] and np.array_equal(ds.x[:, 0].numpy(), images)


def test_idx_truncated_and_bad_magic_raise_one_line(tmp_path):
    images = np.zeros((4, 3, 3), np.uint8)
    _write_fashion(tmp_path, images, np.zeros(4, np.uint8), gz=False)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", "train", root=tmp_path)
    assert "truncated" in str(err.value) and "\n" not in str(err.value)
    path.write_bytes(b"\x12\x34\x08\x03" + b"\x00" * 12)
    with pytest.raises(DatasetNotFoundError, match="magic"):
        read_idx(path)
    gz = tmp_path / "broken.gz"
    gz.write_bytes(gzip.compress(_idx_bytes(images))[:20])
    with pytest.raises(DatasetNotFoundError) as err:
        read_idx(gz)
    assert "\n" not in str(err.value)


def test_fashion_missing_names_searched_folders(no_default_data):
    missing = no_default_data / "nowhere"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("fashion_mnist", "train", root=missing)
    msg = str(err.value)
    assert str(missing) in msg and "\n" not in msg and "--download" in msg


# ---------------------------------------------------------------------------------------------
# npz


def test_npz_nhwc_round_trip(tmp_path):
    rng = np.random.default_rng(1)
    x_train = rng.integers(0, 256, size=(6, 5, 4, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, size=(2, 5, 4, 3), dtype=np.uint8)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=x_train, y_train=np.array([0, 1, 2, 0, 1, 2]), x_test=x_test,
             y_test=np.array([2, 0]), classes=np.array(["cat", "dog", "emu"]))
    train = load_dataset("npz", "train", root=path)
    test = load_dataset("npz", "test", root=str(path))
    assert train.x.shape == (6, 3, 5, 4) and test.x.shape == (2, 3, 5, 4)
    assert np.array_equal(train.x.permute(0, 2, 3, 1).numpy(), x_train)
    assert np.array_equal(test.x.permute(0, 2, 3, 1).numpy(), x_test)
    assert train.classes == ["cat", "dog", "emu"] and test.y.tolist() == [2, 0]


def test_npz_nhw_gets_one_channel_and_default_classes(tmp_path):
    x = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2)
    path = tmp_path / "g.npz"
    np.savez(path, x_train=x, y_train=np.array([0, 1, 0]), x_test=x[:1], y_test=np.array([3]))
    ds = load_dataset("npz", "train", root=path)
    assert ds.x.shape == (3, 1, 2, 2) and np.array_equal(ds.x[:, 0].numpy(), x)
    assert ds.classes == ["0", "1", "2", "3"]  # K from both splits, so labels agree across them


def test_npz_bad_dtype_names_the_key(tmp_path):
    path = tmp_path / "bad.npz"
    np.savez(path, x_train=np.zeros((2, 4, 4), np.float32), y_train=np.array([0, 1]),
             x_test=np.zeros((1, 4, 4), np.uint8), y_test=np.array([0]))
    with pytest.raises(DataError, match="x_train") as err:
        load_dataset("npz", "train", root=path)
    assert "\n" not in str(err.value)
    np.savez(path, x_train=np.zeros((2, 4, 4), np.uint8), y_train=np.array([0, 1]), x_test=np.zeros((1, 4, 4), np.uint8))
    with pytest.raises(DataError, match="y_test"):
        load_dataset("npz", "train", root=path)


# ---------------------------------------------------------------------------------------------
# image folder


def _write_png(path: Path, arr: np.ndarray, mode: str) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def test_image_folder_rgb(tmp_path):
    rng = np.random.default_rng(2)
    written = {}
    for split, n in (("train", 2), ("test", 1)):
        for cls in ("zebra", "ant"):
            for i in range(n):
                arr = rng.integers(0, 256, size=(3, 5, 3), dtype=np.uint8)
                _write_png(tmp_path / split / cls / f"{i}.png", arr, "RGB")
                written[(split, cls, i)] = arr
    ds = load_dataset("image_folder", "train", root=tmp_path)
    assert ds.classes == ["ant", "zebra"] and ds.y.tolist() == [0, 0, 1, 1]
    assert ds.x.shape == (4, 3, 3, 5)
    expected = [written[("train", c, i)] for c in ("ant", "zebra") for i in range(2)]
    assert np.array_equal(ds.x.permute(0, 2, 3, 1).numpy(), np.stack(expected))
    assert len(load_dataset("image_folder", "test", root=tmp_path)) == 2


def test_image_folder_grayscale_mixed_sizes_and_missing_split(tmp_path):
    a = np.full((4, 4), 7, np.uint8)
    _write_png(tmp_path / "train" / "a" / "x.png", a, "L")
    _write_png(tmp_path / "train" / "b" / "y.png", a + 1, "L")
    ds = load_dataset("image_folder", "train", root=tmp_path)
    assert ds.x.shape == (2, 1, 4, 4) and ds.x[1].unique().tolist() == [8]
    with pytest.raises(DatasetNotFoundError, match="test"):
        load_dataset("image_folder", "test", root=tmp_path)
    _write_png(tmp_path / "train" / "b" / "z.png", np.zeros((5, 4, 3), np.uint8), "RGB")
    with pytest.raises(DataError, match="size"):
        load_dataset("image_folder", "train", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# CIFAR-10 layout, written by hand in the real pickle format


def _write_fake_cifar(root: Path, per_batch: int = 3) -> dict[str, np.ndarray]:
    batch_dir = root / "cifar-10-batches-py"
    batch_dir.mkdir(parents=True)
    rng = np.random.default_rng(3)
    out = {}
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [(k + j) % 10 for j in range(per_batch)]
        with open(batch_dir / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"labels": labels, b"data": data,
                         b"filenames": [b"f.png"] * per_batch}, f, protocol=2)
        out[name] = data
        out[name + "_labels"] = np.array(labels)
    label_names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    with open(batch_dir / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": label_names, b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol=2)
    return out


def test_cifar10_layout_and_orientation(tmp_path):
    written = _write_fake_cifar(tmp_path)
    train = load_dataset("cifar10", "train", root=tmp_path)
    test = load_dataset("cifar10", "test", root=tmp_path)
    assert len(train) == 15 and len(test) == 3 and train.x.shape[1:] == (3, 32, 32)
    assert train.classes[0] == "airplane" and train.classes[9] == "truck"
    row = written["data_batch_2"][1]  # sample 4 of the train split: batches concatenate in order
    img = train.x[4].numpy()
    # Channel-major: first 1024 bytes are the red plane, row by row.
    assert img[0, 0, 5] == row[5] and img[0, 1, 0] == row[32]
    assert img[1, 0, 0] == row[1024] and img[2, 31, 31] == row[3071]
    assert train.y.tolist() == np.concatenate([written[f"data_batch_{i}_labels"] for i in range(1, 6)]).tolist()
    assert np.array_equal(test.x.reshape(3, -1).numpy(), written["test_batch"])
    assert torch.equal(train.index, torch.arange(15))


def test_cifar10_missing_message_is_one_line_naming_folder(no_default_data):
    missing = no_default_data / "not-here"
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", root=missing)
    msg = str(err.value)
    assert "\n" not in msg and str(missing) in msg and "--download" in msg and "IGKD_DATA" in msg
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10")
    assert str(Path.home() / ".cache" / "igkd" / "cifar10") in str(err.value) and "\n" not in str(err.value)


def test_cifar10_default_search_uses_igkd_data(no_default_data, monkeypatch):
    _write_fake_cifar(no_default_data / "store" / "cifar10", per_batch=1)
    monkeypatch.setenv("IGKD_DATA", str(no_default_data / "store"))
    assert len(load_dataset("cifar10", "test")) == 1


def test_cifar10_download_path(no_default_data, monkeypatch):
    """download=True goes through torchvision (faked here: the tests run offline) and then reads."""
    calls = []

    def fake_cifar10(root, train, download):
        calls.append((root, train, download))
        _write_fake_cifar(Path(root), per_batch=2)

    def failing_cifar10(root, train, download):
        raise RuntimeError("network unreachable\nsecond line")

    fake = types.ModuleType("torchvision")
    fake.datasets = types.SimpleNamespace(CIFAR10=fake_cifar10)
    monkeypatch.setitem(sys.modules, "torchvision", fake)
    monkeypatch.setitem(sys.modules, "torchvision.datasets", fake.datasets)
    target = no_default_data / "dl"
    ds = load_dataset("cifar10", "test", root=target, download=True)
    assert len(ds) == 2 and calls == [(str(target), False, True)]

    fake.datasets.CIFAR10 = failing_cifar10
    with pytest.raises(DatasetNotFoundError) as err:
        load_dataset("cifar10", "test", root=no_default_data / "dl2", download=True)
    assert "network unreachable" in str(err.value) and "\n" not in str(err.value)


def test_cifar10_refuses_arbitrary_pickles(tmp_path):
    _write_fake_cifar(tmp_path, per_batch=1)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Path("x")}, f)  # needs pathlib on load: not a numpy array
    with pytest.raises(DataError, match="refusing"):
        load_dataset("cifar10", "test", root=tmp_path)


def test_unknown_name_and_split():
    with pytest.raises(ConfigError) as err:
        load_dataset("mnist")
    assert all(n in str(err.value) for n in ("cifar10", "fashion_mnist", "npz", "image_folder"))
    with pytest.raises(ConfigError, match="split"):
        load_dataset("cifar10", split="val")


# ---------------------------------------------------------------------------------------------
# splits and fingerprints


def test_stratified_split():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20 + [3] * 2)[torch.randperm(102, generator=torch.Generator().manual_seed(5))]
    kept, held = stratified_split(labels, 0.2, seed=1)
    assert kept.dtype == held.dtype == torch.int64
    assert torch.equal(kept, kept.sort().values) and torch.equal(held, held.sort().values)
    assert torch.equal(torch.cat([kept, held]).sort().values, torch.arange(102))
    assert torch.bincount(labels[held], minlength=4).tolist() == [10, 6, 4, 1]  # class 3: at least 1
    again_kept, again_held = stratified_split(labels, 0.2, seed=1)
    assert torch.equal(again_held, held) and torch.equal(again_kept, kept)
    _, other = stratified_split(labels, 0.2, seed=2)
    assert not torch.equal(other, held)
    kept0, held0 = stratified_split(labels, 0.0, seed=1)
    assert held0.numel() == 0 and torch.equal(kept0, torch.arange(102))
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError):
            stratified_split(labels, bad, seed=1)


def test_stratified_subset_keeps_proportions_and_index():
    y = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    ds = ImageDataset("toy", torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), y, ["a", "b", "c"])
    part = ds.subset(torch.arange(100)).subset(torch.arange(100))  # index survives subsetting
    sub = stratified_subset(part, 20, seed=0)
    assert len(sub) == 20 and torch.bincount(sub.y).tolist() == [12, 6, 2]
    assert torch.equal(sub.x.view(-1).long(), sub.index)  # pixel value == original position
    assert torch.equal(stratified_subset(part, 20, seed=0).index, sub.index)
    assert len(stratified_subset(part, 7, seed=0)) == 7
    with pytest.raises(ValueError):
        stratified_subset(part, 101, seed=0)


def test_fingerprint_changes_with_one_pixel():
    x = torch.zeros(4, 1, 3, 3, dtype=torch.uint8)
    y = torch.tensor([0, 1, 0, 1])
    a = ImageDataset("t", x, y, ["0", "1"])
    assert ImageDataset("t", x.clone(), y.clone(), ["0", "1"]).fingerprint() == a.fingerprint()
    x2 = x.clone()
    x2[2, 0, 1, 1] = 1
    assert ImageDataset("t", x2, y, ["0", "1"]).fingerprint() != a.fingerprint()
