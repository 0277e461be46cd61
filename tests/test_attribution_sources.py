"""Saliency sources (ig.attribution): each store equals Captum called directly, is told apart from IG's
and from each other's, smoothgrad is reproducible, and a study compares sources as arms."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from torch import nn

from igkd.attribution import (
    AttributionSource,
    IGOptions,
    MapStore,
    StoreIdentity,
    default_gradcam_layer,
    precompute_ig,
)
from igkd.cli import main
from igkd.config import load_config
from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.errors import ConfigError, StaleStoreError
from igkd.experiments.study import Arm, Job
from igkd.utils import derive_seed

from .toy_data import toy_settings, write_quadrants_npz

captum_attr = pytest.importorskip("captum.attr")

CONV = InputConvention((0.4, 0.5, 0.6), (0.2, 0.25, 0.3))
N, SIZE, CLASSES = 10, 8, 3
CAPTUM_SOURCES = ("saliency", "input_x_gradient", "smoothgrad", "gradcam")


class Tiny(nn.Module):
    """Two conv-BN-ReLU blocks (the second strided: a 4x4 map for Grad-CAM, after its ReLU: features.1.2),
    pooling, a linear head."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU()),
            nn.Sequential(nn.Conv2d(6, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU()))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, CLASSES)

    def forward(self, x):
        return self.fc(self.pool(self.features(x)).flatten(1))


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    m = Tiny()
    g = torch.Generator().manual_seed(1)
    for bn in m.modules():
        if isinstance(bn, nn.BatchNorm2d):  # non-trivial eval-mode batch norm
            bn.running_mean.copy_(torch.rand(bn.num_features, generator=g) - 0.5)
            bn.running_var.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
            bn.weight.data.copy_(torch.rand(bn.num_features, generator=g) + 0.5)
    return m.eval()


@pytest.fixture(scope="module")
def ds():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (N, 3, SIZE, SIZE), dtype=torch.uint8, generator=g)
    y = torch.randint(0, CLASSES, (N,), generator=g)
    return ImageDataset("synthetic", x, y, [str(c) for c in range(CLASSES)])


def source(name: str, model: nn.Module, **over) -> AttributionSource:
    if name == "gradcam":
        return AttributionSource.of("gradcam", layer=over.get("layer", default_gradcam_layer(model)))
    return AttributionSource.of(name, nt_samples=over.get("nt_samples", 8), noise_level=over.get("noise", 0.15),
                                seed=over.get("seed", 0))


def identity(ds, src: AttributionSource) -> StoreIdentity:
    return StoreIdentity.of(ds, "t" * 64, CONV, n_steps=4, attribution=src)


def make_store(model, ds, path, src, chunk_size=4, **options):
    options = {"dtype": "float32", "fold_bn": False, "channels_last": False, **options}
    return precompute_ig(model, ds, path, identity(ds, src), IGOptions(chunk_size=chunk_size, **options),
                         progress=False)


def captum_maps(name: str, model: nn.Module, ds: ImageDataset, src: AttributionSource) -> torch.Tensor:
    """What Captum itself gives, called as its documentation shows, then |.| summed over channels."""
    x, y = CONV.from_uint8(ds.x).requires_grad_(), ds.y
    if name == "saliency":
        return captum_attr.Saliency(model).attribute(x, target=y, abs=True).abs().sum(1)
    if name == "input_x_gradient":
        return captum_attr.InputXGradient(model).attribute(x, target=y).abs().sum(1)
    if name == "gradcam":
        layer = dict(model.named_modules())[src.layer]
        cam = captum_attr.LayerGradCam(model, layer).attribute(x, target=y, relu_attributions=True)
        return captum_attr.LayerAttribution.interpolate(cam, (SIZE, SIZE), interpolate_mode="bilinear")[:, 0]
    tunnel, out = captum_attr.NoiseTunnel(captum_attr.Saliency(model)), []
    stdev = src.stdev(CONV)
    for i in range(len(x)):  # each image's noise from its own seed: igkd's documented convention
        torch.manual_seed(derive_seed(src.seed, "smoothgrad", i))
        out.append(tunnel.attribute(x[i:i + 1], nt_type="smoothgrad", nt_samples=src.nt_samples, stdevs=stdev,
                                    target=y[i:i + 1], abs=False).abs().sum(1))
    return torch.cat(out)


@pytest.mark.parametrize("name", CAPTUM_SOURCES)
def test_store_of_each_source_equals_captum_called_directly(tmp_path, model, ds, name):
    src = source(name, model)
    res = make_store(model, ds, tmp_path / name, src)
    assert res.complete and len(res.computed) == 3  # chunks of 4, 4, 2: resumable chunks as for IG
    store = MapStore.open(tmp_path / name, expect=identity(ds, src))
    got = store.get(torch.arange(N))
    want = captum_maps(name, model, ds, src)
    assert got.shape == want.shape == (N, SIZE, SIZE)
    torch.testing.assert_close(got, want.float(), rtol=1e-5, atol=1e-7)
    meta = store.meta
    assert meta["attribution"]["name"] == name and meta["delta"] is None  # no convergence delta
    assert "n_steps" not in meta and "baseline" not in meta  # IG's settings are not this store's
    assert store.load_all().isfinite().all()  # the recorded sha256 and the finite check, as for IG
    if name == "gradcam":
        assert meta["attribution"]["layer"] == "features.1.2" and (want >= 0).all()
    if name == "smoothgrad":
        assert meta["attribution"]["nt_samples"] == 8 and meta["attribution"]["stdevs"] == pytest.approx(
            0.15 * (max((1 - m) / s for m, s in zip(CONV.mean, CONV.std))
                    - min(-m / s for m, s in zip(CONV.mean, CONV.std))))


def test_a_store_of_one_source_is_refused_for_another(tmp_path, model, ds):
    sal = source("saliency", model)
    make_store(model, ds, tmp_path / "s", sal)
    for other in (AttributionSource(), source("gradcam", model), source("input_x_gradient", model)):
        with pytest.raises(StaleStoreError, match="attribution"):
            MapStore.open(tmp_path / "s", expect=identity(ds, other))
    with pytest.raises(StaleStoreError, match="other settings"):  # nor written into
        make_store(model, ds, tmp_path / "s", source("gradcam", model))
    # every source, and every setting of one, gets its own folder
    names = {identity(ds, s).folder_name() for s in (
        AttributionSource(), sal, source("input_x_gradient", model), source("smoothgrad", model),
        source("smoothgrad", model, noise=0.2), source("smoothgrad", model, seed=1),
        source("smoothgrad", model, nt_samples=16), source("gradcam", model),
        source("gradcam", model, layer="features.0"))}
    assert len(names) == 9
    # IG's folder name and identity are what they were before sources existed
    ig = identity(ds, AttributionSource())
    assert ig.folder_name().endswith("-gausslegendre4-zeros-normalized")
    old = {k: v for k, v in json.loads(json.dumps(ig.to_meta())).items() if k != "attribution"}
    assert ig.mismatches(old) == []
    assert identity(ds, sal).mismatches(old)


def test_smoothgrad_is_reproducible_from_its_seed(tmp_path, model, ds):
    src = source("smoothgrad", model)
    a = make_store(model, ds, tmp_path / "a", src).store
    b = make_store(model, ds, tmp_path / "b", src, chunk_size=3).store  # another chunking: the same maps
    c = make_store(model, ds, tmp_path / "c", source("smoothgrad", model, seed=1)).store
    torch.testing.assert_close(a.get(range(N)), b.get(range(N)), rtol=1e-6, atol=0)
    assert not torch.allclose(a.get(range(N)), c.get(range(N)))
    state = torch.random.get_rng_state()
    make_store(model, ds, tmp_path / "d", src)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's random stream is untouched
    assert (tmp_path / "a" / "maps.npy").read_bytes() == (tmp_path / "d" / "maps.npy").read_bytes()


def test_gradcam_layer_is_checked_before_any_work(tmp_path, model, ds):
    with pytest.raises(ConfigError, match="ig.gradcam_layer") as e:
        make_store(model, ds, tmp_path / "x", source("gradcam", model, layer="features.9"))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="1x1"):
        make_store(model, ds, tmp_path / "y", source("gradcam", model, layer="pool"))
    assert not (tmp_path / "x" / "maps.npy").exists()


def test_config_rejects_an_unknown_attribution_in_one_line():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["ig.attribution=lime"])
    msg = str(e.value)
    assert "\n" not in msg and "ig.attribution" in msg and "'lime'" in msg and "gradcam" in msg
    cfg = load_config(None, ["ig.attribution=smoothgrad", "ig.smoothgrad_samples=10"])
    assert cfg.ig.attribution == "smoothgrad" and load_config().ig.attribution == "integrated_gradients"
    with pytest.raises(ConfigError, match="ig.smoothgrad_noise"):
        load_config(None, ["ig.smoothgrad_noise=0"])


def test_arms_name_sources_and_controls_keep_working():
    arm = Arm.parse("kd_ig+gradcam_maps")
    assert (arm.method, arm.maps, arm.attribution) == ("kd_ig", "ig", "gradcam")
    cfg = Job(arm, 5, 0, 7, "runs/x").config(load_config())
    assert cfg.ig.attribution == "gradcam" and cfg.augment.maps == "ig" and cfg.distill.method == "kd_ig"
    for name in ("saliency", "input_x_gradient", "smoothgrad"):
        assert Arm.parse(f"kd_ig_at+{name}_maps").attribution == name
    assert Arm.parse("kd_ig+unrelated_maps").maps == "unrelated" and Arm.parse("kd_ig+noise_maps").maps == "noise"
    assert Job(Arm.parse("kd_ig"), 5, 0, 7, "r").config(load_config(None, ["ig.attribution=saliency"])
                                                         ).ig.attribution == "saliency"
    for bad in ("kd+gradcam_maps", "kd_ig+lime_maps"):
        with pytest.raises(ConfigError):
            Arm.parse(bad)


def test_a_study_compares_sources_as_arms(tmp_path, capsys):
    data = write_quadrants_npz(tmp_path / "toy.npz", n_train=96, n_test=48)
    sets = [*toy_settings(data, tmp_path), "teacher_train.epochs=1", "ig.chunk_size=48", "ig.n_steps=2"]
    out = tmp_path / "study"
    argv = ["montecarlo", "-c", "cpu-fashion-mnist", "--methods", "kd_ig,kd_ig+gradcam_maps", "--runs", "1",
            "--out", str(out), "--workers", "1", "--threads-per-run", "1"]
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    assert "gradcam maps:" in printed and "IG maps:" in printed
    with open(out / "results.csv", newline="") as f:
        rows = {r["method"]: r for r in csv.DictReader(f)}
    assert set(rows) == {"kd_ig", "kd_ig+gradcam_maps"}
    summaries = {m: json.loads((out / r["run_dir"] / "summary.json").read_text()) for m, r in rows.items()}
    assert summaries["kd_ig"]["attribution"] == "integrated_gradients"
    assert summaries["kd_ig+gradcam_maps"]["attribution"] == "gradcam"
    stores = sorted(p.name for p in (tmp_path / "ig").iterdir())  # toy_settings' ig.cache_dir
    assert len(stores) == 2 and any(s.endswith("gradcam-features.18") for s in stores)
    gradcam = MapStore.open(tmp_path / "ig" / next(s for s in stores if "gradcam" in s))
    assert gradcam.meta["complete"] and np.isfinite(gradcam.load_all().numpy()).all()
    # the same command finds both stores and both runs done
    assert main([*argv, *[x for s in sets for x in ("--set", s)]]) == 0
    assert "2 runs, 2 already finished" in capsys.readouterr().out
