#!/usr/bin/env bash
# One-time set-up: Fashion-MNIST from Debian (where apt exists), a virtual environment in .venv with
# PyTorch and igkd (editable, with the test, deploy, models, tracking, docs and lightning extras). Safe to run
# again.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
    SUDO=""
    if [ "$(id -u)" != 0 ]; then SUDO=$(command -v sudo || true); fi
    if [ "$(id -u)" = 0 ] || [ -n "$SUDO" ]; then
        echo "setup: installing Debian's dataset-fashion-mnist"
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null
    else
        echo "setup: no root: igkd will download Fashion-MNIST on first use (--set data.download=true)"
    fi
fi

if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
# torch and torchvision pinned to the builds this project is tested with.
.venv/bin/python -m pip install -q torch==2.14.1 torchvision==0.29.1
.venv/bin/python -m pip install -q -e '.[test,deploy,models,tracking,docs,lightning]'
echo "setup: done ($(.venv/bin/python -c 'import torch; print("torch", torch.__version__)'))"
