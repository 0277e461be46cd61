"""Small shared helpers: seeds, devices and threads, progress bars."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .errors import ConfigError

AMP_MODES = ("none", "bf16", "fp16")  # autocast of the training and evaluation forward (train.amp)


def default_cache_dir() -> Path:
    """Where igkd keeps what it can rebuild (IG map stores, decoded image caches): ``$IGKD_CACHE``, else
    ``~/.cache/igkd``."""
    return Path(os.environ.get("IGKD_CACHE", Path.home() / ".cache" / "igkd"))


def derive_seed(seed: int, *keys: object) -> int:
    """A 63-bit seed for one random stream, derived from the run's single seed and a purpose."""
    digest = hashlib.sha256(repr((seed, *keys)).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when present, else CPU; a bare ``cuda`` under torchrun -> ``cuda:LOCAL_RANK``."""
    if str(name) == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"device {name} was asked for but no CUDA device is available; use auto or cpu")
        if device.index is None and "LOCAL_RANK" in os.environ:
            device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
    return device


def setup_device(device: str, threads: int | None = None, deterministic: bool = False) -> torch.device:
    """The one place a command picks its device, its CPU thread count and deterministic mode.

    Deterministic mode makes CUDA runs repeatable (cuDNN's autotuner off, deterministic kernels only; an
    operation without one raises). On the CPU igkd's runs are repeatable without it.
    """
    if threads:
        torch.set_num_threads(threads)
    if deterministic:
        import os

        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it before its first call
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.deterministic = True
        torch.backends.cudnn.benchmark = False
    return resolve_device(device)


def progress_bar(iterable=None, *, enabled: bool | None = None, **kwargs):
    """A tqdm bar; ``enabled=None`` shows it only when stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(iterable, disable=None if enabled is None else not enabled, dynamic_ncols=True, **kwargs)
