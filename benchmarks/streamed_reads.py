#!/usr/bin/env python3
"""What reading a user's dataset ahead of the computation buys, for a dataset that decodes as it is read.

A map-style ``Dataset`` of PNG-encoded images decoded with PIL in ``__getitem__`` (what an image folder on
disk costs without igkd's decoded cache) is evaluated by a small network with ``igkd.evaluate(...,
streaming=True)``. Timed: the reads alone (every image decoded once, in order, in this process), the
network alone (on the images held in memory), read-then-compute in one thread (what igkd did before its
read-ahead: each batch read, then computed), and ``evaluate`` with ``loader_workers`` 0 (a background thread
reads ahead) and N (N DataLoader processes read). Every way gives the same predictions (checked). Prints a
table. Time it alone: any other work on the CPU moves these numbers.

    .venv/bin/python benchmarks/streamed_reads.py --images 4000 --size 96 --workers 2
"""

from __future__ import annotations

import argparse
import io
import sys
import time

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset


class PngImages(Dataset):
    """PNG bytes in memory, decoded on each read (the cost of a folder of image files, without the disk)."""

    def __init__(self, n: int, size: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        base = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)  # noisy images: PNG cannot shrink them
        self.blobs, self.labels = [], rng.integers(0, 10, n).tolist()
        self.targets = self.labels  # as torchvision's folders keep them: no pass over the images for labels
        for i in range(n):
            buf = io.BytesIO()
            Image.fromarray(np.roll(base[i % 8], i, axis=1)).save(buf, format="PNG", compress_level=1)
            self.blobs.append(buf.getvalue())

    def __len__(self) -> int:
        return len(self.blobs)

    def __getitem__(self, i: int):
        image = np.asarray(Image.open(io.BytesIO(self.blobs[i])).convert("RGB"))
        return torch.from_numpy(image.transpose(2, 0, 1).copy()), self.labels[i]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=4000)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="torch threads for the network")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    import igkd
    from igkd.convention import InputConvention
    from igkd.evaluate import predict

    data = PngImages(args.images, args.size)
    model = igkd.create_model("cifar_mobilenet_v2", 10, width_mult=0.5).eval()
    conv = InputConvention((0.0,) * 3, (1.0,) * 3)  # evaluate's convention without normalize: pixels in [0, 1]
    rows = []

    t = time.perf_counter()
    x = torch.stack([data[i][0] for i in range(len(data))])
    rows.append(("reads alone (one process)", time.perf_counter() - t))
    t = time.perf_counter()
    reference = predict(model, x, conv, torch.device("cpu"), args.batch_size)
    rows.append(("network alone (images in memory)", time.perf_counter() - t))
    del x

    t = time.perf_counter()
    with torch.no_grad():  # each batch read, then computed: igkd before its read-ahead
        serial = []
        for a in range(0, len(data), args.batch_size):
            xb = torch.stack([data[i][0] for i in range(a, min(a + args.batch_size, len(data)))])
            serial.append(model(conv.from_uint8(xb)).argmax(1))
    rows.append(("read, then compute, batch by batch", time.perf_counter() - t))
    same = [np.array_equal(torch.cat(serial).numpy(), reference)]

    for workers in (0, args.workers):
        t = time.perf_counter()
        r = igkd.evaluate(model, data, batch_size=args.batch_size, streaming=True, loader_workers=workers)
        how = "a reading thread" if workers == 0 else f"{workers} DataLoader processes"
        rows.append((f"igkd.evaluate(streaming=True), {how}", time.perf_counter() - t))
        expected = 100.0 * float(np.mean(reference == np.asarray(data.labels)))
        same.append(abs(r["accuracy"] - expected) < 1e-9)

    print(f"{args.images} PNG images {args.size}x{args.size}, batch {args.batch_size}, "
          f"{args.threads} torch thread(s), {torch.get_num_threads()} used")
    print("| way | seconds | images/s |\n|---|---:|---:|")
    for name, sec in rows:
        print(f"| {name} | {sec:.2f} | {args.images / sec:.0f} |")
    print(f"same predictions every way: {all(same)}")
    return 0 if all(same) else 1


if __name__ == "__main__":
    sys.exit(main())
