"""``igkd demo``: teacher, IG maps and students on a small real dataset, one table at the end.

Every stage is reused when its finished output is already in ``out`` with the same settings, so a
second run only prints the table, and an interrupted one picks up where it stopped.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from .config import METHODS, Config
from .distill.methods import MethodSpec
from .errors import ConfigError
from .fileio import write_checked_json
from .pipeline import (
    TEACHER_SECTIONS,
    distill,
    precompute,
    run_or_reuse,
    teacher_config,
    train_teacher,
)
from .reporting import format_table


def run_demo(cfg: Config, out: str | Path, methods: list[str]) -> list[dict]:
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method {unknown[0]!r} in --methods; known: {', '.join(METHODS)}")
    out = Path(out)
    t0 = time.perf_counter()
    n_steps = 2 + len(methods)
    teacher_cfg = teacher_config(cfg)
    teacher_dir = out / f"teacher-{teacher_cfg.digest(*TEACHER_SECTIONS)}"
    teacher = run_or_reuse(teacher_dir, teacher_cfg, train_teacher, "teacher", f"[1/{n_steps}]")

    cfg = copy.deepcopy(cfg)
    cfg.teacher.checkpoint = str(teacher_dir / "model.pt")
    if not cfg.ig.store and not cfg.ig.cache_dir:
        cfg.ig.cache_dir = str(out / "ig")
    if any(MethodSpec.parse(m).ig for m in methods):
        print(f"[2/{n_steps}] IG maps of {cfg.data.train_size or 'all'} training images", flush=True)
        print(f"      -> {precompute(cfg).path}", flush=True)
    summaries = []
    for i, method in enumerate(methods):
        mcfg = copy.deepcopy(cfg)
        mcfg.distill.method = method
        summaries.append(run_or_reuse(out / f"{method}-{mcfg.digest()}", mcfg, distill, method,
                                       f"[{3 + i}/{n_steps}]"))
    wall = time.perf_counter() - t0

    rows = [("teacher", teacher["test_acc_last"], teacher.get("test_acc_at_best_val"), teacher["params"], 1.0,
             teacher["macs"] / 1e6)]
    for s in summaries:
        rows.append((s["method"], s["test_acc_last"], s.get("test_acc_at_best_val"), s["params"],
                     s["compression_factor"], s["macs"] / 1e6))
    table = format_table(["method", "test acc % (last)", "test acc % (best val)", "parameters", "CF",
                          "MMACs / image"], rows)
    print()
    if summaries:
        s = summaries[0]
        print(f"{s['dataset']}: trained on {s['train_images']:,} images for {cfg.train.epochs} epochs, "
              f"tested on {s['test_images']:,}; students drop the teacher's last {cfg.student.remove_blocks} feature modules")
    print(table)
    print(f"\nwall time {wall:.0f} s; runs in {out}")
    (out / "demo_table.md").write_text(table + "\n")
    write_checked_json(out / "demo_summary.json", {"teacher": teacher, "students": summaries, "wall_time_s": wall})
    return summaries
