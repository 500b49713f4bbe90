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


# How near a float32 midpoint an accurate result must lie for the test to be bound to fire. The short
# polynomial's error is at most 5.51e-11 and the window at least SHORT_ERROR (6.03e-11), so a
# midpoint within 5e-12 of the accurate result always lies in the window of the short one.
NEAR = _coefficients.EXP_SHORT_ERROR / 16


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
    near = np.abs(lse - mids).min(axis=0) < NEAR
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


# --------------------------------------------------------------------------
# cross_entropy: a float32 loss from the short sweep, tested once after its reduction
# --------------------------------------------------------------------------


def ce_calls(monkeypatch):
    """Wrap the kernels' ``cross_entropy_rows``: the list of its ``short`` flags, one per call."""
    calls: list[bool] = []
    inner = cpu.cross_entropy_rows

    def counted(*args, **kwargs):
        calls.append(bool(kwargs.get("short", False)))
        return inner(*args, **kwargs)

    monkeypatch.setattr(cpu, "cross_entropy_rows", counted)
    return calls


def accurate_ce(monkeypatch, *args, **kwargs):
    """The public loss with the short sweep turned off: what the accurate sweep alone gives."""
    import stablesoftmax as ss
    from stablesoftmax import _compute

    with monkeypatch.context() as m:
        m.setattr(_compute, "_short_sweep", lambda *a: False)
        return ss.cross_entropy(*args, **kwargs)


@pytest.mark.parametrize("reduction", ["mean", "sum"])
def test_ce_losses_are_the_accurate_sweeps_bit_for_bit(rng, monkeypatch, reduction):
    import stablesoftmax as ss

    calls = ce_calls(monkeypatch)
    x = (rng.standard_normal((64, 3000)) * rng.choice([0.01, 1.0, 30.0], (64, 1))).astype(np.float32)
    y = rng.integers(0, 3000, 64)
    y[::9] = -100
    y[1::9] = 7
    weight = rng.random(3000) + 0.5
    where = rng.random(x.shape) < 0.9
    where[np.arange(64), np.where(y < 0, 0, y)] = True
    sevens = np.where(y == -100, 0, y)  # rows of class 7 are ignored instead
    for options, t in (
        ({}, y),  # y holds -100: ignored by default
        ({"weight": weight}, y),
        ({"where": where}, y),
        ({"label_smoothing": 0.1}, y),
        ({"ignore_index": 7}, sevens),
    ):
        del calls[:]
        got = ss.cross_entropy(x, t, reduction=reduction, **options)
        assert calls[:1] == [True], "the short sweep was not taken"
        assert got.dtype == np.float32
        same_bits(np.asarray(got), np.asarray(accurate_ce(monkeypatch, x, t, reduction=reduction, **options)))


def test_ce_takes_the_accurate_sweep_where_the_short_one_cannot_decide(rng, monkeypatch):
    """The gradient, the z-loss, a loss per row and float64 never take the short polynomial."""
    import stablesoftmax as ss

    calls = ce_calls(monkeypatch)
    x = rng.standard_normal((8, 100)).astype(np.float32)
    y = rng.integers(0, 100, 8)
    ss.cross_entropy(x, y, reduction="none")
    ss.cross_entropy(x, y, z_loss=1e-4)
    ss.cross_entropy(x.astype(np.float64), y)
    ss.cross_entropy_with_grad(x, y)
    assert calls == [False] * 4


def test_ce_losses_near_a_rounding_boundary_take_the_accurate_sweep_and_round_correctly(rng, monkeypatch):
    """One-row losses whose accurate value lies within a sixteenth of the short sweep's error of a float32
    midpoint: the rounding test must send each to the accurate sweep, whose result is correctly rounded."""
    import stablesoftmax as ss

    x = (rng.standard_normal((2_000_000, 3)) * 2).astype(np.float32)
    y = rng.integers(0, 3, x.shape[0])
    p = cpu.cross_entropy_rows(x, y)
    loss = np.log1p(p.s) - (p.x_target - p.m)
    f = loss.astype(np.float32)
    up, down = np.nextafter(f, np.float32(np.inf)), np.nextafter(f, np.float32(-np.inf))
    f64 = f.astype(np.float64)
    mids = np.stack([(f64 + up.astype(np.float64)) / 2, (f64 + down.astype(np.float64)) / 2])
    near = np.flatnonzero(np.abs(loss - mids).min(axis=0) < NEAR)
    assert near.size >= 20, "the search found too few ambiguous rows"
    calls = ce_calls(monkeypatch)
    mpmath.mp.prec = 120
    for i in near[:40]:
        row, t = x[i : i + 1], y[i : i + 1]
        del calls[:]
        got = ss.cross_entropy(row, t)
        assert calls == [True, False], "the rounding test let an ambiguous loss through"
        exact = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row[0])) - mpmath.mpf(
            float(row[0, t[0]])
        )
        below, above = np.nextafter(got, np.float32(-np.inf)), np.nextafter(got, np.float32(np.inf))
        assert abs(mpmath.mpf(float(got)) - exact) <= min(
            abs(mpmath.mpf(float(below)) - exact), abs(mpmath.mpf(float(above)) - exact)
        )


def test_ce_short_sweep_refuses_a_gradient():
    from stablesoftmax import ArgumentError

    x = np.zeros((2, 3), np.float32)
    with pytest.raises(ArgumentError, match="short=True"):
        cpu.cross_entropy_rows(x, np.zeros(2, np.int64), grad=np.empty_like(x), g=np.ones(2), short=True)
