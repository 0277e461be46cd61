"""``igkd demo``: teacher, IG maps and students on a small real dataset, one table at the end.

Every stage is reused when its finished output is already in ``out`` with the same settings, so a
second run only prints the table, and an interrupted one picks up where it stopped.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

from .config import Config
from .experiments.study import Arm, prepare_shared
from .fileio import atomic_write_text, write_checked_json
from .pipeline import (
    TEACHER_SECTIONS,
    distill,
    run_or_reuse,
    teacher_config,
    train_teacher,
)
from .reporting import format_table


def run_demo(cfg: Config, out: str | Path, methods: list[str]) -> list[dict]:
    """Teacher (trained here, or ``teacher.checkpoint``: the preset ships igkd's own), the maps the
    arms overlay, one student per arm (``kd_ig+noise_maps`` is kd_ig with maps that carry nothing)."""
    arms = [Arm.parse(m) for m in methods]  # an unknown method or control is one line, before any work
    out = Path(out)
    t0 = time.perf_counter()
    n_steps = 2 + len(arms)
    teacher = None
    cfg = copy.deepcopy(cfg)
    if cfg.teacher.checkpoint is None:
        teacher_cfg = teacher_config(cfg)
        teacher_dir = out / f"teacher-{teacher_cfg.digest(*TEACHER_SECTIONS)}"
        teacher = run_or_reuse(teacher_dir, teacher_cfg, train_teacher, "teacher", f"[1/{n_steps}]")
        cfg.teacher.checkpoint = str(teacher_dir / "model.pt")
    else:
        print(f"[1/{n_steps}] teacher: {cfg.teacher.checkpoint}", flush=True)
    if not cfg.ig.store and not cfg.ig.cache_dir:
        cfg.ig.cache_dir = str(out / "ig")
    print(f"[2/{n_steps}] maps of {cfg.data.train_size or 'all'} training images", flush=True)
    cfg = prepare_shared(cfg, out, arms)
    summaries = []
    for i, arm in enumerate(arms):
        mcfg = arm.apply(cfg)
        summary = run_or_reuse(out / f"{arm.name}-{mcfg.digest()}", mcfg, distill, arm.name, f"[{3 + i}/{n_steps}]")
        summaries.append({**summary, "method": arm.name})
    wall = time.perf_counter() - t0

    ref = next((s for s in summaries if s.get("teacher_test_acc") is not None), None)
    if teacher is not None:
        rows = [("teacher", teacher["test_acc_last"], teacher.get("test_acc_at_best_val"), teacher["params"], 1.0,
                 teacher["macs"] / 1e6)]
    elif ref is not None:
        rows = [("teacher", ref["teacher_test_acc"], None, ref["teacher_params"], 1.0, ref["teacher_macs"] / 1e6)]
    else:
        rows = []
    for s in summaries:
        rows.append((s["method"], s["test_acc_last"], s.get("test_acc_at_best_val"), s["params"],
                     s["compression_factor"], s["macs"] / 1e6))
    table = format_table(["method", "test acc % (last)", "test acc % (best val)", "parameters", "CF",
                          "MMACs / image"], rows)
    print()
    if summaries:
        s = summaries[0]
        print(f"{s['dataset']}: trained on {s['train_images']:,} images for {cfg.train.epochs} epochs, "
              f"tested on {s['test_images']:,}; students drop the teacher's last {cfg.student.remove_blocks} feature "
              "modules; kd_ig+noise_maps overlays maps that carry no information (a control)")
    print(table)
    print(f"\nwall time {wall:.0f} s; runs in {out}")
    atomic_write_text(out / "demo_table.md", table + "\n")
    write_checked_json(out / "demo_summary.json", {"teacher": teacher or {"checkpoint": cfg.teacher.checkpoint,
                                                                          "test_acc_last": rows[0][1] if rows else None},
                                                   "students": summaries, "wall_time_s": wall})
    return summaries
