"""Latency of the paper's models on this machine: the CIFAR-10 MobileNetV2 teacher and its eight
truncated students (METHOD.md), measured properly.

Parameters, multiply-adds, size on disk and latency (median, 10th and 90th percentile) at batch 1 and
64, in PyTorch (eager, eval, inference mode) and ONNX Runtime, on the CPU and on CUDA when present,
after a warm-up and over at least ``--min-repeats`` calls and ``--min-time`` seconds. Weights are
random: latency does not depend on them. The paper's numbers, for comparison, came from one un-warmed
call per batch of 64: teacher 140 ms, CF 4.1 student 12.7 ms (11x), CF 1122 student 1.35 ms.

    .venv/bin/python benchmarks/latency.py [--threads 2] [--out runs/bench-paper/bench.json]

The same table is ``igkd bench -c paper-cifar10 --remove-blocks paper``; a bench.json inside a study
folder is rendered by ``igkd report``. Run it on an otherwise idle machine: the table warns when the
load average says other work was running.
"""

from __future__ import annotations

import argparse

from igkd.cli import resolve_config_path
from igkd.config import load_config
from igkd.data.catalog import CIFAR10
from igkd.deploy.bench import BenchSettings, bench_models, candidates_from_config, write_bench
from igkd.deploy.results import format_bench
from igkd.deploy.timing import TimingOptions
from igkd.experiments.study import PAPER_DEPTHS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's choice)")
    ap.add_argument("--runtimes", default="torch,onnxruntime")
    ap.add_argument("--devices", default=None, help="cpu and/or cuda (default: cpu, and cuda when present)")
    ap.add_argument("--batch-sizes", default="1,64")
    ap.add_argument("--warmup", type=int, default=10, help="untimed calls before each cell")
    ap.add_argument("--min-repeats", type=int, default=30)
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per cell, at least")
    ap.add_argument("--out", default="runs/bench-paper/bench.json")
    args = ap.parse_args()

    cfg = load_config(resolve_config_path("paper-cifar10"))
    settings = BenchSettings(
        batch_sizes=tuple(int(b) for b in args.batch_sizes.split(",")),
        runtimes=tuple(args.runtimes.split(",")), threads=args.threads,
        devices=tuple(args.devices.split(",")) if args.devices else None,
        timing=TimingOptions(warmup=args.warmup, min_repeats=args.min_repeats, min_time_s=args.min_time),
        title="The paper's models: CIFAR-10 MobileNetV2 teacher and its eight truncated students")
    candidates = candidates_from_config(cfg, [], list(PAPER_DEPTHS), CIFAR10.image_shape, CIFAR10.num_classes,
                                        include_student=False)
    result = bench_models(candidates, CIFAR10.image_shape, settings)
    written = write_bench(result, args.out)
    print(format_bench(result))
    print("\nThe paper (one un-warmed call, batch 64): teacher 140 ms, CF 4.1 12.7 ms (11x), CF 1122 1.35 ms.")
    print(f"written: {', '.join(map(str, written))}")


if __name__ == "__main__":
    main()
