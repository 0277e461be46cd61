"""Run directories: resolved config, environment, per-epoch metrics, checkpoints, summary.

Every file that matters is written to a temporary name and renamed into place, so a killed process
never leaves a file that looks complete but is not.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from .config import Config, config_from_dict, dump_config
from .errors import CheckpointError, ConfigError
from .fileio import atomic_write_text, read_json, write_json


def load_state_dict(path: str | Path) -> dict:
    """A state dict from a file that holds one, or a training checkpoint with a ``model`` entry."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}); re-create it") from None
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    return obj


def load_weights(model: torch.nn.Module, path: str | Path, state: dict | None = None) -> torch.nn.Module:
    """``model`` with the weights in ``path`` (or ``state``, already read from it), strictly."""
    state = load_state_dict(path) if state is None else state
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"checkpoint {path} does not fit the model: {detail}") from None
    return model


def environment(device: torch.device, seed: int) -> dict:
    versions = {}
    for pkg in ("torch", "torchvision", "numpy", "captum", "scipy", "igkd"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    env = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "seed": seed,
        "packages": versions,
        "command": sys.argv,
    }
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    try:
        src = Path(__file__).resolve().parent
        env["git_commit"] = subprocess.run(["git", "-C", str(src), "rev-parse", "HEAD"], capture_output=True,
                                           text=True, timeout=5).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


class RunDir:
    """One run: ``config.yaml``, ``env.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``, ``model.pt``,
    ``summary.json``."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.file("last.pt")

    @property
    def complete(self) -> bool:
        return self.file("summary.json").is_file()

    def summary(self) -> dict:
        return read_json(self.file("summary.json"))

    def saved_config(self) -> Config | None:
        p = self.file("config.yaml")
        if not p.is_file():
            return None
        import yaml

        return config_from_dict(yaml.safe_load(p.read_text()))

    def start(self, cfg: Config, resume: bool, env: dict) -> None:
        """Claim the directory for a run of ``cfg``; refuse to mix two runs in one folder."""
        saved = self.saved_config()
        if saved is not None:
            if not resume:
                raise ConfigError(f"run directory {self.path} already holds a run; pass --resume or choose another --out")
            if saved.to_dict() != cfg.to_dict():
                raise ConfigError(f"run directory {self.path} holds a run with another config; drop --resume or "
                                  "choose another --out")
        self.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.file("config.yaml"), dump_config(cfg))
        write_json(self.file("env.json"), env)

    def write_metrics(self, history: list[dict]) -> None:
        atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(h) + "\n" for h in history))
