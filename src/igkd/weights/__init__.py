"""Weights igkd ships as package data, named ``igkd:NAME`` wherever a checkpoint path is taken.

Each file is an igkd checkpoint made by the command recorded beside it, and is checked against its
sha256 here before it is read (the checkpoint's own content hash is checked again on load).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from ..errors import CheckpointError

PREFIX = "igkd:"
HERE = Path(__file__).resolve().parent

# name: (file, sha256 of the file, how it was made, what it measured)
SHIPPED: dict[str, tuple[str, str, str, str]] = {
    "fashion-mnist-teacher-w0.5": (
        "fashion-mnist-teacher-w0.5.pt",
        "3264664fa3c15539009ba7a7e67b1cf5e870581a3e27fe2ebcd886d687b45e9d",
        "igkd train-teacher -c cpu-study-fashion-mnist --out runs/cpu-study-teacher  (igkd b87e68e, 2 threads)",
        "cifar_mobilenet_v2 width 0.5, strides [2,1,2,2,1], 700,202 parameters; Fashion-MNIST test 91.69 %, "
        "validation 92.43 % after 15 epochs",
    ),
}


def resolve_checkpoint(path: str | Path) -> Path:
    """``path`` itself, or the packaged file that ``igkd:NAME`` names, after its sha256 is checked."""
    text = str(path)
    if not text.startswith(PREFIX):
        return Path(path)
    name = text[len(PREFIX):]
    if name not in SHIPPED:
        known = ", ".join(PREFIX + n for n in SHIPPED) or "none"
        raise CheckpointError(f"no shipped weights {text!r}; igkd ships: {known}")
    file, sha256, _made_by, _measured = SHIPPED[name]
    p = HERE / file
    if not p.is_file() or hashlib.sha256(p.read_bytes()).hexdigest() != sha256:
        raise CheckpointError(f"shipped weights {text} ({p}) are missing or do not match their sha256: "
                              "reinstall igkd")
    return p
