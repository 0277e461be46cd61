"""The layers as a checked contract: `lint-imports` (import-linter) against pyproject.toml's contracts."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")  # the test extra installs it beside python


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(root / "src")}
    return subprocess.run([str(LINT_IMPORTS), "--no-cache", "--no-logo", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_layers_and_no_cycles_hold():
    r = lint_imports(ROOT)
    assert r.returncode == 0 and "3 kept, 0 broken" in r.stdout, r.stdout + r.stderr


def test_the_cli_reaching_past_the_public_face_breaks_the_contract(tmp_path):
    # The CLI's verbs call igkd.api (one code path with Python users); a verb calling the pipeline directly breaks it.
    shutil.copytree(ROOT / "src" / "igkd", tmp_path / "src" / "igkd",
                    ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    cli = tmp_path / "src" / "igkd" / "cli.py"
    cli.write_text(cli.read_text() + "\n\ndef _direct():\n    from .pipeline import distill\n\n    return distill\n")
    r = lint_imports(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "igkd.cli is not allowed to import igkd.pipeline" in r.stdout and "2 kept, 1 broken" in r.stdout


def test_an_upward_import_breaks_the_contract(tmp_path):
    # A copy of the package where models needs the config again (the cycle this contract was written against).
    shutil.copytree(ROOT / "src" / "igkd", tmp_path / "src" / "igkd",
                    ignore=shutil.ignore_patterns("*.pt", "__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    complexity = tmp_path / "src" / "igkd" / "models" / "complexity.py"
    complexity.write_text(complexity.read_text() + "\n\ndef _config():\n    from ..config import Config\n\n"
                          "    return Config\n")
    r = lint_imports(tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "igkd.models is not allowed to import igkd.config" in r.stdout
    assert "No cycles are allowed in igkd" in r.stdout and "1 kept, 2 broken" in r.stdout
