"""``igkd bench``: what a teacher and its students cost on this machine, measured honestly.

For every model: parameters, multiply-adds, size on disk (float32 state dict; ONNX and int8 files when
exported) and latency at each batch size (default 1 and 64) in PyTorch (eager, eval, inference mode)
and ONNX Runtime, on the CPU and, when present, on CUDA, each as median, 10th and 90th percentile after
a warm-up (:mod:`igkd.deploy.timing`). The thread counts, the device, the machine and its load average
are recorded with the numbers: latency measured under other load is not the model's.
"""

from __future__ import annotations

import copy
import io
import os
import platform
import tempfile
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..config import Config
from ..data.catalog import DATASETS, known_image_shape
from ..errors import ConfigError
from ..fileio import atomic_write_bytes, atomic_write_text, write_json
from ..models import (
    WIDTH_GRID,
    StudentSpec,
    count_macs,
    count_parameters,
    scaled_strides,
    scaled_student,
    widest_under,
)
from .results import FORMAT, accuracy_latency_figure, format_bench
from .timing import TimingOptions, measure

RUNTIMES = ("torch", "onnxruntime")


@dataclass
class BenchSettings:
    batch_sizes: tuple[int, ...] = (1, 64)
    runtimes: tuple[str, ...] = RUNTIMES
    devices: tuple[str, ...] | None = None  # None: cpu, and cuda when present
    threads: int | None = None  # CPU threads for PyTorch and ONNX Runtime; None: PyTorch's current
    timing: TimingOptions = field(default_factory=TimingOptions)
    accuracy: bool = False  # measure test accuracy of models with trained weights
    int8: bool = False  # also quantise every model (ONNX Runtime, static, calibrated) and time it
    calibration_images: int = 512
    title: str = ""

    def check(self) -> None:
        bad = [r for r in self.runtimes if r not in RUNTIMES]
        if bad:
            raise ConfigError(f"bad value for --runtimes: {bad[0]!r} (allowed: {', '.join(RUNTIMES)})")
        if not self.batch_sizes or any(b < 1 for b in self.batch_sizes):
            raise ConfigError(f"bad value for --batch-sizes: {list(self.batch_sizes)} (allowed: integers >= 1)")
        for d in self.devices or ():
            if d != "cpu" and not d.startswith("cuda"):
                raise ConfigError(f"bad value for --devices: {d!r} (allowed: cpu, cuda, cuda:N)")
            if d.startswith("cuda") and not torch.cuda.is_available():
                raise ConfigError(f"bad value for --devices: {d!r} (no CUDA device here; allowed: cpu)")
        t = self.timing
        if t.min_repeats < 1 or t.min_time_s < 0 or t.warmup < 0:
            raise ConfigError("bad timing options: --min-repeats >= 1, --min-time >= 0, --warmup >= 0")
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"bad value for --threads: {self.threads} (allowed: >= 1)")
        if self.int8 and "onnxruntime" not in self.runtimes:
            raise ConfigError("--int8 runs in ONNX Runtime: keep onnxruntime in --runtimes")

    def resolved_devices(self) -> tuple[str, ...]:
        if self.devices:
            return tuple(self.devices)
        return ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)


@dataclass
class Candidate:
    """One model to bench, with what is known about it."""

    name: str
    role: str  # teacher | student
    model: nn.Module
    student: StudentSpec | None = None
    checkpoint: str | None = None
    trained: bool = False  # has trained weights: its accuracy means something
    accuracy: dict[str, float] = field(default_factory=dict)  # label -> test accuracy %


def environment(settings: BenchSettings) -> dict:
    env = {
        "machine": platform.machine(),
        "processor": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "onnxruntime_threads": torch.get_num_threads(),
        "devices": list(settings.resolved_devices()),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "packages": {},
    }
    for pkg in ("torch", "onnxruntime", "onnx", "igkd"):
        try:
            env["packages"][pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    if torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def state_dict_bytes(model: nn.Module) -> int:
    """Size on disk of the model's float32 state dict as ``torch.save`` writes it."""
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def torch_latency(model: nn.Module, input_shape: tuple[int, ...], batch: int, device: str,
                  timing: TimingOptions) -> dict:
    """Latency of one forward pass of an eval-mode copy of ``model`` on ``device``."""
    dev = torch.device(device)
    m = copy.deepcopy(model).to(dev).eval()
    x = torch.randn((batch, *input_shape), device=dev)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
    with torch.inference_mode():
        return measure(lambda: m(x), timing, sync)


def onnx_latency(session, input_shape: tuple[int, ...], batch: int, timing: TimingOptions) -> dict:
    from .onnxrt import run_onnx

    x = np.random.default_rng(0).standard_normal((batch, *input_shape)).astype(np.float32)
    return measure(lambda: run_onnx(session, x), timing)


def bench_models(candidates: list[Candidate], input_shape: tuple[int, int, int], settings: BenchSettings,
                 data=None) -> dict:
    """Measure every candidate; ``data`` (a pipeline ``Datasets``) is needed for accuracy and int8.

    Returns the bench record (``igkd-bench/1``) that :func:`write_bench` saves and the report reads.
    """
    settings.check()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    devices = settings.resolved_devices()
    records = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, c in enumerate(candidates):
            model = c.model.cpu().eval()
            rec = {
                "name": c.name,
                "role": c.role,
                "student": None if c.student is None else c.student.to_dict(),
                "checkpoint": c.checkpoint,
                "params": count_parameters(model),
                "macs": count_macs(model, input_shape),
                "size_bytes": state_dict_bytes(model),
                "accuracy": dict(c.accuracy),
                "latency": [],
            }
            if settings.accuracy and c.trained and data is not None:
                from ..evaluate import predict

                pred = predict(model, data.test.x, data.convention, torch.device("cpu"))
                rec["accuracy"]["test set"] = 100.0 * float(np.mean(pred == data.test.y.numpy()))
            for device in devices:
                if "torch" in settings.runtimes:
                    for b in settings.batch_sizes:
                        lat = torch_latency(model, input_shape, b, device, settings.timing)
                        rec["latency"].append({"runtime": "torch", "device": device, "batch": b, **lat})
            if "onnxruntime" in settings.runtimes:
                _bench_onnx(rec, model, input_shape, settings, devices, Path(tmp) / f"m{i}.onnx", data)
            records.append(rec)
    return {
        "format": FORMAT,
        "title": settings.title,
        "input_shape": list(input_shape),
        "environment": environment(settings),
        "timing": asdict(settings.timing),
        "batch_sizes": list(settings.batch_sizes),
        "models": records,
    }


def _bench_onnx(rec: dict, model: nn.Module, input_shape, settings: BenchSettings, devices, path: Path,
                data) -> None:
    from .export import ExportError, export_onnx, onnx_parity
    from .onnxrt import ort_session

    export_onnx(model, input_shape, path)
    rec["onnx_bytes"] = path.stat().st_size
    rec["onnx_max_abs_diff"] = onnx_parity(model, path, input_shape)
    for device in devices:
        try:
            session = ort_session(path, device=device)
        except ExportError as e:  # no CUDA provider in this onnxruntime: say so in the record
            rec.setdefault("notes", []).append(f"onnxruntime on {device}: {e}")
            continue
        for b in settings.batch_sizes:
            lat = onnx_latency(session, input_shape, b, settings.timing)
            rec["latency"].append({"runtime": "onnxruntime", "device": device, "batch": b, **lat})
    if settings.int8:
        if data is None:
            raise ConfigError("--int8 calibrates on training images: the dataset must be available")
        from .quantize import calibration_batches, onnx_accuracy, quantize_int8

        n = min(settings.calibration_images, len(data.train))
        q = quantize_int8(path, path.with_suffix(".int8.onnx"), calibration_batches(data, n))
        session = ort_session(q)
        rec["int8_bytes"] = q.stat().st_size
        for b in settings.batch_sizes:
            lat = onnx_latency(session, input_shape, b, settings.timing)
            rec["latency"].append({"runtime": "onnxruntime-int8", "device": "cpu", "batch": b, **lat})
        if rec["accuracy"].get("test set") is not None:
            acc = onnx_accuracy(session, data.test.x, data.test.y, data.convention)
            rec["accuracy"]["int8 test set"] = acc
            rec["int8_accuracy_drop"] = rec["accuracy"]["test set"] - acc


# -- models named by a config -----------------------------------------------------------------------


def candidates_from_config(cfg: Config, checkpoints: list[str], remove_blocks: list[int], shape, num_classes: int,
                           include_student: bool = True) -> list[Candidate]:
    """The teacher (``teacher.checkpoint``, else randomly initialised: latency does not depend on the
    weights), the checkpoints' models, and, without checkpoints, the configured student; then the
    truncated students of ``remove_blocks``. Duplicates (same architecture, no weights) are dropped."""
    from ..evaluate import load_model
    from ..models import student_spec
    from ..pipeline import build_teacher, load_teacher

    loaded = [(path, load_model(cfg, num_classes, shape[0], path, shape)) for path in checkpoints]
    out: list[Candidate] = []
    if not any(m.role == "teacher" for _, m in loaded):
        if cfg.teacher.checkpoint:
            teacher, _ = load_teacher(cfg, num_classes, shape[0], torch.device("cpu"), shape[1:])
        else:
            teacher = build_teacher(cfg, num_classes, shape[0], shape[1:])
        out.append(Candidate("teacher", "teacher", teacher, checkpoint=cfg.teacher.checkpoint,
                             trained=cfg.teacher.checkpoint is not None))
    for path, m in loaded:
        label = "teacher" if m.student is None else m.student.label
        out.append(Candidate(f"{label} ({path})", m.role, m.model, m.student, str(path), trained=True))
    teacher = next(c.model for c in out if c.role == "teacher")
    specs = [student_spec(cfg, shape, num_classes)] if include_student and not checkpoints else []
    specs += [StudentSpec("truncated", k) for k in remove_blocks]
    seen = {c.name for c in out}
    for spec in specs:
        if spec.label not in seen:
            seen.add(spec.label)
            out.append(Candidate(spec.label, "student", spec.build(teacher, num_classes, shape[0]), spec))
    return out


def width_for_latency(cfg: Config, budget_ms: float, shape, num_classes: int, settings: BenchSettings
                      ) -> tuple[StudentSpec, float]:
    """The widest scaled student (the config's strides, default the teacher's, and remove_blocks) whose
    PyTorch batch-1 median latency on the first bench device is at most ``budget_ms``; and that latency."""
    s = cfg.student
    strides = scaled_strides(cfg, shape)
    device = settings.resolved_devices()[0]
    measured: dict[float, float] = {}

    def latency(width: float) -> float:
        model = scaled_student(num_classes, shape[0], width, strides, s.remove_blocks)
        measured[width] = torch_latency(model, shape, 1, device, settings.timing)["median_ms"]
        return measured[width]

    width = widest_under(latency, budget_ms)
    if width is None:
        raise ConfigError(f"bad value for --latency-budget-ms: {budget_ms:g} (allowed: >= "
                          f"{min(measured.values()):.3f}, the narrowest scaled student's median on {device})")
    return StudentSpec("scaled", s.remove_blocks, width, strides), measured[width]


def bench_from_config(cfg: Config, checkpoints: list[str], remove_blocks: list[int], settings: BenchSettings,
                      latency_budget_ms: float | None = None) -> dict:
    """``igkd bench``: the models the config and the checkpoints name, measured (see the module doc)."""
    settings.check()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    info = DATASETS[cfg.data.name]
    known = known_image_shape(cfg.data.name, cfg.data.image_size)
    data = None
    if settings.accuracy or settings.int8 or known is None:
        from ..pipeline import load_datasets

        data = load_datasets(cfg)
    shape = data.train.image_shape if data is not None else known
    num_classes = data.train.num_classes if data is not None else info.num_classes
    candidates = candidates_from_config(cfg, checkpoints, remove_blocks, shape, num_classes)
    notes = []
    if latency_budget_ms is not None:
        spec, ms = width_for_latency(cfg, latency_budget_ms, shape, num_classes, settings)
        teacher = next(c.model for c in candidates if c.role == "teacher")
        candidates.append(Candidate(spec.label, "student", spec.build(teacher), spec))
        top = " (the grid's widest: the budget does not bind)" if spec.width_mult == WIDTH_GRID[-1] else ""
        notes.append(f"latency budget {latency_budget_ms:g} ms: widest scaled student width_mult={spec.width_mult:g}"
                     f"{top} ({ms:.3f} ms in the search); train it with --set student.kind=scaled "
                     f"--set student.width_mult={spec.width_mult:g} "
                     f"--set student.strides=[{','.join(map(str, spec.strides))}] "
                     f"--set student.remove_blocks={spec.remove_blocks}")
    result = bench_models(candidates, shape, settings, data)
    if notes:
        result["notes"] = notes
    return result


def write_bench(result: dict, out: str | Path) -> list[Path]:
    """``out`` (a .json file, or a folder for ``bench.json``) and beside it the table (.md) and, when
    accuracies are known, the plot of accuracy against latency (.png)."""
    out = Path(out)
    path = out if out.suffix == ".json" else out / "bench.json"
    write_json(path, result)
    written = [path, path.with_suffix(".md")]
    atomic_write_text(written[1], format_bench(result) + "\n")
    fig = accuracy_latency_figure(result)
    if fig is not None:
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
        import matplotlib.pyplot as plt

        plt.close(fig)
        atomic_write_bytes(path.with_suffix(".png"), buf.getvalue())
        written.append(path.with_suffix(".png"))
    return written
