"""Writes that fail: a full disk, a file-size limit. One line, exit status 2, nothing half-written kept,
and the same command (with ``--resume`` for a run) continues to the result an uninterrupted run gives.

The disk fills for real: a small tmpfs mounted in a private mount namespace (``unshare -rm``, which
needs no privileges where user namespaces are allowed; skipped where they are not). The file-size
limit (``RLIMIT_FSIZE``, the kernel's EFBIG) works everywhere.
"""

from __future__ import annotations

import json
import os
import resource
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from igkd.attribution import MapStore
from igkd.config import load_config
from igkd.errors import WriteError
from igkd.fileio import atomic_write_text, read_json
from igkd.locks import FileLock
from igkd.pipeline import build_teacher
from igkd.runs import load_checkpoint, load_state_dict

from ..toy_data import toy_settings, write_quadrants_npz

pytestmark = pytest.mark.slow

TIMES = {"epoch_time_s", "train_time_s", "wall_time_s"}


def igkd(verb: str, overrides: list[str], *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "igkd.cli", verb]
    for o in overrides:
        cmd += ["--set", o]
    return cmd + list(args)


def can_mount_privately() -> bool:
    try:
        return subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def run_on_small_disk(cmd: list[str], mountpoint: Path, size_kb: int, keep: Path, copy_out: str) -> tuple[int, str]:
    """``cmd`` with a ``size_kb`` tmpfs mounted at ``mountpoint`` (private to it); afterwards
    ``mountpoint/copy_out`` is copied to ``keep``. Returns the command's exit status and stderr."""
    mountpoint.mkdir(parents=True, exist_ok=True)
    status = keep.parent / f"{keep.name}.status"
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs {shlex.quote(str(mountpoint))} || exit 99; "
              f"{shlex.join(cmd)}; echo $? > {shlex.quote(str(status))}; "
              f"cp -a {shlex.quote(str(mountpoint / copy_out))} {shlex.quote(str(keep))}")
    p = subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, timeout=900)
    assert p.returncode != 99, p.stderr
    return int(status.read_text()), p.stderr


def error_line(stderr: str) -> str:
    """The command's error: one line, no traceback."""
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.startswith("igkd: error:")]
    assert len(lines) == 1, stderr
    return lines[0]


def no_temporaries(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.name.endswith(".tmp")]


def history(run: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMES} for r in load_checkpoint(run / "last.pt")["history"]]


def same_weights(a: Path, b: Path) -> None:
    sa, sb = load_state_dict(a), load_state_dict(b)
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("write-faults")
    data = write_quadrants_npz(tmp / "toy.npz")
    settings = [*toy_settings(data, tmp), "teacher_train.epochs=3", "data.val_fraction=0.1"]
    reference = tmp / "reference"
    subprocess.run(igkd("train-teacher", settings, "--out", str(reference)), check=True, capture_output=True)
    return tmp, settings, reference


def test_a_disk_that_fills_during_training_stops_in_one_line_and_resumes_bit_for_bit(toy, tmp_path):
    if not can_mount_privately():
        pytest.skip("no private mount namespace here (unshare -rm refused): cannot fill a small disk")
    _tmp, settings, reference = toy
    # Room for the first epoch's files (config, env, best.pt, last.pt, metrics) and little more: the
    # second epoch's last.pt (its temporary copy beside the old one) does not fit.
    last, best = (reference / "last.pt").stat().st_size, (reference / "best.pt").stat().st_size
    size_kb = (last + best + last // 2) // 1024 + 64
    small, partial = tmp_path / "small", tmp_path / "partial"
    rc, stderr = run_on_small_disk(igkd("train-teacher", settings, "--out", str(small / "run")), small, size_kb,
                                   partial, "run")
    assert rc == 2, stderr
    line = error_line(stderr)
    assert "no space left on the device (ENOSPC)" in line and f"{small / 'run'}/" in line, line
    assert "nothing half-written was kept" in line and "--resume" in line, line
    # What the full disk left looks like an unfinished run, never a finished one.
    assert not (partial / "summary.json").exists() and not (partial / "model.pt").exists()
    assert no_temporaries(partial) == [] and not (partial / ".igkd.lock").exists()
    done = load_checkpoint(partial / "last.pt")["epoch"]  # checked against its checksum
    assert 1 <= done < 3

    resumed = subprocess.run(igkd("train-teacher", settings, "--out", str(partial), "--resume"),
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert f"at epoch {done + 1}" in resumed.stdout
    same_weights(partial / "model.pt", reference / "model.pt")
    assert history(partial) == history(reference)


def test_a_store_precompute_that_fills_the_disk_stops_in_one_line_and_finishes_later(toy, tmp_path):
    if not can_mount_privately():
        pytest.skip("no private mount namespace here (unshare -rm refused): cannot fill a small disk")
    tmp, settings, _reference = toy
    teacher = tmp_path / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_teacher(load_config(None, settings), 4, 1).state_dict(), teacher)
    settings = [*settings, f"teacher.checkpoint={teacher}", "ig.chunk_size=16"]
    whole = tmp_path / "whole"
    subprocess.run(igkd("precompute-ig", settings, "--store", str(whole)), check=True, capture_output=True)

    # 320 maps of 12x12 float32 in 20 chunks; 96 KiB holds the metadata and a few chunks, not all.
    small, partial = tmp_path / "small", tmp_path / "partial"
    rc, stderr = run_on_small_disk(igkd("precompute-ig", settings, "--store", str(small / "store")), small, 96,
                                   partial, "store")
    assert rc == 2, stderr
    line = error_line(stderr)
    assert "no space left on the device (ENOSPC)" in line and f"{small / 'store'}/" in line, line
    assert "run the same command again" in line, line
    meta = read_json(partial / "meta.json")
    assert not meta["complete"]
    records = list((partial / "done").glob("*.json"))
    assert 0 < len(records) < meta["num_chunks"]
    assert no_temporaries(partial) == []
    with pytest.raises(Exception, match="incomplete"):
        MapStore.open(partial)

    again = subprocess.run(igkd("precompute-ig", settings, "--store", str(partial)), capture_output=True, text=True)
    assert again.returncode == 0, again.stderr
    a, b = MapStore.open(partial), MapStore.open(whole)
    assert np.array_equal(a.load_all().numpy(), b.load_all().numpy())
    assert np.array_equal(a.scales, b.scales)


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead of a signal
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def test_a_file_size_limit_stops_training_in_one_line_and_resume_finishes_it(toy, tmp_path):
    """Works without privileges: RLIMIT_FSIZE makes every write past 64 KiB fail (EFBIG)."""
    _tmp, settings, reference = toy
    run = tmp_path / "run"
    p = subprocess.run(igkd("train-teacher", settings, "--out", str(run)), capture_output=True, text=True,
                       preexec_fn=_limit_file_size(64 * 1024))
    assert p.returncode == 2, p.stderr
    line = error_line(p.stderr)
    assert "file too large" in line and "(EFBIG)" in line and f"{run}/" in line and "--resume" in line, line
    # no checkpoint, no lock, no tmp (TensorBoard's event file, opened at the start, is the tracker's: not a result)
    kept = sorted(q.name for q in run.iterdir() if not q.name.startswith("events.out.tfevents."))
    assert kept == ["config.yaml", "env.json"]
    resumed = subprocess.run(igkd("train-teacher", settings, "--out", str(run), "--resume"), capture_output=True,
                             text=True)
    assert resumed.returncode == 0, resumed.stderr
    same_weights(run / "model.pt", reference / "model.pt")


@pytest.fixture
def file_size_limit():
    """RLIMIT_FSIZE of 16 bytes in this process for the block (SIGXFSZ ignored, so writes fail with EFBIG)."""
    old_limit = resource.getrlimit(resource.RLIMIT_FSIZE)
    old_handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)

    class Limit:
        def __enter__(self):
            resource.setrlimit(resource.RLIMIT_FSIZE, (16, old_limit[1]))

        def __exit__(self, *exc):
            resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)

    yield Limit()
    resource.setrlimit(resource.RLIMIT_FSIZE, old_limit)
    signal.signal(signal.SIGXFSZ, old_handler)


def test_a_failed_atomic_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path, file_size_limit):
    path = tmp_path / "summary.json"
    atomic_write_text(path, "old\n")
    with file_size_limit, pytest.raises(WriteError, match=r"cannot write .*summary\.json: file too large"):
        atomic_write_text(path, json.dumps({"a long enough text": "x" * 100}))
    assert path.read_text() == "old\n" and os.listdir(tmp_path) == ["summary.json"]


def test_a_lock_that_cannot_be_written_is_one_line_and_leaves_no_lock_behind(tmp_path, file_size_limit):
    with file_size_limit, pytest.raises(WriteError, match=r"\.igkd\.lock: file too large"):
        FileLock(tmp_path, "run directory").acquire()
    assert os.listdir(tmp_path) == []  # an empty lock file would refuse the next command
    with FileLock(tmp_path, "run directory"):  # and the next command gets the folder
        pass
