"""int8 post-training quantisation of an exported model: ONNX Runtime's static quantiser.

Weights int8 per output channel, activations uint8, both in QDQ form (what ONNX Runtime and most edge
runtimes fuse into integer kernels); activation ranges calibrated (min-max) on a stratified sample of
training images in the model's input convention. The report gives the file size, the accuracy of the
float32 PyTorch model and of the int8 model on the test set, and both ONNX Runtime latencies at batch 1.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..data import stratified_subset
from ..errors import ExportError
from ..fileio import atomic_write_bytes
from .onnxrt import ort_session, require, run_onnx
from .timing import TimingOptions, measure


def calibration_batches(ds, n: int, seed: int = 0, batch_size: int = 64) -> list[np.ndarray]:
    """A stratified sample of ``n`` training images of ``ds`` (a pipeline ``Datasets``) as float32
    network input, in batches: what the int8 activation ranges are calibrated on."""
    sample = stratified_subset(ds.train, n, seed=seed) if n < len(ds.train) else ds.train
    x = sample.x
    return [ds.convention.from_uint8(x[i:i + batch_size]).numpy() for i in range(0, len(x), batch_size)]


def quantize_int8(fp32_path: str | Path, out_path: str | Path, calibration: list[np.ndarray]) -> Path:
    """Static int8 quantisation of the ONNX model at ``fp32_path``, calibrated on ``calibration``."""
    require("onnxruntime")
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not calibration:
        raise ExportError("int8 calibration needs at least one image")

    class Reader(CalibrationDataReader):
        def __init__(self, name: str):
            self._batches = iter([{name: b} for b in calibration])

        def get_next(self):
            return next(self._batches, None)

    input_name = ort_session(fp32_path).get_inputs()[0].name
    with tempfile.TemporaryDirectory() as tmp:
        pre, q = Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        try:
            quant_pre_process(str(fp32_path), str(pre))  # shape inference and graph clean-up first
            quantize_static(str(pre), str(q), Reader(input_name), quant_format=QuantFormat.QDQ,
                            per_channel=True, weight_type=QuantType.QInt8, activation_type=QuantType.QUInt8,
                            calibrate_method=CalibrationMethod.MinMax)
        except Exception as e:
            raise ExportError(f"int8 quantisation of {fp32_path} failed: {type(e).__name__}: "
                              f"{str(e).strip().splitlines()[0] if str(e).strip() else ''}") from None
        out_path = Path(out_path)
        atomic_write_bytes(out_path, q.read_bytes())
    return out_path


def onnx_accuracy(session, images: torch.Tensor, labels: torch.Tensor, convention, batch_size: int = 500) -> float:
    """Test accuracy (%) of an ONNX Runtime session on uint8 images."""
    correct = 0
    for i in range(0, len(images), batch_size):
        logits = run_onnx(session, convention.from_uint8(images[i:i + batch_size]).numpy())
        correct += int((logits.argmax(1) == labels[i:i + batch_size].numpy()).sum())
    return 100.0 * correct / max(1, len(images))


def quantize_report(model: nn.Module, fp32_path: str | Path, out_path: str | Path, ds, calibration_images: int,
                    timing: TimingOptions, seed: int = 0) -> dict:
    """Quantise ``fp32_path`` (the export of ``model``) calibrated on ``calibration_images`` stratified
    training images of ``ds`` (a pipeline ``Datasets``); size, accuracies, drop and batch-1 latencies."""
    from ..evaluate import predict

    n = min(calibration_images, len(ds.train))
    path = quantize_int8(fp32_path, out_path, calibration_batches(ds, n, seed))
    fp32, int8 = ort_session(fp32_path), ort_session(path)
    torch_pred = predict(model, ds.test.x, ds.convention, torch.device("cpu"))
    acc_fp32 = 100.0 * float(np.mean(torch_pred == ds.test.y.numpy()))
    acc_int8 = onnx_accuracy(int8, ds.test.x, ds.test.y, ds.convention)
    x = np.random.default_rng(seed).standard_normal((1, *ds.train.image_shape)).astype(np.float32)
    return {
        "path": str(path),
        "bytes": path.stat().st_size,
        "calibration_images": n,
        "test_images": len(ds.test),
        "accuracy_float32": acc_fp32,
        "accuracy_onnx_float32": onnx_accuracy(fp32, ds.test.x, ds.test.y, ds.convention),
        "accuracy_int8": acc_int8,
        "accuracy_drop": acc_fp32 - acc_int8,
        "threads": torch.get_num_threads(),
        "latency_float32": measure(lambda: run_onnx(fp32, x), timing),
        "latency_int8": measure(lambda: run_onnx(int8, x), timing),
    }
