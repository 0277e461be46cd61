"""Studies: many runs of several methods (and student depths) as independent jobs, one results table.

A study directory holds::

    study.json      the plan (methods, runs, depths, design, seed) and the resolved config
    teacher/        the teacher run (unless ``teacher.checkpoint`` names one)
    ig/             the IG map store of the training set (when a method uses the overlay), and one store
                    per other attribution source an arm names (``kd_ig+gradcam_maps``, ...)
    gallery.npz     a few training images with their IG maps and overlays, for the report
    runs/<arm>-k<k>-r<i>/   one ordinary run directory per job
    results.csv     one row per finished run, rewritten (atomically) as each run finishes

Design: paired by default. Run ``i`` of every method (and depth) gets the same seed, so it trains on
the same fresh stratified subset (``train_fraction`` of the training split), starts from the same
initialisation and sees the same batches, crops and flips; only the method differs, and differences
can be tested within pairs. ``paired=False`` gives every job its own seed.

Jobs run in-process one after the other (``workers=1``) or as Ray tasks, each with its own CPU
budget (``threads_per_run``), on a local Ray instance sized to the machine or on a cluster
(``address``; the study directory and the data must then be on a shared file system). Results come
back as they finish. Rerunning the same command resumes: finished runs are skipped, a run that was
interrupted continues from its last checkpoint.
"""

from __future__ import annotations

import copy
import csv
import io
import math
import os
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attribution import ATTRIBUTIONS, MapStore, explanation_problems
from ..config import METHODS, Config, config_from_dict
from ..data.augment import example_overlays
from ..distill.methods import MethodSpec
from ..errors import ConfigError, IgkdError
from ..fileio import (
    atomic_write_bytes,
    ensure_dir,
    write_checked_json,
    write_with_sidecar,
)
from ..locks import FileLock
from ..models.mobilenet import NUM_FEATURE_MODULES
from ..pipeline import (
    distill,
    load_datasets,
    precompute,
    run_or_reuse,
    teacher_config,
    train_teacher,
)
from ..runs import RunDir
from ..tracking import StudyTracker
from ..utils import derive_seed
from .results import read_results, read_study, study_parts
from .stats import DEFAULT_MARGIN

# The paper's compression sweep: k = 3 .. 17 removed feature modules (CF 2.2 .. 1122).
PAPER_DEPTHS = (3, 5, 7, 9, 11, 13, 15, 17)
# Controls: "<method>+<control>" runs the method with the overlay's maps replaced: another image's, noise,
# or the maps of the teacher's architecture with random weights (ig.teacher_weights=random).
CONTROLS = {"unrelated_maps": "unrelated", "noise_maps": "noise", "random_teacher_maps": "ig"}
RANDOM_TEACHER = "random_teacher_maps"
# Sources: "<method>+<source>_maps" runs the method with the overlay's maps from that attribution source.
SOURCES = {f"{name}_maps": name for name in ATTRIBUTIONS}
COLUMNS = ("study", "method", "remove_blocks", "run", "seed", "train_images", "test_images", "params", "macs",
           "compression_factor", "teacher_test_acc", "test_acc_last", "test_acc_at_best_val", "best_epoch",
           "epochs", "train_time_s", "wall_time_s", "run_dir")


@dataclass(frozen=True)
class Arm:
    """One compared variant: a method, and which maps its overlay uses (the store's, or a control), from
    which attribution source (None: the config's ``ig.attribution``) of which teacher weights."""

    name: str
    method: str
    maps: str = "ig"
    attribution: str | None = None
    teacher_weights: str = "trained"

    @classmethod
    def parse(cls, name: str) -> Arm:
        method, _, control = name.partition("+")
        if method not in METHODS:
            raise ConfigError(f"unknown method {method!r} in {name!r}; known: {', '.join(METHODS)}")
        if not control:
            return cls(name, method)
        if control not in CONTROLS and control not in SOURCES:
            raise ConfigError(f"unknown control {control!r} in {name!r}; known: {', '.join([*CONTROLS, *SOURCES])}")
        if not MethodSpec.parse(method).ig:
            raise ConfigError(f"{name!r}: a map control needs a method with the IG overlay (ig, kd_ig, ...)")
        if control in SOURCES:
            return cls(name, method, attribution=SOURCES[control])
        return cls(name, method, CONTROLS[control], teacher_weights="random" if control == RANDOM_TEACHER else "trained")

    def apply(self, base: Config) -> Config:
        """A copy of ``base`` that runs this arm: its method, its overlay's maps and their source."""
        cfg = copy.deepcopy(base)
        cfg.distill.method = self.method
        cfg.augment.maps = self.maps
        cfg.ig.teacher_weights = self.teacher_weights
        if self.attribution is not None:
            cfg.ig.attribution = self.attribution
        return cfg


@dataclass
class StudyPlan:
    kind: str  # montecarlo | sweep
    methods: list[str]
    runs: int
    remove_blocks: list[int]
    paired: bool = True
    train_fraction: float | None = None  # None: the config's train.subset_fraction if below 1, else 0.8 (the paper's)
    seed: int = 0
    baseline: str = field(default="")
    # Planned contrasts (method, baseline), each tested as method - baseline with Holm across them; none:
    # every method against the baseline. Reported only: they change no run.
    contrasts: list[tuple[str, str]] = field(default_factory=list)
    # The equivalence margin (points) the report's TOST verdicts use. Reported only: it changes no run.
    margin: float = DEFAULT_MARGIN

    def __post_init__(self) -> None:
        if self.kind not in ("montecarlo", "sweep"):
            raise ConfigError(f"unknown study kind {self.kind!r}")
        if not self.methods:
            raise ConfigError("a study needs at least one method")
        if len(set(self.methods)) != len(self.methods):
            raise ConfigError(f"methods listed twice: {', '.join(self.methods)}")
        for m in self.methods:
            Arm.parse(m)
        if self.runs < 1:
            raise ConfigError(f"--runs must be >= 1, got {self.runs}")
        if self.train_fraction is not None and not 0.0 < self.train_fraction <= 1.0:
            raise ConfigError(f"--fraction must be in (0, 1], got {self.train_fraction}")
        for k in self.remove_blocks:
            if not 1 <= k < NUM_FEATURE_MODULES:
                raise ConfigError(f"remove_blocks {k} out of range 1..{NUM_FEATURE_MODULES - 1}")
        if not self.baseline:
            self.baseline = "student" if "student" in self.methods else self.methods[0]
        check_contrasts(self.contrasts, self.methods)
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin > 0):
            raise ConfigError(f"--margin must be a positive number of percentage points, got {self.margin!r}")

    @property
    def arms(self) -> list[Arm]:
        return [Arm.parse(m) for m in self.methods]

    def seed_of(self, arm: Arm, k: int, run: int) -> int:
        """Paired: one seed per run index, shared by every arm and depth. Unpaired: one per job."""
        key = ("run", run) if self.paired else ("run", run, arm.name, k)
        return derive_seed(self.seed, *key) % 2**31


@dataclass(frozen=True)
class Job:
    arm: Arm
    remove_blocks: int
    run: int
    seed: int
    run_dir: str  # relative to the study directory

    def config(self, base: Config) -> Config:
        cfg = self.arm.apply(base)
        cfg.student.remove_blocks = self.remove_blocks
        cfg.train.seed = self.seed
        return cfg


def parse_contrasts(text: str | None) -> list[tuple[str, str]]:
    """``A-B,C-D`` (each: method A minus method B) as pairs; None or empty: none."""
    pairs = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        parts = [p.strip() for p in item.split("-")]
        if len(parts) != 2 or not all(parts):
            raise ConfigError(f"--contrasts takes A-B pairs (method A minus method B) separated by commas, "
                              f"like kd_ig-kd,kd_ig-kd_ig+noise_maps; got {item.strip()!r}")
        pairs.append((parts[0], parts[1]))
    return pairs


def check_contrasts(pairs, methods: list[str]) -> None:
    """Refuse a contrast that names a method outside ``methods``, or one method twice."""
    for a, b in pairs:
        absent = [m for m in (a, b) if m not in methods]
        if absent:
            raise ConfigError(f"contrast {a}-{b}: {', '.join(absent)} not among the study's methods "
                              f"({', '.join(methods)})")
        if a == b:
            raise ConfigError(f"contrast {a}-{b} compares a method with itself")


def parse_depths(text: str) -> list[int]:
    """``paper`` (the eight depths of the paper's sweep) or a comma-separated list of k."""
    if text.strip() == "paper":
        return list(PAPER_DEPTHS)
    try:
        return [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"--remove-blocks must be 'paper' or numbers like 3,5,7; got {text!r}") from None


# --------------------------------------------------------------------------------------------------
# Running a study


def run_study(cfg: Config, plan: StudyPlan, out: str | Path, workers: int | None = None,
              threads_per_run: int | None = None, address: str | None = None,
              progress: bool | None = None, on_result: Callable[[dict], None] | None = None) -> list[dict]:
    """Run (or resume) the study in ``out``; return the rows of ``results.csv``.

    One process drives a study folder at a time (a lock names it); its runs lock their own folders.
    """
    load_datasets(cfg)  # bad data is an error before anything is written (loads are cached per process)
    if plan.train_fraction is None:  # a recipe that names its subset keeps it; else the paper's 80 %
        plan = replace(plan, train_fraction=cfg.train.subset_fraction if cfg.train.subset_fraction < 1 else 0.8)
    with FileLock(out, "study folder"):
        return _run_study(cfg, plan, Path(out), workers, threads_per_run, address, progress, on_result)


def _run_study(cfg: Config, plan: StudyPlan, out: Path, workers: int | None, threads_per_run: int | None,
               address: str | None, progress: bool | None, on_result: Callable[[dict], None] | None) -> list[dict]:
    cfg = copy.deepcopy(cfg)
    cfg.train.subset_fraction = plan.train_fraction
    parts = _claim(out, cfg, plan)
    with StudyTracker(cfg, out, ("study.json", "results.csv")) as tracker:  # MLflow: the parent of its runs
        tracker.start(plan.kind, {"plan": asdict(plan)})
        return _run_jobs(tracker.nest(cfg), plan, out, workers, threads_per_run, address, progress, on_result,
                         parts)


def plan_jobs(plan: StudyPlan, methods: list[str] | None = None, runs: int | None = None,
              remove_blocks: list[int] | None = None) -> list[Job]:
    """The runs of ``plan`` (or of one part of its study: other methods, runs or depths, the same seeds)."""
    arms = plan.arms if methods is None else [Arm.parse(m) for m in methods]
    return [Job(arm, k, i, plan.seed_of(arm, k, i), f"runs/{arm.name}-k{k}-r{i:03d}")
            for k in (plan.remove_blocks if remove_blocks is None else remove_blocks)
            for i in range(plan.runs if runs is None else runs) for arm in arms]


def _run_jobs(cfg: Config, plan: StudyPlan, out: Path, workers: int | None, threads_per_run: int | None,
              address: str | None, progress: bool | None, on_result: Callable[[dict], None] | None,
              parts: list[dict]) -> list[dict]:
    cfg = prepare_shared(cfg, out, plan.arms, progress)

    jobs = plan_jobs(plan)
    # results.csv holds every part of the study (this command's is among them): earlier commands' runs too
    every = list({j.run_dir: j for part in parts for j in plan_jobs(plan, part["methods"], part["runs"],
                                                                    part["remove_blocks"])}.values())
    todo = [j for j in jobs if not RunDir(out / j.run_dir).complete]
    print(f"study {out}: {len(jobs)} runs, {len(jobs) - len(todo)} already finished", flush=True)
    started, finished_here = time.monotonic(), 0

    def finished(job: Job, summary: dict) -> None:
        nonlocal finished_here
        finished_here += 1
        rows = write_results(out, every)
        done = sum(RunDir(out / j.run_dir).complete for j in jobs)
        eta = time_left(time.monotonic() - started, finished_here, len(jobs) - done)
        print(f"  done {job.run_dir}: test accuracy {summary['test_acc_last']:.2f} % "
              f"({done}/{len(jobs)} runs finished{f'; {len(rows)} in the study' if len(every) > len(jobs) else ''}"
              f"{f'; {eta}' if eta else ''})", flush=True)
        if on_result is not None:
            on_result(summary)

    if not todo:
        return write_results(out, every)
    if workers == 1:
        for job in todo:
            finished(job, run_job(job.config(cfg).to_dict(), str(out / job.run_dir), threads_per_run))
    else:
        _run_on_ray(cfg, out, todo, workers, threads_per_run, address, finished)
    return write_results(out, every)


def time_left(elapsed_s: float, finished: int, remaining: int) -> str:
    """``about 2 h 05 min left`` at this command's pace so far (its elapsed time over the runs it finished;
    a run resumed from its checkpoint finishes early, so the first figures run low); empty when nothing is
    left or nothing has finished yet."""
    if remaining <= 0 or finished <= 0:
        return ""
    minutes = round(elapsed_s / finished * remaining / 60)
    if minutes < 1:
        return "under a minute left"
    return f"about {minutes // 60} h {minutes % 60:02d} min left" if minutes >= 60 else f"about {minutes} min left"


def prepare_shared(cfg: Config, out: Path, arms: Iterable[Arm], progress: bool | None = None) -> Config:
    """What every run in ``out`` (a study's, a search's) shares, made once before any run: the teacher,
    trained in ``out/teacher`` (or reused) unless ``teacher.checkpoint`` names one, and the map stores the
    ``arms`` overlay, in ``out/ig`` unless ``ig.store`` or ``ig.cache_dir`` say where, with the report's
    gallery. Returns a copy of ``cfg`` that points at them."""
    cfg = copy.deepcopy(cfg)
    if cfg.teacher.checkpoint is None:
        run_or_reuse(out / "teacher", teacher_config(cfg), train_teacher, "teacher", progress=progress)
        cfg.teacher.checkpoint = str(out / "teacher" / "model.pt")
    if not cfg.ig.store and not cfg.ig.cache_dir:
        cfg.ig.cache_dir = str(out / "ig")
    sources = list(dict.fromkeys((a.attribution or cfg.ig.attribution, a.teacher_weights) for a in arms
                                 if MethodSpec.parse(a.method).ig and a.maps != "noise"))
    if cfg.ig.store and len(sources) > 1:
        raise ConfigError(f"ig.store names one folder but the arms use {len(sources)} map stores "
                          f"({', '.join(f'{s} ({w} teacher)' for s, w in sources)}): unset ig.store (each store "
                          "goes to ig.cache_dir)")
    for source, weights in sources:  # each store once, before any run
        source_cfg = copy.deepcopy(cfg)
        source_cfg.ig.attribution = source
        source_cfg.ig.teacher_weights = weights
        result = precompute(source_cfg, progress=progress)
        label = "IG" if source == "integrated_gradients" else source
        print(f"{label} maps{' (random teacher)' if weights == 'random' else ''}: {result.path}", flush=True)
        if not (out / "gallery.npz").exists() and result.store is not None:  # the first source's maps
            write_gallery(source_cfg, result.store, out / "gallery.npz")
    return cfg


def run_job(cfg_dict: dict, run_dir: str, threads: int | None = None) -> dict:
    """One run of a study, in whatever process executes it: resumes from its checkpoint if begun."""
    if threads:
        torch.set_num_threads(threads)
    cfg = config_from_dict(cfg_dict)
    if threads:
        cfg.train.threads = threads
    run = RunDir(run_dir)
    if run.complete:
        return run.summary()
    return distill(cfg, run_dir, resume=run.begun, progress=False)


def _run_on_ray(cfg: Config, out: Path, todo: list[Job], workers: int | None, threads_per_run: int | None,
                address: str | None, finished: Callable[[Job, dict], None]) -> None:
    import ray

    with ray_session(workers, threads_per_run, address) as (task, threads, _slots):
        pending = {task.remote(j.config(cfg).to_dict(), str((out / j.run_dir).resolve()), threads): j
                   for j in todo}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                job = pending.pop(ref)
                finished(job, ray_result(ref, job.run_dir))


@contextmanager
def ray_session(workers: int | None, threads_per_run: int | None,
                address: str | None) -> Iterator[tuple[Any, int, int]]:
    """Ray for the block: a local instance of ``workers`` x ``threads_per_run`` CPUs (default: the
    machine's) or the cluster at ``address``. Yields ``(task, threads, slots)``: :func:`run_job` as a
    remote task of ``threads`` CPUs (``threads_per_run``, default 1) and how many of them run at once."""
    try:
        import ray
    except ImportError:
        raise ConfigError("parallel runs (--workers other than 1) run on Ray: pip install 'ray>=2' "
                          "(or pass --workers 1)") from None
    threads = threads_per_run or 1
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        cpus = os.cpu_count() or 1
        if workers:
            cpus = workers * threads
        ray.init(num_cpus=cpus, include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"OMP_NUM_THREADS": str(threads)}})
    try:
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        yield ray.remote(num_cpus=threads)(run_job), threads, slots
    finally:
        ray.shutdown()


def ray_result(ref, label: str) -> dict:
    """What a Ray task of :func:`run_job` returned. A user-fixable failure inside it (bad config,
    non-finite loss, stale store) stays the one-line error it was in-process, naming ``label`` (its
    run); anything else names its run too."""
    import ray

    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, IgkdError):
            raise type(cause)(f"{label}: {cause}") from None
        raise RuntimeError(f"{label} failed: {cause or e}") from None


def _claim(out: Path, cfg: Config, plan: StudyPlan) -> list[dict]:
    """Write study.json, or check that the study already in ``out`` is this one; return the study's parts.

    More runs, methods or depths extend a study (what was run stays valid): each command's methods, runs and
    depths are one part (``parts`` in study.json), results.csv holds the runs of every part, and the study's
    methods, depths and planned contrasts are the union of its parts' (its baseline and the first contrasts
    stay), so that e.g. ``--methods kd,kd_ig --runs 20`` on a 10-run study adds ten pairs to kd_ig - kd."""
    part = {"methods": list(plan.methods), "runs": plan.runs, "remove_blocks": list(plan.remove_blocks)}
    record = {"kind": plan.kind, "plan": asdict(plan), "methods": plan.methods, "runs": plan.runs,
              "remove_blocks": plan.remove_blocks, "paired": plan.paired, "train_fraction": plan.train_fraction,
              "baseline": plan.baseline, "contrasts": [list(c) for c in plan.contrasts], "margin": plan.margin,
              "dataset": cfg.data.name, "config": cfg.to_dict(), "parts": [part]}
    old = read_study(out)
    if old:
        try:  # a config saved by an older igkd gains the defaults of keys added since
            same_config = config_from_dict(old.get("config") or {}).identity() == cfg.identity()
        except ConfigError:
            same_config = False
        if not same_config or old.get("plan", {}).get("paired") != plan.paired \
                or old.get("plan", {}).get("seed") != plan.seed or old.get("kind") != plan.kind:
            raise ConfigError(f"{out} holds another study (other config, design or seed): choose another --out")
        parts = study_parts(old)
        parts += [part] if part not in parts else []
        contrasts = [list(c) for c in old.get("contrasts") or []]
        record.update(
            parts=parts, baseline=old.get("baseline") or plan.baseline,
            methods=list(dict.fromkeys(m for p in parts for m in p["methods"])),
            runs=max(p["runs"] for p in parts),
            remove_blocks=sorted({k for p in parts for k in p["remove_blocks"]}),
            contrasts=contrasts + [c for c in record["contrasts"] if c not in contrasts])
        if "teacher" in old:
            record["teacher"] = old["teacher"]
    ensure_dir(out)
    write_checked_json(out / "study.json", record)
    return record["parts"]


# --------------------------------------------------------------------------------------------------
# Results


def result_row(study: Path, job: Job, summary: dict) -> dict:
    row = {"study": study.name, "method": job.arm.name, "remove_blocks": job.remove_blocks, "run": job.run,
           "seed": job.seed, "run_dir": job.run_dir}
    for key in COLUMNS:
        if key not in row:
            row[key] = summary.get(key)
    return row


def write_results(out: Path, jobs: list[Job]) -> list[dict]:
    """``results.csv`` from the summaries of every finished run (and the teacher's accuracy in study.json)."""
    rows = [result_row(out, j, RunDir(out / j.run_dir).summary()) for j in jobs if RunDir(out / j.run_dir).complete]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: "" if v is None else v for k, v in row.items()})
    write_with_sidecar(out / "results.csv", buf.getvalue().encode())
    study = read_study(out)
    teacher = RunDir(out / "teacher")
    if teacher.complete:
        t = teacher.summary()
        study["teacher"] = {"test_acc": t.get("test_acc_last"), "params": t.get("params"), "macs": t.get("macs")}
    elif rows and rows[0].get("teacher_test_acc") is not None:
        study["teacher"] = {"test_acc": rows[0]["teacher_test_acc"]}
    write_checked_json(out / "study.json", study)
    return rows


def write_gallery(cfg: Config, store: MapStore, path: Path, count: int = 8) -> None:
    """The first training image of each class (up to ``count``), its IG map and an overlay (s = 1.5), and
    what the store says makes its maps explain little (``notes``, printed under the gallery)."""
    ds = load_datasets(cfg)
    picks = ds.train.first_of_each_class(count)
    x = ds.train.x[picks]
    maps = store.get(picks)
    buf = io.BytesIO()
    np.savez(buf, images=x.numpy(), maps=maps.numpy(), overlays=example_overlays(x, maps, cfg.augment.mix).numpy(),
             labels=ds.train.y[picks].numpy(), classes=np.array([ds.train.classes[int(c)] for c in ds.train.y[picks]]),
             notes=np.array(explanation_problems(store.meta), dtype=str))
    atomic_write_bytes(path, buf.getvalue())


__all__ = ["CONTROLS", "PAPER_DEPTHS", "RANDOM_TEACHER", "SOURCES", "Arm", "Job", "StudyPlan", "parse_depths",
           "prepare_shared", "ray_result", "ray_session", "read_results", "read_study", "run_job",
           "run_study", "write_gallery", "write_results"]
