#!/usr/bin/env python3
"""How fast the decoded image cache is built (a streamed run's first epoch) with 1, 2, ... decode threads.

Each build runs in a fresh process on a fresh cache of the same generated image folder (64x64 RGB JPEGs,
``data_scaling.generate``) with ``IGKD_DECODE_THREADS`` set, and is checked to hold the same pixels as the
one-thread build. Prints a table: threads, seconds, images per second, speed-up over one thread.

    .venv/bin/python benchmarks/cache_build.py --images 20000 --threads 1,2
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_scaling import generate  # noqa: E402


def child(folder: Path, cache: Path) -> dict:
    import time

    from igkd.data import load_dataset

    t0 = time.perf_counter()
    ds = load_dataset("image_folder", "train", root=str(folder), streaming=True, cache_root=str(cache), progress=False)
    seconds = time.perf_counter() - t0
    digest = hashlib.sha256(ds.x[:].numpy().tobytes()).hexdigest()
    return {"images": len(ds), "seconds": seconds, "sha256": digest}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=20000, help="training images in the generated folder")
    ap.add_argument("--threads", default="1,2", help="decode thread counts to compare, comma-separated")
    ap.add_argument("--root", default="/tmp/igkd-cache-build", help="where the folder and caches go")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(Path(args.child[0]), Path(args.child[1]))))
        return 0
    root = Path(args.root)
    folder = root / f"folder-{args.images}"
    generate(folder, args.images, test=100)
    rows = []
    for threads in [int(t) for t in args.threads.split(",")]:
        cache = root / f"cache-{threads}"
        shutil.rmtree(cache, ignore_errors=True)
        env = {**os.environ, "IGKD_DECODE_THREADS": str(threads), "OMP_NUM_THREADS": "1"}
        out = subprocess.run([sys.executable, __file__, "--child", str(folder), str(cache)], env=env,
                             capture_output=True, text=True, check=True)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append((threads, result))
        shutil.rmtree(cache, ignore_errors=True)
    base = rows[0][1]
    print(f"cache build of {args.images:,} 64x64 JPEGs ({os.cpu_count()} CPUs)\n")
    print("| decode threads | seconds | images/s | speed-up | same pixels |")
    print("|---:|---:|---:|---:|---|")
    for threads, r in rows:
        print(f"| {threads} | {r['seconds']:.1f} | {r['images'] / r['seconds']:,.0f} | "
              f"{base['seconds'] / r['seconds']:.2f} | {'yes' if r['sha256'] == base['sha256'] else 'NO'} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
