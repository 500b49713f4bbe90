"""Reliability: weighted sums that must not overflow, bad input that meets a clear error, no stray warning.

Expected values come from mpmath (at 200 bits), never from the library's output.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

import stablesoftmax as ss
from tests.helpers import ulp_error

torch = pytest.importorskip("torch")


# ---------------------------------------------------------------------------
# logsumexp with weights b: the shift is the largest x_i + log|b_i|, not the largest x_i
# ---------------------------------------------------------------------------


def exact_weighted_lse(x, b):
    """``(log|sum b_i exp(x_i)|, sign)`` at 200 bits; terms with ``b_i = 0`` are absent."""
    with mpmath.workprec(200):
        total = mpmath.fsum(
            mpmath.mpf(float(w)) * mpmath.exp(mpmath.mpf(float(v))) for v, w in zip(x, b, strict=True) if w != 0
        )
        if total == 0:
            return -math.inf, 0.0
        return mpmath.log(abs(total)), float(mpmath.sign(total))


def weighted_scale(x, b, want):
    """The ulp scale of a weighted logsumexp: ``max(|result|, max_i |x_i|, max_i |log|b_i||)`` over the terms.

    The weights enter the sum through ``log|b_i|`` as the logits do through
    ``x_i``: the unweighted goal's scale, ``max(|result|, max|x|)``, with both.
    """
    terms = [(v, w) for v, w in zip(x, b, strict=True) if w != 0]
    return max([abs(want)] + [abs(v) for v, _ in terms] + [abs(math.log(abs(w))) for _, w in terms])


WEIGHTED = [
    ([0.0, -1.0], [5e-324, 1.0]),  # the max's weight is the smallest subnormal: the answer is -1
    ([0.0, -1.0], [1e-300, 1e300]),
    ([0.0, -1.0], [-5e-324, 1.0]),  # a tiny negative weight on the max: sign +1
    ([0.0, -1.0], [1.0, -1e-300]),
    ([700.0, -700.0, 0.0], [1e-300, 1e300, 1.0]),
    ([0.0, -1400.0], [1e-300, 1e300]),  # the two terms are 1e-300 and 1e300 e^-1400 = 1e-308
    ([-800.0, 0.0], [1e300, 1e-300]),  # the largest term is x = -800's (1e300 e^-800 = 3.7e-48)
    ([1.0, 2.0, 3.0], [0.5, -2.0, 1.0]),
    ([0.0, -40.0, -40.0], [1.0, 1e-10, -1e-10]),
]


def as_array(kind, v):
    return torch.tensor(v, dtype=torch.float64) if kind == "torch" else np.asarray(v, np.float64)


@pytest.mark.parametrize("kind", ["numpy", "torch"])
@pytest.mark.parametrize(("x", "b"), WEIGHTED, ids=[str(b) for _, b in WEIGHTED])
class TestWeightedLogsumexp:
    def test_within_the_float64_goal_of_mpmath(self, kind, x, b):
        want, want_sign = exact_weighted_lse(x, b)
        got, sign = ss.logsumexp(as_array(kind, x), b=as_array(kind, b), return_sign=True)
        assert float(sign) == want_sign
        assert ulp_error(float(got), want, np.float64, weighted_scale(x, b, want)) <= 2.0, float(got)

    def test_without_sign_is_the_log_of_the_magnitude(self, kind, x, b):
        want, want_sign = exact_weighted_lse(x, b)
        got = float(ss.logsumexp(as_array(kind, x), b=as_array(kind, b)))
        if want_sign < 0:
            assert math.isnan(got)  # SciPy's convention: the log of a negative sum
        else:
            assert ulp_error(got, want, np.float64, weighted_scale(x, b, want)) <= 2.0, got


def test_weighted_rows_keep_their_own_pivot(rng):
    """Rows of a batch each take the pivot of their own largest term (axis=-1 over a (4, 2) batch)."""
    x = np.array([[0.0, -1.0], [0.0, -1.0], [3.0, 2.0], [0.0, -1400.0]])
    b = np.array([[5e-324, 1.0], [1.0, 1.0], [1.0, 1e300], [1e-300, 1e300]])
    got = ss.logsumexp(x, b=b, axis=-1)
    for row, w, g in zip(x, b, got, strict=True):
        want, _ = exact_weighted_lse(row, w)
        assert ulp_error(float(g), want, np.float64, weighted_scale(row, w, want)) <= 2.0
