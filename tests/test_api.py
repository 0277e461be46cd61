"""The public face (``import igkd``): every name through its public spelling, on real or generated data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import yaml
from torch.utils.data import Dataset
from torchvision import tv_tensors
from torchvision.transforms import v2

import igkd
from igkd.data.augment import AugmentDraws, CropFlip, OverlayDraw, apply_draws
from igkd.errors import CheckpointError, ConfigError, DataError, StaleStoreError

from .conftest import FASHION_MNIST, ROOT, require

FM_TEACHER = dict(name="cifar_mobilenet_v2", num_classes=10, in_chans=1, checkpoint="igkd:fashion-mnist-teacher-w0.5",
                  width_mult=0.5, strides=[2, 1, 2, 2, 1])
FM_NORMALIZE = ((0.2860,), (0.3530,))


class Images(Dataset):
    """A user's map-style dataset: (uint8 image tensor (C, H, W), int label)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int):
        return self.x[i], int(self.y[i])


def fashion_mnist(n_train: int, n_test: int) -> tuple[Images, Images]:
    """Stratified subsets of the real Fashion-MNIST, as a user's datasets."""
    require(FASHION_MNIST, "Fashion-MNIST")
    from igkd.data import load_dataset, stratified_subset

    train = stratified_subset(load_dataset("fashion_mnist", "train"), n_train, seed=0)
    test = stratified_subset(load_dataset("fashion_mnist", "test"), n_test, seed=0)
    return Images(train.x, train.y), Images(test.x, test.y)


def test_import_igkd_is_light_and_lists_its_names():
    code = ("import sys, igkd; assert 'torch' not in sys.modules; "
            "print(','.join(n for n in igkd.__all__ if n != '__version__'))")
    names = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                           env={"PYTHONPATH": str(ROOT / "src")}).stdout.strip().split(",")
    assert set(names) == {"Distiller", "MapStore", "Overlay", "WithMaps", "bench", "compute_maps", "create_model",
                          "create_student", "evaluate", "export_onnx", "fit"}
    for name in names:
        obj = getattr(igkd, name)
        assert obj.__doc__ and len(obj.__doc__.strip()) > 40, name
    with pytest.raises(AttributeError):
        igkd.no_such_name  # noqa: B018


def test_create_model_by_name_and_with_shipped_weights():
    teacher = igkd.create_model(**FM_TEACHER)
    assert sum(p.numel() for p in teacher.parameters()) == 700_202  # as the shipped weights record
    resnet = igkd.create_model("resnet18", 7, in_chans=1)
    assert resnet(torch.zeros(2, 1, 32, 32)).shape == (2, 7)
    with pytest.raises(ConfigError, match="unknown model"):
        igkd.create_model("resnet_eighteen", 10)
    with pytest.raises(CheckpointError, match="1-channel"):  # the shipped teacher takes grey images
        igkd.create_model(**{**FM_TEACHER, "in_chans": 3})


def test_create_student_kinds():
    teacher = igkd.create_model("cifar_mobilenet_v2", 10)
    truncated = igkd.create_student(teacher, remove_blocks=5)
    assert sum(p.numel() for p in truncated.parameters()) == 543_498  # METHOD.md's k = 5 student
    scaled = igkd.create_student(teacher, "scaled", 5, width_mult=0.5, input_shape=(3, 32, 32))
    assert scaled(torch.zeros(2, 3, 32, 32)).shape == (2, 10)
    budget = igkd.create_student(teacher, "budget", 5, budget_macs=5e6, input_shape=(3, 32, 32))
    from igkd.models import count_macs

    assert count_macs(budget, (3, 32, 32)) <= 5e6 < count_macs(scaled, (3, 32, 32))
    with pytest.raises(ConfigError, match="input_shape"):
        igkd.create_student(teacher, "budget", 5, budget_macs=5e6)


def test_distiller_returns_the_loss_its_terms_and_logits_with_a_frozen_teacher():
    torch.manual_seed(0)
    teacher = igkd.create_model("cifar_mobilenet_v2", 10, width_mult=0.25).eval()
    student = igkd.create_student(teacher, remove_blocks=11)
    d = igkd.Distiller(student, teacher, method="kd_at", alpha=0.3, temperature=4.0, gamma=0.5, at_layer=4,
                       teacher_runtime="torch").train()
    x, y = torch.randn(4, 3, 32, 32), torch.randint(0, 10, (4,))
    out = d(x, y)
    assert set(out) == {"loss", "logits", "ce", "kd", "at"}
    assert torch.equal(out["loss"], out["ce"] + out["kd"] + out["at"])
    assert torch.allclose(out["ce"], 0.7 * torch.nn.functional.cross_entropy(out["logits"], y))
    assert not d.teacher.training and d.student.training
    assert not any(p.requires_grad for p in d.teacher.parameters())
    out["loss"].backward()
    assert all(p.grad is not None for p in d.student.parameters() if p.requires_grad)
    assert all(p.grad is None for p in d.teacher.parameters())
    opt = torch.optim.Adam(d.student.parameters())
    opt.step()
    assert len(opt.state) == sum(1 for _ in d.student.parameters())  # no optimiser state for the teacher
    with pytest.raises(ValueError, match="needs a teacher"):
        igkd.Distiller(student, None, method="kd")


def _toy(n: int = 24, size: int = 16, seed: int = 0) -> Images:
    g = torch.Generator().manual_seed(seed)
    return Images(torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8), torch.arange(n) % 3)


def test_compute_maps_is_precompute_igs_store_and_refuses_a_changed_dataset(tmp_path):
    torch.manual_seed(0)
    teacher = igkd.create_model("cifar_mobilenet_v2", 3, width_mult=0.25).eval()
    data = _toy()
    store = igkd.compute_maps(teacher, data, tmp_path / "maps", n_steps=4, chunk_size=8, normalize=((0.5,) * 3,
                                                                                                   (0.25,) * 3))
    assert isinstance(store, igkd.MapStore) and len(store) == 24 and store.shape == (24, 16, 16)
    meta = json.loads((tmp_path / "maps" / "meta.json").read_text())
    assert meta["complete"] and meta["n_steps"] == 4 and meta["num_chunks"] == 3
    # The store is the CLI's: the identity igkd precompute-ig builds for these images and teacher opens it.
    from igkd.attribution import StoreIdentity
    from igkd.convention import InputConvention
    from igkd.data.image_dataset import ImageDataset
    from igkd.models import state_dict_hash

    ds = ImageDataset("dataset", data.x, data.y, ["0", "1", "2"])
    identity = StoreIdentity.of(ds, state_dict_hash(teacher), InputConvention((0.5,) * 3, (0.25,) * 3), n_steps=4)
    assert igkd.MapStore.open(tmp_path / "maps", expect=identity).meta["fingerprint"] == ds.fingerprint()
    # Again: nothing to compute, the same maps.
    again = igkd.compute_maps(teacher, data, tmp_path / "maps", n_steps=4, normalize=((0.5,) * 3, (0.25,) * 3))
    assert np.array_equal(np.asarray(again.maps), np.asarray(store.maps))
    # Streamed (the dataset read a chunk at a time, never whole): the same store, bit for bit.
    streamed = igkd.compute_maps(teacher, data, tmp_path / "streamed", n_steps=4, chunk_size=8,
                                 normalize=((0.5,) * 3, (0.25,) * 3), streaming=True)
    assert np.array_equal(np.asarray(streamed.maps), np.asarray(store.maps))
    assert streamed.meta["fingerprint"] == meta["fingerprint"]
    # Read (fingerprint, teacher check, chunks) by two DataLoader processes: the same store again.
    workers = igkd.compute_maps(teacher, data, tmp_path / "workers", n_steps=4, chunk_size=8,
                                normalize=((0.5,) * 3, (0.25,) * 3), streaming=True, loader_workers=2)
    assert np.array_equal(np.asarray(workers.maps), np.asarray(store.maps))
    assert workers.meta["teacher_check"] == meta["teacher_check"]
    with pytest.raises(ConfigError, match="loader_workers must be >= 0, got -1"):
        igkd.compute_maps(teacher, data, tmp_path / "bad", n_steps=4, streaming=True, loader_workers=-1)
    opened = igkd.compute_maps(teacher, data, tmp_path / "maps", n_steps=4, normalize=((0.5,) * 3, (0.25,) * 3),
                               streaming=True)  # the in-memory store, recognised from the stream
    assert np.array_equal(np.asarray(opened.maps), np.asarray(store.maps))
    changed = Images(data.x.clone(), data.y)
    changed.x[5, 0, 0, 0] ^= 1  # one pixel of one image
    with pytest.raises(StaleStoreError, match="fingerprint"):
        igkd.compute_maps(teacher, changed, tmp_path / "maps", n_steps=4, normalize=((0.5,) * 3, (0.25,) * 3))
    with pytest.raises(DataError, match="8-bit"):
        igkd.compute_maps(teacher, Images(torch.rand(4, 3, 16, 16) * 0.999 + 1e-4, torch.arange(4) % 3),
                          tmp_path / "other")


def _marked(h: int = 12, w: int = 12, at: tuple[int, int] = (2, 3)):
    """An image whose pixel ``at`` is bright in every channel, and a map that is bright there alone."""
    image = torch.zeros(3, h, w, dtype=torch.uint8)
    image[:, at[0], at[1]] = 255
    maps = torch.zeros(1, h, w)
    maps[0, at[0], at[1]] = 1.0
    return Images(image[None], torch.tensor([0])), maps


def _centroid(t: torch.Tensor) -> torch.Tensor:
    t = t.double()
    rows, cols = torch.meshgrid(torch.arange(t.shape[0]), torch.arange(t.shape[1]), indexing="ij")
    return torch.stack([(t * rows).sum(), (t * cols).sum()]) / t.sum()


EXACT = [v2.RandomCrop(12, padding=4), v2.RandomHorizontalFlip(p=1.0), v2.RandomVerticalFlip(p=1.0),
         v2.RandomAffine(degrees=30, translate=(0.2, 0.2)), v2.RandomRotation(90), v2.CenterCrop(8)]
RESAMPLED = [v2.Resize(24), v2.Resize(30), v2.RandomResizedCrop(10, scale=(0.5, 1.0))]


@pytest.mark.parametrize("transform", EXACT + RESAMPLED, ids=lambda t: type(t).__name__)
def test_with_maps_moves_the_map_with_its_image(transform):
    """A marked pixel (bright in the image, the map's only non-zero value) lands in the same place in both:
    exactly for crops, flips and nearest-sampled affine maps; resized images are smoothed (bilinear) while the
    map is sampled at the nearest pixel, so there their centres agree within one pixel."""
    data, maps = _marked()
    seen = 0
    for seed in range(8):
        torch.manual_seed(seed)
        image, m, label = igkd.WithMaps(data, maps, v2.Compose([transform]))[0]
        assert label == 0 and m.shape == image.shape[-2:]
        if not (m > 0).any() and not (image[0] > 0).any():  # cropped away from both
            continue
        seen += 1
        if any(transform is t for t in EXACT):
            assert torch.equal(m > 0, image[0] == 255), (seed, torch.nonzero(m), torch.nonzero(image[0]))
        else:
            assert torch.allclose(_centroid(m), _centroid(image[0].double()), atol=1.0), seed
    assert seen >= 4


def test_photometric_transforms_leave_the_map_alone():
    data, maps = _marked()
    maps = maps + torch.linspace(0, 0.5, 144).view(1, 12, 12)
    pipeline = v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.ColorJitter(0.5, 0.5, 0.5),
                           v2.Normalize((0.5,) * 3, (0.2,) * 3), v2.RandomErasing(p=1.0)])
    torch.manual_seed(0)
    image, m, _ = igkd.WithMaps(data, maps, pipeline)[0]
    assert image.dtype == torch.float32 and not torch.equal(image, data.x[0].float() / 255)
    assert torch.equal(m, maps[0])
    plain = igkd.WithMaps(data, maps)[0]  # no transform: the item as given, with its map
    assert torch.equal(plain[0], data.x[0]) and torch.equal(plain[1], maps[0])


def test_overlay_equals_igkds_batched_overlay_for_the_same_draws():
    """Crop and flip drawn by torchvision, the overlay by Overlay; igkd's batched overlay with the very same
    crops, flips and exponent gives the same bits (METHOD.md's order: whole-map normalisation first)."""
    g = torch.Generator().manual_seed(1)
    n, h, w, pad = 6, 12, 12, 3
    images = torch.randint(0, 256, (n, 3, h, w), generator=g, dtype=torch.uint8)
    maps = torch.rand((n, h, w), generator=g) ** 3
    data = Images(images, torch.arange(n) % 3)
    positions = Images(images, torch.arange(n) % 3)
    s = 1.7
    geometric = [v2.RandomCrop(h, padding=pad), v2.RandomHorizontalFlip()]  # on uint8, as igkd's loop crops
    code = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w).expand(n, h, w)  # where each pixel came from
    for i in range(n):
        torch.manual_seed(100 + i)
        _, where, _ = igkd.WithMaps(positions, code, v2.Compose(geometric))[i]
        torch.manual_seed(100 + i)
        got, label = igkd.WithMaps(data, maps, v2.Compose([*geometric, igkd.Overlay(p=1.0, power_range=(s, s))]))[i]
        assert label == i % 3
        # igkd's CropFlip from the positions torchvision chose (rows and columns in the padded image)
        src = where.long() - 1  # source position of each output pixel; -1 in the padding
        r, c = (int(v) for v in torch.nonzero(src >= 0)[0])
        sr, sc = divmod(int(src[r, c]), w)
        flipped = bool(src[r, c + 1] < src[r, c]) if c + 1 < w and src[r, c + 1] >= 0 else \
            bool(src[r, c - 1] > src[r, c])
        rows = torch.arange(h) + (sr + pad - r)
        cols = torch.arange(w).flip(0) + (sc + pad - (w - 1 - c)) if flipped else torch.arange(w) + (sc + pad - c)
        cf = CropFlip(rows[None], cols[None], pad)
        want = apply_draws(images[i:i + 1].float() / 255, maps[i:i + 1],
                           AugmentDraws(cf, OverlayDraw(torch.tensor([True]), torch.tensor([s]))))[0]
        assert torch.equal(got, want), i
    with pytest.raises(DataError, match="WithMaps"):
        igkd.Overlay()(tv_tensors.Image(images[0]))


def test_overlay_draws_p_of_the_samples():
    data = _toy(200, 8)
    maps = torch.rand(200, 8, 8)
    torch.manual_seed(0)
    pipe = v2.Compose([igkd.Overlay(p=0.25)])  # uint8 in, float pixels in [0, 1] out
    changed = sum(not torch.equal(igkd.WithMaps(data, maps, pipe)[i][0], data.x[i].float() / 255)
                  for i in range(200))
    assert 30 <= changed <= 70  # Binomial(200, 0.25): 50 +- 6


class _Stop(Exception):
    pass


def test_fit_on_python_objects_trains_resumes_and_refuses_bad_settings(tmp_path):
    torch.manual_seed(0)
    teacher = igkd.create_model("cifar_mobilenet_v2", 3, width_mult=0.25).eval()
    train, val, test = _toy(48, 12, 0), _toy(12, 12, 1), _toy(12, 12, 2)
    maps = torch.rand(48, 12, 12)

    def distiller() -> igkd.Distiller:
        torch.manual_seed(1)
        return igkd.Distiller(igkd.create_student(teacher, remove_blocks=13), teacher, "kd_ig")

    opts = dict(batch_size=16, device="cpu", threads=1, epochs=2, augment={"crop_padding": 1, "overlay_p": 0.5})
    s = igkd.fit(distiller(), train, val, test, out=tmp_path / "run", maps=maps, **opts)
    assert s["epochs"] == 2 and s["train_images"] == 48 and s["val_images"] == 12
    assert (tmp_path / "run" / "model.pt").is_file() and (tmp_path / "run" / "best.pt").is_file()
    assert list((tmp_path / "run").glob("events.out.tfevents.*"))  # TensorBoard
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert set(json.loads(lines[0])) >= {"loss_ce", "loss_kd", "val_acc", "test_acc"}

    def stop_after_first(epoch: int, _record: dict) -> None:
        if epoch == 1:
            raise _Stop

    with pytest.raises(_Stop):  # interrupted after its first epoch ...
        igkd.fit(distiller(), train, val, test, out=tmp_path / "resumed", maps=maps, on_epoch_end=stop_after_first,
                 **opts)
    igkd.fit(distiller(), train, val, test, out=tmp_path / "resumed", maps=maps, resume=True, **opts)
    igkd.fit(distiller(), igkd.WithMaps(train, maps), val, test, out=tmp_path / "with_maps", **opts)
    whole, resumed, with_maps = (torch.load(tmp_path / d / "model.pt")["model"] for d in ("run", "resumed",
                                                                                        "with_maps"))
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)  # ... and resumed: the same weights
    assert all(torch.equal(whole[k], with_maps[k]) for k in whole)  # maps given by WithMaps: the same run

    with pytest.raises(ConfigError, match="already holds a run"):
        igkd.fit(distiller(), train, val, test, out=tmp_path / "run", maps=maps, **opts)

    # What the run records is what it was given: config.yaml holds only the sections that describe a Python
    # run (no data source, teacher, student or IG defaults that describe nothing); inputs.json the rest
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert set(config) == {"data", "augment", "distill", "train", "track"}
    assert config["data"] == {"streaming": False, "loader_workers": 0} and "maps" not in config["augment"]
    assert config["augment"]["crop_padding"] == 1 and config["distill"]["method"] == "kd_ig"
    inputs = json.loads((tmp_path / "run" / "inputs.json").read_text())
    assert inputs["train"]["images"] == 48 and inputs["val"]["images"] == 12 and inputs["test"]["images"] == 12
    assert inputs["image_shape"] == [3, 12, 12] and inputs["maps"]["kind"] == "tensor"
    assert inputs["teacher"]["weights_sha256"] and inputs["student"]["params"] == s["params"]
    assert "inputs.json" in json.loads((tmp_path / "run" / "summary.json").read_text())["files"]
    # a resume must be given what the run began with: one label changed, or another teacher, is refused
    y = train.y.clone()
    y[0] = (y[0] + 1) % 3
    with pytest.raises(ConfigError, match=r"other inputs \(train.labels_sha256"):
        igkd.fit(distiller(), Images(train.x, y), val, test, out=tmp_path / "run", maps=maps, resume=True, **opts)
    other = igkd.create_model("cifar_mobilenet_v2", 3, width_mult=0.25).eval()
    with pytest.raises(ConfigError, match=r"other inputs \(teacher.weights_sha256"):
        igkd.fit(igkd.Distiller(igkd.create_student(teacher, remove_blocks=13), other, "kd_ig"), train, val, test,
                 out=tmp_path / "run", maps=maps, resume=True, **opts)
    with pytest.raises(ConfigError, match="train.lr"):
        igkd.fit(distiller(), train, out=tmp_path / "bad", maps=maps, lr=-1.0, **opts)
    with pytest.raises(ConfigError, match="maps"):
        igkd.fit(distiller(), train, out=tmp_path / "nomaps", **opts)
    with pytest.raises(DataError, match="maps must be"):
        igkd.fit(distiller(), train, out=tmp_path / "badmaps", maps=maps[:10], **opts)


def test_a_run_of_fit_and_a_run_igkd_builds_do_not_resume_each_other(tmp_path):
    from igkd.config import Config
    from igkd.runs import RunDir

    cfg = Config()
    with RunDir(tmp_path / "cli").claim(cfg, False, {}):
        pass
    with pytest.raises(ConfigError, match="built from a config, not one of igkd.fit"), \
            RunDir(tmp_path / "cli").claim(cfg, True, {}, inputs={"source": "python"}):
        pass
    python_run = RunDir(tmp_path / "py")
    with python_run.claim(cfg, False, {}, inputs={"source": "python", "maps": {"path": "/a", "sha256": "1"}}):
        pass
    assert set(yaml.safe_load(python_run.file("config.yaml").read_text())) == {"data", "augment", "distill",
                                                                                "train", "track"}
    assert python_run.saved_config().identity() == cfg.identity()  # the rest is read back as the defaults
    with pytest.raises(ConfigError, match="holds a run of igkd.fit"), python_run.claim(cfg, True, {}):
        pass
    with pytest.raises(ConfigError, match=r"other inputs \(maps.sha256: 1 then, 2 now\)"), \
            python_run.claim(cfg, True, {}, inputs={"source": "python", "maps": {"path": "/a", "sha256": "2"}}):
        pass
    # where a store lives is not what it holds: a moved store resumes; so does streamed data, whose pixels'
    # digest is not taken (null), but not other labels
    with python_run.claim(cfg, True, {}, inputs={"source": "python", "maps": {"path": "/b", "sha256": "1"}}):
        pass
    began = {"source": "python", "streaming": False, "train": {"labels_sha256": "a", "pixels_sha256": "p"}}
    with RunDir(tmp_path / "streamed").claim(cfg, False, {}, inputs=began):
        pass
    with RunDir(tmp_path / "streamed").claim(cfg, True, {}, inputs={
            "source": "python", "streaming": True, "train": {"labels_sha256": "a", "pixels_sha256": None}}):
        pass
    with pytest.raises(ConfigError, match=r"train.labels_sha256: a then, b now"), RunDir(tmp_path / "streamed").claim(
            cfg, True, {}, inputs={"source": "python", "streaming": True,
                                   "train": {"labels_sha256": "b", "pixels_sha256": None}}):
        pass


def test_evaluate_export_and_bench_through_the_public_names(tmp_path):
    train, test = fashion_mnist(100, 300)
    teacher = igkd.create_model(**FM_TEACHER)
    r = igkd.evaluate(teacher, test, normalize=FM_NORMALIZE)
    assert r["images"] == 300 and r["accuracy"] > 85 and len(r["confusion_matrix"]) == 10
    assert igkd.evaluate(teacher, test)["accuracy"] < r["accuracy"]  # un-normalised pixels: the wrong convention
    assert igkd.evaluate(teacher, test, normalize=FM_NORMALIZE, batch_size=64, streaming=True) == r  # read in batches
    assert igkd.evaluate(teacher, test, normalize=FM_NORMALIZE, batch_size=64, streaming=True,
                         loader_workers=2) == r  # read by two DataLoader processes
    assert teacher.training  # its mode restored
    student = igkd.create_student(teacher, remove_blocks=11)
    path = igkd.export_onnx(student, tmp_path / "s.onnx", (1, 28, 28), normalize=FM_NORMALIZE)
    import onnx

    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(meta["igkd.mean"]) == [0.2860]
    b = igkd.bench(student, (1, 28, 28), batch_sizes=(1,), warmup=1, min_repeats=3, min_time_s=0.0)
    rows = b["models"][0]["latency"]
    assert {r["runtime"] for r in rows} == {"torch", "onnxruntime"} and all(r["median_ms"] > 0 for r in rows)
    assert b["models"][0]["params"] == sum(p.numel() for p in student.parameters())


def test_igkd_fit_and_igkd_distill_give_the_same_run_bit_for_bit(tmp_path):
    """One result, two doors: `igkd distill` from a preset, and igkd.fit on Python objects (the same images,
    split, teacher, student initialisation, maps and settings) train the same weights and log the same
    metrics. The IG maps of igkd.compute_maps are those of `igkd precompute-ig`, to the bit."""
    require(FASHION_MNIST, "Fashion-MNIST")
    from igkd.cli import main
    from igkd.config import load_config
    from igkd.pipeline import load_datasets, training_data
    from igkd.utils import derive_seed

    sets = ["data.train_size=300", "data.test_size=200", "train.epochs=1", "train.device=cpu", "train.threads=1",
            "ig.n_steps=4", "ig.chunk_size=150", f"ig.cache_dir={tmp_path / 'ig'}", "track.tensorboard=false"]
    args = ["-c", "demo-fashion-mnist", *(a for s in sets for a in ("--set", s))]
    assert main(["precompute-ig", *args]) == 0
    assert main(["distill", *args, "--out", str(tmp_path / "cli")]) == 0

    # The same data as Python objects: the preset's subset and its seeded split.
    cfg = load_config(ROOT / "src" / "igkd" / "configs" / "demo-fashion-mnist.yaml", sets)
    ds = load_datasets(cfg)
    split = training_data(ds, cfg.data.val_fraction, cfg.train.seed)
    train = Images(ds.train.x[split.train_pos], ds.train.y[split.train_pos])
    val = Images(ds.train.x[split.val_pos], ds.train.y[split.val_pos])
    test = Images(ds.test.x, ds.test.y)

    torch.manual_seed(derive_seed(cfg.train.seed, "init"))  # as igkd distill initialises with train.seed
    teacher = igkd.create_model(**FM_TEACHER)
    student = igkd.create_student(teacher, remove_blocks=11)
    store = igkd.compute_maps(teacher.eval(), Images(ds.train.x, ds.train.y), tmp_path / "maps", n_steps=4,
                              normalize=FM_NORMALIZE, chunk_size=150, progress=False)
    cli_store = next((tmp_path / "ig").iterdir())
    assert np.array_equal(np.load(cli_store / "maps.npy"), np.asarray(store.maps))
    summary = igkd.fit(igkd.Distiller(student, teacher, "kd_ig"), train, val, test, out=tmp_path / "py", epochs=1,
                       maps=store.load_all()[split.train_pos], normalize=FM_NORMALIZE, augment={"crop_padding": 2},
                       device="cpu", threads=1, progress=False)
    assert summary["train_images"] == 270

    cli_w, py_w = (torch.load(tmp_path / d / "model.pt")["model"] for d in ("cli", "py"))
    assert cli_w.keys() == py_w.keys() and all(torch.equal(cli_w[k], py_w[k]) for k in cli_w)

    def metrics(d: str) -> list[dict]:
        rows = [json.loads(line) for line in (tmp_path / d / "metrics.jsonl").read_text().splitlines()]
        return [{k: v for k, v in r.items() if k != "epoch_time_s"} for r in rows]

    assert metrics("cli") == metrics("py") and metrics("py")[0]["loss_kd"] > 0


def test_fit_streamed_from_the_users_datasets_is_the_in_memory_run(tmp_path):
    """igkd.fit(streaming=True) reads the datasets and the store's maps a batch at a time, in a background
    thread, and gives the run the in-memory path gives, bit for bit (issue 25: where data lives is not
    what a run is)."""
    torch.manual_seed(0)
    teacher = igkd.create_model("cifar_mobilenet_v2", 3, width_mult=0.25).eval()
    train, val, test = _toy(40, 12, 0), _toy(12, 12, 1), _toy(12, 12, 2)
    store = igkd.compute_maps(teacher, train, tmp_path / "maps", n_steps=4, chunk_size=16)

    def run(name: str, streaming: bool, loader_workers: int = 0) -> dict:
        torch.manual_seed(1)
        distiller = igkd.Distiller(igkd.create_student(teacher, remove_blocks=13), teacher, "kd_ig")
        return igkd.fit(distiller, train, val, test, out=tmp_path / name, maps=store, streaming=streaming,
                        batch_size=16, device="cpu", threads=1, epochs=2, loader_workers=loader_workers,
                        augment={"crop_padding": 1, "overlay_p": 0.5})

    memory, streamed = run("memory", False), run("streamed", True)
    workers = run("workers", True, loader_workers=2)  # two DataLoader processes read the batches instead
    a, b, c = (torch.load(tmp_path / d / "model.pt")["model"] for d in ("memory", "streamed", "workers"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) and torch.equal(a[k], c[k]) for k in a)
    for key in ("test_acc_last", "val_acc_best", "test_acc_at_best_val", "train_images", "val_images"):
        assert memory[key] == streamed[key] == workers[key], key
    assert yaml.safe_load((tmp_path / "workers" / "config.yaml").read_text())["data"]["loader_workers"] == 2
    on_device = [json.loads((tmp_path / d / "env.json").read_text())["fast_path"]["data_on_device"]
                 for d in ("memory", "streamed")]
    assert on_device == [True, False]  # each run records where its data lived
