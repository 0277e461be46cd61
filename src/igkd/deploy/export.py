"""A model file an edge runtime can load: ONNX (and TorchScript), checked against PyTorch's outputs.

The ONNX file comes from PyTorch's ``torch.export``-based exporter (``dynamo=True``; the TorchScript-
based one is deprecated in PyTorch 2.9+), opset 18, with a dynamic batch axis. Its input is what the
PyTorch model takes: normalised images ``(x01 - mean) / std``, float32, (N, C, H, W); the mean, std and
class names are written into the file's metadata (``igkd.*`` keys). Every export is run once through
ONNX Runtime (or ``torch.jit.load``) on random normalised inputs at batch 1 and 8 and refused when its
outputs differ from PyTorch's by more than 1e-4 (max absolute difference, float32).
"""

from __future__ import annotations

import copy
import io
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError
from ..fileio import atomic_write_bytes, write_json
from ..models.inference import onnx_model_proto
from .onnxrt import ort_session, require, run_onnx
from .timing import TimingOptions

ONNX_OPSET = 18
PARITY_TOLERANCE = 1e-4  # max |ONNX - PyTorch| over the logits, float32
INPUT_NAME, OUTPUT_NAME = "input", "logits"


def _cpu_eval_copy(model: nn.Module) -> nn.Module:
    return copy.deepcopy(model).cpu().float().eval()


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path,
                metadata: dict[str, str] | None = None, opset: int = ONNX_OPSET) -> Path:
    """Write ``model`` (an eval-mode copy, float32, CPU) to ``path`` as ONNX with a dynamic batch axis."""
    require("onnx")
    require("onnxscript")
    model = _cpu_eval_copy(model)
    try:
        proto = onnx_model_proto(model, input_shape, [INPUT_NAME], [OUTPUT_NAME], opset)
    except Exception as e:  # the exporter raises many types; the first line says what failed
        raise ExportError(f"ONNX export failed: {type(e).__name__}: {str(e).strip().splitlines()[0]}") from None
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    path = Path(path)
    atomic_write_bytes(path, proto.SerializeToString())
    return path


def export_torchscript(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path) -> Path:
    """Write a traced TorchScript module (``torch.jit.load`` loads it; deprecated by PyTorch 2.9+, kept
    for runtimes that still read it)."""
    model = _cpu_eval_copy(model)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)
        traced = torch.jit.trace(model, torch.randn(2, *input_shape))
        buf = io.BytesIO()
        torch.jit.save(traced, buf)
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path


def load_torchscript(path: str | Path) -> torch.jit.ScriptModule:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        return torch.jit.load(str(path), map_location="cpu").eval()


@torch.no_grad()
def max_abs_diff(model: nn.Module, other: Callable[[torch.Tensor], np.ndarray | torch.Tensor],
                 input_shape: tuple[int, int, int], batches: tuple[int, ...] = (1, 8), seed: int = 0) -> float:
    """Largest |model(x) - other(x)| over random normalised inputs (N(0, 1): what normalised images
    look like) at each batch size."""
    model = _cpu_eval_copy(model)
    gen = torch.Generator().manual_seed(seed)
    worst = 0.0
    for b in batches:
        x = torch.randn((b, *input_shape), generator=gen)
        got = other(x)
        got = got.detach().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
        worst = max(worst, float(np.abs(got - model(x).numpy()).max()))
    return worst


def check_parity(diff: float, what: str, tolerance: float = PARITY_TOLERANCE) -> None:
    if not diff <= tolerance:  # also catches NaN
        raise ExportError(f"{what} differs from PyTorch by {diff:.2e} (max absolute difference; "
                          f"allowed {tolerance:g}): do not deploy it")


def onnx_parity(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> float:
    session = ort_session(path)
    return max_abs_diff(model, lambda x: run_onnx(session, x.numpy()), input_shape)


def torchscript_parity(model: nn.Module, path: str | Path, input_shape: tuple[int, int, int]) -> float:
    with torch.jit.optimized_execution(False):  # the profiling executor's first-call passes cost seconds
        return max_abs_diff(model, load_torchscript(path), input_shape)


def model_metadata(name: str, convention, classes) -> dict[str, str]:
    """What a runtime needs to feed the exported model: ``igkd.*`` metadata entries."""
    return {
        "igkd.model": name,
        "igkd.input": "float32 (N, C, H, W): (pixels in [0, 1] - mean) / std",
        "igkd.mean": json.dumps(list(convention.mean)),
        "igkd.std": json.dumps(list(convention.std)),
        "igkd.classes": json.dumps(list(classes)),
    }


# -- igkd export ------------------------------------------------------------------------------------


@dataclass
class ExportSettings:
    torchscript: str | None = None  # also write TorchScript here
    int8: str | None = None  # also write an int8-quantised ONNX model here (needs the data)
    calibration_images: int = 512  # training images the int8 ranges are calibrated on
    timing: TimingOptions = field(default_factory=TimingOptions)  # for the fp32 / int8 latency comparison
    json_out: str | None = None


def export_checkpoint(cfg, checkpoint: str | Path, out: str | Path, settings: ExportSettings) -> dict:
    """``igkd export``: the checkpoint's model (architecture from ``cfg``) as ONNX, checked against
    PyTorch; optionally TorchScript, and an int8 model with its size, latency and accuracy drop."""
    from ..data.catalog import DATASETS
    from ..evaluate import load_model
    from ..pipeline import load_datasets

    out = Path(out)
    if out.suffix != ".onnx":
        raise ExportError(f"--out {out} must name an .onnx file")
    info = DATASETS[cfg.data.name]
    ds = load_datasets(cfg) if settings.int8 or info.image_shape is None else None
    if ds is not None:
        shape, classes, convention = ds.train.image_shape, ds.train.classes, ds.convention
    else:
        shape, classes, convention = info.image_shape, info.classes, info.convention
    loaded = load_model(cfg, len(classes), shape[0], checkpoint, shape)
    model = loaded.model.eval()
    name = "teacher" if loaded.student is None else loaded.student.label
    export_onnx(model, shape, out, metadata=model_metadata(name, convention, classes))
    diff = onnx_parity(model, out, shape)
    check_parity(diff, f"the ONNX model {out}")
    result = {
        "checkpoint": str(checkpoint),
        "model": name,
        "role": loaded.role,
        "student": None if loaded.student is None else loaded.student.to_dict(),
        "input_shape": list(shape),
        "onnx": {"path": str(out), "bytes": out.stat().st_size, "opset": ONNX_OPSET, "max_abs_diff": diff,
                 "tolerance": PARITY_TOLERANCE},
    }
    if settings.torchscript:
        ts = export_torchscript(model, shape, settings.torchscript)
        ts_diff = torchscript_parity(model, ts, shape)
        check_parity(ts_diff, f"the TorchScript model {ts}")
        result["torchscript"] = {"path": str(ts), "bytes": ts.stat().st_size, "max_abs_diff": ts_diff}
    if settings.int8:
        from .quantize import quantize_report

        result["int8"] = quantize_report(model, out, settings.int8, ds, settings.calibration_images,
                                         settings.timing, seed=cfg.train.seed)
    if settings.json_out:
        write_json(settings.json_out, result)
    return result


def format_export(r: dict) -> str:
    o = r["onnx"]
    lines = [f"{r['model']} from {r['checkpoint']}",
             f"ONNX (opset {o['opset']}, dynamic batch): {o['path']}, {o['bytes'] / 1024:,.1f} KiB; "
             f"ONNX Runtime vs PyTorch: max abs difference {o['max_abs_diff']:.1e} (allowed {o['tolerance']:g})"]
    if "torchscript" in r:
        t = r["torchscript"]
        lines.append(f"TorchScript: {t['path']}, {t['bytes'] / 1024:,.1f} KiB; max abs difference "
                     f"{t['max_abs_diff']:.1e}")
    if "int8" in r:
        q = r["int8"]
        lines.append(f"int8 (static, calibrated on {q['calibration_images']} training images): {q['path']}, "
                     f"{q['bytes'] / 1024:,.1f} KiB ({q['bytes'] / o['bytes']:.2f}x the float32 file)")
        lines.append(f"test accuracy: PyTorch float32 {q['accuracy_float32']:.2f} %, ONNX Runtime int8 "
                     f"{q['accuracy_int8']:.2f} % (drop {q['accuracy_drop']:+.2f} points) on {q['test_images']:,} "
                     "images")
        f, i = q["latency_float32"], q["latency_int8"]
        lines.append(f"ONNX Runtime latency at batch 1 ({q['threads']} threads): float32 {f['median_ms']:.3f} ms "
                     f"[p10 {f['p10_ms']:.3f}, p90 {f['p90_ms']:.3f}], int8 {i['median_ms']:.3f} ms "
                     f"[p10 {i['p10_ms']:.3f}, p90 {i['p90_ms']:.3f}]")
    return "\n".join(lines)
