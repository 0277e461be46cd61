"""Data-parallel training (DDP over gloo, 2 processes on the CPU) and the GPU fast-path options.

The equivalence test trains a student *without batch norm*: on the CPU each process normalises its own
half of the batch (PyTorch's SyncBatchNorm runs on GPUs only), so only a model without batch norm in
training mode can match one process exactly. The teacher keeps its batch norm: it is always in eval
mode. Everything else - sharding by index, the maps moving with their images, the augmentation
draws, loss weighting, metric and evaluation reduction, rank-0 checkpoints, resume - is exercised.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from igkd import distributed
from igkd.config import AugmentConfig, DistillConfig, TrainConfig
from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.data.sources import DatasetRows
from igkd.distill import trainer
from igkd.distill.methods import Distiller
from igkd.distill.trainer import TrainingData, fit
from igkd.errors import ConfigError
from igkd.fileio import NpyRows
from igkd.models import cifar_mobilenet_v2, truncated_student
from igkd.runs import RunDir, load_state_dict

from .toy_data import toy_settings, write_quadrants_npz

TIMES = {"epoch_time_s"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _without_batch_norm(module: nn.Module) -> nn.Module:
    for name, child in list(module.named_children()):
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.Identity())
        else:
            _without_batch_norm(child)
    return module


def _setup(method: str = "kd_ig_at", n_train: int = 84, student_bn: bool = False):
    """A 4-class 3x12x12 toy set with maps, a width-0.25 teacher (eval mode) and a k=11 student."""
    g = torch.Generator().manual_seed(0)
    n = n_train + 12
    train = ImageDataset("toy", torch.randint(0, 256, (n, 3, 12, 12), dtype=torch.uint8, generator=g),
                         torch.arange(n) % 4, list("abcd"))
    test = ImageDataset("toy", torch.randint(0, 256, (30, 3, 12, 12), dtype=torch.uint8, generator=g),
                        torch.arange(30) % 4, list("abcd"))
    maps = torch.rand(n, 12, 12, generator=g)
    torch.manual_seed(1)
    teacher = cifar_mobilenet_v2(num_classes=4, width_mult=0.25, strides=[1, 1, 2, 2, 1]).eval()
    student = truncated_student(teacher, 11)
    if not student_bn:
        _without_batch_norm(student)
    distiller = Distiller.from_config(student, teacher, method, DistillConfig(), at_layer=4)
    data = TrainingData(train, test, torch.arange(n_train), torch.arange(n_train, n),
                        InputConvention((0.5,) * 3, (0.25,) * 3))
    return distiller, data, maps


_READS: list[int] = []  # the rows of train.npy read by _LoggedRows, in this process


class _LoggedRows(NpyRows):
    """NpyRows that notes every row of the file it reads (to see which rows a rank reads)."""

    def read(self, positions):
        _READS.extend(self._file_rows(np.asarray(positions, dtype=np.int64).reshape(-1)).tolist())
        return super().read(positions)


def _on_disk(data: TrainingData, maps: torch.Tensor, folder: Path) -> tuple[TrainingData, NpyRows]:
    """The same data written to .npy files and read back from disk a batch at a time (as a cache is)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, t in (("train", data.train.x), ("test", data.test.x), ("maps", maps)):
        np.save(folder / f"{name}.npy", t.numpy())
    train, test = (ImageDataset("toy", (_LoggedRows if s == "train" else NpyRows)(folder / f"{s}.npy"), d.y, d.classes)
                   for s, d in (("train", data.train), ("test", data.test)))
    return TrainingData(train, test, data.train_pos, data.val_pos, data.convention), NpyRows(folder / "maps.npy")


def _train(out: Path, resume: bool = False, on_epoch_end=None, streamed: bool = False, workers: int = 0,
           **train) -> tuple[list[dict], dict]:
    distiller, data, maps = _setup()
    if streamed:  # images and maps read from disk a batch at a time, ahead of the loop
        # each rank its own copy: two ranks rewriting one .npy file race (a rank may read it half-written)
        data, maps = _on_disk(data, maps, out / f"data-rank{os.environ.get('RANK', '0')}")
    cfg = TrainConfig(**{"epochs": 2, "batch_size": 15, "device": "cpu", "lr": 3e-3, **train})
    run = RunDir(out)
    run.path.mkdir(parents=True, exist_ok=True)
    source = trainer.batch_source(data, maps, torch.device("cpu"), workers=workers) if workers else None
    history = fit(distiller, data, cfg, AugmentConfig(crop_padding=2, overlay_p=0.5), run, torch.device("cpu"),
                  maps=maps, resume=resume, on_epoch_end=on_epoch_end, progress=False, source=source)
    return history, {k: v.clone() for k, v in distiller.student.state_dict().items()}


class _Crash(Exception):
    pass


def _worker(rank: int, world_size: int, port: int, tmp: str) -> None:
    """One of two ranks: an uninterrupted run, and a run that crashes mid-epoch 2 and is resumed."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    tmp_path = Path(tmp)
    with distributed.session(torch.device("cpu")) as ctx:
        assert ctx.world_size == world_size and ctx.backend == "gloo"
        history, weights = _train(tmp_path / "ddp", checkpoint_every=2)
        _READS.clear()
        streamed_history, streamed = _train(tmp_path / "ddp-streamed", checkpoint_every=2, streamed=True)
        reads = list(_READS)
        # A crash of every rank at the 5th metric reduction: epoch 2, before its step-4 checkpoint.
        original, calls = trainer._sum_over_ranks, []

        def crashing(*args):
            calls.append(1)
            if len(calls) == 5:
                raise _Crash
            return original(*args)

        trainer._sum_over_ranks = crashing
        try:
            _train(tmp_path / "cut", checkpoint_every=2)
        except _Crash:
            pass
        trainer._sum_over_ranks = original
        partial = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)["partial"]
        resumed_history, resumed = _train(tmp_path / "cut", resume=True, checkpoint_every=2)
        torch.save({"history": history, "weights": weights, "resumed_history": resumed_history,
                    "resumed": resumed, "partial_steps": partial and partial["steps"],
                    "streamed_history": streamed_history, "streamed": streamed, "reads": reads},
                   tmp_path / f"rank{rank}.pt")


def _strip(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k not in TIMES} for h in history]


@pytest.mark.slow
def test_two_processes_match_one_with_the_same_global_batch_and_resume_bitwise(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)
    single_history, single = _train(tmp_path / "single")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]

    # Every rank ends with the same weights and the same (reduced) metrics.
    assert all(torch.equal(ranks[0]["weights"][k], ranks[1]["weights"][k]) for k in single)
    assert _strip(ranks[0]["history"]) == _strip(ranks[1]["history"])
    # They match one process training on the same global batches, within float tolerance.
    for k in single:
        torch.testing.assert_close(ranks[0]["weights"][k], single[k], rtol=1e-4, atol=1e-5, msg=k)
    for two, one in zip(ranks[0]["history"], single_history):
        for key in ("loss_ce", "loss_kd", "loss_at", "loss"):
            assert two[key] == pytest.approx(one[key], rel=1e-4, abs=1e-7), key
        for key in ("train_acc", "val_acc", "test_acc"):
            assert two[key] == pytest.approx(one[key], abs=1e-9), key

    # Rank 0 alone wrote the run directory; the resumed run (from mid-epoch 2) ends bitwise equal.
    assert ranks[0]["partial_steps"] == 2
    for r in ranks:
        assert _strip(r["resumed_history"]) == _strip(r["history"])
        assert all(torch.equal(r["resumed"][k], r["weights"][k]) for k in single)
    saved = load_state_dict(tmp_path / "ddp" / "model.pt")
    assert all(torch.equal(saved[k], ranks[0]["weights"][k]) for k in single)
    metrics = [json.loads(line) for line in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert _strip(metrics) == _strip(ranks[0]["history"])
    # Each rank reading its part of every global batch from disk trains the very same run, bit for bit.
    for r in ranks:
        assert _strip(r["streamed_history"]) == _strip(r["history"])
        assert all(torch.equal(r["streamed"][k], r["weights"][k]) for k in single)
    # ... and reads only its part: together the two read each row exactly as often as one process does
    # (training batches, and validation, over 2 epochs), each about half of it.
    _READS.clear()
    _train(tmp_path / "single-streamed", streamed=True)
    one = sorted(_READS)
    assert sorted(ranks[0]["reads"] + ranks[1]["reads"]) == one
    assert all(0.4 * len(one) <= len(r["reads"]) <= 0.6 * len(one) for r in ranks)


def test_a_run_streamed_from_disk_is_the_in_memory_run_bit_for_bit(tmp_path):
    """Images, maps and the test set read from .npy files a batch at a time (by a prefetch thread, or by a
    DataLoader worker process), or from a map-style Dataset, against everything in memory: the same seed,
    the same run (a one-convolution student with the IG overlay, so the data path is what is exercised)."""
    def run(name: str, streamed: bool = False, workers: int = 0):
        _distiller, data, maps = _setup(method="student")
        if name == "dataset":  # a user's map-style Datasets of (image, label) pairs and of maps, read one by one
            train, test = (ImageDataset("toy", DatasetRows(torch.utils.data.TensorDataset(d.x, d.y)), d.y, d.classes)
                           for d in (data.train, data.test))
            data = TrainingData(train, test, data.train_pos, data.val_pos, data.convention)
            maps = DatasetRows(torch.utils.data.TensorDataset(maps), dtype=torch.float32)  # and a Dataset of maps
        elif streamed:
            data, maps = _on_disk(data, maps, tmp_path / name / "data")
        distiller = _tiny("ig")  # the student alone, with the IG overlay
        source = trainer.batch_source(data, maps, torch.device("cpu"), workers=workers) if streamed else None
        assert source is None or source.streamed
        run_dir = RunDir(tmp_path / name)
        run_dir.path.mkdir(parents=True, exist_ok=True)
        history = fit(distiller, data, TrainConfig(epochs=2, batch_size=15, device="cpu", checkpoint_every=0),
                      AugmentConfig(crop_padding=2, overlay_p=0.5), run_dir, torch.device("cpu"), maps=maps,
                      progress=False, source=source)
        return _strip(history), distiller.student.state_dict()

    history, weights = run("memory")
    for name, workers in (("thread", 0), ("worker", 1), ("dataset", 0)):
        streamed_history, streamed = run(name, streamed=True, workers=workers)
        assert streamed_history == history, name
        assert all(torch.equal(streamed[k], weights[k]) for k in weights), name


@pytest.mark.slow
def test_torchrun_launches_the_cli_with_rank_zero_writing(tmp_path):
    """``torchrun --nproc_per_node 2 -m igkd.cli distill``: a real student (batch norm per process)."""
    data = write_quadrants_npz(tmp_path / "toy.npz", n_train=96, n_test=40)
    overrides = [*toy_settings(data, tmp_path), "train.epochs=1", "train.batch_size=16", "train.checkpoint_every=2"]
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun), "--nproc_per_node", "2", "--master_port", str(_free_port()), "-m", "igkd.cli",
           "distill", "-m", "student", "--out", str(tmp_path / "run")]
    for o in overrides:
        cmd += ["--set", o]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("student: test accuracy") == 1  # rank 0 speaks for the run
    run = RunDir(tmp_path / "run")
    assert run.complete and not (run.path / ".igkd.lock").exists()
    env_json = json.loads(run.file("env.json").read_text())
    assert env_json["data_parallel"] == {"world_size": 2, "backend": "gloo", "sync_bn": False, "global_batch": 16}
    assert env_json["fast_path"]["amp"] == "none"
    summary = run.summary()
    assert summary["epochs"] == 1 and 0.0 <= summary["test_acc_last"] <= 100.0


def _tiny(method: str = "student") -> Distiller:
    """A student of one convolution and no teacher: options whose CPU kernels are slow to set up."""
    torch.manual_seed(2)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(4, 4))
    return Distiller.from_config(net, None, method, DistillConfig())


def _fit_once(tmp_path: Path, name: str, distiller: Distiller, data, maps=None, resume=False, **options):
    run = RunDir(tmp_path / name)
    run.path.mkdir(exist_ok=True)
    cfg = TrainConfig(**{"epochs": 1, "device": "cpu", **options})
    history = fit(distiller, data, cfg, AugmentConfig(crop_padding=2, overlay_p=0.5), run, torch.device("cpu"),
                  maps=maps, resume=resume, progress=False)
    assert all(v == v and abs(v) < float("inf") for k, v in history[-1].items() if k.startswith("loss"))
    return run, history


def test_channels_last_and_bf16_run_on_the_cpu(tmp_path):
    """One step of kd_ig_at (teacher forward in the same step) in channels-last memory under bf16 autocast,
    with the loss checked only at the epoch's end."""
    distiller, data, maps = _setup(student_bn=True)
    _fit_once(tmp_path, "cl", distiller, data, maps, batch_size=84, channels_last=True, amp="bf16",
              check_finite_every=0)
    for model in (distiller.student, distiller.teacher):
        conv = next(m for m in model.modules() if isinstance(m, nn.Conv2d))
        assert conv.weight.is_contiguous(memory_format=torch.channels_last)


def test_fp16_keeps_its_grad_scaler_in_the_checkpoint(tmp_path):
    _distiller, data, _maps = _setup(method="student")
    run, _ = _fit_once(tmp_path, "fp16", _tiny(), data, batch_size=14, amp="fp16", check_finite_every=4)
    state = torch.load(run.checkpoint, weights_only=True)
    assert state["scaler"]["scale"] > 0
    _fit_once(tmp_path, "fp16", _tiny(), data, resume=True, batch_size=14, amp="fp16", epochs=2)
    assert torch.load(run.checkpoint, weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_compile_runs_on_the_cpu(tmp_path):
    """torch.compile of the whole training forward, on a tiny model to keep compilation short."""
    _distiller, data, _maps = _setup(method="student")
    _fit_once(tmp_path, "compiled", _tiny(), data, batch_size=42, compile=True)


def test_the_masked_overlay_of_accelerators_equals_the_indexed_one():
    """On a GPU the overlay blends every map and keeps the chosen under a mask (no host sync)."""
    from igkd.data.augment import _apply_overlay, draw_batches

    g = torch.Generator().manual_seed(3)
    images, maps = torch.rand(24, 3, 10, 10, generator=g), torch.rand(24, 10, 10, generator=g)
    draws = draw_batches([16, 8], 10, 10, 2, True, g, 0.4, (1.0, 2.0), torch.Generator().manual_seed(4)).rows(0, 24)
    cropped = draws.crop_flip.apply(images)
    indexed = _apply_overlay(cropped, maps, draws.overlay, 0.5, draws.crop_flip, masked=False)
    masked = _apply_overlay(cropped, maps, draws.overlay, 0.5, draws.crop_flip, masked=True)
    assert 0 < int(draws.overlay.chosen.sum()) < 24
    torch.testing.assert_close(masked, indexed, rtol=0, atol=1e-6)


def test_option_values_are_checked_up_front():
    from igkd.config import load_config

    with pytest.raises(ConfigError, match=r"bad value for train.amp: 'fp8' \(allowed: one of none, bf16, fp16\)"):
        load_config(None, ["train.amp=fp8"])
    with pytest.raises(ConfigError, match=r"bad value for teacher_train.check_finite_every: -1"):
        load_config(None, ["teacher_train.check_finite_every=-1"])
    ctx = distributed.DistContext(rank=1, world_size=2, backend="gloo")
    with pytest.raises(ConfigError, match="bad value for train.sync_bn: True .*GPUs only"):
        distributed.resolve_sync_bn(True, ctx, torch.device("cpu"))
    assert distributed.resolve_sync_bn(None, ctx, torch.device("cpu")) is False
    assert [distributed.DistContext(r, 3).shard(10) for r in range(3)] == [(0, 4), (4, 7), (7, 10)]
