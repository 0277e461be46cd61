"""How good, how portable and how fast a trained model is: the same code as ``igkd evaluate``, ``igkd export``
and ``igkd bench``, on a model and a dataset."""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..deploy.bench import BenchSettings, Candidate, bench_models
from ..deploy.export import check_parity, model_metadata, onnx_parity
from ..deploy.export import export_onnx as _export_onnx
from ..deploy.timing import TimingOptions
from ..evaluate import classification_metrics, predict
from ..utils import resolve_device
from .data import Normalize, convention_of, dataset_from

__all__ = ["bench", "evaluate", "export_onnx"]


def evaluate(model: nn.Module, dataset: Dataset, *, normalize: Normalize | None = None, batch_size: int = 256,
             device: str | torch.device | None = None, streaming: bool = False, loader_workers: int = 0) -> dict:
    """Accuracy, balanced accuracy, Cohen's kappa, per-class accuracy and confusion matrix of ``model``
    on ``dataset`` (what ``igkd evaluate`` reports; scikit-learn's metrics).

    Args:
        model: a classifier (evaluated in eval mode; its mode is restored).
        dataset: a map-style ``Dataset`` of ``(image, label)``, images ``(C, H, W)`` pixels (uint8, or float
            in [0, 1] holding 8-bit values).
        normalize: the ``(mean, std)`` the model takes; None: pixels in [0, 1] as they are.
        batch_size: images per forward pass.
        device: where to run (None: the model's).
        streaming: read the dataset a batch at a time instead of holding it in memory (the same numbers),
            ahead of the model.
        loader_workers: with ``streaming``, DataLoader worker processes that read (and decode) the batches;
            0: one background thread. The same numbers either way.

    Returns:
        ``{"images", "accuracy", "balanced_accuracy", "cohen_kappa", "per_class_accuracy",
        "confusion_matrix", "classes"}``, accuracies in percent.
    """
    ds = dataset_from(dataset, "dataset", streaming, loader_workers)
    param = next(model.parameters(), None)
    dev = resolve_device(device) if device is not None else (param.device if param is not None else
                                                             torch.device("cpu"))
    was_training = model.training
    try:
        pred = predict(model.to(dev), ds.x, convention_of(normalize, ds.image_shape[0]), dev, batch_size,
                       loader_workers)
    finally:
        model.train(was_training)
    return classification_metrics(ds.y.numpy(), pred, list(ds.classes))


def export_onnx(model: nn.Module, path: str | os.PathLike, input_shape: tuple[int, int, int], *,
                normalize: Normalize | None = None, classes: Sequence[str] | None = None) -> Path:
    """Write ``model`` as an ONNX file (opset 18, dynamic batch axis), checked in ONNX Runtime: refused
    (:class:`~igkd.errors.ExportError`) when its outputs differ from PyTorch's by more than 1e-4.

    Args:
        model: the network (an eval-mode float32 CPU copy is exported; the model is left as it is).
        path: the ``.onnx`` file to write (atomically).
        input_shape: ``(C, H, W)`` of one input.
        normalize: the ``(mean, std)`` the model takes, written into the file's metadata (``igkd.mean``,
            ``igkd.std``) so a runtime knows how to feed it; None: pixels in [0, 1].
        classes: class names for the metadata (``igkd.classes``).

    Returns:
        The path written.
    """
    channels = input_shape[0]
    convention = convention_of(normalize, channels)
    names = list(classes) if classes is not None else []
    path = _export_onnx(model, tuple(input_shape), path, metadata=model_metadata(type(model).__name__, convention,
                                                                                  names))
    check_parity(onnx_parity(model, path, tuple(input_shape)), f"the ONNX model {path}")
    return path


def bench(model: nn.Module, input_shape: tuple[int, int, int], *, batch_sizes: Sequence[int] = (1, 64),
          runtimes: Sequence[str] = ("torch", "onnxruntime"), devices: Sequence[str] | None = None,
          threads: int | None = None, warmup: int = 10, min_repeats: int = 30, min_time_s: float = 1.0,
          name: str = "model") -> dict:
    """Parameters, multiply-adds, size and measured latency of ``model`` (``igkd bench``'s measurement).

    Latency is the median, 10th and 90th percentile of repeated calls after a warm-up, per runtime
    (PyTorch eager in inference mode, ONNX Runtime), device and batch size, with the machine's load
    recorded beside it (latency measured under other load is not the model's).

    Args:
        model: the network (eval-mode copies are timed).
        input_shape: ``(C, H, W)`` of one input.
        batch_sizes: batch sizes to time.
        runtimes: ``torch`` and/or ``onnxruntime``.
        devices: ``cpu`` and/or ``cuda`` (None: cpu, and cuda when present).
        threads: CPU threads of PyTorch and ONNX Runtime (None: PyTorch's current).
        warmup: untimed calls first.
        min_repeats: timed calls, at least.
        min_time_s: seconds of timed calls, at least.
        name: the model's name in the record.

    Returns:
        The bench record (``format`` ``igkd-bench/1``): ``models[0]`` holds ``params``, ``macs``,
        ``size_bytes`` and ``latency`` rows ``{runtime, device, batch, median_ms, p10_ms, p90_ms, ...}``;
        ``environment`` says where it was measured.
    """
    settings = BenchSettings(batch_sizes=tuple(batch_sizes), runtimes=tuple(runtimes),
                             devices=tuple(devices) if devices else None, threads=threads,
                             timing=TimingOptions(warmup=warmup, min_repeats=min_repeats, min_time_s=min_time_s))
    return bench_models([Candidate(name, "model", copy.deepcopy(model))], tuple(input_shape), settings)
