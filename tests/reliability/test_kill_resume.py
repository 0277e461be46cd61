"""``kill -9`` at random moments: the same command with resume ends bitwise equal to an uninterrupted run.

Each case runs the real command in a subprocess, kills it at a moment drawn from a seeded generator
(between its first checkpoint and the end of its work), resumes it, and compares everything the run
produced except wall times. Work is never redone from before the last checkpoint: the resumed process
says where it starts, and that is where the checkpoint on disk stood.
"""

from __future__ import annotations

import csv
import json
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from igkd.config import load_config
from igkd.pipeline import build_teacher
from igkd.runs import load_checkpoint, load_state_dict

pytestmark = pytest.mark.slow

TIMES = {"epoch_time_s", "train_time_s", "wall_time_s"}


def make_data(tmp: Path) -> Path:
    """Three classes of 12x12 images told apart by where a bright square sits, plus noise."""
    rng = np.random.default_rng(5)

    def split(n):
        y = np.arange(n) % 3
        x = rng.integers(0, 60, (n, 12, 12)).astype(np.uint8)
        for i, c in enumerate(y):
            x[i, 4 * c:4 * c + 4, 2:10] += 150
        return x, y

    (xa, ya), (xb, yb) = split(480), split(90)
    path = tmp / "data.npz"
    np.savez(path, x_train=xa, y_train=ya, x_test=xb, y_test=yb)
    return path


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("kill")
    data = make_data(tmp)
    common = ["data.name=npz", f"data.root={data}", "data.val_fraction=0.1", "teacher.width_mult=0.25",
              "teacher.strides=[1,1,2,2,1]", "student.remove_blocks=11", "train.device=cpu",
              "teacher_train.device=cpu", "train.threads=1", "teacher_train.threads=1", "train.batch_size=16",
              "teacher_train.batch_size=16", "teacher_train.epochs=3", "train.epochs=3", "ig.n_steps=8",
              f"ig.cache_dir={tmp / 'ig'}", "augment.crop_padding=2", "augment.overlay_p=0.5",
              "train.lr=0.003", "teacher_train.lr=0.003"]
    teacher = tmp / "teacher.pt"
    torch.manual_seed(0)
    torch.save(build_teacher(load_config(None, common), 3, 1).state_dict(), teacher)
    common.append(f"teacher.checkpoint={teacher}")
    subprocess.run(igkd("precompute-ig", common), check=True, capture_output=True)
    return tmp, common


def igkd(verb: str, overrides: list[str], *args: str) -> list[str]:
    cmd = [sys.executable, "-m", "igkd.cli", verb]
    for o in overrides:
        cmd += ["--set", o]
    return cmd + list(args)


def kill_at_random(cmd: list[str], checkpoint: Path, finished: Path, rng: random.Random,
                   window_s: float) -> bool:
    """Start ``cmd``; once it has written a checkpoint of its own, ``kill -9`` it at a random moment
    within ``window_s``; True if it was killed before finishing."""
    before = checkpoint.stat().st_mtime_ns if checkpoint.exists() else None
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline:
        if checkpoint.exists() and checkpoint.stat().st_mtime_ns != before:
            break
        time.sleep(0.005)
    time.sleep(rng.uniform(0.0, window_s))
    killed = proc.poll() is None and not finished.exists()
    if proc.poll() is None:
        proc.send_signal(signal.SIGKILL)  # Popen's own call: no race with a process that just exited
    proc.wait()
    return killed


def resume(cmd: list[str], state: Path) -> str:
    """Run ``cmd`` to the end; check it started where the checkpoint on disk stood."""
    before = load_checkpoint(state) if state.exists() else None
    done = subprocess.run(cmd, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    said = re.search(r"resuming .* from its checkpoint (at epoch (\d+)(?:, step (\d+))?|after its last epoch)",
                     done.stdout)
    if before is not None:
        assert said, done.stdout
        partial = before.get("partial")
        if said.group(2):
            assert int(said.group(2)) == before["epoch"] + 1
            assert int(said.group(3) or 1) == (partial["steps"] + 1 if partial else 1)
    return done.stdout


def run_record(run: Path) -> dict:
    """Everything a run produced, less wall times."""
    metrics = [{k: v for k, v in json.loads(line).items() if k not in TIMES}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = {k: v for k, v in json.loads((run / "summary.json").read_text()).items()
               if k not in TIMES | {"files", "sha256"}}
    return {"metrics": metrics, "summary": summary, "model": load_state_dict(run / "model.pt"),
            "best": load_state_dict(run / "best.pt")}


def assert_same_run(a: Path, b: Path) -> None:
    ra, rb = run_record(a), run_record(b)
    assert ra["metrics"] == rb["metrics"] and ra["summary"] == rb["summary"]
    for key in ("model", "best"):
        assert ra[key].keys() == rb[key].keys()
        assert all(torch.equal(ra[key][n], rb[key][n]) for n in ra[key]), key


@pytest.mark.parametrize("verb,method,every", [
    ("distill", "kd_ig", 0),        # checkpoints after each epoch; kills mid-epoch redo that epoch only
    ("distill", "kd_ig_at", 4),     # checkpoints inside epochs too: resumes mid-epoch, generators restored
    ("train-teacher", None, 5),
])
def test_kill_and_resume_is_bitwise_equal(setup, verb, method, every):
    tmp, common = setup
    overrides = [*common, f"train.checkpoint_every={every}", f"teacher_train.checkpoint_every={every}"]
    extra = ["--method", method] if method else []
    name = f"{verb}-{method}-{every}"
    full = tmp / f"{name}-full"
    subprocess.run(igkd(verb, overrides, *extra, "--out", str(full)), check=True, capture_output=True)
    # The kill comes after the run's first checkpoint: within half an epoch of it, so it lands before the end
    # (a share of the whole run's time would also count start-up work, such as the teacher's export).
    epoch_time = min(json.loads(line)["epoch_time_s"] for line in (full / "metrics.jsonl").read_text().splitlines())

    cut = tmp / f"{name}-cut"
    rng = random.Random(f"{name}")  # a different but repeatable moment for each case
    kills, mid_epoch = 0, 0
    for _attempt in range(8):  # kill, resume, kill ... until a kill has left a mid-epoch checkpoint
        if (cut / "summary.json").exists() or (kills and (mid_epoch or not every)):
            break
        cmd = igkd(verb, overrides, *extra, "--out", str(cut), *(["--resume"] if cut.exists() else []))
        if kill_at_random(cmd, cut / "last.pt", cut / "summary.json", rng, window_s=epoch_time * 0.5):
            kills += 1
            mid_epoch += load_checkpoint(cut / "last.pt").get("partial") is not None
    assert kills >= 1, "the command finished before it could be killed: make the run longer"
    assert mid_epoch >= 1 if every else mid_epoch == 0  # with checkpoint_every, a resume began mid-epoch
    resume(igkd(verb, overrides, *extra, "--out", str(cut), "--resume"), cut / "last.pt")
    assert_same_run(full, cut)


def test_kill_a_study_and_resume(setup):
    tmp, common = setup
    overrides = [*common, "train.epochs=2"]
    args = ["--methods", "student,kd_ig", "--runs", "2", "--workers", "1", "--threads-per-run", "1"]
    full, cut = tmp / "study-full", tmp / "study-cut"
    subprocess.run(igkd("montecarlo", overrides, *args, "--out", str(full)), check=True, capture_output=True)
    rows_full = read_rows(full)
    # after the first run, three are left, each training at least this long: a kill within the window
    # lands while the study is unfinished, whatever this machine's speed
    per_run = min(float(r["train_time_s"]) for r in rows_full)

    rng = random.Random("study")
    cmd = igkd("montecarlo", overrides, *args, "--out", str(cut))
    first = cut / "runs" / "student-k11-r000" / "summary.json"
    assert kill_at_random(cmd, first, cut / "report-never", rng, window_s=per_run)
    finished = {p.parent.name: p.read_bytes() for p in (cut / "runs").glob("*/summary.json")}
    assert finished, "killed before any run finished"
    subprocess.run(cmd, check=True, capture_output=True)
    # finished runs were not redone: their summaries are the very same bytes
    assert all((cut / "runs" / name / "summary.json").read_bytes() == data for name, data in finished.items())
    assert strip(read_rows(cut)) == strip(rows_full)
    for run in (full / "runs").iterdir():
        assert_same_run(run, cut / "runs" / run.name)


def read_rows(study: Path) -> list[dict]:
    with open(study / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMES | {"study"}} for r in rows]
