"""Where igkd keeps what it can rebuild: IG stores and downloaded data."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    return Path(os.environ.get("IGKD_CACHE", Path.home() / ".cache" / "igkd"))
