#!/usr/bin/env bash
# Wheels that benchmarks/gpu_check.sh needs on a GPU machine without network, into .whl/ (ignored by git).
# The GPU image has PyTorch, NumPy, SciPy, matplotlib, PyYAML, tqdm and pytest; Captum (the saliency rows)
# is what it lacks. Python 3.12, manylinux x86-64 (or pure-Python) wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "captum==$(.venv/bin/python -c 'import captum; print(captum.__version__)')"
ls -la .whl
