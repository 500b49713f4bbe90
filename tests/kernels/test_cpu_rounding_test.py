"""The float32 logsumexp's short sweep and its rounding test (Ziv's strategy).

float32 rows are swept with a degree-7 ``exp`` (``EXP_SHORT``, relative error
bounded by ``EXP_SHORT_ERROR``); a row whose result lies within that bound of a
float32 rounding boundary is swept again with the accurate polynomial. The
promise: every float32 result is the accurate sweep's, bit for bit, and so
correctly rounded wherever the accurate one is.
"""

from __future__ import annotations

import mpmath
import numpy as np
import pytest

pytest.importorskip("numba")
from stablesoftmax._kernels import _coefficients, cpu  # noqa: E402

if not cpu.available():
    pytest.skip("kernels disabled by STABLESOFTMAX_DISABLE_KERNELS", allow_module_level=True)


def accurate(x, where=None):
    """The accurate sweep's logsumexp (``state_rows`` never takes the short polynomial), rounded to float32."""
    m, _, s = cpu.state_rows(x, where=where)
    with np.errstate(invalid="ignore"):
        return (m + np.log1p(s)).astype(np.float32)


def short(x, where=None, threads=1):
    """``lse_rows``'s float32 results and the number of rows its rounding test swept again."""
    counter = np.zeros(1, np.int64)
    with np.errstate(invalid="ignore"):
        out = cpu.lse_rows(x, where=where, threads=threads, swept_again=counter).astype(np.float32)
    return out, int(counter[0])


def same_bits(a, b):
    np.testing.assert_array_equal(a.view(np.uint32), b.view(np.uint32))


def test_the_short_polynomial_meets_its_stated_bound():
    """``EXP_SHORT_ERROR`` is what the test assumes: checked against mpmath over the reduced range and beyond."""
    d = np.concatenate([np.linspace(-30.0, 0.0, 3001), -np.geomspace(1e-12, 700.0, 500)])
    for v in d:
        got = cpu._exp_short(float(v))
        want = mpmath.exp(mpmath.mpf(float(v)))
        assert abs(mpmath.mpf(got) / want - 1) <= _coefficients.EXP_SHORT_ERROR, v


def test_results_are_the_accurate_sweeps_bit_for_bit(rng):
    x = (rng.standard_normal((300, 2000)) * rng.choice([0.01, 1.0, 30.0, 1e4], (300, 1))).astype(np.float32)
    x[::7] -= x[::7].max(axis=1, keepdims=True)  # results near 0, where the float32 grid is fine
    x[3, :] = -np.inf
    x[5, 10] = np.inf
    x[6, 11] = np.nan
    where = rng.random(x.shape) < 0.8
    for w in (None, where):
        got, _ = short(x, w)
        same_bits(got, accurate(x, w))
        same_bits(short(x, w, threads=2)[0], got)


def test_rows_near_a_rounding_boundary_are_swept_again_and_round_correctly(rng):
    """Rows whose accurate result lies within the short sweep's error of a float32 midpoint: each must be swept
    again (the window holds the midpoint), and come out correctly rounded (mpmath)."""
    x = (rng.standard_normal((2_000_000, 3)) * 2).astype(np.float32)
    m, _, s = cpu.state_rows(x)
    lse = m + np.log1p(s)
    f = lse.astype(np.float32).astype(np.float64)
    up, down = np.nextafter(f.astype(np.float32), np.float32(np.inf)), np.nextafter(f.astype(np.float32), -np.inf)
    mids = np.stack([(f + up.astype(np.float64)) / 2, (f + down.astype(np.float64)) / 2])
    near = np.abs(lse - mids).min(axis=0) < _coefficients.EXP_SHORT_ERROR / 4
    assert near.sum() >= 20, "the search found too few ambiguous rows"
    hard = np.ascontiguousarray(x[near])
    got, again = short(hard)
    assert again == hard.shape[0]  # every one of them swept again
    same_bits(got, accurate(hard))
    mpmath.mp.prec = 120
    for row, r in zip(hard[:40], got[:40], strict=True):
        exact = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row))
        below, above = np.nextafter(r, np.float32(-np.inf)), np.nextafter(r, np.float32(np.inf))
        assert abs(mpmath.mpf(float(r)) - exact) <= min(
            abs(mpmath.mpf(float(below)) - exact), abs(mpmath.mpf(float(above)) - exact)
        )


def test_most_rows_are_not_swept_again(rng):
    """The point of the short sweep: at a language model's shape the test almost never fires."""
    x = (rng.standard_normal((512, 4096)) * 3).astype(np.float32)
    _, again = short(x)
    assert again <= 2
