"""Random batches from a file of decoded images: an Arrow IPC file (the format under Hugging Face ``datasets``),
a memory map of a ``.npy``, and igkd's cache reader (:class:`igkd.fileio.NpyRows`, ``preadv`` per row).

For each: milliseconds per batch of 512 64x64x3 images at random positions of 60,000 (one epoch in the
order of a random permutation, as an epoch plan asks for them) and how much the process's resident
memory grows over that epoch (the data is 703 MB). Files go to ``--dir`` (default /tmp) and are removed.

    .venv/bin/python benchmarks/data_formats.py
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def epoch(read, order) -> tuple[float, float]:
    base = peak = rss_mb()
    t0 = time.perf_counter()
    for positions in order:
        batch = read(positions)
        assert batch.shape == (len(positions), 3, 64, 64)
        peak = max(peak, rss_mb())
    return (time.perf_counter() - t0) / len(order) * 1e3, peak - base


def main() -> None:
    import pyarrow as pa
    import torch  # noqa: F401 - loaded before the first measurement, so its pages are not counted

    from igkd.fileio import NpyRows

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", default=None)
    ap.add_argument("--n", type=int, default=60000)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(dir=args.dir))
    try:
        n, row = args.n, 3 * 64 * 64
        rng = np.random.default_rng(0)
        x = rng.integers(0, 256, (n, 3, 64, 64), dtype=np.uint8)
        np.save(folder / "x.npy", x)
        images = pa.FixedSizeBinaryArray.from_buffers(pa.binary(row), n, [None, pa.py_buffer(x.tobytes())])
        table = pa.table({"image": images, "label": pa.array(np.arange(n) % 10)})
        with pa.OSFile(str(folder / "x.arrow"), "wb") as f, pa.ipc.new_file(f, table.schema) as w:
            w.write_table(table, max_chunksize=1000)
        del x, table, images
        order = np.array_split(rng.permutation(n), n // 512)

        column = pa.ipc.open_file(pa.memory_map(str(folder / "x.arrow"))).read_all().column("image")

        def arrow(p):
            taken = column.take(pa.array(p)).combine_chunks()
            return np.frombuffer(taken.buffers()[1], np.uint8).reshape(-1, 3, 64, 64).copy()

        mapped = np.load(folder / "x.npy", mmap_mode="r")
        rows = NpyRows(folder / "x.npy")
        results = [("Arrow IPC, memory-mapped, take", *epoch(arrow, order)),
                   (".npy memory map, numpy take", *epoch(lambda p: np.take(mapped, p, axis=0), order)),
                   (".npy, NpyRows (preadv per row)", *epoch(rows.read, order))]
        print(f"\n# random batches of 512 of {n:,} 64x64x3 images ({n * row / 2**20:,.0f} MB), one epoch\n")
        print("| reader | ms per batch | resident memory growth over the epoch |")
        print("|---|---:|---:|")
        for name, ms, grown in results:
            print(f"| {name} | {ms:.1f} | {grown:,.0f} MB |")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
