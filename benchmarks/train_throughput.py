"""Training-step throughput of the paper's models: ``student`` and ``kd_ig`` (teacher forward included).

The paper's CIFAR MobileNetV2 teacher (width 1.0, CIFAR strides, 2.24 M parameters) and its k = 5
student (543 k parameters, CF 4.12). Synthetic CIFAR-sized data (uint8 images, float16 IG maps as a
store holds them) lives on the device, as in ``fit``. A step is what ``fit`` does: ``load_batch``
(gather by training-set position, crop, flip, IG overlay at p = 0.1, normalise), the distiller's
training forward under the chosen autocast, backward, Adam. The data path alone is timed the same way
(plus its share of the epoch's augmentation draws, made on the host once per epoch), so its share of
a step is the time spent outside the models.

Steps are timed in rounds of consecutive steps with one device synchronisation per round, after
warm-up steps; the median round is reported (the best is printed too: outside load only slows a
round down). The estimate of the paper's recipe is 100 epochs x (50,000 training images at the step
rate + 10,000 test images at the evaluation rate); the IG store is not included.

    .venv/bin/python benchmarks/train_throughput.py --teachers auto,torch,eager   # CPU: minutes on 2 cores
    python benchmarks/train_throughput.py --device cuda --modes eager,bf16,channels_last,bf16+channels_last+compile

The teacher's forward runs as ``distill.teacher_runtime`` says (default ``auto``: ONNX Runtime on the
CPU, on CUDA PyTorch's inference copy with batch norm folded and channels-last); ``--teachers`` times
the teacher methods under other runtimes too (``torch``, ``eager``: the teacher module as it is).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable

import torch

from igkd.config import DistillConfig, TrainConfig
from igkd.data.augment import draw_batches
from igkd.data.catalog import CIFAR10
from igkd.distill.methods import Distiller
from igkd.distill.trainer import evaluate, load_batch, make_optimizer
from igkd.models import (
    CIFAR_STRIDES,
    at_layer_for,
    cifar_mobilenet_v2,
    count_parameters,
    truncated_student,
)
from igkd.utils import resolve_device

PAPER_EPOCHS, PAPER_TRAIN, PAPER_TEST = 100, 50_000, 10_000
OVERLAY_P, PADDING = 0.1, 4


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def rounds(fn: Callable[[int], None], device: torch.device, warmup: int, steps: int, n_rounds: int) -> list[float]:
    """Seconds per call, one value per round of ``steps`` consecutive calls (after ``warmup`` calls)."""
    k = 0
    for _ in range(warmup):
        fn(k)
        k += 1
    sync(device)
    out = []
    for _ in range(n_rounds):
        t0 = time.perf_counter()
        for _ in range(steps):
            fn(k)
            k += 1
        sync(device)
        out.append((time.perf_counter() - t0) / steps)
    return out


def measure(method: str, teacher: torch.nn.Module, args, device: torch.device, data: dict, options: dict) -> dict:
    """Step and data-path time of one method under one set of options."""
    torch.manual_seed(0)
    student = truncated_student(teacher, args.remove_blocks)
    distiller = Distiller.from_config(
        student, teacher if method != "student" else None, method,
        DistillConfig(teacher_runtime=options["teacher"] if method != "student" else "auto"),
        at_layer=at_layer_for(args.remove_blocks)).to(device)
    if options["channels_last"]:
        distiller.to(memory_format=torch.channels_last)
    distiller.train()
    optimizer = make_optimizer(student.parameters(), TrainConfig())
    amp = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(options["amp"])
    scaler = torch.amp.GradScaler(device.type, enabled=options["amp"] == "fp16")
    step_module = distiller
    if options["compile"]:
        step_module.compile()
    uses_maps = "ig" in method.split("_")
    b, n_batches = args.batch_size, data["n_batches"]
    draws, order = data["draws"], data["order"]
    maps = data["maps"] if uses_maps else None

    def batch(k: int):
        i = (k % n_batches) * b
        return load_batch(data["x"], data["y"], maps, order[i:i + b], draws.rows(i, i + b), CIFAR10.convention,
                          channels_last=options["channels_last"])

    def step(k: int) -> None:
        x, y = batch(k)
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            loss = step_module(x, y)["loss"]
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()

    t_compile = time.perf_counter()
    step_rounds = rounds(step, device, args.warmup, args.steps, args.rounds)
    warm_s = time.perf_counter() - t_compile - sum(step_rounds) * args.steps
    data_rounds = rounds(batch, device, args.warmup, args.steps, args.rounds)
    x_test, y_test = data["x"][:args.eval_images], data["y"][:args.eval_images]

    def evaluation(_k: int) -> None:
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            evaluate(student, x_test, y_test, CIFAR10.convention, args.eval_batch_size)

    eval_rounds = rounds(evaluation, device, 1, 1, max(1, args.rounds // 2))
    step_s = statistics.median(step_rounds)
    data_s = statistics.median(data_rounds) + data["draws_ms"] / 1000  # the epoch's draws, per step
    eval_ips = args.eval_images / statistics.median(eval_rounds)
    epoch_s = PAPER_TRAIN / (b / step_s) + PAPER_TEST / eval_ips
    return {"method": method, **options, "step_ms": 1000 * step_s, "best_ms": 1000 * min(step_rounds),
            "ips": b / step_s, "data_ms": 1000 * data_s, "data_share": data_s / step_s, "eval_ips": eval_ips,
            "recipe_h": PAPER_EPOCHS * epoch_s / 3600, "warmup_s": warm_s}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    ap.add_argument("--batch-size", type=int, default=64, help="the paper's batch (default 64)")
    ap.add_argument("--remove-blocks", type=int, default=5, help="the student's k (default 5: CF 4.12)")
    ap.add_argument("--methods", default="student,kd_ig")
    ap.add_argument("--images", type=int, default=None, help="synthetic training images on the device "
                    "(default: 50,000 on CUDA, 4,096 on the CPU)")
    ap.add_argument("--warmup", type=int, default=None, help="untimed steps first (default: 20 CUDA, 2 CPU)")
    ap.add_argument("--steps", type=int, default=None, help="steps per timed round (default: 50 CUDA, 3 CPU)")
    ap.add_argument("--rounds", type=int, default=None, help="timed rounds (default: 5 CUDA, 3 CPU)")
    ap.add_argument("--eval-images", type=int, default=None, help="images for the evaluation rate "
                    "(default: 10,000 CUDA, 1,000 CPU)")
    ap.add_argument("--eval-batch-size", type=int, default=1000)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: PyTorch's)")
    ap.add_argument("--modes", default=None,
                    help="comma-separated settings, each eager or '+'-joined from bf16, fp16, channels_last, compile "
                         "(default: eager on the CPU; eager, bf16+channels_last on CUDA)")
    ap.add_argument("--teachers", default="auto",
                    help="comma-separated distill.teacher_runtime values for the teacher methods (auto, onnxruntime, "
                         "torch, eager)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    args = ap.parse_args()

    device = resolve_device(args.device)
    gpu = device.type == "cuda"
    for name, on_gpu, on_cpu in (("images", 50_000, 4096), ("warmup", 20, 2), ("steps", 50, 3), ("rounds", 5, 3),
                                 ("eval_images", 10_000, 1000)):
        if getattr(args, name) is None:
            setattr(args, name, on_gpu if gpu else on_cpu)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.warmup < 1 or args.steps < 1 or args.rounds < 1:
        raise SystemExit("--warmup, --steps and --rounds must be >= 1")

    g = torch.Generator().manual_seed(0)
    n, b = args.images, args.batch_size
    n_batches = n // b
    order = torch.randperm(n, generator=g)
    data = {
        "x": torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g).to(device),
        "y": torch.randint(0, 10, (n,), generator=g).to(device),
        "maps": torch.rand(n, 32, 32, generator=g).half().to(device),  # an IG store's default dtype
        "order": order.to(device),
        "n_batches": n_batches,
    }
    # An epoch's draws are made on the host and moved once, at the epoch's start: timed, and shared
    # out over the epoch's steps in the data path.
    t0 = time.perf_counter()
    data["draws"] = draw_batches([b] * n_batches, 32, 32, PADDING, True, g, OVERLAY_P, (1.0, 2.0),
                                 torch.Generator().manual_seed(1)).to(device)
    sync(device)
    data["draws_ms"] = 1000 * (time.perf_counter() - t0) / n_batches
    torch.manual_seed(0)
    teacher = cifar_mobilenet_v2(strides=CIFAR_STRIDES).to(device).eval()
    student_params = count_parameters(truncated_student(teacher, args.remove_blocks))
    where = torch.cuda.get_device_name(device) if gpu else f"CPU {platform.processor() or platform.machine()}"
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# training-step throughput: {where}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"teacher {count_parameters(teacher):,} params, student k={args.remove_blocks} {student_params:,} "
          f"params; batch {b}, {n} synthetic 3x32x32 images on {device}, overlay p={OVERLAY_P}; "
          f"{args.warmup} warm-up steps, {args.rounds} rounds of {args.steps} steps; "
          f"load average at start {load:.2f} ({os.cpu_count()} CPUs)", flush=True)

    settings = [parse_mode(m) for m in (args.modes or ("eager,bf16+channels_last" if gpu else "eager")).split(",")]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    results = []
    for options in settings:
        for method in methods:
            runtimes = [t.strip() for t in args.teachers.split(",")] if method != "student" else ["-"]
            for runtime in runtimes:
                r = measure(method, teacher, args, device, data, {**options, "teacher": runtime})
                results.append(r)
                print(f"  {method} {options} teacher {runtime}: {r['step_ms']:.1f} ms/step "
                      f"(best {r['best_ms']:.1f}), data path {r['data_ms']:.2f} ms, warm-up {r['warmup_s']:.0f} s",
                      flush=True)
    print()
    print("| method | teacher | amp | channels-last | compile | step ms (median / best) | images/s | data path ms | "
          "data share | step vs student | eval images/s | est. 100-epoch recipe |")
    print("|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    base = {(r["amp"], r["channels_last"], r["compile"]): r["step_ms"] for r in results if r["method"] == "student"}
    for r in results:
        key = (r["amp"], r["channels_last"], r["compile"])
        ratio = f"{r['step_ms'] / base[key]:.2f}x" if key in base else "-"
        kind = r["teacher"]
        print(f"| {r['method']} | {kind} | {r['amp']} | {'yes' if r['channels_last'] else 'no'} | "
              f"{'yes' if r['compile'] else 'no'} | {r['step_ms']:.1f} / {r['best_ms']:.1f} | {r['ips']:.0f} | "
              f"{r['data_ms']:.2f} | {100 * r['data_share']:.1f} % | {ratio} | {r['eval_ips']:.0f} | "
              f"{r['recipe_h']:.1f} h |")
    print()
    print("targets:")
    for r in results:
        key = (r["amp"], r["channels_last"], r["compile"])
        tag = (f"{r['method']} (teacher {r['teacher']}, amp {r['amp']}, "
               f"channels-last {r['channels_last']}, compile {r['compile']})")
        print(f"  data path < 5 % of the step, {tag}: {100 * r['data_share']:.1f} %  "
              f"{'met' if r['data_share'] < 0.05 else 'NOT met'}")
        if r["method"] == "kd_ig" and key in base:
            ratio = r["step_ms"] / base[key]
            print(f"  kd_ig step <= 1.2x student's, {tag}: {ratio:.2f}x  {'met' if ratio <= 1.2 else 'NOT met'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": where, "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "batch_size": b, "remove_blocks": args.remove_blocks, "rows": results}, f, indent=1)
            f.write("\n")


def parse_mode(mode: str) -> dict:
    """'eager' or '+'-joined flags (bf16, fp16, channels_last, compile) -> the step's options."""
    flags = {f.strip() for f in mode.split("+") if f.strip()} - {"eager"}
    unknown = flags - {"bf16", "fp16", "channels_last", "compile"}
    if unknown or {"bf16", "fp16"} <= flags:
        raise SystemExit(f"bad --modes entry {mode!r}: eager, or '+'-joined bf16|fp16, channels_last, compile")
    amp = "bf16" if "bf16" in flags else "fp16" if "fp16" in flags else "none"
    return {"amp": amp, "channels_last": "channels_last" in flags, "compile": "compile" in flags}


if __name__ == "__main__":
    main()
