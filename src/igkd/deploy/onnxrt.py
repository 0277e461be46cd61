"""ONNX Runtime for the deploy modules: the optional import, a session, a run (export and quantize share it)."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np

from ..errors import ExportError
from ..models.inference import ort_session_options


def require(module: str):
    """Import an optional deployment dependency, or say in one line how to install it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{module} is not installed: run `bash scripts/setup.sh` or "
                          f"`pip install 'igkd[deploy]'`") from None


def ort_session(path: str | Path, threads: int | None = None, device: str = "cpu"):
    """An ONNX Runtime session of ``path``: all graph optimisations, ``threads`` intra-op threads
    (default: PyTorch's), CUDA's execution provider on ``device="cuda"``."""
    ort = require("onnxruntime")
    options = ort_session_options(threads)
    if device.startswith("cuda"):
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ExportError("this onnxruntime has no CUDA execution provider: install onnxruntime-gpu")
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
    else:
        providers = ["CPUExecutionProvider"]
    try:
        return ort.InferenceSession(str(path), options, providers=providers)
    except Exception as e:
        raise ExportError(f"ONNX Runtime cannot load {path}: {str(e).strip().splitlines()[0]}") from None


def run_onnx(session, x: np.ndarray) -> np.ndarray:
    return session.run(None, {session.get_inputs()[0].name: np.ascontiguousarray(x, dtype=np.float32)})[0]
