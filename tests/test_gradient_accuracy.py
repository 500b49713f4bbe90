"""Every VJP of the family against mpmath, on rows one entry dominates.

The goal, float64:

* normwise: ``||v - v*|| <= 1e-14 ||v*||`` (2-norm of the row), ``v*`` the exact
  vector-Jacobian product of the float64 inputs;
* per entry, where every entry of ``v*`` is a product of probabilities and
  cotangents without a difference of nearly equal numbers (a one-hot cotangent):
  ``|v_j - v*_j| <= 1e-14 |v*_j|``;
* a softmax VJP row sums to 0 (``sum_j p_j (g_j - <g, p>) = 0``): within
  ``1e-14 sum_j |v_j|``, which the per-entry goal implies.

The rows are the ones where the textbook formulas cancel: with ``p_k`` rounded to
1, ``1 - p_k`` and ``g_k - <g, p>`` are 0 or a rounding error, while the exact
values are ``s / (1 + s)`` and ``sum_{i != k} (g_k - g_i) p_i``, of the size of
the small terms. Expected values come from mpmath at 2400 bits: ``1 - p_k`` of
``[0, -700]`` is ``e**-700``, which needs more than 1000 bits to survive.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest

import stablesoftmax as ss
from stablesoftmax import autograd
from tests.helpers import eps

RTOL = 1e-14  # the goal above, in one place
PREC = 2400  # bits: differences down to 2**-2300 of 1 (e**-1500) stay exact
EPS = eps(np.float64)

ROWS = {
    "[0, -40]": [0.0, -40.0],
    "[0, -700]": [0.0, -700.0],
    "[5, -30, -60]": [5.0, -30.0, -60.0],
    "[-40, 0, -30]": [-40.0, 0.0, -30.0],  # the max in the middle
}


def one_hot_at_max(row):
    g = [0.0] * len(row)
    g[int(np.argmax(row))] = 1.0
    return g


def spread(row):
    """A cotangent on every entry, largest on the max: ``g_k - <g, p>`` is of the size of the small ``p_i``."""
    return [3.0 if v == max(row) else float(i + 1) for i, v in enumerate(row)]


def exact_probs(row):
    with mpmath.workprec(PREC):
        xs = [mpmath.mpf(v) for v in row]
        total = mpmath.fsum(mpmath.exp(v) for v in xs)
        return [mpmath.exp(v) / total for v in xs]


def exact_vjp(fn, row, g):
    """``v*`` of ``fn`` at ``row`` for cotangent ``g`` (a list; a scalar for logsumexp), at ``PREC`` bits."""
    with mpmath.workprec(PREC):
        p = exact_probs(row)
        if fn == "logsumexp":
            return [g * pi for pi in p]
        gs = [mpmath.mpf(v) for v in g]
        if fn == "softmax":
            dot = mpmath.fsum(gi * pi for gi, pi in zip(gs, p, strict=True))
            return [pi * (gi - dot) for gi, pi in zip(gs, p, strict=True)]
        if fn == "log_softmax":
            total = mpmath.fsum(gs)
            return [gi - pi * total for gi, pi in zip(gs, p, strict=True)]
        raise ValueError(fn)


def exact_ce_grad(row, target):
    """``p - onehot(target)``: the gradient of the summed cross-entropy of one row."""
    with mpmath.workprec(PREC):
        return [pi - (1 if i == target else 0) for i, pi in enumerate(exact_probs(row))]


def assert_normwise(got, want, rtol=RTOL):
    with mpmath.workprec(PREC):
        err = mpmath.sqrt(mpmath.fsum((mpmath.mpf(float(a)) - b) ** 2 for a, b in zip(got, want, strict=True)))
        size = mpmath.sqrt(mpmath.fsum(b**2 for b in want))
        assert err <= rtol * size, (list(map(float, got)), [float(w) for w in want], float(err / size))


def assert_per_entry(got, want, rtol=RTOL):
    with mpmath.workprec(PREC):
        for a, b in zip(got, want, strict=True):
            assert abs(mpmath.mpf(float(a)) - b) <= rtol * abs(b), (float(a), float(b))


def assert_sums_to_zero(v):
    v = np.asarray(v, np.float64)
    assert abs(math.fsum(v)) <= RTOL * np.abs(v).sum(), v


# ---------------------------------------------------------------------------
# The library's VJPs, on the compiled and the NumPy path
# ---------------------------------------------------------------------------

# g_k - <g, p> (softmax_grad) and g_k - p_k sum(g) (log_softmax_grad) cancel where p_k rounds to 1, if
# formed by subtraction: the one-hot cotangent at the max is the case that shows it.


def _library_cases(fn):
    """(row id, cotangent kind) for every row and both cotangents."""
    return [pytest.param(rid, kind, id=f"{rid}-{kind}") for rid in ROWS for kind in ("one-hot at max", "spread")]


def _cotangent(kind, row):
    return one_hot_at_max(row) if kind == "one-hot at max" else spread(row)


@pytest.mark.usefixtures("each_path")
class TestSoftmaxGrad:
    @pytest.mark.parametrize(("rid", "kind"), _library_cases("softmax"))
    def test_against_mpmath(self, rid, kind):
        row = ROWS[rid]
        g = _cotangent(kind, row)
        got = ss.softmax_grad(np.array(row), np.array(g))
        want = exact_vjp("softmax", row, g)
        assert_normwise(got, want)
        if kind == "one-hot at max":
            assert_per_entry(got, want)

    @pytest.mark.parametrize(("rid", "kind"), _library_cases("softmax"))
    def test_row_sums_to_zero(self, rid, kind):
        row = ROWS[rid]
        assert_sums_to_zero(ss.softmax_grad(np.array(row), np.array(_cotangent(kind, row))))


@pytest.mark.usefixtures("each_path")
class TestLogSoftmaxGrad:
    @pytest.mark.parametrize(("rid", "kind"), _library_cases("log_softmax"))
    def test_against_mpmath(self, rid, kind):
        row = ROWS[rid]
        g = _cotangent(kind, row)
        got = ss.log_softmax_grad(np.array(row), np.array(g))
        want = exact_vjp("log_softmax", row, g)
        assert_normwise(got, want)
        if kind == "one-hot at max":
            assert_per_entry(got, want)


@pytest.mark.usefixtures("each_path")
class TestLogsumexpGrad:
    @pytest.mark.parametrize("rid", list(ROWS))
    def test_against_mpmath(self, rid):
        row = ROWS[rid]
        got = ss.logsumexp_grad(np.array(row), np.float64(2.0))
        want = exact_vjp("logsumexp", row, 2)
        assert_normwise(got, want)
        assert_per_entry(got, want)


@pytest.mark.usefixtures("each_path")
class TestCrossEntropyGrad:
    @pytest.mark.parametrize("rid", list(ROWS))
    @pytest.mark.parametrize("at", ["max", "other"])
    def test_against_mpmath(self, rid, at):
        """At the max, ``p_k - 1 = -s / (1 + s)``; elsewhere ``p_t - 1`` is near -1 and ``p_k`` near 1."""
        row = ROWS[rid]
        k = int(np.argmax(row))
        target = k if at == "max" else (k + 1) % len(row)
        got = ss.cross_entropy_grad(np.array([row]), np.array([target]), reduction="sum")[0]
        want = exact_ce_grad(row, target)
        assert_normwise(got, want)
        assert_per_entry(got, want)


# ---------------------------------------------------------------------------
# autograd.Value: the same VJPs through the scalar engine
# ---------------------------------------------------------------------------


def value_vjp(fn, row, g):
    """``sum_i g_i out_i`` backpropagated through ``autograd.<fn>``: the VJP, entry by entry."""
    xs = [autograd.Value(v) for v in row]
    out = getattr(autograd, fn)(xs)
    if fn == "logsumexp":
        (out * g).backward()
    else:
        terms = [o * gi for o, gi in zip(out, g, strict=True) if gi != 0]
        total = terms[0]
        for t in terms[1:]:
            total = total + t
        total.backward()
    return [x.grad for x in xs]


class TestValue:
    @pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
    @pytest.mark.parametrize("kind", ["one-hot at max", "spread"])
    @pytest.mark.parametrize("rid", list(ROWS))
    def test_against_mpmath(self, fn, kind, rid):
        row = ROWS[rid]
        g = _cotangent(kind, row)
        got = value_vjp(fn, row, g)
        want = exact_vjp(fn, row, g)
        assert_normwise(got, want)
        if kind == "one-hot at max":
            assert_per_entry(got, want)
        if fn == "softmax":
            assert_sums_to_zero(got)

    @pytest.mark.parametrize("rid", list(ROWS))
    def test_logsumexp_against_mpmath(self, rid):
        row = ROWS[rid]
        got = value_vjp("logsumexp", row, 2.0)
        want = exact_vjp("logsumexp", row, 2)
        assert_normwise(got, want)
        assert_per_entry(got, want)

    @pytest.mark.parametrize("at", ["max", "other"])
    @pytest.mark.parametrize("rid", list(ROWS))
    def test_cross_entropy_against_mpmath(self, at, rid):
        row = ROWS[rid]
        k = int(np.argmax(row))
        target = k if at == "max" else (k + 1) % len(row)
        xs = [autograd.Value(v) for v in row]
        autograd.cross_entropy(xs, target).backward()
        got = [x.grad for x in xs]
        want = exact_ce_grad(row, target)
        assert_normwise(got, want)
        assert_per_entry(got, want)
