import numpy as np
import pytest
from hypothesis import HealthCheck, settings

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
    from stablesoftmax import _compute

    if request.param == "numpy":
        monkeypatch.setenv("STABLESOFTMAX_DISABLE_KERNELS", "1")
    elif _compute.kernels() is None:
        pytest.skip("the compiled path is unavailable (numba missing)")
    return request.param
