"""ImageNet classes mapped onto CIFAR-10: both layouts, keep_correct, and the user-facing errors."""

from __future__ import annotations

import json
import pickle
import re

import numpy as np
import pytest
import torch

from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.data.imagenet import (
    DEFAULT_MAPPING,
    DEFAULT_WNID_ORDER,
    keep_correct,
    load_imagenet_cifar10,
)
from igkd.errors import ConfigError, DatasetNotFoundError

WNIDS = DEFAULT_WNID_ORDER.read_text().split()
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]

AIRLINER = "n02690373"      # airplane (0)
GOLDFINCH = "n01531178"     # bird (2)
GARBAGE_TRUCK = "n03417042"  # truck (9)
KIT_FOX = "n02119789"       # unmapped
TENCH = "n01440764"         # unmapped


def label_of(wnid: str) -> int:
    """1-based downsampled-ImageNet label of a wnid (map_clsloc.txt order)."""
    return WNIDS.index(wnid) + 1


# rows of the fake validation file: (wnid, expected CIFAR-10 label or None for unmapped)
ROWS = [(KIT_FOX, None), (AIRLINER, 0), (TENCH, None), (GARBAGE_TRUCK, 9), (GOLDFINCH, 2),
        (AIRLINER, 0)]


def fake_rows(side: int = 8) -> tuple[np.ndarray, list[int]]:
    """One constant-colour image per row: red = 10 * row, green = 200, blue = row."""
    n = len(ROWS)
    data = np.zeros((n, 3, side, side), dtype=np.uint8)
    for i in range(n):
        data[i, 0], data[i, 1], data[i, 2] = 10 * i, 200, i
    data[:, 0, 0, 1] = 255  # one marker pixel: catches a transposed reshape
    return data.reshape(n, -1), [label_of(w) for w, _ in ROWS]


def write_pickle(path, data, labels, bytes_keys: bool = False) -> None:
    d = {"data": data, "labels": labels}
    if bytes_keys:
        d = {k.encode(): v for k, v in d.items()}
    with open(path, "wb") as f:
        pickle.dump(d, f)


def write_png(path, size: tuple[int, int], colour, mode: str = "RGB") -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, colour).save(path)


def check_downsampled(ds: ImageDataset, data: np.ndarray, side: int = 8) -> None:
    keep = [i for i, (_, lab) in enumerate(ROWS) if lab is not None]
    assert ds.name == "imagenet_cifar10"
    assert ds.classes == CIFAR10
    assert ds.index.tolist() == keep
    assert ds.y.tolist() == [ROWS[i][1] for i in keep]
    assert ds.x.dtype == torch.uint8 and ds.image_shape == (3, side, side)
    expected = torch.from_numpy(data[keep].reshape(-1, 3, side, side))
    assert torch.equal(ds.x, expected)
    assert int(ds.x[0, 0, 0, 1]) == 255 and int(ds.x[0, 0, 1, 0]) != 255


# --------------------------------------------------------------------------------------------------
# Shipped data


def test_shipped_wnid_order_is_map_clsloc():
    assert len(WNIDS) == 1000 and len(set(WNIDS)) == 1000
    assert all(re.fullmatch(r"n\d{8}", w) for w in WNIDS)
    assert WNIDS[0] == "n02119789"  # 1 kit_fox
    assert WNIDS[1] == "n02100735"  # 2 English_setter
    assert WNIDS[999] == "n03255030"  # 1000 dumbbell
    assert WNIDS[229] == AIRLINER  # 230 airliner


def test_shipped_mapping_covers_known_wnids():
    mapping = json.loads(DEFAULT_MAPPING.read_text())
    assert mapping["cifar10_class_order"] == CIFAR10
    wnids = [w for d in mapping["imagenet_wnids_by_cifar10_class"].values() for w in d]
    assert len(wnids) == len(set(wnids)) == 105
    assert set(wnids) <= set(WNIDS)


# --------------------------------------------------------------------------------------------------
# Layout 1: downsampled ImageNet


@pytest.mark.parametrize("bytes_keys", [False, True])
def test_downsampled_pickle(tmp_path, bytes_keys):
    data, labels = fake_rows()
    write_pickle(tmp_path / "val_data", data, labels, bytes_keys)
    ds = load_imagenet_cifar10(tmp_path, image_size=8)
    check_downsampled(ds, data)
    # the file itself works as root too
    assert torch.equal(load_imagenet_cifar10(tmp_path / "val_data", image_size=8).x, ds.x)


def test_downsampled_npz(tmp_path):
    data, labels = fake_rows()
    np.savez(tmp_path / "val_data.npz", data=data, labels=np.array(labels))
    check_downsampled(load_imagenet_cifar10(tmp_path, image_size=8), data)


def test_downsampled_train_batch_file(tmp_path):
    data, labels = fake_rows()
    write_pickle(tmp_path / "train_data_batch_3", data, labels)
    check_downsampled(load_imagenet_cifar10(tmp_path / "train_data_batch_3", image_size=8), data)


def test_downsampled_resized_to_image_size(tmp_path):
    data, labels = fake_rows(side=8)
    data = data.reshape(len(ROWS), 3, 8, 8)
    data[:, 0, 0, 1] = data[:, 0, 0, 0]  # constant images: a resize keeps each colour
    write_pickle(tmp_path / "val_data", data.reshape(len(ROWS), -1), labels)
    ds = load_imagenet_cifar10(tmp_path, image_size=4)
    assert ds.image_shape == (3, 4, 4)
    for row, i in enumerate(ds.index.tolist()):
        assert ds.x[row, :, 0, 0].tolist() == [10 * i, 200, i]
        assert bool((ds.x[row] == ds.x[row, :, :1, :1]).all())


def test_map_clsloc_in_root_overrides_shipped_order(tmp_path):
    order = WNIDS[::-1]
    (tmp_path / "map_clsloc.txt").write_text(
        "".join(f"{w} {i} name_{i}\n" for i, w in enumerate(order, 1)))
    data = np.zeros((3, 3 * 8 * 8), dtype=np.uint8)
    labels = [order.index(w) + 1 for w in (GOLDFINCH, KIT_FOX, AIRLINER)]
    write_pickle(tmp_path / "val_data", data, labels)
    ds = load_imagenet_cifar10(tmp_path, image_size=8)
    assert ds.index.tolist() == [0, 2] and ds.y.tolist() == [2, 0]


def test_custom_mapping(tmp_path):
    data, labels = fake_rows()
    write_pickle(tmp_path / "val_data", data, labels)
    mapping = tmp_path / "m.json"
    mapping.write_text(json.dumps({"cifar10_class_order": ["fox", "fish"],
                                   "imagenet_wnids_by_cifar10_class": {"fox": {KIT_FOX: "kit_fox"},
                                                                       "fish": [TENCH]}}))
    ds = load_imagenet_cifar10(tmp_path, mapping=mapping, image_size=8)
    assert ds.classes == ["fox", "fish"]
    assert ds.index.tolist() == [0, 2] and ds.y.tolist() == [0, 1]


# --------------------------------------------------------------------------------------------------
# Layout 2: one folder per wnid


def make_folder(base) -> None:
    write_png(base / AIRLINER / "b.png", (10, 6), (250, 0, 0))
    write_png(base / AIRLINER / "a.png", (5, 5), (0, 0, 250))
    write_png(base / GARBAGE_TRUCK / "t.png", (3, 7), 128, mode="L")
    write_png(base / GOLDFINCH / "g.png", (40, 40), (0, 250, 0, 255), mode="RGBA")
    write_png(base / KIT_FOX / "f.png", (6, 6), (1, 2, 3))  # unmapped, not decoded
    (base / KIT_FOX / "broken.png").write_bytes(b"not an image")  # unmapped: never opened
    (base / AIRLINER / "notes.txt").write_text("not an image")  # ignored by suffix


@pytest.mark.parametrize("sub", ["", "val"])
def test_folder_layout(tmp_path, sub):
    base = tmp_path / sub if sub else tmp_path
    make_folder(base)
    ds = load_imagenet_cifar10(tmp_path, image_size=4)
    # all images sorted by wnid then name: n01531178/g, n02119789/broken, n02119789/f,
    # n02690373/a, n02690373/b, n03417042/t
    assert ds.index.tolist() == [0, 3, 4, 5]
    assert ds.y.tolist() == [2, 0, 0, 9]
    assert ds.classes == CIFAR10 and ds.name == "imagenet_cifar10"
    assert ds.x.dtype == torch.uint8 and ds.image_shape == (3, 4, 4)
    colours = [(0, 250, 0), (0, 0, 250), (250, 0, 0), (128, 128, 128)]
    for row, colour in enumerate(colours):
        expected = torch.tensor(colour, dtype=torch.uint8).view(3, 1, 1).expand(3, 4, 4)
        assert torch.equal(ds.x[row], expected)


def test_folder_layout_image_size_kept(tmp_path):
    write_png(tmp_path / AIRLINER / "a.png", (32, 32), (9, 8, 7))
    ds = load_imagenet_cifar10(tmp_path)
    assert ds.image_shape == (3, 32, 32) and bool((ds.x[0, 0] == 9).all())


def test_folder_layout_large_jpeg(tmp_path):
    write_png(tmp_path / "val" / GARBAGE_TRUCK / "ILSVRC2012_val_00000001.JPEG", (375, 500),
              (30, 120, 220))
    ds = load_imagenet_cifar10(tmp_path)
    assert ds.image_shape == (3, 32, 32) and ds.y.tolist() == [9]
    colour = torch.tensor([30, 120, 220]).view(3, 1, 1)
    assert int((ds.x.int() - colour).abs().max()) <= 4


# --------------------------------------------------------------------------------------------------
# keep_correct


class MeanPixelModel(torch.nn.Module):
    """Logits from the mean pixel: 'airplane' when it is negative, 'bird' otherwise."""

    def __init__(self):
        super().__init__()
        self.bias = torch.nn.Parameter(torch.zeros(10))

    def forward(self, x):
        m = x.mean(dim=(1, 2, 3))
        logits = self.bias.expand(len(x), 10).clone()
        logits[:, 0] = -m
        logits[:, 2] = m
        return logits


def test_keep_correct():
    x = torch.tensor([0, 255, 0, 255, 255], dtype=torch.uint8).view(5, 1, 1, 1).expand(5, 3, 2, 2)
    ds = ImageDataset("imagenet_cifar10", x.contiguous(), torch.tensor([0, 0, 2, 2, 2]), CIFAR10,
                      torch.tensor([10, 11, 12, 13, 14]))
    model = MeanPixelModel().train()
    convention = InputConvention((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    kept = keep_correct(ds, model, convention, batch_size=2)
    assert kept.index.tolist() == [10, 13, 14]
    assert kept.y.tolist() == [0, 2, 2]
    assert torch.equal(kept.x, ds.x[[0, 3, 4]])
    assert kept.classes == CIFAR10 and kept.name == ds.name
    assert model.training  # mode restored


def test_keep_correct_empty():
    ds = ImageDataset("imagenet_cifar10", torch.zeros(0, 3, 2, 2, dtype=torch.uint8),
                      torch.zeros(0, dtype=torch.int64), CIFAR10)
    kept = keep_correct(ds, MeanPixelModel(), InputConvention((0.5,) * 3, (0.5,) * 3))
    assert len(kept) == 0


# --------------------------------------------------------------------------------------------------
# Errors: one line, naming the file


def load_error(root, match: str, exc=DatasetNotFoundError, **kwargs) -> str:
    """The message of the error ``load_imagenet_cifar10`` raises; it must be one line."""
    with pytest.raises(exc, match=match) as info:
        load_imagenet_cifar10(root, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_missing_root(tmp_path):
    assert str(tmp_path / "nowhere") in load_error(tmp_path / "nowhere", "does not exist")


def test_neither_layout(tmp_path):
    (tmp_path / "val").mkdir()
    write_png(tmp_path / "val" / "ILSVRC2012_val_00000001.png", (4, 4), (0, 0, 0))
    message = load_error(tmp_path, r"no ImageNet found at .*val_data.*sub-folder per wnid")
    assert str(tmp_path) in message


def test_wrong_pickle_keys(tmp_path):
    data, labels = fake_rows()
    with open(tmp_path / "val_data", "wb") as f:
        pickle.dump({"images": data, "labels": labels}, f)
    load_error(tmp_path, r"val_data has no 'data' entry \(has 'images', 'labels'\)", image_size=8)


def test_wrong_npz_keys(tmp_path):
    data, labels = fake_rows()
    np.savez(tmp_path / "val_data.npz", x=data, labels=np.array(labels))
    load_error(tmp_path, r"val_data.npz lacks 'data'", image_size=8)


def test_not_a_dict_or_not_a_pickle(tmp_path):
    with open(tmp_path / "val_data", "wb") as f:
        pickle.dump([1, 2, 3], f)
    load_error(tmp_path, "not a dict")
    (tmp_path / "val_data").write_bytes(b"garbage")
    load_error(tmp_path, "not a readable pickle")


def test_unsafe_pickle_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "val_data", "wb") as f:
        pickle.dump({"data": Evil(), "labels": []}, f)
    load_error(tmp_path, "refusing to load builtins.print")


@pytest.mark.parametrize(
    "data, labels, match",
    [
        (np.zeros((2, 100), np.uint8), [1, 2], r"'data' uint8 \(2, 100\)"),
        (np.zeros((2, 192), np.float32), [1, 2], r"'data' float32"),
        (np.zeros((2, 3, 8, 8), np.uint8), [1, 2], r"\(N, 3\*S\*S\)"),
        (np.zeros((2, 192), np.uint8), [1], r"'labels' int64 \(1,\) for 2 images"),
        (np.zeros((2, 192), np.uint8), [0, 5], r"labels in 0..5, expected 1-based"),
        (np.zeros((2, 192), np.uint8), [1, 1001], r"labels in 1..1001"),
    ],
)
def test_bad_arrays(tmp_path, data, labels, match):
    write_pickle(tmp_path / "val_data", data, labels)
    assert str(tmp_path / "val_data") in load_error(tmp_path, match, image_size=8)


def test_unreadable_image(tmp_path):
    make_folder(tmp_path)
    bad = tmp_path / GOLDFINCH / "z.png"
    bad.write_bytes(b"\x89PNG truncated")
    assert str(bad) in load_error(tmp_path, "is unreadable", image_size=4)


def test_no_mapped_image_downsampled(tmp_path):
    write_pickle(tmp_path / "val_data", np.zeros((2, 192), np.uint8),
                 [label_of(KIT_FOX), label_of(TENCH)])
    load_error(tmp_path, r"val_data holds no image of the 105 wnids", image_size=8)


def test_no_mapped_image_folder(tmp_path):
    write_png(tmp_path / KIT_FOX / "f.png", (4, 4), (0, 0, 0))
    (tmp_path / AIRLINER).mkdir()  # mapped but empty
    load_error(tmp_path, r"holds no image in the sub-folders of the 105 wnids")


def test_bad_map_clsloc(tmp_path):
    write_pickle(tmp_path / "val_data", np.zeros((1, 192), np.uint8), [1])
    (tmp_path / "map_clsloc.txt").write_text("n02119789 1 kit_fox\n")
    load_error(tmp_path, r"map_clsloc.txt does not give each label 1..1000 exactly once",
               image_size=8)


def test_bad_mapping(tmp_path):
    write_pickle(tmp_path / "val_data", np.zeros((1, 192), np.uint8), [1])
    load_error(tmp_path, "mapping .* not found", mapping=tmp_path / "none.json")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cifar10_class_order": ["a"],
                               "imagenet_wnids_by_cifar10_class": {"b": [AIRLINER]}}))
    load_error(tmp_path, "not in cifar10_class_order", ConfigError, mapping=bad)

