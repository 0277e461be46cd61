"""The ``igkd`` command."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .errors import ConfigError, IgkdError

PRESETS = Path(__file__).resolve().parent / "configs"


def resolve_config_path(name: str | None) -> Path | None:
    """A path, or the name of a preset shipped with igkd (``paper-cifar10``, ``cpu-fashion-mnist``)."""
    if name is None:
        return None
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS / (name if name.endswith(".yaml") else f"{name}.yaml")
    if preset.is_file():
        return preset
    known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.yaml")))
    raise ConfigError(f"config {name!r} is neither a file nor a preset ({known})")


def _config(args: argparse.Namespace, extra: list[str] = ()):
    from .config import load_config

    return load_config(resolve_config_path(args.config), [*extra, *args.set])


def _add_config_args(p: argparse.ArgumentParser, default: str | None = None) -> None:
    p.add_argument("--config", "-c", default=default, help="YAML file or preset name" +
                   (f" (default: {default})" if default else ""))
    p.add_argument("--set", "-s", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set train.epochs=5 (repeatable)")


def cmd_train_teacher(args) -> None:
    from .pipeline import train_teacher

    summary = train_teacher(_config(args), args.out, resume=args.resume)
    print(f"teacher: test accuracy {summary['test_acc_last']:.2f} %, weights in {Path(args.out) / 'model.pt'}")


def cmd_precompute(args) -> None:
    from .pipeline import precompute

    extra = [f"ig.store={args.store}"] if args.store else []
    r = precompute(_config(args, extra), rank=args.rank, world_size=args.world_size)
    state = "complete" if r.complete else "waiting for the other ranks to finish"
    print(f"IG maps ({state}): {r.path}; this worker (rank {r.rank} of {r.world_size}) computed "
          f"{len(r.computed)} chunks and found {len(r.skipped)} already done, in {r.seconds:.0f} s")


def cmd_distill(args) -> None:
    from .pipeline import distill

    extra = [f"distill.method={args.method}"] if args.method else []
    s = distill(_config(args, extra), args.out, resume=args.resume)
    best = f", at best validation epoch {s['test_acc_at_best_val']:.2f} %" if "test_acc_at_best_val" in s else ""
    print(f"{s['method']}: test accuracy {s['test_acc_last']:.2f} % after the last epoch{best}; "
          f"{s['params']:,} parameters, CF {s['compression_factor']:.2f}; run in {args.out}")


def cmd_demo(args) -> None:
    from .demo import run_demo

    run_demo(_config(args), args.out, methods=args.methods.split(","))


def cmd_evaluate(args) -> None:
    from .evaluate import evaluate_checkpoint, format_evaluation

    r = evaluate_checkpoint(_config(args), args.checkpoint, input_convention=args.input_convention,
                            imagenet=args.imagenet, keep_teacher_correct=args.keep_teacher_correct,
                            json_out=args.json)
    print(format_evaluation(r))
    if args.json:
        print(f"\nwritten to {args.json}")


def _study(args, kind: str, depths: list[int] | None) -> None:
    from .experiments.report import write_report
    from .experiments.study import StudyPlan, run_study

    cfg = _config(args)
    depths = depths or [cfg.student.remove_blocks]
    plan = StudyPlan(kind, [m.strip() for m in args.methods.split(",") if m.strip()], args.runs, depths,
                     paired=not args.unpaired, train_fraction=args.fraction, seed=args.seed)
    rows = run_study(cfg, plan, args.out, workers=args.workers, threads_per_run=args.threads_per_run,
                     address=args.address)
    html, md = write_report(args.out)
    print(f"{len(rows)} runs in {args.out}/results.csv; report: {html} and {md}")


def cmd_montecarlo(args) -> None:
    _study(args, "montecarlo", None if args.remove_blocks is None else [args.remove_blocks])


def cmd_sweep(args) -> None:
    from .experiments.study import parse_depths

    _study(args, "sweep", parse_depths(args.remove_blocks))


def cmd_report(args) -> None:
    from .experiments.report import write_report

    html, md = write_report(args.dir)
    print(f"report: {html} (open in a browser) and {md}")


def cmd_compression_table(args) -> None:
    from .reporting import compression_table

    print(compression_table(_config(args)))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="igkd", description="Knowledge distillation with integrated-gradients "
                                     "augmentation: teacher, IG maps, students, reports.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train-teacher", help="train the teacher network with cross-entropy")
    _add_config_args(p)
    p.add_argument("--out", "-o", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=cmd_train_teacher)

    p = sub.add_parser("precompute-ig", help="compute the teacher's IG maps of the training set into a store")
    _add_config_args(p)
    p.add_argument("--store", help="store folder (default: ig.store, else a folder in the cache)")
    p.add_argument("--rank", type=int, default=None, help="this worker's rank (default: $RANK or 0)")
    p.add_argument("--world-size", type=int, default=None, help="number of workers (default: $WORLD_SIZE or 1)")
    p.set_defaults(func=cmd_precompute)

    p = sub.add_parser("distill", help="train a student by one of the eight methods")
    _add_config_args(p)
    p.add_argument("--method", "-m", help="student, kd, ig, at, kd_ig, kd_at, ig_at or kd_ig_at")
    p.add_argument("--out", "-o", required=True, help="run directory")
    p.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    p.set_defaults(func=cmd_distill)

    p = sub.add_parser("demo", help="the whole method on Fashion-MNIST on a CPU in minutes")
    _add_config_args(p, default="cpu-fashion-mnist")
    p.add_argument("--out", "-o", default="runs/demo", help="where runs are kept and reused (default: runs/demo)")
    p.add_argument("--methods", default="student,kd,kd_ig", help="comma-separated methods")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("evaluate", help="accuracy, balanced accuracy, kappa, per-class accuracy and confusion "
                       "matrix of a teacher or student checkpoint")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="a state dict (model.pt, best.pt) or training checkpoint")
    p.add_argument("--input-convention", default="normalized", choices=("normalized", "pixels01"),
                   help="what the model was trained on: igkd's normalised input (default) or un-normalised "
                   "pixels in [0, 1] (the authors' reference students)")
    p.add_argument("--imagenet", metavar="PATH", help="evaluate on the ImageNet classes mapped onto CIFAR-10 "
                   "(downsampled val_data file/folder, or a folder of WordNet-id folders) instead of the test set")
    p.add_argument("--keep-teacher-correct", action="store_true",
                   help="with --imagenet: keep only images that teacher.checkpoint classifies correctly")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.set_defaults(func=cmd_evaluate)

    for name, helptext in (("montecarlo", "N paired runs per method on fresh stratified subsets, statistics, report"),
                           ("sweep", "the same over several student depths (compression factors)")):
        p = sub.add_parser(name, help=helptext)
        _add_config_args(p)
        p.add_argument("--methods", default="student,kd,kd_ig",
                       help="comma-separated methods; controls: kd_ig+unrelated_maps, kd_ig+noise_maps")
        p.add_argument("--runs", type=int, default=10, help="runs per method (and depth)")
        p.add_argument("--out", "-o", required=True, help="study directory (rerun the command to resume)")
        p.add_argument("--fraction", type=float, default=0.8,
                       help="stratified fraction of the training split each run trains on (paper: 0.8)")
        p.add_argument("--unpaired", action="store_true",
                       help="give every run its own seed (default: run i of every method shares seed, "
                       "subset, initialisation and augmentation draws)")
        p.add_argument("--seed", type=int, default=0, help="the study's seed; every run's seed derives from it")
        p.add_argument("--workers", type=int, default=None,
                       help="parallel runs on a local Ray instance (default: as many as the CPUs allow); "
                       "1 runs them one by one in this process, without Ray")
        p.add_argument("--threads-per-run", type=int, default=None, help="CPU threads of each run (Ray: 1)")
        p.add_argument("--address", help="a Ray cluster's address (data and --out on a shared file system)")
        if name == "sweep":
            p.add_argument("--remove-blocks", default="paper",
                           help="depths k to compare: 'paper' (3,5,...,17) or a list like 3,5,7")
            p.set_defaults(func=cmd_sweep)
        else:
            p.add_argument("--remove-blocks", type=int, default=None, help="the student's k (default: config)")
            p.set_defaults(func=cmd_montecarlo)

    p = sub.add_parser("report", help="report.html and report.md of a study directory, from its result files")
    p.add_argument("dir", help="a study directory (montecarlo or sweep)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("compression-table", help="parameters, compression factor and MACs per student depth")
    _add_config_args(p, default="paper-cifar10")
    p.set_defaults(func=cmd_compression_table)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except IgkdError as e:
        print(f"igkd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("igkd: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
