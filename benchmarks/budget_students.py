"""A student that is really faster: a scaled student against the truncated student of similar size.

Fashion-MNIST, the CPU recipe (``cpu-study-fashion-mnist``: its width-0.5 teacher, 3 epochs per
student). Truncation keeps the teacher's early, full-resolution layers, where the work is: its k = 11
student has 3.7 % of the teacher's parameters but 17 % of its multiply-adds, and at batch 1 a CPU pays
per layer. The scaled student downsamples in every stage (strides 2,2,2,2,1), is wider (width 1.0)
and shallower (k = 14: five modules), with about the same parameters (25,546 against 25,962).

Both students are trained by each ``--methods`` method ``--runs`` times (run i of every student and
method shares its seed, so its initialisation stream and batches: a paired comparison), reusing
finished runs in ``--out``. Then the teacher and both students are benched (PyTorch and ONNX Runtime,
batch 1 and 64) and two tables printed: the bench table with mean accuracies, and per method the
accuracy of each student (mean, sd, n) with the paired difference. ``bench.json`` goes to ``--out``
(copy it into a study folder, e.g. as ``bench-budget.json``, and ``igkd report`` renders it).

    .venv/bin/python benchmarks/budget_students.py --teacher runs/cpu-study-teacher/model.pt \\
        --methods student,kd_ig --runs 3 --threads 2 --out runs/budget-students
"""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import numpy as np
import torch

from igkd.cli import resolve_config_path
from igkd.config import load_config
from igkd.deploy.bench import BenchSettings, Candidate, bench_models, write_bench
from igkd.deploy.results import format_bench, latency
from igkd.deploy.timing import TimingOptions
from igkd.distill.methods import MethodSpec
from igkd.experiments import stats
from igkd.models import student_spec
from igkd.pipeline import distill, load_datasets, load_teacher, precompute, run_or_reuse
from igkd.reporting import format_table

SCALED = ["student.kind=scaled", "student.width_mult=1.0", "student.strides=[2,2,2,2,1]",
          "student.remove_blocks=14"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="cpu-study-fashion-mnist")
    ap.add_argument("--teacher", default="runs/cpu-study-teacher/model.pt", help="the recipe's trained teacher")
    ap.add_argument("--set", action="append", default=[], help="config overrides for both students")
    ap.add_argument("--scaled", action="append", default=None,
                    help=f"overrides that make the scaled student (default: {' '.join(SCALED)})")
    ap.add_argument("--methods", default="student,kd_ig")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads for training and timing")
    ap.add_argument("--min-time", type=float, default=2.0, help="seconds of timed calls per cell, at least")
    ap.add_argument("--out", default="runs/budget-students")
    args = ap.parse_args()

    out = Path(args.out)
    base = [f"teacher.checkpoint={args.teacher}", *args.set]
    if args.threads:
        base.append(f"train.threads={args.threads}")
    path = resolve_config_path(args.config)
    students = {"truncated": load_config(path, base), "scaled": load_config(path, [*base, *(args.scaled or SCALED)])}
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if any(MethodSpec.parse(m).ig for m in methods):
        print(f"IG maps: {precompute(students['truncated']).path}", flush=True)

    ds = load_datasets(students["truncated"])
    shape, classes = ds.train.image_shape, ds.train.num_classes
    specs = {name: student_spec(cfg, shape, classes) for name, cfg in students.items()}
    acc: dict[str, dict[str, list[float]]] = {name: {m: [] for m in methods} for name in students}
    for name, cfg in students.items():
        for method in methods:
            for run in range(args.runs):
                rcfg = copy.deepcopy(cfg)
                rcfg.distill.method, rcfg.train.seed = method, run
                summary = run_or_reuse(out / specs[name].label.replace(" ", "_") / method / f"run{run}", rcfg,
                                       distill, f"{specs[name].label} {method} run {run}")
                acc[name][method].append(summary["test_acc_last"])

    teacher, _ = load_teacher(students["truncated"], classes, shape[0], torch.device("cpu"))
    candidates = [Candidate("teacher", "teacher", teacher, checkpoint=args.teacher, trained=True)]
    for name in students:
        means = {m: float(np.mean(v)) for m, v in acc[name].items()}
        candidates.append(Candidate(specs[name].label, "student", specs[name].build(teacher), specs[name],
                                    accuracy=means))
    settings = BenchSettings(threads=args.threads, accuracy=True, timing=TimingOptions(min_time_s=args.min_time),
                             title="Fashion-MNIST: a scaled student against the truncated student of similar size")
    result = bench_models(candidates, shape, settings, ds)
    result["runs"] = {name: {"student": specs[name].to_dict(), "test_acc_last": acc[name]} for name in students}
    written = write_bench(result, out / "bench.json")
    print(format_bench(result))
    print()
    print(comparison_table(result, specs, acc, methods))
    print(f"\nwritten: {', '.join(map(str, written))}")


def comparison_table(result: dict, specs, acc, methods) -> str:
    by_name = {m["name"]: m for m in result["models"]}
    base = latency(by_name["teacher"], "torch", "cpu", 1)["median_ms"]
    rows = []
    for name, spec in specs.items():
        rec = by_name[spec.label]
        ms = latency(rec, "torch", "cpu", 1)["median_ms"]
        row = [spec.label, f"{rec['params']:,}", f"{rec['macs'] / 1e6:.2f}", f"{ms:.3f}", f"{base / ms:.2f}x"]
        for m in methods:
            d = stats.describe(acc[name][m])
            row.append(f"{d['mean']:.2f} +- {d['sd']:.2f} (n={d['n']})" if d["n"] > 1 else f"{d['mean']:.2f}")
        rows.append(row)
    diff = ["scaled - truncated (paired by seed)", "", "", "", ""]
    for m in methods:
        d = np.asarray(acc["scaled"][m]) - np.asarray(acc["truncated"][m])
        diff.append(f"{d.mean():+.2f} +- {d.std(ddof=1):.2f}" if len(d) > 1 else f"{d.mean():+.2f}")
    rows.append(diff)
    headers = ["student", "params", "MMACs", "torch CPU batch 1 ms", "speed-up vs teacher",
               *(f"test acc % ({m})" for m in methods)]
    return format_table(headers, rows)


if __name__ == "__main__":
    main()
