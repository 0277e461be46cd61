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
