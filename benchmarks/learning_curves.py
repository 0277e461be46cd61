"""Learning curves of finished runs, for choosing a recipe's epochs: train and validation accuracy per epoch
of each run directory given, in one figure, and the per-epoch records in one JSON-lines file.

    python benchmarks/learning_curves.py --out docs/converged-student-curve RUN_DIR[=LABEL] ...

Each RUN_DIR is an igkd run directory (its metrics.jsonl); LABEL names it in the legend (default: the
folder's name). Writes OUT.png and OUT.jsonl (each record with its run's label), and prints, per run, the
final and best validation accuracy, the final train accuracy and the median epoch time.
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read_metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    if not path.is_file():
        raise SystemExit(f"{run}: no metrics.jsonl (not an igkd run directory)")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", help="RUN_DIR or RUN_DIR=LABEL")
    ap.add_argument("--out", required=True, help="output stem: writes STEM.png and STEM.jsonl")
    ap.add_argument("--ymin", type=float, default=60.0, help="lower end of the accuracy axis (default 60)")
    args = ap.parse_args()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    records = []
    print(f"{'run':<40} {'epochs':>6} {'val last':>8} {'val best':>8} {'train last':>10} {'s/epoch':>8}")
    for i, spec in enumerate(args.runs):
        path, _, label = spec.partition("=")
        run = Path(path)
        label = label or run.name
        rows = read_metrics(run)
        epochs = [r["epoch"] for r in rows]
        ax.plot(epochs, [r["val_acc"] for r in rows], color=f"C{i}", label=f"{label}: validation")
        ax.plot(epochs, [r["train_acc"] for r in rows], color=f"C{i}", ls=":", alpha=0.7,
                label=f"{label}: train (augmented batches)")
        records += [{"run": label, **r} for r in rows]
        print(f"{label:<40} {len(rows):>6} {rows[-1]['val_acc']:>8.2f} {max(r['val_acc'] for r in rows):>8.2f} "
              f"{rows[-1]['train_acc']:>10.2f} {statistics.median(r['epoch_time_s'] for r in rows):>8.1f}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(bottom=args.ymin)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out.with_suffix(".png"), dpi=120)
    out.with_suffix(".jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(f"written {out.with_suffix('.png')} and {out.with_suffix('.jsonl')}")


if __name__ == "__main__":
    main()
