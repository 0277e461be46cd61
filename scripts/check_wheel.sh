#!/usr/bin/env bash
# Build igkd's wheel, install it (not editable) into a clean environment, and check that the command
# runs and finds its presets and data files there: a wheel without its package data cannot run
# `igkd demo`. The clean environment borrows the dependencies (torch, ...) from .venv through a .pth
# path entry, which adds .venv's packages but not its editable igkd, so only the wheel can answer.
set -euo pipefail
cd "$(dirname "$0")/.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
.venv/bin/python -m pip wheel -q --no-deps -w "$work/dist" .
python3 -m venv "$work/env"
"$work/env/bin/python" -m pip install -q --no-deps "$work"/dist/igkd-*.whl
deps=$(.venv/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
own=$("$work/env/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$deps" > "$own/zz-igkd-deps.pth"
cd "$work"  # away from the source tree
"$work/env/bin/igkd" --help >/dev/null
"$work/env/bin/igkd" compression-table -c cpu-fashion-mnist >/dev/null
"$work/env/bin/python" - "$own" <<'PY'
import sys
import importlib.resources as r

import igkd
from igkd.cli import resolve_config_path
from igkd.config import load_config

assert igkd.__file__.startswith(sys.argv[1]), f"igkd imported from {igkd.__file__}, not the wheel"
for name in ("cpu-fashion-mnist", "paper-cifar10", "demo-fashion-mnist", "cpu-converged-fashion-mnist"):
    load_config(resolve_config_path(name))
assert r.files("igkd.data").joinpath("imagenet_wnids.txt").is_file()
assert r.files("igkd.data").joinpath("imagenet_to_cifar10.json").is_file()
from igkd.weights import SHIPPED, resolve_checkpoint  # the demo's teacher, checked by its sha256
for name in SHIPPED:
    assert resolve_checkpoint("igkd:" + name).is_file()
print("check_wheel: the installed wheel runs `igkd --help` and `compression-table`, loads its presets and "
      "its shipped weights")
PY
