"""Your own models and your own images: torchvision/timm networks by name, any image size, AT between
different networks, weights in torchvision's layout."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

from igkd.cli import main
from igkd.config import METHODS, load_config
from igkd.data import load_dataset
from igkd.errors import ConfigError, DataError
from igkd.evaluate import load_model
from igkd.models import (
    CIFAR_STRIDES,
    auto_strides,
    create_model,
    input_problem,
    pair_at_layers,
    state_dict_hash,
)
from igkd.models.students import feature_sizes
from igkd.pipeline import (
    build_teacher,
    distill,
    load_datasets,
    load_teacher,
    precompute,
    train_teacher,
)

from .toy_data import CLASSES, write_image_folder, write_rgb_npz


@pytest.fixture(autouse=True)
def one_thread():
    """As the pipeline runs here (train.threads=1): small convolutions are slower on two busy threads."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def own_settings(data, tmp, teacher="resnet18", student="mobilenet_v3_small") -> list[str]:
    """A user's npz, a torchvision teacher and student, CPU, one thread, one short epoch, 2-step IG."""
    return [
        "data.name=npz", f"data.root={data}", f"teacher.arch={teacher}", f"student.arch={student}",
        "train.device=cpu", "teacher_train.device=cpu", "train.threads=1", "teacher_train.threads=1",
        "train.batch_size=16", "teacher_train.batch_size=16", "train.epochs=1", "teacher_train.epochs=1",
        "train.eval_batch_size=64", "teacher_train.eval_batch_size=64", "augment.overlay_p=0.5",
        "ig.n_steps=2", "ig.dtype=float32", f"ig.cache_dir={tmp / 'ig'}",
    ]


@pytest.fixture(scope="module")
def resnet_teacher(tmp_path_factory):
    """A torchvision ResNet-18 teacher trained (one epoch) on 3-channel 32x32 images, and its IG store."""
    tmp = tmp_path_factory.mktemp("own")
    data = write_rgb_npz(tmp / "own.npz", size=32)
    summary = train_teacher(load_config(None, own_settings(data, tmp)), tmp / "teacher")
    settings = own_settings(data, tmp) + [f"teacher.checkpoint={tmp / 'teacher' / 'model.pt'}"]
    precompute(load_config(None, settings), progress=False)
    return tmp, settings, summary


def test_resnet18_teacher_mobilenet_v3_small_student_kd_ig_at(resnet_teacher):
    tmp, settings, teacher_summary = resnet_teacher
    assert teacher_summary["arch"] == {"arch": "resnet18"} and teacher_summary["input_shape"] == [3, 32, 32]
    cfg = load_config(None, settings + ["distill.method=kd_ig_at"])
    s = distill(cfg, tmp / "kd_ig_at", progress=False)
    assert s["student"] == {"kind": "arch", "remove_blocks": None, "width_mult": None, "strides": None,
                            "arch": "mobilenet_v3_small"}
    assert s["teacher"] == {"arch": "resnet18"} and s["compression_factor"] > 5
    # AT between different networks: the student's middle stage end, the teacher's stage of its size.
    assert s["at_pair"] == {"student": "features.3", "teacher": "layer2", "student_size": [4, 4],
                            "teacher_size": [4, 4]}
    metrics = [json.loads(line) for line in (tmp / "kd_ig_at" / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(metrics[-1][f"loss_{k}"]) for k in ("ce", "kd", "at"))
    # Checkpoints of either network load back from the same config, told apart by their keys.
    assert load_model(cfg, CLASSES, 3, tmp / "kd_ig_at" / "model.pt", (3, 32, 32)).student.arch == "mobilenet_v3_small"
    assert load_model(cfg, CLASSES, 3, tmp / "teacher" / "model.pt", (3, 32, 32)).role == "teacher"


@pytest.mark.parametrize("method", [m for m in METHODS if m != "kd_ig_at"])
def test_every_method_trains_a_heterogeneous_pair(resnet_teacher, method):
    tmp, settings, _ = resnet_teacher
    extra = ["distill.at_teacher_layer=layer1", "distill.at_student_layer=features.1"] if method == "at" else []
    s = distill(load_config(None, settings + [f"distill.method={method}", *extra]), tmp / method, progress=False)
    assert math.isfinite(s["test_acc_last"])
    if method == "at":  # named in the config: used as given
        assert s["at_pair"] == {"student": "features.1", "teacher": "layer1", "student_size": [8, 8],
                                "teacher_size": [8, 8]}
    elif "at" in method.split("_"):
        assert s["at_pair"]["teacher"] == "layer2"


@pytest.mark.parametrize("layout", ["plain", "state_dict entry", "DDP prefix"])
def test_torchvision_state_dict_loads_as_teacher(tmp_path, layout):
    data = write_rgb_npz(tmp_path / "own.npz", n_train=8, n_test=4)
    state = torchvision.models.resnet18(num_classes=CLASSES).state_dict()
    saved = {"plain": state, "state_dict entry": {"state_dict": state, "epoch": 3},
             "DDP prefix": {f"module.{k}": v for k, v in state.items()}}[layout]
    torch.save(saved, tmp_path / "resnet18.pth")
    cfg = load_config(None, own_settings(data, tmp_path) + [f"teacher.checkpoint={tmp_path / 'resnet18.pth'}"])
    teacher, teacher_hash = load_teacher(cfg, CLASSES, 3, torch.device("cpu"), (32, 32))
    assert teacher_hash == state_dict_hash(state)


@pytest.mark.parametrize("side", [8, 16, 32, 64, 96])
def test_auto_strides_fit_small_and_large_images(side):
    strides = auto_strides((side, side))
    if side == 32:
        assert strides == CIFAR_STRIDES  # the paper's plan, so paper-cifar10 stays exact
    model = create_model("cifar_mobilenet_v2", num_classes=CLASSES, in_channels=3, image_size=(side, side),
                         width_mult=0.25, strides="auto")
    sizes = feature_sizes(model, (3, side, side))
    assert min(sizes[13]) > 1 and min(sizes[-1]) >= 4  # > 1x1 before the last stage; never collapsed
    assert input_problem(model, (3, side, side), CLASSES) is None
    x, y = torch.rand(4, 3, side, side), torch.arange(4) % CLASSES
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert math.isfinite(loss.item()) and any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_auto_strides_are_recorded_for_8x8_images(tmp_path):
    data = write_rgb_npz(tmp_path / "tiny.npz", size=8, n_train=32, n_test=8)
    cfg = load_config(None, own_settings(data, tmp_path, teacher="cifar_mobilenet_v2") + ["teacher.width_mult=0.25"])
    s = train_teacher(cfg, tmp_path / "teacher", progress=False)
    assert s["arch"]["strides"] == [1, 1, 1, 1, 2] and s["input_shape"] == [3, 8, 8]


@pytest.mark.parametrize("overrides,says", [
    (["teacher.arch=resnet18"], "set data.image_size=24 to resize the images (resnet18 takes 24x24)"),
    (["teacher.arch=cifar_mobilenet_v2", "teacher.strides=[2,2,2,2,2]"],
     "set teacher.strides=auto (it chooses [1, 1, 1, 1, 2] for 8x8 images)"),
])
def test_a_model_that_cannot_take_the_images_is_refused_in_one_line(tmp_path, capsys, overrides, says):
    data = write_rgb_npz(tmp_path / "tiny.npz", size=8, n_train=8, n_test=4)
    out = tmp_path / "teacher"
    code = main(["train-teacher", "--out", str(out), *[x for o in own_settings(data, tmp_path) + overrides
                                                        for x in ("--set", o)]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert "3x8x8" in err and "1x1 before its last stage" in err and says in err
    assert not out.exists()


def test_models_by_name_and_channels():
    grey = create_model("resnet18", num_classes=3, in_channels=1)
    assert grey(torch.zeros(2, 1, 32, 32)).shape == (2, 3)
    assert "forward pass fails" in input_problem(create_model("squeezenet1_1", num_classes=3), (3, 8, 8), 3)
    timm = pytest.importorskip("timm")
    net = create_model("timm:mobilenetv3_small_050", num_classes=3, in_channels=1)
    assert isinstance(net, timm.models.MobileNetV3) and net(torch.zeros(2, 1, 32, 32)).shape == (2, 3)


@pytest.mark.parametrize("overrides,key,allowed", [
    (["teacher.arch=resnet_18"], "teacher.arch", "a torchvision classification model name (e.g. resnet18"),
    (["teacher.arch=resnet18"], "student.kind", "set student.arch=NAME"),
    (["teacher.arch=resnet18", "student.arch=resnet18", "teacher.strides=[1,1,2,2,2]"], "teacher.strides",
     "cifar_mobilenet_v2 only"),
    (["student.arch=mobilenet_v3_small", "distill.at_layer=3"], "distill.at_layer", "distill.at_student_layer"),
    (["data.image_size=[0,8]"], "data.image_size", "[height, width], each in 1..8192"),
])
def test_bad_model_values_are_one_line_before_any_data(tmp_path, capsys, overrides, key, allowed):
    code = main(["distill", "--out", str(tmp_path / "run"), "--set", "data.name=npz",
                 "--set", f"data.root={tmp_path / 'none.npz'}", *[x for o in overrides for x in ("--set", o)]])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and f"bad value for {key}" in err and allowed in err, err


def test_mixed_size_image_folder_needs_and_takes_an_image_size(tmp_path):
    root = write_image_folder(tmp_path / "photos")
    with pytest.raises(DataError, match="set data.image_size"):
        load_dataset("image_folder", "train", root=root)
    assert load_dataset("image_folder", "train", root=root, image_size=24).x.shape == (24, 3, 24, 24)
    cfg = load_config(None, ["data.name=image_folder", f"data.root={root}", "data.image_size=[16, 20]"])
    ds = load_datasets(cfg)
    assert ds.train.image_shape == ds.test.image_shape == (3, 16, 20)
    # Each image is resized on its own: a bright quadrant stays where it was.
    x = ds.train.x.float().mean(1)
    bright = torch.stack([x[:, :8, :10].mean((1, 2)), x[:, :8, 10:].mean((1, 2)),
                          x[:, 8:, :10].mean((1, 2)), x[:, 8:, 10:].mean((1, 2))], 1)
    assert torch.equal(bright.argmax(1), ds.train.y)


def test_at_pairs_by_size_by_name_and_none():
    student = create_model("mobilenet_v3_small", num_classes=CLASSES)
    teacher = create_model("resnet18", num_classes=CLASSES)
    shape = (3, 64, 64)
    auto = pair_at_layers(student, teacher, shape)
    assert auto.student_size == auto.teacher_size == (8, 8) and auto.teacher == "layer2"
    named = pair_at_layers(student, teacher, shape, teacher_layer="layer3")
    assert (named.teacher, named.student_size) == ("layer3", (4, 4))  # the student's stage of that size
    resized = pair_at_layers(student, teacher, shape, student_layer="features.1", teacher_layer="layer3")
    assert resized.student_size == (16, 16) and resized.teacher_size == (4, 4)  # the loss resizes
    with pytest.raises(ConfigError, match="bad value for distill.at_teacher_layer: 'layer9'.*layer1, layer2"):
        pair_at_layers(student, teacher, shape, teacher_layer="layer9")
    flat = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64 * 64, CLASSES))  # no feature map at all
    with pytest.raises(ConfigError, match="needs a feature map larger than 1x1 in both networks, but the student"):
        pair_at_layers(flat, teacher, shape)


def test_build_teacher_resolves_auto_on_the_data(tmp_path):
    cfg = load_config(None, ["data.name=npz", f"data.root={tmp_path / 'x.npz'}"])
    assert cfg.teacher.strides == "auto"
    t = build_teacher(cfg, CLASSES, 3, (64, 64))
    assert t.features[0][0].stride == (1, 1) and t.features[2].conv[1][0].stride == (2, 2)
    with pytest.raises(ConfigError, match="load the dataset first"):
        build_teacher(cfg, CLASSES, 3)
    assert np.array_equal(feature_sizes(t, (3, 64, 64))[-1], (4, 4))
