"""Memory and speed of the data path as the data grows: in memory against streamed from the decoded cache.

Generates image folders of N 64x64 RGB JPEGs (10 classes; 1,000 test images), then, each in a fresh
process so that its peak resident memory (``VmHWM``) is its own:

* ``build``: the first epoch's extra cost, decoding the folder into the cache (``data.streaming=true``
  on first use), chunk by chunk;
* ``streamed``: a 1-epoch ``fit`` reading every batch from the cache (a prefetch thread, ``preadv``);
* ``memory``: the same run with the images held in memory (the in-memory path, loaded from the cache
  so that JPEG decoding is not timed twice).

The run is a tiny student (one strided convolution and a linear layer, ``student`` method, batch 512,
crop padding 8, flips, one thread) so that the whole epoch runs in seconds and the data path
(gather, crop, flip, normalise) is what is timed; memory covers the data path of the full epoch.
Images per second are the training epoch's (``epoch_time_s`` of the history). The same seed gives the
same run from either source (tests/test_distributed.py checks it bit for bit).

    .venv/bin/python benchmarks/data_scaling.py                       # 20,000 and 200,000 images
    .venv/bin/python benchmarks/data_scaling.py --sizes 2000 --root /tmp/x   # a quick look
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def generate(root: Path, n: int, test: int = 1000, classes: int = 10, seed: int = 0) -> float:
    """An image folder of ``n`` training and ``test`` test JPEGs (64x64 RGB), from a pool of 512 distinct
    smooth images (encoding is not what is measured); returns the seconds it took."""
    from PIL import Image

    if (root / ".complete").exists():
        return 0.0
    t0 = time.perf_counter()
    shutil.rmtree(root, ignore_errors=True)
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(512):
        low = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        im = Image.fromarray(low).resize((64, 64), Image.Resampling.BILINEAR)
        buf = io.BytesIO()
        im.save(buf, format="JPEG", quality=90)
        pool.append(buf.getvalue())
    for split, count in (("train", n), ("test", test)):
        for c in range(classes):
            folder = root / split / f"class{c}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(c, count, classes):
                (folder / f"{i:07d}.jpg").write_bytes(pool[(i * 7919) % len(pool)])
    (root / ".complete").touch()
    return time.perf_counter() - t0


def child(mode: str, folder: Path, cache: Path) -> dict:
    """One measurement in this (fresh) process."""
    import torch
    from torch import nn

    from igkd.config import AugmentConfig, DistillConfig, TrainConfig
    from igkd.convention import InputConvention
    from igkd.data import load_dataset
    from igkd.data.image_dataset import ImageDataset
    from igkd.distill.methods import Distiller
    from igkd.distill.trainer import TrainingData, fit
    from igkd.runs import RunDir

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    train, test = (load_dataset("image_folder", s, root=folder, streaming=True, cache_root=cache) for s in
                   ("train", "test"))
    out = {"mode": mode, "n": len(train), "load_s": time.perf_counter() - t0}
    if mode == "build":
        out["peak_rss_mb"] = peak_rss_mb()
        return out
    if mode == "memory":
        train = ImageDataset(train.name, train.x[:], train.y, train.classes)
        test = ImageDataset(test.name, test.x[:], test.y, test.classes)
    data = TrainingData(train, test, torch.arange(len(train)), torch.zeros(0, dtype=torch.int64),
                        InputConvention((0.5,) * 3, (0.25,) * 3))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 10))
    run = RunDir(cache / f"run-{mode}-{len(train)}")
    shutil.rmtree(run.path, ignore_errors=True)
    run.path.mkdir(parents=True)
    cfg = TrainConfig(epochs=1, batch_size=512, device="cpu", optimizer="adam", lr=1e-3, checkpoint_every=0,
                      check_finite_every=0)
    history = fit(Distiller.from_config(net, None, "student", DistillConfig()), data, cfg,
                  AugmentConfig(crop_padding=8, flip=True, overlay_p=0.0), run, torch.device("cpu"), progress=False)
    out.update(epoch_s=history[0]["epoch_time_s"], images_per_s=len(train) / history[0]["epoch_time_s"],
               loss=history[0]["loss"], peak_rss_mb=peak_rss_mb())
    return out


def measure(mode: str, folder: Path, cache: Path) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, __file__, "--child", mode, "--folder", str(folder), "--cache", str(cache)],
                          capture_output=True, text=True, env=env)
    if done.returncode:
        raise SystemExit(f"{mode} on {folder} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="20000,200000", help="training-set sizes, comma-separated")
    ap.add_argument("--root", default="/tmp/igkd-data-scaling", help="where the folders and caches go")
    ap.add_argument("--keep", action="store_true", help="keep the generated folders and caches")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--folder", help=argparse.SUPPRESS)
    ap.add_argument("--cache", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child, Path(args.folder), Path(args.cache))))
        return
    root = Path(args.root)
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        folder, cache = root / f"folder-{n}", root / f"cache-{n}"
        gen_s = generate(folder, n)
        shutil.rmtree(cache, ignore_errors=True)
        build = measure("build", folder, cache)
        streamed = measure("streamed", folder, cache)
        memory = measure("memory", folder, cache)
        rows.append((n, gen_s, build, streamed, memory))
        print(f"  {n}: generated in {gen_s:.0f} s; {json.dumps([build, streamed, memory])}", flush=True)
        if not args.keep:
            shutil.rmtree(cache, ignore_errors=True)
    print(f"\n# data scaling: 64x64 RGB JPEG folders, batch 512, 1 thread, {os.cpu_count()} cores (load from other "
          "processes slows the timings)\n")
    print("| images | decoded data | cache build (first epoch) | peak RSS in memory | peak RSS streamed | "
          "peak RSS of the build | images/s in memory | images/s streamed | streamed / in memory |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for n, _gen, build, streamed, memory in rows:
        data_mb = (n + 1000) * 3 * 64 * 64 / 2**20
        print(f"| {n:,} | {data_mb:,.0f} MB | {build['load_s']:.0f} s ({n / build['load_s']:,.0f} images/s) | "
              f"{memory['peak_rss_mb']:,.0f} MB | {streamed['peak_rss_mb']:,.0f} MB | {build['peak_rss_mb']:,.0f} MB | "
              f"{memory['images_per_s']:,.0f} | {streamed['images_per_s']:,.0f} | "
              f"{streamed['images_per_s'] / memory['images_per_s']:.2f} |")
    if len(rows) >= 2:
        (n0, _, b0, s0, m0), (n1, _, b1, s1, m1) = rows[0], rows[-1]
        growth = (n1 - n0) * 3 * 64 * 64 / 2**20
        print(f"\nfrom {n0:,} to {n1:,} images the decoded data grows by {growth:,.0f} MB; peak RSS grows by "
              f"{m1['peak_rss_mb'] - m0['peak_rss_mb']:,.0f} MB in memory, "
              f"{s1['peak_rss_mb'] - s0['peak_rss_mb']:,.0f} MB streamed "
              f"({100 * (s1['peak_rss_mb'] - s0['peak_rss_mb']) / growth:.1f} % of the data's growth), "
              f"{b1['peak_rss_mb'] - b0['peak_rss_mb']:,.0f} MB while building the cache")
    if not args.keep:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
