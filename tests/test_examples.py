"""The examples and the README's quick start run, on a small real subset, and reach their stated accuracy."""

from __future__ import annotations

import gzip
import importlib.util
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from .conftest import FASHION_MNIST, ROOT, require

EXAMPLES = ROOT / "examples"


def _example(name: str):
    """Import examples/<name>.py as a module of its own (the examples folder on the path for its helper)."""
    sys.path.insert(0, str(EXAMPLES))
    try:
        spec = importlib.util.spec_from_file_location(f"igkd_example_{name}", EXAMPLES / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(EXAMPLES))
    return module


def _require_module(name: str) -> None:
    """Skip without ``name`` on a developer's machine; CI installs it (scripts/setup.sh), so there it fails."""
    if importlib.util.find_spec(name) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{name} missing; scripts/setup.sh installs it (extra 'lightning')")
        pytest.skip(f"{name} not installed")


@pytest.mark.slow
def test_own_loop_example_reaches_its_accuracy(capsys):
    """examples/own_loop.py: DataLoader workers over WithMaps + Overlay, the Distiller's loss, Adam."""
    require(FASHION_MNIST, "Fashion-MNIST")
    torch.set_num_threads(1)  # beside its 2 DataLoader workers
    acc = _example("own_loop").main(["--train-size", "1000", "--test-size", "500", "--epochs", "3",
                                     "--workers", "2"])
    assert acc >= 50.0, acc  # chance: 10 %; 62.6 % measured (README)
    assert "epoch 3:" in capsys.readouterr().out


@pytest.mark.slow
def test_lightning_example_reaches_its_accuracy():
    """examples/lightning.py: a LightningModule around igkd.Distiller."""
    require(FASHION_MNIST, "Fashion-MNIST")
    _require_module("pytorch_lightning")
    torch.set_num_threads(1)  # beside its 2 DataLoader workers
    acc = _example("lightning").main(["--train-size", "1000", "--test-size", "500", "--epochs", "4",
                                      "--workers", "2"])
    assert acc >= 40.0, acc  # chance: 10 %; 51.4 % measured (README)


def quickstart_code() -> str:
    """The fenced Python block under the README's quick-start marker."""
    readme = (ROOT / "README.md").read_text()
    m = re.search(r"<!-- quickstart -->\s*```python\n(.*?)```", readme, re.S)
    assert m, "README.md has no ```python block after <!-- quickstart -->"
    return m.group(1)


@pytest.mark.slow
def test_readme_quickstart_runs(tmp_path):
    require(FASHION_MNIST, "Fashion-MNIST")
    # torchvision's FashionMNIST folder, from the idx files (so download=True finds them and downloads nothing)
    raw = tmp_path / "data" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for gz in FASHION_MNIST.glob("*-ubyte.gz"):
        with gzip.open(gz) as src, open(raw / gz.name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", quickstart_code()], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    acc = float(re.search(r"student: ([0-9.]+) %", r.stdout).group(1))
    assert acc > 30.0, r.stdout  # chance: 10 %
    assert (tmp_path / "runs" / "quickstart" / "model.pt").is_file()
    assert (tmp_path / "runs" / "quickstart" / "student.onnx").is_file()
