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
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path

import torch

from .config import PYTHON_RUN_KEYS, Config, config_from_dict, dump_config
from .errors import CheckpointError, ConfigError, CorruptFileError
from .fileio import (
    atomic_torch_save,
    atomic_write_text,
    content_hash,
    file_sha256,
    read_json,
    read_run_summary,
    write_checked_json,
    write_json,
)
from .locks import FileLock
from .weights import resolve_checkpoint

CHECKPOINT_FORMAT = "igkd-checkpoint-1"


def save_checkpoint(obj: dict, path: str | Path) -> None:
    """``obj`` (a dict of tensors and plain values) with the hash of its content, written atomically.

    ``torch.load(path)["model"]`` is the model's state dict for any igkd checkpoint.
    """
    atomic_torch_save({**obj, "format": CHECKPOINT_FORMAT, "sha256": content_hash(obj)}, path)


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """What :func:`save_checkpoint` wrote, or any other checkpoint's dict, loaded without running code.

    ``path`` may also be ``igkd:NAME``, weights shipped with igkd (:mod:`igkd.weights`).

    An igkd checkpoint whose content does not match its hash (truncated, bit-flipped) is an error.
    """
    path = resolve_checkpoint(path)  # a path, or igkd:NAME (weights shipped with igkd)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} not found")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)  # never runs code
    except Exception as e:  # torch raises many types for a corrupt file
        raise CheckpointError(f"checkpoint {path} is unreadable ({type(e).__name__}: truncated, corrupt or not "
                              "a checkpoint); re-create it") from None
    if isinstance(obj, dict) and ("format" in obj or "sha256" in obj):  # an igkd checkpoint: check it
        expected, fmt = obj.pop("sha256", None), obj.pop("format", None)
        if fmt != CHECKPOINT_FORMAT or content_hash(obj) != expected:
            raise CorruptFileError(f"checkpoint {path} does not match its checksum (truncated or altered); "
                                   "re-create it")
    return obj


STATE_DICT_ENTRIES = ("model", "state_dict", "model_state_dict")  # igkd's, timm's / Lightning's, common
STATE_DICT_PREFIXES = ("module.", "_orig_mod.")  # DistributedDataParallel's, torch.compile's


def load_state_dict(path: str | Path) -> dict:
    """A state dict from a file that holds one, or a checkpoint that holds it under ``model`` (igkd's),
    ``state_dict`` (timm's, Lightning's) or ``model_state_dict``; a ``module.`` (DDP) or ``_orig_mod.``
    (torch.compile) prefix on every key is removed."""
    obj = load_checkpoint(path)
    entry = next((k for k in STATE_DICT_ENTRIES if isinstance(obj, dict) and isinstance(obj.get(k), dict)), None)
    if entry is not None:
        obj = obj[entry]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state dict")
    for prefix in STATE_DICT_PREFIXES:
        if obj and all(isinstance(k, str) and k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return obj


def load_weights(model: torch.nn.Module, path: str | Path, state: dict | None = None) -> torch.nn.Module:
    """``model`` with the weights in ``path`` (or ``state``, already read from it), strictly.

    A checkpoint for another number of classes or input channels than the data's is named as such.
    """
    state = load_state_dict(path) if state is None else state
    _check_data_shape(model, state, path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = first[1].strip() if len(first) > 1 else first[0]
        raise CheckpointError(f"checkpoint {path} does not fit the model: {detail}") from None
    return model


def _check_data_shape(model: torch.nn.Module, state: dict, path: str | Path) -> None:
    """Compare the model's first convolution and last linear layer (sized by the data) with the checkpoint's."""
    convs = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    if convs:
        first = model.get_submodule(convs[0])
        w = state.get(f"{convs[0]}.weight")
        if isinstance(w, torch.Tensor) and w.ndim == 4 and w.shape[1] * first.groups != first.in_channels:
            raise CheckpointError(f"checkpoint {path} takes {w.shape[1] * first.groups}-channel images but the data "
                                  f"has {first.in_channels} channels: use a checkpoint trained on such images")
    if linears:
        name, head = linears[-1]
        w = state.get(f"{name}.weight")
        if isinstance(w, torch.Tensor) and w.ndim == 2 and w.shape[0] != head.out_features:
            k = head.out_features
            raise CheckpointError(f"checkpoint {path} is for {w.shape[0]} classes but the data has {k} (labels "
                                  f"0..{k - 1}): use a checkpoint trained on these classes, or the data it was "
                                  "trained on")


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
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
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


INPUTS_FILE = "inputs.json"


# Where the inputs live is not what they are: a moved store, or data read from disk instead of memory.
_PLACEMENT = ("path", "streaming")


def _comparable(tree, other):
    """``tree`` as a resume compares it with ``other``: without where things live (:data:`_PLACEMENT`), and
    without a digest that ``other`` could not take (a streamed dataset's pixels are not read for it: null)."""
    if not isinstance(tree, dict):
        return tree
    other = other if isinstance(other, dict) else {}
    return {k: _comparable(v, other.get(k)) for k, v in tree.items()
            if k not in _PLACEMENT and not (k in other and (v is None) != (other[k] is None) and k.endswith("_sha256"))}


def first_difference(a, b, key: str = "") -> tuple[str, object, object] | None:
    """The first place where two JSON-like trees differ, as ``(dotted key, a's value, b's value)``; None when
    they are equal."""
    if isinstance(a, dict) and isinstance(b, dict):
        for k in list(a) + [k for k in b if k not in a]:
            found = first_difference(a.get(k), b.get(k), f"{key}.{k}" if key else str(k))
            if found is not None:
                return found
        return None
    return None if a == b else (key or "inputs", a, b)


class RunDir:
    """One run: ``config.yaml``, ``env.json``, ``metrics.jsonl``, ``last.pt``, ``best.pt``, ``model.pt``,
    ``summary.json``; ``inputs.json`` for a run of :func:`igkd.fit`."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def file(self, name: str) -> Path:
        return self.path / name

    @property
    def checkpoint(self) -> Path:
        return self.file("last.pt")

    @property
    def begun(self) -> bool:
        """A run was started here (its config is written first), finished or not."""
        return self.file("config.yaml").is_file()

    @property
    def complete(self) -> bool:
        return self.file("summary.json").is_file()

    def summary(self) -> dict:
        """The finished run's summary, checked against its checksum (and its files against theirs)."""
        return read_run_summary(self.path)

    def write_summary(self, summary: dict) -> dict:
        """``summary.json``, written last: its checksum, and the checksums of the run's text files."""
        files = {name: file_sha256(self.file(name)) for name in ("config.yaml", INPUTS_FILE, "metrics.jsonl")
                 if self.file(name).is_file()}
        summary = {**summary, "files": files}
        write_checked_json(self.file("summary.json"), summary)
        return summary

    def saved_config(self) -> Config | None:
        p = self.file("config.yaml")
        if not p.is_file():
            return None
        import yaml

        try:
            return config_from_dict(yaml.safe_load(p.read_text()))
        except (UnicodeDecodeError, yaml.YAMLError, ConfigError) as e:
            raise CorruptFileError(f"{p} is not a valid igkd config ({type(e).__name__}); delete {self.path} "
                                   "or choose another --out") from None

    @contextmanager
    def claim(self, cfg: Config, resume: bool, env: dict, inputs: dict | None = None) -> Iterator[RunDir]:
        """Hold the directory for a run of ``cfg`` for the block: one writer, never two runs in one folder.

        ``inputs``: what a run on Python objects (:func:`igkd.fit`) was given, its datasets and networks
        (``inputs.json``). Its ``config.yaml`` then records only the sections that describe it
        (:data:`~igkd.config.PYTHON_RUN_KEYS`), and a resume must be given the same inputs.
        """
        with FileLock(self.path, "run directory"):
            saved = self.saved_config()
            if saved is not None:
                if not resume:
                    raise ConfigError(f"run directory {self.path} already holds a run; pass --resume or choose "
                                      "another --out")
                if saved.identity() != cfg.identity():
                    raise ConfigError(f"run directory {self.path} holds a run with another config; drop --resume "
                                      "or choose another --out")
                self._same_inputs(inputs)
            if inputs is not None:
                write_json(self.file(INPUTS_FILE), inputs)
            atomic_write_text(self.file("config.yaml"), dump_config(cfg, PYTHON_RUN_KEYS if inputs is not None else None))
            write_json(self.file("env.json"), env)
            yield self

    def _same_inputs(self, inputs: dict | None) -> None:
        """A resumed run is given what it began with: the same kind of run, the same recorded inputs."""
        path = self.file(INPUTS_FILE)
        if not path.is_file():
            if inputs is not None:
                raise ConfigError(f"run directory {self.path} holds a run igkd built from a config, not one of "
                                  "igkd.fit; choose another out")
            return
        if inputs is None:
            raise ConfigError(f"run directory {self.path} holds a run of igkd.fit (see its {INPUTS_FILE}); resume "
                              "it with igkd.fit, or choose another --out")
        try:
            saved = read_json(path)
        except ValueError:  # undecodable bytes or JSON
            raise CorruptFileError(f"{path} is unreadable; delete {self.path} or choose another out") from None
        difference = first_difference(_comparable(saved, inputs), _comparable(inputs, saved))
        if difference is not None:
            key, was, now = difference
            raise ConfigError(f"run directory {self.path} holds a run on other inputs ({key}: {was} then, {now} "
                              "now); give fit what it began with, drop resume, or choose another out")

    def write_metrics(self, history: list[dict]) -> None:
        atomic_write_text(self.file("metrics.jsonl"), "".join(json.dumps(h) + "\n" for h in history))
