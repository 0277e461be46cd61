"""Truncated or bit-flipped files igkd wrote are detected on load with an error naming the file."""

from __future__ import annotations

import json
import random
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from igkd.cli import main
from igkd.config import load_config
from igkd.errors import CheckpointError, CorruptFileError, StaleStoreError
from igkd.fileio import read_run_metrics, read_run_summary
from igkd.pipeline import distill
from igkd.runs import load_checkpoint, load_state_dict


def tiny_npz(path: Path) -> Path:
    rng = np.random.default_rng(1)
    y, yt = np.arange(96) % 2, np.arange(40) % 2
    x = rng.integers(0, 90, (96, 8, 8)).astype(np.uint8) + (y[:, None, None] * 120).astype(np.uint8)
    xt = rng.integers(0, 90, (40, 8, 8)).astype(np.uint8) + (yt[:, None, None] * 120).astype(np.uint8)
    np.savez(path, x_train=x, y_train=y, x_test=xt, y_test=yt)
    return path


def overrides(data: Path) -> list[str]:
    return ["data.name=npz", f"data.root={data}", "data.val_fraction=0.25", "teacher.width_mult=0.25",
            "teacher.strides=[1,1,1,2,1]", "student.remove_blocks=13", "train.device=cpu", "train.epochs=2",
            "train.batch_size=16", "distill.method=student"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("corrupt")
    cfg_over = overrides(tiny_npz(tmp / "data.npz"))
    distill(load_config(None, cfg_over), tmp / "run", progress=False)
    return tmp / "run", cfg_over


@pytest.fixture
def run(finished_run, tmp_path):
    src, cfg_over = finished_run
    shutil.copytree(src, tmp_path / "run")
    return tmp_path / "run", cfg_over


def tensor_data_offset(path: Path) -> int:
    """Where the first tensor's bytes start inside a torch zip checkpoint (its first data record)."""
    with zipfile.ZipFile(path) as z:
        info = next(i for i in z.infolist() if "/data/" in i.filename and not i.filename.endswith(".pkl"))
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)
        name_len, extra_len = np.frombuffer(f.read(4), dtype="<u2")
    return info.header_offset + 30 + int(name_len) + int(extra_len)


def flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x10
    path.write_bytes(bytes(data))


def test_truncated_training_state_refused_on_resume(run, capsys):
    folder, cfg_over = run
    (folder / "summary.json").unlink()  # an unfinished run
    last = folder / "last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    code = main(["distill", "--out", str(folder), "--resume", *sum([["--set", o] for o in cfg_over], [])])
    err = capsys.readouterr().err
    assert code == 2 and f"checkpoint {last} is unreadable" in err and err.count("\n") == 1, err


def test_bit_flip_in_training_state_refused_on_resume(run, capsys):
    folder, cfg_over = run
    (folder / "summary.json").unlink()
    last = folder / "last.pt"
    flip(last, tensor_data_offset(last) + 3)
    code = main(["distill", "--out", str(folder), "--resume", *sum([["--set", o] for o in cfg_over], [])])
    err = capsys.readouterr().err
    assert code == 2 and f"checkpoint {last} does not match its checksum" in err, err


@pytest.mark.parametrize("name", ["model.pt", "best.pt", "last.pt"])
def test_any_flipped_byte_is_detected_or_harmless(run, name):
    """Flip bytes anywhere: loading either fails with igkd's error or gives exactly the original content."""
    folder, _ = run
    path = folder / name
    original = load_checkpoint(path)
    raw = path.read_bytes()
    rng = random.Random(name)
    positions = [tensor_data_offset(path)] + [rng.randrange(len(raw)) for _ in range(40)]
    detected = 0
    for pos in positions:
        path.write_bytes(raw)
        flip(path, pos)
        try:
            got = load_checkpoint(path)
        except (CheckpointError, CorruptFileError) as e:
            assert str(path) in str(e) and "\n" not in str(e)
            detected += 1
            continue
        from igkd.fileio import content_hash

        assert content_hash(got) == content_hash(original), f"flip at {pos} changed the content unnoticed"
    assert detected >= len(positions) // 2  # most bytes of a checkpoint matter


def test_evaluate_refuses_a_corrupt_model(run, capsys):
    folder, cfg_over = run
    model = folder / "model.pt"
    flip(model, tensor_data_offset(model))
    code = main(["evaluate", "--checkpoint", str(model), *sum([["--set", o] for o in cfg_over], [])])
    err = capsys.readouterr().err
    assert code == 2 and f"checkpoint {model} does not match its checksum" in err, err


@pytest.mark.parametrize("name,edit", [
    ("summary.json", lambda t: t.replace('"epochs": 2', '"epochs": 3')),
    ("summary.json", lambda t: t[: len(t) // 2]),
    ("metrics.jsonl", lambda t: t.replace('"epoch": 2', '"epoch": 7')),
    ("config.yaml", lambda t: t.replace("epochs: 2", "epochs: 20", 1)),
])
def test_finished_run_files_are_checked(run, name, edit):
    folder, _ = run
    path = folder / name
    path.write_text(edit(path.read_text()))
    with pytest.raises(CorruptFileError) as err:
        read_run_metrics(folder)
    assert str(path) in str(err.value) or str(folder / "summary.json") in str(err.value)
    with pytest.raises(CorruptFileError):
        read_run_summary(folder)


def test_weights_only_everywhere(tmp_path):
    """A checkpoint that would run code when unpickled is refused and runs nothing, resume included."""
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (Path.touch, (marker,))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.zeros(1)}, "x": Evil()}, evil)
    with pytest.raises(CheckpointError, match="unreadable"):
        load_checkpoint(evil)
    with pytest.raises(CheckpointError):
        load_state_dict(evil)
    assert not marker.exists()


def test_store_maps_truncated_or_flipped(tmp_path):
    from igkd.attribution import MapStore
    from igkd.convention import InputConvention
    from igkd.data.image_dataset import ImageDataset
    from igkd.models import create_model

    from ..helpers import run_precompute

    ds = ImageDataset("t", torch.randint(0, 255, (6, 1, 8, 8), dtype=torch.uint8), torch.arange(6) % 2, ["a", "b"])
    model = create_model("cifar_mobilenet_v2", num_classes=2, in_channels=1, width_mult=0.25).eval()
    run_precompute(model, ds, InputConvention((0.5,), (0.25,)), tmp_path / "s", teacher_hash="h", n_steps=4)
    maps = tmp_path / "s" / "maps.npy"
    raw = maps.read_bytes()
    assert MapStore.open(tmp_path / "s").load_all().shape == (6, 8, 8)
    flip(maps, len(raw) - 7)
    with pytest.raises(StaleStoreError, match="does not match the sha256"):
        MapStore.open(tmp_path / "s").load_all()
    maps.write_bytes(raw[: len(raw) - 50])
    with pytest.raises(StaleStoreError, match="maps.npy is unreadable"):
        MapStore.open(tmp_path / "s").load_all()


def test_study_result_files_are_checked(tmp_path, capsys):
    from igkd.fileio import write_checked_json, write_with_sidecar

    study = tmp_path / "study"
    study.mkdir()
    write_checked_json(study / "study.json", {"kind": "montecarlo", "methods": ["student"]})
    write_with_sidecar(study / "results.csv", b"method,test_acc_last\nstudent,81.5\nstudent,82.0\n")
    (study / "results.csv").write_text("method,test_acc_last\nstudent,91.5\nstudent,82.0\n")
    assert main(["report", str(study)]) == 2
    err = capsys.readouterr().err
    assert f"{study / 'results.csv'} does not match its checksum" in err and "rerun the study" in err
    write_with_sidecar(study / "results.csv", b"method,test_acc_last\nstudent,81.5\nstudent,82.0\n")
    meta = json.loads((study / "study.json").read_text())
    meta["methods"] = ["kd"]
    (study / "study.json").write_text(json.dumps(meta))
    assert main(["report", str(study)]) == 2
    assert f"{study / 'study.json'} does not match its checksum" in capsys.readouterr().err
