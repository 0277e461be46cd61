"""The ``igkd`` command: each verb one thin call of :mod:`igkd.api.commands` (the public face's door to
the config-driven code), never of the floors below it."""

from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path

from .errors import ConfigError, IgkdError, IgkdWarning, WriteError, forget_warnings

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
    from .api.commands import train_teacher
    from .distributed import is_main_process

    summary = train_teacher(_config(args), args.out, resume=args.resume)
    if not is_main_process():  # torchrun's other ranks: rank 0 speaks for the run
        return
    print(f"teacher: test accuracy {summary['test_acc_last']:.2f} %, weights in {Path(args.out) / 'model.pt'}")


def cmd_precompute(args) -> None:
    from .api.commands import precompute

    extra = [f"ig.store={args.store}"] if args.store else []
    r = precompute(_config(args, extra), rank=args.rank, world_size=args.world_size)
    state = "complete" if r.complete else "waiting for the other ranks to finish"
    print(f"IG maps ({state}): {r.path}; this worker (rank {r.rank} of {r.world_size}) computed "
          f"{len(r.computed)} chunks and found {len(r.skipped)} already done, in {r.seconds:.0f} s")


def cmd_distill(args) -> None:
    from .api.commands import distill
    from .distributed import is_main_process

    extra = [f"distill.method={args.method}"] if args.method else []
    s = distill(_config(args, extra), args.out, resume=args.resume)
    if not is_main_process():
        return
    best = f", at best validation epoch {s['test_acc_at_best_val']:.2f} %" if "test_acc_at_best_val" in s else ""
    print(f"{s['method']}: test accuracy {s['test_acc_last']:.2f} % after the last epoch{best}; "
          f"{s['params']:,} parameters, CF {s['compression_factor']:.2f}; run in {args.out}")


def cmd_demo(args) -> None:
    from .api.commands import run_demo

    run_demo(_config(args), args.out, methods=args.methods.split(","))


def cmd_evaluate(args) -> None:
    from .api.commands import evaluate_checkpoint, format_evaluation

    r = evaluate_checkpoint(_config(args), args.checkpoint, input_convention=args.input_convention,
                            imagenet=args.imagenet, keep_teacher_correct=args.keep_teacher_correct,
                            json_out=args.json)
    print(format_evaluation(r))
    if args.json:
        print(f"\nwritten to {args.json}")


def _study(args, kind: str, depths: list[int] | None) -> None:
    from .api.commands import StudyPlan, parse_contrasts, run_study, write_report

    cfg = _config(args)
    depths = depths or [cfg.student.remove_blocks]
    plan = StudyPlan(kind, [m.strip() for m in args.methods.split(",") if m.strip()], args.runs, depths,
                     paired=not args.unpaired, train_fraction=args.fraction, seed=args.seed,
                     contrasts=parse_contrasts(args.contrasts), margin=args.margin)
    rows = run_study(cfg, plan, args.out, workers=args.workers, threads_per_run=args.threads_per_run,
                     address=args.address)
    html, md = write_report(args.out)
    print(f"{len(rows)} runs in {args.out}/results.csv; report: {html} and {md}")


def cmd_montecarlo(args) -> None:
    _study(args, "montecarlo", None if args.remove_blocks is None else [args.remove_blocks])


def cmd_sweep(args) -> None:
    from .api.commands import parse_depths

    _study(args, "sweep", parse_depths(args.remove_blocks))


def cmd_tune(args) -> None:
    from .api.commands import SearchSpace, TunePlan, run_tune, value_text, write_report

    cfg = _config(args)
    plan = TunePlan(args.method, SearchSpace.parse(args.space, cfg), sampler=args.sampler, trials=args.trials,
                    seed=args.seed, storage=args.storage)
    result = run_tune(cfg, plan, args.out, workers=args.workers, threads_per_run=args.threads_per_run,
                      address=args.address)
    html, md = write_report(args.out)
    best = result.best
    if best is None:
        print(f"{result.finished} of {result.target} trials finished, none with a result; report: {html} and {md}")
        return
    chosen = ", ".join(f"{k}={value_text(v)}" for k, v in best["values"].items())
    print(f"{result.finished} of {result.target} trials finished; best: trial {best['number']} ({chosen}), "
          f"validation accuracy {best['val_acc']:.2f} %; config in {Path(args.out) / 'best.yaml'}; "
          f"trials in {Path(args.out) / 'trials.csv'}; report: {html} and {md}")


def cmd_report(args) -> None:
    from .api.commands import write_report

    html, md = write_report(args.dir, margin=args.margin)
    print(f"report: {html} (open in a browser) and {md}")


def cmd_config(args) -> None:
    import json

    from .config import dump_config, json_schema

    if args.schema:
        print(json.dumps(json_schema(), indent=2))
    else:
        print(dump_config(_config(args)), end="")


def cmd_compression_table(args) -> None:
    from .api.commands import compression_table

    print(compression_table(_config(args)))


def _int_list(option: str, text: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ConfigError(f"bad value for {option}: {text!r} (allowed: comma-separated integers)") from None


def cmd_bench(args) -> None:
    from .api.commands import (
        BenchSettings,
        TimingOptions,
        bench_from_config,
        format_bench,
        parse_depths,
        write_bench,
    )

    timing = TimingOptions(warmup=args.warmup, min_repeats=args.min_repeats, min_time_s=args.min_time)
    settings = BenchSettings(
        batch_sizes=_int_list("--batch-sizes", args.batch_sizes),
        runtimes=tuple(r.strip() for r in args.runtimes.split(",") if r.strip()),
        devices=tuple(d.strip() for d in args.devices.split(",") if d.strip()) if args.devices else None,
        threads=args.threads, timing=timing, accuracy=args.accuracy, int8=args.int8,
        calibration_images=args.calibration_images, title=args.title or "")
    depths = parse_depths(args.remove_blocks) if args.remove_blocks else []
    result = bench_from_config(_config(args), args.checkpoint, depths, settings,
                               latency_budget_ms=args.latency_budget_ms)
    written = write_bench(result, args.out)
    print(format_bench(result))
    print(f"\nwritten: {', '.join(map(str, written))}")


def cmd_export(args) -> None:
    from .api.commands import ExportSettings, export_checkpoint, format_export

    settings = ExportSettings(torchscript=args.torchscript, int8=args.int8,
                              calibration_images=args.calibration_images, json_out=args.json)
    print(format_export(export_checkpoint(_config(args), args.checkpoint, args.out, settings)))


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
    _add_config_args(p, default="demo-fashion-mnist")
    p.add_argument("--out", "-o", default="runs/demo", help="where runs are kept and reused (default: runs/demo)")
    p.add_argument("--methods", default="student,kd,kd_ig,kd_ig+noise_maps",
                   help="comma-separated methods, or method+control as in montecarlo")
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
        p.add_argument("--fraction", type=float, default=None,
                       help="stratified fraction of the training split each run trains on (default: the "
                            "config's train.subset_fraction if below 1, else 0.8 as in the paper)")
        p.add_argument("--unpaired", action="store_true",
                       help="give every run its own seed (default: run i of every method shares seed, "
                       "subset, initialisation and augmentation draws)")
        p.add_argument("--seed", type=int, default=0, help="the study's seed; every run's seed derives from it")
        p.add_argument("--contrasts", default=None, metavar="A-B,...",
                       help="planned comparisons, each method A minus method B (e.g. kd_ig-kd,"
                       "kd_ig-kd_ig+noise_maps), Holm-adjusted together; default: each method against student")
        p.add_argument("--margin", type=float, default=0.40, metavar="POINTS",
                       help="equivalence margin of the report's TOST verdicts, in accuracy points, recorded in "
                       "study.json (default: 0.40, the paper's KD+IG - KD)")
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

    p = sub.add_parser("tune", help="a hyperparameter search on Optuna (grid or TPE), each trial a run chosen on "
                       "validation accuracy; writes best.yaml, trials.csv and a report")
    _add_config_args(p)
    p.add_argument("--method", "-m", required=True, help="student, kd, ig, at, kd_ig, kd_at, ig_at or kd_ig_at")
    p.add_argument("--space", action="append", default=[], metavar="KEY=v1,v2,...",
                   help="values of a config key to search, e.g. --space distill.alpha=0.005,0.01,0.05 (repeatable)")
    p.add_argument("--sampler", default="grid", choices=("grid", "tpe"),
                   help="grid: every combination (default); tpe: Optuna's TPE over the listed values")
    p.add_argument("--trials", type=int, default=None, help="finished trials to reach (grid: default the grid's "
                   "size; tpe: required)")
    p.add_argument("--seed", type=int, default=0, help="the sampler's seed (trials all train with train.seed)")
    p.add_argument("--out", "-o", required=True, help="search directory (rerun the command to resume)")
    p.add_argument("--storage", help="an Optuna RDB URL shared by several machines (default: DIR/optuna.db)")
    p.add_argument("--workers", type=int, default=None,
                   help="parallel trials on a local Ray instance (default: as many as the CPUs allow); "
                   "1 runs them one by one in this process, without Ray")
    p.add_argument("--threads-per-run", type=int, default=None, help="CPU threads of each trial (Ray: 1)")
    p.add_argument("--address", help="a Ray cluster's address (data and --out on a shared file system)")
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("report", help="report.html and report.md of a study or search directory, from its "
                       "result files")
    p.add_argument("dir", help="a study directory (montecarlo or sweep) or a search directory (tune)")
    p.add_argument("--margin", type=float, default=None, metavar="POINTS",
                   help="equivalence margin of the TOST verdicts, in accuracy points (default: the one the study "
                   "recorded, else 0.40)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("bench", help="parameters, MACs, size and measured latency (median, p10, p90; batch 1 "
                       "and 64; PyTorch and ONNX Runtime; CPU and CUDA) of the teacher and students")
    _add_config_args(p)
    p.add_argument("--checkpoint", action="append", default=[], metavar="FILE",
                   help="a teacher or student state dict to bench (repeatable; architecture from the config); "
                   "without any, the configured student is benched")
    p.add_argument("--remove-blocks", help="also the truncated students of these depths: 'paper' or a list like 3,5")
    p.add_argument("--out", "-o", default="runs/bench", help="a .json file, or a folder for bench.json; "
                   "the table (.md) and the accuracy-latency plot (.png) go beside it (default: runs/bench)")
    p.add_argument("--batch-sizes", default="1,64", help="comma-separated (default: 1,64)")
    p.add_argument("--runtimes", default="torch,onnxruntime", help="torch and/or onnxruntime")
    p.add_argument("--devices", help="cpu and/or cuda (default: cpu, and cuda when present)")
    p.add_argument("--threads", type=int, help="CPU threads of PyTorch and ONNX Runtime (default: PyTorch's)")
    p.add_argument("--warmup", type=int, default=10, help="untimed calls first (default: 10)")
    p.add_argument("--min-repeats", type=int, default=30, help="timed calls, at least (default: 30)")
    p.add_argument("--min-time", type=float, default=1.0, help="seconds of timed calls, at least (default: 1)")
    p.add_argument("--accuracy", action="store_true", help="measure the test accuracy of models with weights")
    p.add_argument("--int8", action="store_true", help="also quantise each model to int8 (ONNX Runtime, static, "
                   "calibrated on training images) and bench it")
    p.add_argument("--calibration-images", type=int, default=512, help="training images for int8 calibration")
    p.add_argument("--latency-budget-ms", type=float, help="also find and bench the widest scaled student "
                   "(student.strides, student.remove_blocks) whose batch-1 median is within this budget")
    p.add_argument("--title", help="a title for the table and the report")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("export", help="a checkpoint as ONNX (checked against PyTorch in ONNX Runtime), and "
                       "optionally TorchScript and an int8-quantised ONNX model")
    _add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="a teacher or student state dict (architecture from the config)")
    p.add_argument("--out", "-o", required=True, help="the ONNX file to write (FILE.onnx)")
    p.add_argument("--torchscript", metavar="FILE", help="also write a TorchScript module")
    p.add_argument("--int8", metavar="FILE", help="also write an int8 model (static quantisation calibrated on "
                   "training images) and report its size, latency and test accuracy drop")
    p.add_argument("--calibration-images", type=int, default=512, help="training images for int8 calibration")
    p.add_argument("--json", metavar="OUT", help="also write the result as JSON")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("config", help="the resolved config as YAML (defaults, file, --set), or with --schema the "
                       "JSON Schema of a config file, for editors")
    _add_config_args(p)
    p.add_argument("--schema", action="store_true", help="print the JSON Schema instead")
    p.set_defaults(func=cmd_config)

    p = sub.add_parser("compression-table", help="parameters, compression factor and MACs per student depth")
    _add_config_args(p, default="paper-cifar10")
    p.set_defaults(func=cmd_compression_table)
    return parser


def _show_warning(show):
    """``warnings.showwarning`` that prints igkd's own warnings as one line, others as Python does."""
    def shown(message, category, filename, lineno, file=None, line=None):
        if issubclass(category, IgkdWarning):
            print(f"igkd: warning: {message}", file=sys.stderr, flush=True)
        else:
            show(message, category, filename, lineno, file, line)
    return shown


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    forget_warnings()  # each command says its own warnings
    show = warnings.showwarning
    warnings.showwarning = _show_warning(show)
    try:
        args.func(args)
    except IgkdError as e:
        if isinstance(e, WriteError) and hasattr(args, "resume"):  # a run: it continues from its checkpoint
            e.then = "then run the same command with --resume: it continues from the last checkpoint"
        print(f"igkd: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("igkd: interrupted; run the same command with --resume to continue", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = show
    return 0


if __name__ == "__main__":
    sys.exit(main())
