"""Two writers of one run directory, study or store: the second is refused, naming the holder; a dead
holder's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from igkd.errors import LockedError
from igkd.locks import LOCK_NAME, FileLock

HOLD = """
import sys, time
from igkd.locks import FileLock
with FileLock(sys.argv[1], "run directory"):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_in_subprocess(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_second_writer_is_refused_naming_the_holder(tmp_path):
    proc = hold_in_subprocess(tmp_path / "run")
    try:
        with pytest.raises(LockedError) as err:
            FileLock(tmp_path / "run", "run directory").acquire()
        msg = str(err.value)
        assert f"in use by pid {proc.pid}" in msg and "wait for it or stop it" in msg and "\n" not in msg
    finally:
        proc.kill()
        proc.wait()


def test_lock_of_a_killed_process_is_taken_over(tmp_path):
    proc = hold_in_subprocess(tmp_path / "run")
    os.kill(proc.pid, signal.SIGKILL)  # leaves its lock file behind
    proc.wait()
    assert (tmp_path / "run" / LOCK_NAME).exists()
    with FileLock(tmp_path / "run", "run directory") as lock:
        assert json.loads(lock.path.read_text())["pid"] == os.getpid()
    assert not (tmp_path / "run" / LOCK_NAME).exists()


def test_recycled_pid_is_not_taken_for_the_holder(tmp_path):
    """A live process with the recorded pid but another start time is not the holder."""
    folder = tmp_path / "run"
    folder.mkdir()
    import socket

    record = {"host": socket.gethostname(), "pid": os.getppid(), "start": "1", "since": "then", "command": "x"}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    with FileLock(folder, "run directory"):
        pass


def test_lock_held_on_another_host_says_which_file_to_delete(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    record = {"host": "elsewhere.example", "pid": 1, "start": None, "since": "then", "command": "igkd distill"}
    (folder / LOCK_NAME).write_text(json.dumps(record))
    with pytest.raises(LockedError, match=f"delete {folder / LOCK_NAME}"):
        FileLock(folder, "run directory").acquire()


def test_two_in_one_process_are_two_writers(tmp_path):
    with FileLock(tmp_path, "study folder"):
        with pytest.raises(LockedError, match=f"pid {os.getpid()}"):
            FileLock(tmp_path, "study folder").acquire()


def test_cli_refuses_a_second_distill_into_a_run_being_written(tmp_path, capsys):
    """The real command: a run directory held by another process is refused with exit 2, untouched."""
    from igkd.cli import main

    proc = hold_in_subprocess(tmp_path / "run")
    try:
        before = sorted(p.name for p in (tmp_path / "run").iterdir())
        code = main(["distill", "-c", "cpu-fashion-mnist", "-m", "student", "--out", str(tmp_path / "run"),
                     "--set", "train.epochs=1", "--set", "data.train_size=200", "--set", "data.test_size=100",
                     "--set", "train.device=cpu"])
        err = capsys.readouterr().err
        assert code == 2 and f"run directory {tmp_path / 'run'} is in use by pid {proc.pid}" in err, err
        assert sorted(p.name for p in (tmp_path / "run").iterdir()) == before
    finally:
        proc.kill()
        proc.wait()


def test_precompute_rank_lock(tmp_path):
    """Two processes computing the same rank of one store: the second is refused; other ranks are not."""
    import torch

    from igkd.convention import InputConvention
    from igkd.data.image_dataset import ImageDataset
    from igkd.models import create_model

    from ..helpers import run_precompute

    ds = ImageDataset("t", torch.randint(0, 255, (8, 1, 8, 8), dtype=torch.uint8), torch.arange(8) % 2, ["a", "b"])
    conv = InputConvention((0.5,), (0.25,))
    model = create_model("cifar_mobilenet_v2", num_classes=2, in_channels=1, width_mult=0.25).eval()
    store = tmp_path / "store"
    blocked = []

    def hold_rank0(_chunk):
        if not blocked:  # while rank 0 of 2 holds its lock, a second rank-0 writer is refused
            with pytest.raises(LockedError, match=r"IG store \(rank 0 of 2\)"):
                FileLock(store, "IG store (rank 0 of 2)", name=".igkd.lock.rank0-of-2").acquire()
            FileLock(store, "IG store (rank 1 of 2)", name=".igkd.lock.rank1-of-2").acquire().release()
            blocked.append(True)

    run_precompute(model, ds, conv, store, teacher_hash="h", n_steps=4, rank=0, world_size=2, chunk_size=2,
                   on_chunk_done=hold_rank0)
    assert blocked and not list(store.glob(".igkd.lock*"))  # released when the rank is done
