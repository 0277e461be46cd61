import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = Path(os.environ.get("IGKD_REFERENCE", ROOT.parent / "shared" / "reference"))
FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def require(path: Path, what: str) -> None:
    """Skip on a developer's machine without ``path``; in CI (CI=true) its absence is a failure."""
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{what} missing at {path}; CI must install it")
        pytest.skip(f"{what} not at {path}")


def _threads_per_worker() -> int:
    """At most 2 threads for a test's torch; under pytest-xdist (the default, one worker per core) the cores
    are shared among the workers, so that they do not oversubscribe the machine."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    return max(1, min(2, (os.cpu_count() or 1) // workers))


@pytest.fixture(autouse=True)
def _small_threads():
    torch.set_num_threads(_threads_per_worker())
    yield
