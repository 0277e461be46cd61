"""Bench results (``bench.json``, format ``igkd-bench/1``) as a table, a Pareto front and a plot.

Read by ``igkd bench`` and by the study report, so nothing here imports torch. A bench record::

    {"format": "igkd-bench/1", "title": str, "input_shape": [C, H, W], "batch_sizes": [1, 64],
     "environment": {processor, cpu_count, torch_threads, onnxruntime_threads, devices, load_average_1min,
                     packages, gpu?},
     "timing": {warmup, warmup_s, min_repeats, min_time_s, max_repeats},
     "models": [{"name", "role" (teacher | student), "student" ({kind, remove_blocks, width_mult, strides}
                 or null), "checkpoint", "params", "macs", "size_bytes", "onnx_bytes"?, "onnx_max_abs_diff"?,
                 "int8_bytes"?, "int8_accuracy_drop"?,
                 "accuracy": {label: test accuracy %},   # label: "test set", a method name, ...
                 "latency": [{"runtime" (torch | onnxruntime | onnxruntime-int8), "device", "batch",
                              "median_ms", "p10_ms", "p90_ms", "median_ci_ms": [lo, hi], "repeats"}]}],
     "notes": [str]?}
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import ConfigError
from ..reporting import format_table

FORMAT = "igkd-bench/1"
SIZE_KEYS = {"torch": "size_bytes", "onnxruntime": "onnx_bytes", "onnxruntime-int8": "int8_bytes"}


def load_bench(path: str | Path) -> dict:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ConfigError(f"bench file {path} is unreadable ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ConfigError(f"{path} is not an igkd bench file (format {FORMAT}); write one with `igkd bench`")
    return data


def lanes(bench: dict) -> list[tuple[str, str]]:
    """(runtime, device) pairs in the order they were measured."""
    seen: dict[tuple[str, str], None] = {}
    for rec in bench["models"]:
        for lat in rec.get("latency", []):
            seen[(lat["runtime"], lat["device"])] = None
    return list(seen)


def latency(rec: dict, runtime: str, device: str, batch: int) -> dict | None:
    for lat in rec.get("latency", []):
        if lat["runtime"] == runtime and lat["device"] == device and lat["batch"] == batch:
            return lat
    return None


def primary_lane(bench: dict) -> tuple[str, str] | None:
    """The lane plots and speed-ups use: PyTorch on the CPU when measured, else the first."""
    all_lanes = lanes(bench)
    return ("torch", "cpu") if ("torch", "cpu") in all_lanes else (all_lanes[0] if all_lanes else None)


def _batches(bench: dict) -> list[int]:
    return bench.get("batch_sizes") or sorted({lat["batch"] for r in bench["models"] for lat in r.get("latency", [])})


def accuracy_points(bench: dict) -> list[dict]:
    """One point per model and accuracy label: its latency at the smallest batch in the primary lane."""
    lane = primary_lane(bench)
    if lane is None:
        return []
    batch = min(_batches(bench))
    points = []
    for rec in bench["models"]:
        lat = latency(rec, *lane, batch)
        for label, acc in (rec.get("accuracy") or {}).items():
            if lat is not None and _finite(acc) and not label.startswith("int8"):
                points.append({"name": rec["name"], "label": label, "latency_ms": lat["median_ms"],
                               "accuracy": float(acc)})
    return points


def pareto_front(points: list[dict]) -> list[bool]:
    """True for points no other point beats: at most its latency and at least its accuracy, one strictly."""
    def dominated(p: dict) -> bool:
        return any(q["latency_ms"] <= p["latency_ms"] and q["accuracy"] >= p["accuracy"]
                   and (q["latency_ms"] < p["latency_ms"] or q["accuracy"] > p["accuracy"]) for q in points)

    return [not dominated(p) for p in points]


def bench_table(bench: dict) -> tuple[list[str], list[list[str]], str]:
    """(headers, rows, align): one row per model and (runtime, device); the first row of a model also
    carries its accuracies and whether it is on the accuracy-latency Pareto front."""
    batches = _batches(bench)
    labels = list(dict.fromkeys(k for r in bench["models"] for k in (r.get("accuracy") or {})))
    points = accuracy_points(bench)
    front = {(p["name"], p["label"]) for p, on in zip(points, pareto_front(points)) if on}
    teacher = next((r for r in bench["models"] if r["role"] == "teacher"), None)
    headers = ["model", "runtime", "params", "MMACs", "size KiB",
               *(f"batch {b}: median ms [p10, p90]" for b in batches),
               f"speed-up vs teacher (batch {batches[0]})",
               *(f"accuracy % ({label})" for label in labels)]
    if points:
        headers.append("Pareto front")
    rows = []
    for rec in bench["models"]:
        first = True
        for runtime, device in lanes(bench):
            cells = [latency(rec, runtime, device, b) for b in batches]
            if all(c is None for c in cells):
                continue
            size = rec.get(SIZE_KEYS.get(runtime, "size_bytes"))
            base = latency(teacher, runtime, device, batches[0]) if teacher is not None else None
            speed = (base["median_ms"] / cells[0]["median_ms"]) if base and cells[0] else None
            row = [rec["name"] if first else "", f"{runtime} ({device})",
                   f"{rec['params']:,}" if first else "", f"{rec['macs'] / 1e6:.2f}" if first else "",
                   f"{size / 1024:,.1f}" if _finite(size) else "-",
                   *(_fmt_latency(c) for c in cells),
                   f"{speed:.2f}x" if speed else "-",
                   *((_fmt(rec.get("accuracy", {}).get(label)) if first else "") for label in labels)]
            if points:
                on = [label for label in labels if (rec["name"], label) in front]
                row.append(", ".join(on) if first and on else "")
            rows.append(row)
            first = False
    align = "ll" + "r" * (len(headers) - 2)
    return headers, rows, align


def _fmt_latency(lat: dict | None) -> str:
    if lat is None:
        return "-"
    return f"{lat['median_ms']:.3f} [{lat['p10_ms']:.3f}, {lat['p90_ms']:.3f}]"


def _fmt(x) -> str:
    return f"{x:.2f}" if _finite(x) else "-"


def _finite(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def environment_line(bench: dict) -> str:
    env, t = bench.get("environment", {}), bench.get("timing", {})
    pk = env.get("packages", {})
    line = (f"{env.get('processor', '?')} ({env.get('cpu_count', '?')} CPUs), PyTorch {pk.get('torch', '?')} with "
            f"{env.get('torch_threads', '?')} threads, ONNX Runtime {pk.get('onnxruntime', '-')} with "
            f"{env.get('onnxruntime_threads', '?')} intra-op threads; devices {', '.join(env.get('devices', []))}"
            + (f" ({env['gpu']})" if env.get("gpu") else "") +
            f". Each latency: {t.get('warmup', '?')} warm-up calls (>= {t.get('warmup_s', '?')} s), then at least "
            f"{t.get('min_repeats', '?')} timed calls and {t.get('min_time_s', '?')} s; input "
            f"{' x '.join(map(str, bench.get('input_shape', [])))}.")
    load, cpus = env.get("load_average_1min"), env.get("cpu_count")
    if _finite(load) and cpus and load > 0.5 * cpus:
        line += (f" Warning: the 1-minute load average was {load:.2f} on {cpus} CPUs when measuring: other work "
                 "was running and these latencies are too high.")
    return line


def check_lines(bench: dict) -> list[str]:
    """Export parity and int8 results, one line per model that has them."""
    lines = []
    for rec in bench["models"]:
        bits = []
        if _finite(rec.get("onnx_max_abs_diff")):
            bits.append(f"ONNX Runtime vs PyTorch max abs difference {rec['onnx_max_abs_diff']:.1e}")
        if _finite(rec.get("int8_bytes")):
            bits.append(f"int8 file {rec['int8_bytes'] / 1024:,.1f} KiB")
        if _finite(rec.get("int8_accuracy_drop")):
            bits.append(f"int8 accuracy drop {rec['int8_accuracy_drop']:+.2f} points")
        if bits:
            lines.append(f"{rec['name']}: " + "; ".join(bits))
    return lines


def format_bench(bench: dict) -> str:
    headers, rows, align = bench_table(bench)
    parts = [bench["title"]] if bench.get("title") else []
    parts += [environment_line(bench), format_table(headers, rows, align=align)]
    extra = [*check_lines(bench), *bench.get("notes", [])]
    return "\n\n".join(parts + (["\n".join(extra)] if extra else []))


def accuracy_latency_figure(bench: dict, title: str = ""):
    """Test accuracy against batch-1 latency (log scale), the Pareto front drawn; None without accuracies."""
    points = accuracy_points(bench)
    if not points:
        return None
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, nothing to close

    lane = primary_lane(bench)
    on_front = pareto_front(points)
    fig = Figure(figsize=(6.5, 4.2))
    ax = fig.subplots()
    labels = list(dict.fromkeys(p["label"] for p in points))
    for i, label in enumerate(labels):
        mine = [p for p in points if p["label"] == label]
        ax.scatter([p["latency_ms"] for p in mine], [p["accuracy"] for p in mine], color=f"C{i}", label=label,
                   zorder=3)
    for p in points:
        ax.annotate(p["name"].split(" (")[0], (p["latency_ms"], p["accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    front = sorted((p for p, on in zip(points, on_front) if on), key=lambda p: p["latency_ms"])
    ax.step([p["latency_ms"] for p in front], [p["accuracy"] for p in front], where="post", color="black",
            lw=1, ls="--", label="Pareto front", zorder=2)
    ax.set_xscale("log")
    ax.set_xlabel(f"median latency at batch {min(_batches(bench))}, ms ({lane[0]}, {lane[1]}; log scale)")
    ax.set_ylabel("test accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    if title or bench.get("title"):
        ax.set_title(title or bench["title"], fontsize=9)
    return fig
