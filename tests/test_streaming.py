"""Data at the user's scale: the decoded cache, streamed runs equal to in-memory ones, presets that follow
the data and the model."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from igkd import errors, pipeline
from igkd.attribution import MapStore
from igkd.cli import resolve_config_path
from igkd.config import load_config
from igkd.data import cache, compute_convention, load_dataset
from igkd.data.augment import augment_batch, draw_batches, plan_padding
from igkd.errors import ConfigError, DataError, IgkdWarning
from igkd.fileio import NpyRows, read_run_metrics
from igkd.runs import RunDir, load_state_dict

from .toy_data import toy_settings, write_image_folder, write_quadrants_npz


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(errors, "_said", set())  # warn_once speaks once per process


def test_the_cache_of_an_image_folder_is_the_in_memory_load_and_is_built_once(tmp_path):
    root = write_image_folder(tmp_path / "folder", sizes=(12,), per_class=5)
    in_memory = load_dataset("image_folder", "train", root=root)
    streamed = load_dataset("image_folder", "train", root=root, streaming=True, cache_root=tmp_path / "c")
    assert isinstance(streamed.x, NpyRows) and streamed.on_disk
    assert torch.equal(streamed.x[:], in_memory.x) and torch.equal(streamed.y, in_memory.y)
    assert streamed.fingerprint() == in_memory.fingerprint() == streamed.subset(torch.arange(len(streamed))).fingerprint()
    pos = torch.tensor([7, 2, 19, 2])
    assert torch.equal(streamed.x[pos], in_memory.x[pos])
    assert torch.equal(streamed.subset(pos).x[1:3], in_memory.x[pos[1:3]])
    folder = next((tmp_path / "c" / "images").iterdir())
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["complete"] and meta["fingerprint"] == in_memory.fingerprint()
    # the mean and std of a cached split are computed once and kept beside it, the numbers of the in-memory load
    assert compute_convention(streamed) == compute_convention(in_memory) == compute_convention(streamed)
    assert json.loads((folder / "convention.json").read_text())["fingerprint"] == in_memory.fingerprint()
    stamp = (folder / "images.npy").stat().st_mtime_ns
    again = load_dataset("image_folder", "train", root=root, streaming=True, cache_root=tmp_path / "c")
    assert (folder / "images.npy").stat().st_mtime_ns == stamp and again.fingerprint() == in_memory.fingerprint()
    # resized on load: the cache of the resized images is another cache, equal to the in-memory resize
    resized = load_dataset("image_folder", "train", root=root, image_size=8, streaming=True, cache_root=tmp_path / "c")
    assert torch.equal(resized.x[:], load_dataset("image_folder", "train", root=root, image_size=8).x)


def test_the_cache_names_the_first_bad_file_as_the_in_memory_load_does(tmp_path, monkeypatch):
    """The header pass reads the files' headers in several threads, batch by batch: the file it names is
    still the first bad one in file order (here two bad files, in the second and third batch of 512)."""
    from PIL import Image

    monkeypatch.setenv("IGKD_DECODE_THREADS", "3")
    folder = tmp_path / "folder" / "train" / "class0"
    folder.mkdir(parents=True)
    for i in range(1200):
        Image.new("L", (6, 5) if i == 1100 else (4, 4), color=i % 256).save(folder / f"{i:04d}.png")
    (folder / "0700.png").write_bytes(b"not a png")
    root = tmp_path / "folder"
    errors_seen = []
    for streaming in (False, True):
        with pytest.raises(DataError) as e:
            load_dataset("image_folder", "train", root=root, streaming=streaming, cache_root=tmp_path / "c")
        errors_seen.append(str(e.value))
    assert "0700.png is unreadable" in errors_seen[0] and errors_seen[1] == errors_seen[0]
    (folder / "0700.png").unlink()
    with pytest.raises(DataError, match="1100.png is 6x5"):
        load_dataset("image_folder", "train", root=root, streaming=True, cache_root=tmp_path / "c")
    assert not (tmp_path / "c").exists() or not any((tmp_path / "c").rglob("meta.json"))  # no cache begun


def test_the_listing_key_is_each_files_resolved_path_time_and_size(tmp_path, monkeypatch):
    """One system call a file, the key of ``(str(p.resolve()), st_mtime_ns, st_size)`` all the same: through
    a linked class folder, a linked file and a relative root."""
    from igkd.data import loaders

    root = write_image_folder(tmp_path / "folder", sizes=(6,), per_class=2)
    (root / "train" / "class0" / "link.png").symlink_to(root / "test" / "class1" / next(
        (root / "test" / "class1").iterdir()).name)
    elsewhere = tmp_path / "elsewhere"
    (root / "train" / "class1").rename(elsewhere)
    (root / "train" / "class1").symlink_to(elsewhere)
    monkeypatch.chdir(tmp_path)
    files, _labels, _classes = loaders._folder_listing("train", Path("folder"))
    assert Path("folder/train/class0/link.png") in files and any(str(f).startswith("folder/train/class1/") for f in files)
    expected = tuple((str(p.resolve()), p.stat().st_mtime_ns, p.stat().st_size) for p in files)
    assert loaders._stat_key(files) == expected
    assert any(w.startswith(str(elsewhere)) for w, _, _ in expected) and expected[0][0].startswith("/")


def test_a_killed_build_resumes_and_a_changed_cache_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "CHUNK_BYTES", 3 * 12 * 12 * 10)  # chunks of 10 images
    monkeypatch.setenv("IGKD_DECODE_THREADS", "3")  # each chunk decoded in 3 slices at once
    root = write_image_folder(tmp_path / "folder", sizes=(12,), per_class=8)  # 32 training images: 4 chunks
    source = load_dataset.__globals__["_folder_source"]("train", root, None)
    shape, read = source.layout()
    calls = []

    def failing_layout():
        def failing_read(s, e):
            calls.append(s)
            if s == 20:
                raise KeyboardInterrupt  # killed in the middle of the third chunk
            return read(s, e)
        return shape, failing_read

    folder = cache.cache_folder(tmp_path / "c", source, "train")
    killed = cache.CacheSource(source.name, source.key, source.labels, source.classes, failing_layout)
    with pytest.raises(KeyboardInterrupt):
        cache.open_or_build(folder, killed)
    assert sorted(p.name for p in (folder / "done").iterdir()) == ["000000.json", "000001.json"]
    assert not json.loads((folder / "meta.json").read_text())["complete"] and not (folder / ".igkd.lock").exists()
    resumed_calls = []

    def counting_layout():
        return shape, lambda s, e: resumed_calls.append((s, e)) or read(s, e)

    ds = cache.open_or_build(folder, cache.CacheSource(source.name, source.key, source.labels, source.classes,
                                                       counting_layout))
    # only the chunks without a record (20..29 in 3 slices, 30..31 in 2), read once each
    assert sorted(resumed_calls) == [(20, 23), (23, 27), (27, 30), (30, 31), (31, 32)]
    assert torch.equal(ds.x[:], load_dataset("image_folder", "train", root=root).x)

    other = cache.CacheSource(source.name, {**source.key, "files": "another listing"}, source.labels,
                              source.classes, source.layout)
    with pytest.raises(DataError, match="was built from other files .* delete it to rebuild it"):
        cache.open_or_build(folder, other)
    with open(folder / "images.npy", "r+b") as f:  # one pixel flipped on disk
        f.seek(-1, os.SEEK_END)
        byte = f.read(1)
        f.seek(-1, os.SEEK_END)
        f.write(bytes([byte[0] ^ 1]))
    with pytest.raises(DataError, match="do not match the sha256 recorded .* delete it to rebuild it"):
        cache.open_or_build(folder, source)


def test_streaming_auto_chooses_by_size_against_free_memory(tmp_path, monkeypatch, fresh_warnings):
    root = write_image_folder(tmp_path / "folder", sizes=(12,), per_class=5)
    cfg = load_config(None, ["data.name=image_folder", f"data.root={root}"])
    assert cfg.data.streaming == "auto"
    assert pipeline.streams(cfg) is False  # 30 tiny images
    monkeypatch.setattr(pipeline, "_available_memory", lambda: 20_000)  # 30 x (3 + 2) x 144 bytes > half of it
    with pytest.warns(IgkdWarning, match=r"data.streaming=auto: the data is 0.0 GiB decoded, more than half the "
                      r"free memory: streaming it"):
        assert pipeline.streams(cfg) is True
    assert pipeline.streams(load_config(None, ["data.streaming=false"])) is False
    assert pipeline.streams(load_config(None, ["data.streaming=true"])) is True
    # where the data lives is not what a run is
    assert load_config(None, ["data.streaming=true"]).identity() == load_config(None, []).identity()
    with pytest.raises(ConfigError, match=r"bad value for data.streaming: 'sometimes' \(allowed: auto, true or false\)"):
        load_config(None, ["data.streaming=sometimes"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::igkd.errors.IgkdWarning")  # a teacher of one epoch explains little
def test_a_streamed_pipeline_is_the_in_memory_pipeline_bit_for_bit(tmp_path, monkeypatch):
    """``train-teacher``, ``precompute-ig`` and ``distill`` (kd_ig: the teacher's outputs and the overlay
    read from the map store by position) with data.streaming=true and false: the same weights and metrics,
    and one map store serves both (the cache's fingerprint is the dataset's)."""
    monkeypatch.setenv("IGKD_CACHE", str(tmp_path / "cache"))
    data = write_quadrants_npz(tmp_path / "toy.npz", n_train=96, n_test=40)
    base = [*toy_settings(data, tmp_path), "teacher_train.epochs=1", "augment.overlay_p=0.5",
            "augment.flip=true", "data.val_fraction=0.2"]
    out = {}
    for streaming in ("false", "true"):
        cfg = load_config(None, [*base, f"data.streaming={streaming}"])
        teacher_dir = tmp_path / f"teacher-{streaming}"
        pipeline.train_teacher(cfg, teacher_dir, progress=False)
        cfg = load_config(None, [*base, f"data.streaming={streaming}", f"teacher.checkpoint={teacher_dir / 'model.pt'}"])
        pipeline.precompute(cfg, progress=False)
        pipeline.distill(cfg, tmp_path / f"student-{streaming}", progress=False)
        noise = load_config(None, [*base, f"data.streaming={streaming}", f"teacher.checkpoint={teacher_dir / 'model.pt'}",
                                   "augment.maps=noise", "train.epochs=1"])
        pipeline.distill(noise, tmp_path / f"noise-{streaming}", progress=False)  # noise maps read by position
        out[streaming] = [RunDir(tmp_path / f"{role}-{streaming}") for role in ("teacher", "student", "noise")]
    assert any((tmp_path / "cache" / "images").iterdir()) and any((tmp_path / "cache" / "noise").iterdir())
    for memory, streamed in zip(out["false"], out["true"]):
        a, b = load_state_dict(memory.file("model.pt")), load_state_dict(streamed.file("model.pt"))
        assert all(torch.equal(a[k], b[k]) for k in a)
        strip = [[{k: v for k, v in h.items() if k != "epoch_time_s"} for h in read_run_metrics(r.path)]
                 for r in (memory, streamed)]
        assert strip[0] == strip[1]
        assert json.loads(streamed.file("env.json").read_text())["fast_path"]["data_on_device"] is False


@pytest.mark.parametrize("n,h,w", [(33, 4, 4), (37, 28, 28), (17, 1, 3), (100, 4, 12), (1, 4, 4)])
def test_streamed_noise_maps_are_the_in_memory_noise_maps(tmp_path, monkeypatch, n, h, w):
    """Drawn 16 images at a time (a last range of fewer than 16 numbers joins the one before) and upsampled
    a batch at a time: the numbers of one draw over all images."""
    from igkd.data import control_maps

    monkeypatch.setattr(control_maps, "NOISE_CHUNK_ROWS", 16)
    whole = control_maps.noise_maps(n, h, w, seed=7)
    rows = control_maps.streamed_noise_maps(n, h, w, seed=7, root=tmp_path)
    pos = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    assert rows.shape == whole.shape and rows.dtype == whole.dtype and len(rows) == n
    assert torch.equal(rows[:], whole) and torch.equal(rows[pos], whole[pos]) and torch.equal(rows[0], whole[0])
    assert torch.equal(rows.subset(pos)[: n // 2], whole[pos[: n // 2]])
    (file,) = tmp_path.iterdir()
    assert file.stat().st_size < whole.numel() * 4 // 10 + 1024  # a sixteenth of the maps (and a header)
    stamp = file.stat().st_mtime_ns
    again = control_maps.streamed_noise_maps(n, h, w, seed=7, root=tmp_path)  # written once
    assert file.stat().st_mtime_ns == stamp and torch.equal(again[:], whole)
    assert not torch.equal(control_maps.streamed_noise_maps(n, h, w, seed=8, root=tmp_path)[:], whole)


def test_map_store_rows_are_load_all_read_by_position_and_checked(tmp_path):
    rng = np.random.default_rng(0)
    maps = rng.random((20, 6, 6)).astype(np.float16)
    (tmp_path / "s").mkdir()
    np.save(tmp_path / "s" / "maps.npy", maps)
    digest = __import__("hashlib").sha256(maps.tobytes()).hexdigest()
    store = MapStore(tmp_path / "s", {"maps_sha256": digest, "shape": [20, 6, 6], "dtype": "float16"})
    rows = store.rows()
    assert torch.equal(rows[torch.tensor([3, 1, 19])], store.load_all()[[3, 1, 19]])
    maps[4, 0, 0] = np.inf
    np.save(tmp_path / "s" / "maps.npy", maps)
    with pytest.raises(errors.NumericalError, match=r"non-finite values \(maps of positions \[4\]"):
        store.rows()
    maps[4, 0, 0] = 0.5
    np.save(tmp_path / "s" / "maps.npy", maps)
    with pytest.raises(errors.StaleStoreError, match="does not match the sha256"):
        store.rows()


def test_an_epoch_plan_keeps_three_numbers_per_image_and_draws_what_augment_batch_draws():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    images = torch.rand(24, 3, 9, 7)
    plan = draw_batches([16, 8], 9, 7, 2, True, g1)
    assert plan.crop_flip.row0.shape == (24,)  # not (24, 9) and (24, 7)
    expected = torch.cat([augment_batch(images[:16], None, g2, 2), augment_batch(images[16:], None, g2, 2)])
    from igkd.data.augment import apply_draws

    got = torch.cat([apply_draws(images[:16], None, plan.rows(0, 16)), apply_draws(images[16:], None, plan.rows(16, 24))])
    assert torch.equal(got, expected)


def test_crop_padding_follows_the_image_size(fresh_warnings):
    assert plan_padding(2, 28, (28, 28)) == 2 and plan_padding(4, None, (8, 8)) == 4
    assert plan_padding(2, 28, (8, 8)) == 1 and plan_padding(4, 32, (64, 64)) == 8 and plan_padding(0, 28, (8, 8)) == 0
    assert plan_padding("auto", None, (8, 8)) == 1 and plan_padding("auto", None, (224, 160)) == 20
    cfg = load_config(resolve_config_path("cpu-fashion-mnist"))
    with pytest.warns(IgkdWarning, match=r"augment.crop_padding 2 was written for 28x28 images "
                      r"\(augment.crop_padding_for\), these are 8x8: using 1 instead"):
        aug = pipeline.augment_for(cfg, (8, 8))
    assert aug.crop_padding == 1
    assert pipeline.augment_for(cfg, (28, 28)).crop_padding == 2
    with pytest.warns(IgkdWarning, match=r"augment.crop_padding=auto: 4 pixels for 32x32 images"):
        assert pipeline.augment_for(load_config(None, ["augment.crop_padding=auto"]), (32, 32)).crop_padding == 4


def test_a_presets_mobilenet_keys_step_aside_for_the_users_own_teacher(tmp_path, fresh_warnings):
    preset = resolve_config_path("cpu-fashion-mnist")
    with pytest.warns(IgkdWarning, match=r"teacher.arch=resnet18: the preset's teacher.width_mult, teacher.strides, "
                      r"teacher.strides_for, teacher.dropout shape cifar_mobilenet_v2 only and are left out"):
        cfg = load_config(preset, ["teacher.arch=resnet18", "student.arch=mobilenet_v3_small"])
    assert cfg.teacher.arch == "resnet18" and cfg.teacher.width_mult == 1.0 and cfg.teacher.strides == "auto"
    assert cfg.data.train_size == 6000  # the rest of the preset stays
    # a key the user set is still refused, on the command line or in a file of their own
    with pytest.raises(ConfigError, match=r"bad value for teacher.width_mult: 0.5 \(allowed: 1.0: it shapes "
                       r"cifar_mobilenet_v2 only, not teacher.arch=resnet18\)"):
        load_config(preset, ["teacher.arch=resnet18", "teacher.width_mult=0.5"])
    own = tmp_path / "mine.yaml"
    own.write_text(preset.read_text())
    with pytest.raises(ConfigError, match=r"bad value for teacher.width_mult: 0.35"):
        load_config(own, ["teacher.arch=resnet18"])
    assert load_config(preset).teacher.width_mult == 0.35  # the preset as shipped


def test_the_imagenet_evaluation_set_streams_from_its_cache(tmp_path):
    from igkd.data.imagenet import load_imagenet_cifar10

    from .test_imagenet import make_folder

    make_folder(tmp_path / "val")
    in_memory = load_imagenet_cifar10(tmp_path, image_size=4)
    streamed = load_imagenet_cifar10(tmp_path, image_size=4, streaming=True, cache_root=tmp_path / "c")
    assert streamed.on_disk and torch.equal(streamed.x[:], in_memory.x)
    assert torch.equal(streamed.index, in_memory.index) and torch.equal(streamed.y, in_memory.y)
    assert streamed.fingerprint() == in_memory.fingerprint()


def test_decode_threads_come_from_the_cpus_or_the_environment(monkeypatch):
    monkeypatch.delenv("IGKD_DECODE_THREADS", raising=False)
    assert 1 <= cache.decode_threads() <= 8
    monkeypatch.setenv("IGKD_DECODE_THREADS", "5")
    assert cache.decode_threads() == 5
    monkeypatch.setenv("IGKD_DECODE_THREADS", "many")
    with pytest.raises(DataError, match="IGKD_DECODE_THREADS must be a whole number, got 'many'"):
        cache.decode_threads()


class _ReadLog(torch.utils.data.Dataset):
    """A user's dataset that notes which process read each item (a file per process under ``log``)."""

    def __init__(self, x: torch.Tensor, log: Path):
        self.x, self.log = x, log

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        (self.log / str(os.getpid())).touch()
        return self.x[i], i % 3


def test_a_streamed_fingerprint_read_by_worker_processes_is_the_in_memory_one(tmp_path):
    """The store check of a streamed fit reads its images in the loader's processes: the same digest, chunk
    boundaries (4,096 images) included, and the reads happen in other processes."""
    from igkd.api.data import image_dataset_from, streamed_dataset_from

    x = torch.randint(0, 256, (4100, 1, 2, 3), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    log = tmp_path / "pids"
    log.mkdir()
    data = _ReadLog(x, log)
    in_memory = image_dataset_from(data).fingerprint()
    for p in log.iterdir():
        p.unlink()
    streamed = streamed_dataset_from(data)
    for p in log.iterdir():  # the first image, read for the shape
        p.unlink()
    assert streamed.fingerprint(workers=2) == in_memory
    assert {p.name for p in log.iterdir()} - {str(os.getpid())}, "no worker process read the images"
    assert streamed_dataset_from(data).subset(torch.arange(4100)).fingerprint() == in_memory


def test_a_streamed_datasets_labels_pass_runs_in_worker_processes_and_names_a_bad_item(tmp_path):
    """Without ``targets``, a streamed dataset's labels come from one pass over its items: in the loader's
    processes when it has some (the same labels), and an item that is not (image, label) is named."""
    from igkd.api.data import image_dataset_from, streamed_dataset_from

    x = torch.zeros((600, 1, 2, 2), dtype=torch.uint8)
    log = tmp_path / "pids"
    log.mkdir()
    data = _ReadLog(x, log)
    one = streamed_dataset_from(data)
    for p in log.iterdir():
        p.unlink()
    two = streamed_dataset_from(data, workers=2)
    assert torch.equal(one.y, two.y) and torch.equal(two.y, torch.arange(600) % 3)
    assert {p.name for p in log.iterdir()} - {str(os.getpid())}, "no worker process read the labels"

    class Bad(_ReadLog):
        def __getitem__(self, i: int):
            return (self.x[i],) if i == 517 else super().__getitem__(i)

    for workers in (0, 2):
        with pytest.raises(DataError, match=r"^dataset\[517\] must be \(image, label\) with an integer label, "
                                            r"got tuple of 1$"):
            streamed_dataset_from(Bad(x, log), workers=workers)

    class Named(_ReadLog):  # a label that is a class name, not its index
        def __getitem__(self, i: int):
            return self.x[i], "shirt"

    with pytest.raises(DataError, match=r"^dataset\[0\] must be .* got tuple of 2 whose label is str$"):
        image_dataset_from(Named(x, log))
