"""Every accelerator through the same cases: the protocol of ``stablesoftmax._kernels``.

An accelerator computes the per-row parts and writes outputs and gradients
from them; it never finishes a loss. What each must give:

* ``m`` and ``k`` of :func:`state_rows` exactly (both are exact: a max and a
  first position), special rows included, as the reference gives them;
* ``s`` within ``S_BOUND`` of the exact sum (mpmath), relative;
* softmax and log-softmax written into ``out`` within the library's ulp goals
  against mpmath (16-bit and float32 correctly rounded);
* the loss parts of :func:`cross_entropy_rows` and its gradient against
  mpmath, for every option.

Adding an accelerator means one entry in ``ACCELERATORS`` below. Never is an
accelerator compared with another one's bits where the contract does not
say the value is exact.
"""

from __future__ import annotations

import math
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton: its kernels run on CPU tensors

import mpmath
import numpy as np
import pytest

from stablesoftmax import _kernels
from stablesoftmax._kernels import reference
from tests.helpers import BFLOAT16, FLOAT_DTYPES, ulp_error, ulp_goal

EPS64 = np.finfo(np.float64).eps


@pytest.fixture(autouse=True)
def _mpmath_precision():
    """40 digits for the oracle, set per test: mpmath's precision is process-wide, and other files set their own."""
    with mpmath.workdps(40):
        yield


# The sum s: float64 input carries the shift's TwoSum error and its terms are within ~1e-17 of
# exp; narrower input's shift is exact and its terms are within 4.1e-14 (the kernels' float32
# polynomial). Compensated block sums keep the sum's own error near one eps.
S_BOUND = {"float64": 8 * EPS64, "narrow": 2.0**-43}


def _cpu():
    module = _kernels.host_kernels()
    if module is None:
        pytest.skip("the numba kernels cannot run here")
    return module


class _OnTensors:
    """An accelerator of torch tensors, called with NumPy arrays: inputs go in as tensors, results come back."""

    def __init__(self, module):
        self.module, self.__name__ = module, module.__name__

    def state_rows(self, x, /, *, where=None, out=None, log=False):
        t_out = None if out is None else _tensor(np.empty_like(out))
        res = self.module.state_rows(_tensor(x), where=_tensor(where), out=t_out, log=log)
        if out is not None:
            out[...] = _array(t_out, out.dtype)
        return tuple(_array(a) for a in res)

    def cross_entropy_rows(self, x, target, /, *, grad=None, **kw):
        kw = {k: _tensor(v) for k, v in kw.items()}
        t_grad = None if grad is None else _tensor(np.empty_like(grad))
        res = self.module.cross_entropy_rows(_tensor(x), _tensor(target), grad=t_grad, **kw)
        if grad is not None:
            grad[...] = _array(t_grad, grad.dtype)
        return type(res)(*(_array(a) for a in res))

    def block_gradient_rows(self, x, first, *rows, out, weight=None, **kw):
        *vectors, hot = rows
        t_x = _tensor(x)
        t_out = t_x if out is x else _tensor(np.empty_like(out))
        self.module.block_gradient_rows(
            t_x, first, *(_tensor(v) for v in vectors), hot, weight=_tensor(weight), out=t_out, **kw
        )
        out[...] = _array(t_out, out.dtype)


def _tensor(a):
    import torch

    if a is None or isinstance(a, (int, float)):
        return a
    a = np.ascontiguousarray(a)
    if a.dtype == BFLOAT16:
        return torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(a)


def _array(t, dtype=None):
    import torch

    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(BFLOAT16)
    return t.numpy() if dtype is None else t.numpy().astype(dtype, copy=False)


def _triton():
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    from stablesoftmax._kernels import triton

    if not triton.available():
        pytest.skip("Triton can run neither on a device nor interpreted here")
    return _OnTensors(triton)


# name -> (module factory, dtypes it takes)
ACCELERATORS = {
    "reference": (lambda: reference, FLOAT_DTYPES),
    "cpu": (_cpu, FLOAT_DTYPES),
    "triton": (_triton, FLOAT_DTYPES),
}


@pytest.fixture(params=sorted(ACCELERATORS))
def accelerator(request):
    factory, dtypes = ACCELERATORS[request.param]
    return factory(), dtypes


def _takes(accelerator, dtype) -> object:
    module, dtypes = accelerator
    if np.dtype(dtype) not in dtypes:
        pytest.skip(f"{module.__name__} does not take {dtype}")
    return module


def _rows(dtype, rng) -> tuple[np.ndarray, np.ndarray]:
    """Ordinary, dominant, tied, masked and special rows of 19 classes, already in ``dtype``."""
    inf, nan = math.inf, math.nan
    x = rng.normal(scale=3.0, size=(12, 19))
    x[1, 4] = 40.0  # dominant: s far below an ulp of 1
    x[2, :] = 1.5  # all tied
    x[3, [2, 11]] = 9.0  # a tie for the max
    x[4] = -80.0 + rng.normal(size=19)  # far from 0
    x[7, :] = -inf  # no mass
    x[8, 6] = inf  # one +inf
    x[9, [1, 5]] = inf  # two
    x[10, 3] = nan
    where = np.ones(x.shape, bool)
    where[5, ::2] = False
    where[6, :] = False  # all masked
    x[5, ::2] = nan  # what a masked entry holds does not count
    return np.asarray(x, dtype=dtype), where


def _exact_s(row: np.ndarray, allowed: np.ndarray) -> float:
    vals = [mpmath.mpf(float(v)) for v, ok in zip(row, allowed, strict=True) if ok]
    m = max(vals)
    k = next(i for i, v in enumerate(vals) if v == m)
    return float(mpmath.fsum(mpmath.exp(v - m) for i, v in enumerate(vals) if i != k))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
class TestState:
    def test_m_and_k_are_the_references_exactly(self, accelerator, dtype, rng):
        module = _takes(accelerator, dtype)
        x, where = _rows(dtype, rng)
        for mask in (None, where):
            m, k, s = (np.asarray(a) for a in module.state_rows(x, where=mask))
            rm, rk, rs = (np.asarray(a) for a in reference.state_rows(x, where=mask))
            np.testing.assert_array_equal(m, rm)
            np.testing.assert_array_equal(k, rk)
            special = ~np.isfinite(rm)
            np.testing.assert_array_equal(s[special], rs[special])  # the contract's special rows are exact

    def test_s_against_mpmath(self, accelerator, dtype, rng):
        module = _takes(accelerator, dtype)
        x, where = _rows(dtype, rng)
        m, _, s = (np.asarray(a) for a in module.state_rows(x, where=where))
        bound = S_BOUND["float64" if np.dtype(dtype) == np.float64 else "narrow"]
        for i in np.flatnonzero(np.isfinite(m)):
            want = _exact_s(x[i].astype(np.float64), where[i])
            assert abs(s[i] - want) <= bound * want + 1e-300, (i, s[i], want)


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
def test_outputs_within_the_ulp_goals(accelerator, dtype, log, rng):
    module = _takes(accelerator, dtype)
    x, where = _rows(dtype, rng)
    out = np.empty(x.shape, dtype)
    module.state_rows(x, where=where, out=out, log=log)
    fn = "log_softmax" if log else "softmax"
    for i in range(x.shape[0]):
        vals = [mpmath.mpf(float(v)) for v, ok in zip(x[i], where[i], strict=True) if ok]
        if not vals or any(mpmath.isnan(v) or mpmath.isinf(v) for v in vals):
            continue  # special rows: the state test holds them exactly
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in vals))
        for c in np.flatnonzero(where[i]):
            v = mpmath.mpf(float(x[i, c]))
            ref = v - lse if log else mpmath.exp(v - lse)
            assert ulp_error(out[i, c], ref, dtype) <= ulp_goal(fn, dtype), (i, c, out[i, c], ref)
        assert np.all(out[i, ~where[i]] == (-np.inf if log else 0.0))


@pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=str)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
def test_cross_entropy_parts_and_gradient_against_mpmath(accelerator, dtype, smoothing, weighted, rng):
    module = _takes(accelerator, dtype)
    x, where = _rows(dtype, rng)
    rows = [0, 1, 3, 4, 5]  # finite rows, one masked
    x, where = x[rows], where[rows]
    y = np.array([3, 4, 11, 0, 1])  # row 1: the target is the dominant max
    w = rng.uniform(0.5, 2.0, x.shape[1]) if weighted else None
    g = rng.uniform(0.5, 1.5, len(y))
    z = np.full(len(y), 0.03)
    z[1] = 0.0  # the dominant row's gradient at its max is -a_k s / (1 + s), tiny: nothing may hide it
    grad = np.empty(x.shape)
    r = module.cross_entropy_rows(x, y, where=where, weight=w, label_smoothing=smoothing, grad=grad, g=g, z_grad=z)
    for i in range(len(y)):
        ok = where[i]
        vals = [mpmath.mpf(float(v)) for v in x[i]]
        wts = [mpmath.mpf(1) if w is None else mpmath.mpf(float(c)) for c in (w if w is not None else x[i])]
        m = max(v for v, a in zip(vals, ok, strict=True) if a)
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v, a in zip(vals, ok, strict=True) if a))
        assert float(r.x_target[i]) == float(x[i, y[i]])
        if smoothing:
            count = int(ok.sum())
            want_d = mpmath.fsum(wc * (v - m) for v, wc, a in zip(vals, wts, ok, strict=True) if a)
            assert int(r.allowed[i]) == count
            assert abs(float(r.shift_sum[i]) - float(want_d)) <= 8 * EPS64 * abs(float(want_d))
            assert abs(float(r.weight_sum[i]) - float(mpmath.fsum(wc for wc, a in zip(wts, ok, strict=True) if a))) <= (
                4 * EPS64 * count * 2
            )
        # the gradient: g (A p_c - a_c) + z lse p_c, within a few eps of the size of its terms
        share = mpmath.mpf(smoothing) / int(ok.sum())
        a = [
            ((1 - mpmath.mpf(smoothing)) * wts[c] * (c == y[i]) + share * wts[c]) if ok[c] else mpmath.mpf(0)
            for c in range(len(vals))
        ]
        big_a = mpmath.fsum(a)
        for c in range(len(vals)):
            p = mpmath.exp(vals[c] - lse) if ok[c] else mpmath.mpf(0)
            want = g[i] * (big_a * p - a[c]) + z[i] * lse * p
            size = abs(float(g[i] * (big_a * p + a[c]))) + abs(float(z[i] * lse * p))
            rel = S_BOUND["narrow"] if np.dtype(dtype) != np.float64 else 16 * EPS64
            if c == int(np.asarray(r.k)[i]):
                size = abs(float(want))  # at the max, A p_k - a_k is formed without cancellation: relative accuracy
            assert abs(grad[i, c] - float(want)) <= rel * size + 1e-300, (i, c, grad[i, c], want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=str)
@pytest.mark.parametrize("smoothing", [0.0, 0.2])
@pytest.mark.parametrize("weighted", [False, True], ids=["unweighted", "weighted"])
@pytest.mark.parametrize("softcap", [None, 30.0], ids=["nocap", "softcap"])
def test_block_gradient_from_the_whole_rows_state_against_mpmath(accelerator, dtype, smoothing, weighted, softcap, rng):
    """A chunked loss's gradient: each block of classes written from the rows' whole state and coefficients.

    Blocks hold the max or not, the target or not; rows are ordinary,
    dominant, tied, far from 0, without mass, with ``+inf``, with NaN, and one
    not alive (NaN in it, yet 0).
    """
    module = _takes(accelerator, dtype)
    x, _ = _rows(dtype, rng)
    x = x[[0, 1, 2, 3, 4, 7, 8, 10, 10]]  # the last row is a NaN row that is not alive
    n, width = x.shape
    m, k, s = (np.asarray(a) for a in reference.state_rows(x))
    y = np.array([3, 4, 0, 11, 18, 2, 6, 1, 5])
    alive = np.ones(n, bool)
    alive[-1] = False
    w = rng.uniform(0.5, 2.0, width) if weighted else None
    g = rng.uniform(0.5, 1.5, n)
    z = rng.uniform(-0.1, 0.1, n)
    z[1] = 0.0  # the dominant row's gradient at its max is -a_k s / (1 + s), tiny: nothing may hide it
    hot, share = 1.0 - smoothing, smoothing * (1 / width)
    wts = np.ones(width) if w is None else w
    big_a = np.array([hot * wts[c] + share * wts.sum() for c in y])
    grad = np.empty(x.shape, dtype)
    for lo, hi in ((0, 4), (4, 12), (12, width)):  # the max and the target fall in different blocks
        out = np.empty((n, hi - lo), dtype)
        block = np.ascontiguousarray(x[:, lo:hi])
        module.block_gradient_rows(
            block, lo, m, k, s, y, alive, big_a, g, z, np.full(n, share), hot,
            weight=None if w is None else w[lo:hi], softcap=softcap, out=out,
        )  # fmt: skip
        grad[:, lo:hi] = out
        module.block_gradient_rows(
            block, lo, m, k, s, y, alive, big_a, g, z, np.full(n, share), hot,
            weight=None if w is None else w[lo:hi], softcap=softcap, out=block,
        )  # fmt: skip
        np.testing.assert_array_equal(block, out)  # in place over the logits: the same bits
    rel = S_BOUND["narrow"] if np.dtype(dtype) == np.float32 else 16 * EPS64
    for i in range(n):
        if not alive[i] or not math.isfinite(m[i]):
            want = 0.0 if not alive[i] or not math.isnan(m[i]) else math.nan
            np.testing.assert_array_equal(grad[i], np.full(width, want, dtype))
            continue
        vals = [mpmath.mpf(float(v)) for v in x[i]]
        lse = mpmath.log(mpmath.fsum(mpmath.exp(v) for v in vals))
        for c in range(width):
            p = mpmath.exp(vals[c] - lse)
            a = mpmath.mpf(float(wts[c])) * ((mpmath.mpf(hot) if c == y[i] else 0) + mpmath.mpf(share))
            cap = 1 if softcap is None else 1 - (vals[c] / softcap) ** 2
            want = (g[i] * (big_a[i] * p - a) + z[i] * p) * cap
            size = (abs(float(g[i] * (big_a[i] * p + a))) + abs(float(z[i] * p))) * abs(float(cap))
            if c == k[i]:
                size = abs(float(want))  # formed without cancellation at the max: relative accuracy
            tol = rel * size + (0.5 * float(np.finfo(dtype).eps) * abs(float(want)))  # and the output's rounding
            assert abs(float(grad[i, c]) - float(want)) <= tol + 1e-300, (i, c, grad[i, c], want)
