import importlib.metadata
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, settings


def _numba_cache_per_worker() -> None:
    """Give each pytest-xdist worker its own numba cache, one per numba version.

    numba's on-disk cache is not safe for processes that compile different
    signatures of one function at the same time: on a cold cache two workers
    numbered their entries apart and one then loaded the other's code ("LLVM
    bitcode parsing error", seen in CI's run on the oldest releases). Set here,
    before anything imports numba, which reads it once. A NUMBA_CACHE_DIR set
    by the caller is left as it is.
    """
    worker = os.environ.get("PYTEST_XDIST_WORKER")
    if worker is None or "NUMBA_CACHE_DIR" in os.environ:
        return
    try:
        version = importlib.metadata.version("numba")
    except importlib.metadata.PackageNotFoundError:
        return
    root = Path(__file__).resolve().parents[1] / "build" / "numba-cache"
    os.environ["NUMBA_CACHE_DIR"] = str(root / f"numba-{version}" / worker)


_numba_cache_per_worker()

# Deterministic property tests: the same examples on every run and machine.
settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=120,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("ci")


@pytest.fixture
def rng():
    return np.random.default_rng(42)


@pytest.fixture(params=["compiled", "numpy"])
def each_path(request, monkeypatch):
    """Run a test on the compiled (numba) path and on the pure-NumPy fallback."""
    from stablesoftmax import _kernels

    if request.param == "numpy":
        monkeypatch.setenv("STABLESOFTMAX_DISABLE_KERNELS", "1")
    elif _kernels.host_kernels() is None:
        pytest.skip("the compiled path is unavailable (numba missing)")
    return request.param
