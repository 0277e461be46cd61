"""A teacher with nothing to explain: ``precompute-ig`` warns when the teacher is at chance on its own
training data or when more than 1 % of its maps are constant, the store records both, and the report's
gallery says so under the maps."""

from __future__ import annotations

import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from igkd.attribution import AttributionSource, IGOptions, MapStore, StoreIdentity, precompute_ig
from igkd.config import load_config
from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.errors import IgkdWarning
from igkd.experiments.report import Study, gallery_section, to_markdown
from igkd.experiments.study import write_gallery
from igkd.pipeline import build_teacher, load_datasets, load_teacher, store_identity, store_path

from ..toy_data import quadrant_images, toy_settings, write_quadrants_npz

CONV = InputConvention((0.3,), (0.25,))


@pytest.fixture(autouse=True)
def _warnings_said_afresh(monkeypatch):
    monkeypatch.setattr("igkd.errors._said", set())  # each test sees the warnings it causes


class Net(nn.Module):
    """A convolution and a linear head on the flattened map: it can tell where a bright quadrant is."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(4 * 8 * 8, 4)

    def forward(self, x):
        return self.fc(self.features(x).flatten(1))


@pytest.fixture(scope="module")
def data():
    x, y = quadrant_images(160, 8, 1)
    return ImageDataset("quadrants", torch.from_numpy(x).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(y),
                        ["0", "1", "2", "3"])


@pytest.fixture(scope="module")
def trained(data):
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=0.01)
    x = CONV.from_uint8(data.x)
    for _ in range(60):
        opt.zero_grad()
        nn.functional.cross_entropy(net(x), data.y).backward()
        opt.step()
    return net.eval()


def store(net, ds, path, source: AttributionSource | None = None):
    identity = StoreIdentity.of(ds, "t" * 64, CONV, n_steps=4, attribution=source or AttributionSource())
    result = precompute_ig(net, ds, path, identity, IGOptions(dtype="float32", chunk_size=64), progress=False)
    assert result.complete
    return result.store


def test_a_trained_teacher_gives_no_warning(tmp_path, trained, data):
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgkdWarning)
        meta = store(trained, data, tmp_path / "s").meta
    assert meta["teacher_check"]["accuracy"] > 90 and not meta["teacher_check"]["at_chance"]
    assert meta["constant_maps"]["count"] == 0


def test_a_teacher_at_chance_on_its_training_data_is_warned_and_recorded(tmp_path, trained, data):
    shuffled = data.y[torch.randperm(len(data), generator=torch.Generator().manual_seed(0))]
    ds = ImageDataset("quadrants shuffled", data.x, shuffled, data.classes)  # the same teacher, labels at random
    with pytest.warns(IgkdWarning, match=r"the teacher is at chance on its own training data \(\d+\.\d % correct, "
                                         r"while always answering the most frequent class gives 25\.0 %\)"):
        meta = store(trained, ds, tmp_path / "s").meta
    assert meta["teacher_check"]["at_chance"]


def test_more_than_one_percent_constant_maps_is_warned_and_recorded(tmp_path, trained, data):
    net = Net()
    net.load_state_dict(trained.state_dict())
    with torch.no_grad():  # class 3's evidence is negative everywhere: its Grad-CAM maps are all zero
        net.fc.weight[3] = -net.fc.weight[3].abs()
    gradcam = AttributionSource.of("gradcam", layer="features.1")
    with pytest.warns(IgkdWarning, match=r"maps \(\d+\.\d %\) are constant \(one value at every pixel"):
        meta = store(net.eval(), data, tmp_path / "s", gradcam).meta
    constant = meta["constant_maps"]
    assert constant["count"] >= int((data.y == 3).sum()) and constant["fraction"] > 0.01
    maps = MapStore.open(tmp_path / "s").load_all()
    flat = maps.reshape(len(maps), -1)
    is_constant = flat.max(1).values == flat.min(1).values
    assert is_constant[data.y == 3].all() and int(is_constant.sum()) == constant["count"]


def test_precompute_says_it_in_one_line_and_the_report_gallery_says_it_under_the_maps(tmp_path):
    data = write_quadrants_npz(tmp_path / "toy.npz")
    settings = toy_settings(data, tmp_path)
    teacher = tmp_path / "untrained.pt"
    torch.manual_seed(0)
    torch.save(build_teacher(load_config(None, settings), 4, 1).state_dict(), teacher)  # never trained
    settings.append(f"teacher.checkpoint={teacher}")
    cmd = [sys.executable, "-m", "igkd.cli", "precompute-ig"] + [a for s in settings for a in ("--set", s)]
    p = subprocess.run(cmd, capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    said = [line for line in p.stderr.splitlines() if "at chance" in line]
    assert len(said) == 1 and said[0].startswith("igkd: warning: IG map store "), p.stderr

    cfg = load_config(None, settings)
    ds = load_datasets(cfg)
    _teacher, teacher_hash = load_teacher(cfg, *ds.shape, torch.device("cpu"))
    maps = MapStore.open(store_path(cfg, store_identity(cfg, ds, teacher_hash)))
    study = tmp_path / "study"
    study.mkdir()
    write_gallery(cfg, maps, study / "gallery.npz")
    section = gallery_section(Study(study, {}, []))
    notes = [b for b in section.blocks if isinstance(b, str)]
    assert len(notes) == 1 and notes[0].startswith("Warning: the teacher is at chance on its own training data")
    md = to_markdown("report", [section], study / "report_files")
    assert md.index("![Gallery") < md.index("Warning: the teacher is at chance")  # under the maps
    with np.load(study / "gallery.npz", allow_pickle=False) as g:
        assert g["notes"].tolist() == [notes[0][len("Warning: "):-1]]
