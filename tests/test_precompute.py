"""precompute_ig: kill -9 and resume, two concurrent ranks, and the finalisation checks.

Every store compared byte for byte is written by a subprocess with one torch thread, so all of them
compute with the same kernels; chunks are the unit of batching, so which process computed a chunk,
or whether it was resumed, cannot change its bytes.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from igkd.attribution import MapStore, finalize_store
from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.errors import ConfigError, StaleStoreError
from igkd.models import cifar_mobilenet_v2

from .helpers import run_precompute

N_IMAGES, CHUNK = 24, 3
N_CHUNKS = N_IMAGES // CHUNK

WORKER = r"""
import json, sys, time
import torch
torch.set_num_threads(1)
from igkd.attribution import IGOptions, StoreIdentity, precompute_ig
from igkd.convention import InputConvention
from igkd.data.image_dataset import ImageDataset
from igkd.models import cifar_mobilenet_v2

cfg = json.loads(sys.argv[1])
data = torch.load(cfg["data"])
ds = ImageDataset("synthetic", data["x"], data["y"], ["a", "b", "c"])
model = cifar_mobilenet_v2(num_classes=3, width_mult=0.25)
model.load_state_dict(torch.load(cfg["model"]))
identity = StoreIdentity.of(ds, "test", InputConvention((0.5,) * 3, (0.25,) * 3), n_steps=4)
if cfg.get("streamed"):  # the images read by position, ahead of the computation (a user's dataset, streamed)
    from igkd.data.sources import DatasetRows
    ds = ImageDataset("synthetic", DatasetRows(data["x"]), data["y"], ["a", "b", "c"])
options = IGOptions(chunk_size=cfg["chunk"], dtype="float32")


def done(c):
    time.sleep(cfg.get("delay", 0))
    if cfg.get("meanwhile") and c == 0:  # another process records the odd chunks while this one works
        precompute_ig(model.eval(), ds, cfg["store"], identity, options, rank=1, world_size=2, progress=False)


res = precompute_ig(model.eval(), ds, cfg["store"], identity, options, rank=cfg.get("rank"),
                    world_size=cfg.get("world_size"), progress=False, on_chunk_done=done)
print(json.dumps({"computed": res.computed, "skipped": res.skipped, "complete": res.complete}))
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    """A tiny MobileNetV2 with non-trivial batch norm, and a synthetic dataset, saved for subprocesses."""
    root = tmp_path_factory.mktemp("precompute")
    torch.manual_seed(0)
    model = cifar_mobilenet_v2(num_classes=3, width_mult=0.25)
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    torch.save(model.state_dict(), root / "model.pt")
    x = torch.randint(0, 256, (N_IMAGES, 3, 8, 8), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 3, (N_IMAGES,), generator=g)
    torch.save({"x": x, "y": y}, root / "data.pt")
    return root


def worker(inputs: Path, store: Path, **cfg) -> subprocess.Popen:
    cfg = {"data": str(inputs / "data.pt"), "model": str(inputs / "model.pt"), "store": str(store),
           "chunk": CHUNK, **cfg}
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}
    env.update(OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
    return subprocess.Popen([sys.executable, "-c", WORKER, json.dumps(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen, timeout: float = 120) -> dict:
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def records(store: Path) -> set[int]:
    return {int(p.name.split("-")[0]) for p in (store / "done").glob("*.json")} if (store / "done").is_dir() else set()


@pytest.fixture(scope="module")
def reference(inputs):
    """An uninterrupted single-process run."""
    store = inputs / "reference"
    out = finish(worker(inputs, store))
    assert out["complete"] and out["computed"] == list(range(N_CHUNKS))
    return (store / "maps.npy").read_bytes()


def test_kill_9_then_resume_recomputes_only_unfinished_chunks(inputs, reference):
    store = inputs / "killed"
    proc = worker(inputs, store, delay=0.4)
    deadline = time.monotonic() + 90
    while len(records(store)) < 2:
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "no chunk finished in time"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    done_before = records(store)
    assert 2 <= len(done_before) < N_CHUNKS
    with pytest.raises(StaleStoreError, match="incomplete"):
        MapStore.open(store)  # a killed store never looks complete

    out = finish(worker(inputs, store))
    assert out["complete"]
    assert out["computed"] == sorted(set(range(N_CHUNKS)) - done_before)
    assert set(out["skipped"]) == done_before
    assert (store / "maps.npy").read_bytes() == reference
    assert MapStore.open(store).meta["delta"]["images"] == N_IMAGES


def test_two_concurrent_ranks_write_one_store(inputs, reference):
    store = inputs / "two-ranks"
    procs = [worker(inputs, store, rank=r, world_size=2) for r in (0, 1)]
    outs = [finish(p) for p in procs]
    assert sorted(outs[0]["computed"] + outs[1]["computed"]) == list(range(N_CHUNKS))
    assert all(c % 2 == 0 for c in outs[0]["computed"]) and all(c % 2 == 1 for c in outs[1]["computed"])
    assert any(o["complete"] for o in outs)  # the last rank to finish finalises
    meta = MapStore.open(store).meta
    assert meta["chunks"]["ranks"] == [0, 1]
    assert (store / "maps.npy").read_bytes() == reference
    # No leftovers of the concurrent creation.
    assert not [p for p in store.rglob("*") if p.name.endswith(".tmp")]


# -- finalisation checks and rank settings, in process (fast) ----------------------------------------


def _linear_store(tmp_path: Path, n: int = 10, chunk: int = 3, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 3)).eval()
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    ds = ImageDataset("synthetic", x, torch.randint(0, 3, (n,)), ["a", "b", "c"])
    conv = InputConvention((0.5,) * 3, (0.25,) * 3)
    base = {"teacher_hash": "h", "n_steps": 4, "chunk_size": chunk, "progress": False, **kw}
    return lambda path, **more: run_precompute(model, ds, conv, path, **{**base, **more})


@pytest.mark.parametrize("streamed", [False, True])
def test_chunks_recorded_meanwhile_are_skipped_and_the_rest_read_in_step(inputs, reference, streamed):
    """Chunks another process records while this one works are skipped: this one's read-ahead of the images
    (streamed: a background thread reads them by position) stays in step, so each chunk gets its own."""
    store = inputs / f"meanwhile-{streamed}"
    out = finish(worker(inputs, store, meanwhile=True, streamed=streamed))
    assert out["complete"] and out["computed"] == list(range(0, N_CHUNKS, 2))
    assert out["skipped"] == list(range(1, N_CHUNKS, 2))
    assert (store / "maps.npy").read_bytes() == reference


def test_finalisation_refuses_missing_doubled_and_misplaced_chunks(tmp_path):
    run = _linear_store(tmp_path)
    res = run(tmp_path / "s", finalize=False)
    assert not res.complete and res.computed == [0, 1, 2, 3]
    done = tmp_path / "s" / "done"

    def variant(name: str) -> Path:
        path = tmp_path / name
        shutil.copytree(tmp_path / "s", path)
        return path

    missing = variant("missing")
    next((missing / "done").glob("000002-*.json")).unlink()
    with pytest.raises(StaleStoreError, match="chunks 2 of 4 have no completion record"):
        finalize_store(missing)

    doubled = variant("doubled")
    src = next((doubled / "done").glob("000001-*.json"))
    shutil.copy(src, src.with_name("000001-deadbeef.json"))
    with pytest.raises(StaleStoreError, match="written more than once.*overlapped"):
        finalize_store(doubled)

    misplaced = variant("misplaced")
    rec_path = next((misplaced / "done").glob("000003-*.json"))
    rec = json.loads(rec_path.read_text())
    rec["start"] = 8
    rec_path.write_text(json.dumps(rec))
    with pytest.raises(StaleStoreError, match="covers positions 8"):
        finalize_store(misplaced)

    stray = variant("stray")
    shutil.copy(next((stray / "done").glob("000000-*.json")), stray / "done" / "000009-0000.json")
    with pytest.raises(StaleStoreError, match="do not exist"):
        finalize_store(stray)

    for path in (missing, doubled, misplaced, stray):  # a refused store still refuses to open
        with pytest.raises(StaleStoreError, match="incomplete"):
            MapStore.open(path)
    assert len(list(done.glob("*.json"))) == 4
    store = finalize_store(tmp_path / "s")
    assert store.meta["complete"] and finalize_store(tmp_path / "s").meta == store.meta


def test_rank_and_world_size_from_torchrun_environment(tmp_path, monkeypatch):
    run = _linear_store(tmp_path)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    res = run(tmp_path / "s")
    assert (res.rank, res.world_size, res.computed, res.complete) == (1, 2, [1, 3], False)
    monkeypatch.setenv("RANK", "0")
    res = run(tmp_path / "s")
    assert res.computed == [0, 2] and res.complete
    # A resumed run with another world size skips what is done and changes nothing.
    res = run(tmp_path / "s", rank=0, world_size=1)
    assert res.computed == [] and res.complete
    with pytest.raises(ConfigError, match="rank"):
        run(tmp_path / "t", rank=2, world_size=2)


def test_resume_adopts_the_store_settings(tmp_path):
    run = _linear_store(tmp_path, n=6, chunk=2)
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "s", internal_batch_size=3, on_chunk_done=lambda c: (_ for _ in ()).throw(KeyboardInterrupt))
    # chunk_size and internal_batch_size left open: the store's are used, so results cannot drift
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    assert meta["compute"]["internal_batch_size"] == 3
    res = run(tmp_path / "s", chunk_size=None)
    assert res.complete and res.computed == [1, 2]
    done = [json.loads(p.read_text()) for p in sorted((tmp_path / "s" / "done").glob("*.json"))]
    assert {d["compute"]["internal_batch_size"] for d in done} == {3}
    with pytest.raises(StaleStoreError, match="chunk_size 2 != requested 4"):
        run(tmp_path / "s", chunk_size=4)


def test_max_memory_mb_bounds_the_passes(tmp_path):
    run = _linear_store(tmp_path, n=6, chunk=6)
    res = run(tmp_path / "s", max_memory_mb=0.01)
    meta = res.store.meta
    assert meta["compute"]["internal_batch_size"] < 64 and meta["compute"]["batch_size"] < 6
