"""The reference docs build with warnings as errors, and every public name has its page entry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ROOT

MKDOCS = Path(sys.executable).with_name("mkdocs")  # the docs extra installs it beside python


def test_reference_docs_build_strictly_with_every_public_name(tmp_path):
    if not MKDOCS.exists():
        if os.environ.get("CI"):
            pytest.fail("mkdocs missing; scripts/setup.sh installs the docs extra")
        pytest.skip("mkdocs not installed (extra 'docs')")
    r = subprocess.run([str(MKDOCS), "build", "--strict", "-q", "-f", str(ROOT / "mkdocs.yml"), "-d",
                        str(tmp_path / "site")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                       env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    assert r.returncode == 0, r.stdout + r.stderr
    page = (tmp_path / "site" / "api" / "index.html").read_text()
    import igkd

    for name in igkd.__all__:
        if name != "__version__":
            assert f'id="igkd.api.{name}"' in page, f"igkd.{name} is not in docs/api.md"
    assert "forward(x, y)" in page or "distiller(x, y)" in page  # docstrings rendered, not just headings
