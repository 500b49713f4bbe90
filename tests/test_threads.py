"""The CPU kernels on several threads: the same bytes as on one, and the limit that sets how many.

Large host inputs are split into bands of rows, one per thread
(``stablesoftmax.set_num_threads``, ``STABLESOFTMAX_NUM_THREADS``). Each row
is computed exactly as on one thread, so every output is held here to the
one-thread bytes, for every kernel entry and every dtype the kernels take.
"""

from __future__ import annotations

import os

import numpy as np
import pytest

import stablesoftmax as ss
from stablesoftmax import ArgumentError

pytest.importorskip("numba")
ml_dtypes = pytest.importorskip("ml_dtypes")
from stablesoftmax import _compute  # noqa: E402
from stablesoftmax._kernels import cpu as _kernels  # noqa: E402

THREADS = (1, 2, 3)
DTYPES = [np.float64, np.float32, np.float16, ml_dtypes.bfloat16]
IDS = ["float64", "float32", "float16", "bfloat16"]


@pytest.fixture
def limit():
    """Set the thread limit for one test, and restore it."""
    old = ss.set_num_threads(1)
    yield ss.set_num_threads
    ss.set_num_threads(old)


def _rows(rng, dtype, n=37, k=129):
    """Rows with the special values the kernels treat apart: ``-inf``, ``+inf``, NaN, an all ``-inf`` row."""
    x = rng.standard_normal((n, k)) * 4
    x[3, 5] = -np.inf
    x[7, :] = -np.inf
    x[11, 2] = np.inf
    x[13, 9] = np.nan
    return x.astype(dtype)


def _bytes(*arrays):
    return [np.ascontiguousarray(a).tobytes() for a in arrays]


def _by_threads(compute):
    """``compute(threads)`` for each count in :data:`THREADS`, as bytes."""
    return {t: _bytes(*compute(t)) for t in THREADS}


def _assert_same(results):
    one = results[1]
    for t, got in results.items():
        assert got == one, f"{t} threads differ from one"


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("log", [None, False, True], ids=["state", "softmax", "log_softmax"])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "where"])
def test_state_rows_are_the_same_bytes_on_any_number_of_threads(rng, dtype, log, masked):
    x = _rows(rng, dtype)
    where = rng.random(x.shape) > 0.2 if masked else None

    def compute(threads):
        out = None if log is None else np.empty(x.shape, x.dtype)
        m, k, s = _kernels.state_rows(x, where=where, out=out, log=bool(log), threads=threads)
        return (m, k, s) if out is None else (m, k, s, out)

    _assert_same(_by_threads(compute))


@pytest.mark.parametrize("dtype", DTYPES, ids=IDS)
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("masked", [False, True], ids=["plain", "where"])
def test_cross_entropy_rows_with_grad_are_the_same_bytes_on_any_number_of_threads(rng, dtype, smoothing, masked):
    x = _rows(rng, dtype)
    n, c = x.shape
    target = rng.integers(0, c, n)
    where = rng.random(x.shape) > 0.2 if masked else None
    weight = rng.random(c) + 0.5
    g, z_grad = rng.random(n), rng.random(n) * 1e-3

    def compute(threads):
        grad = np.empty(x.shape, x.dtype)
        parts = _kernels.cross_entropy_rows(
            x,
            target,
            where=where,
            weight=weight,
            label_smoothing=smoothing,
            grad=grad,
            g=g,
            z_grad=z_grad,
            threads=threads,
        )
        return (*parts, grad)

    _assert_same(_by_threads(compute))


@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
def test_public_functions_are_the_same_bytes_on_any_limit(rng, limit, dtype, monkeypatch):
    """Above the threshold the public functions take bands; their bytes are those of one thread."""
    monkeypatch.setattr(_compute, "THREADS_FROM", 1)
    x = _rows(rng, dtype)
    y = rng.integers(0, x.shape[1], x.shape[0])

    def compute(threads):
        limit(threads)
        loss, grad = ss.cross_entropy_with_grad(x, y, label_smoothing=0.1)
        return ss.logsumexp(x), ss.softmax(x), ss.log_softmax(x, where=x > -1), loss, grad

    _assert_same(_by_threads(compute))


def test_the_bands_follow_the_limit(rng, limit, monkeypatch):
    """The kernels get the limit's count from the threshold on, and one thread below it."""
    seen = []
    real = _kernels.lse_rows
    monkeypatch.setattr(_kernels, "lse_rows", lambda rows, **kw: seen.append(kw.get("threads", 1)) or real(rows, **kw))
    x = rng.standard_normal((8, 16))
    limit(3)
    ss.logsumexp(x)
    monkeypatch.setattr(_compute, "THREADS_FROM", x.size)
    ss.logsumexp(x)
    assert seen == [1, 3]


class TestNumThreads:
    def test_set_returns_the_old_limit_and_get_reads_it(self, limit):
        limit(2)
        assert ss.set_num_threads(3) == 2
        assert ss.get_num_threads() == 3

    def test_the_default_is_every_core_the_process_may_use(self, monkeypatch):
        monkeypatch.setattr(_compute, "_THREADS", [0])
        monkeypatch.delenv(_compute.THREADS_ENV, raising=False)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        assert ss.get_num_threads() == cores

    def test_the_environment_variable_takes_precedence(self, limit, monkeypatch):
        limit(2)
        monkeypatch.setenv("STABLESOFTMAX_NUM_THREADS", "5")
        assert ss.get_num_threads() == 5
        monkeypatch.setenv("STABLESOFTMAX_NUM_THREADS", "")
        assert ss.get_num_threads() == 2

    @pytest.mark.parametrize("bad", [0, -1, 2.5, True, "2", None])
    def test_the_limit_is_a_whole_number_of_threads(self, bad, limit):
        with pytest.raises(ArgumentError, match=r"n=.* whole number >= 1"):
            ss.set_num_threads(bad)
        assert ss.get_num_threads() == 1

    @pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
    def test_a_bad_environment_value_is_named(self, bad, monkeypatch):
        monkeypatch.setenv("STABLESOFTMAX_NUM_THREADS", bad)
        with pytest.raises(ArgumentError, match=rf"STABLESOFTMAX_NUM_THREADS='{bad}' is not allowed"):
            ss.get_num_threads()


def test_the_disk_cache_is_keyed_by_cpu_name_and_features():
    """A kernel compiled on one CPU class is filed under that class: it cannot load on another."""
    import llvmlite.binding as ll
    import numba

    kernel = _kernels._vector_parts
    kernel(np.ones(4))
    sig = kernel.signatures[0]
    codegen = kernel.targetctx.codegen()
    key = kernel._cache._index_key(sig, codegen)
    if numba.config.CPU_NAME or numba.config.CPU_FEATURES:
        pytest.skip("NUMBA_CPU_NAME or NUMBA_CPU_FEATURES names another CPU than the host")
    _, cpu_name, features = key[1]
    assert cpu_name == ll.get_host_cpu_name()
    host = ll.get_host_cpu_features()
    assert ("+avx2" in features.split(",")) == bool(host.get("avx2", False))
    assert ("+avx512f" in features.split(",")) == bool(host.get("avx512f", False))
