"""The numba kernels against the NumPy path, mpmath, and the edge-case contract."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from helpers import ulp_error, ulp_goal

import stablesoftmax as ss
from stablesoftmax import CONTRACT, DtypeError, ShapeError

pytest.importorskip("numba")
from stablesoftmax import _kernels  # noqa: E402

if not _kernels.available():
    pytest.skip("kernels disabled by STABLESOFTMAX_DISABLE_KERNELS", allow_module_level=True)

KERNEL_DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
SCALES = [1.0, 10.0, 100.0, 1e4]
FUNCS = ["logsumexp", "softmax", "log_softmax"]


def kernel(fn: str, x: np.ndarray, out_dtype=None) -> np.ndarray:
    """Run kernel ``fn`` on 2-D ``x``; the result rounded once to ``x``'s dtype."""
    if fn == "logsumexp":
        return _kernels.lse_rows(x).astype(x.dtype)
    out = np.empty(x.shape, out_dtype or x.dtype)
    getattr(_kernels, f"{fn}_rows")(x, out)
    return out.astype(x.dtype)


def reference(fn: str, row: np.ndarray) -> list:
    """mpmath values of ``fn`` for one row (120 bits), in the shifted form.

    ``log_softmax = (x - m) - log1p(S)``: the naive ``x - log(sum exp x)``
    would leave a 1e-37 residue where the exact value is 0 (one term).
    """
    with mpmath.workprec(120):
        xs = [mpmath.mpf(float(v)) for v in row]
        k = int(np.argmax(row))
        m = xs[k]
        rest = mpmath.fsum(mpmath.exp(v - m) for i, v in enumerate(xs) if i != k)
        log_rest = mpmath.log1p(rest)
        if fn == "logsumexp":
            return [m + log_rest]
        if fn == "log_softmax":
            return [(v - m) - log_rest for v in xs]
        return [mpmath.exp(v - m) / (1 + rest) for v in xs]


def battery(rng, dtype, widths, rows=2):
    """Seeded rows: scales 1, 10, 100, 1e4, normal and uniform draws, a few ties."""
    for scale in SCALES:
        for k in widths:
            x = rng.standard_normal((rows, k)) * scale
            x[-1] = rng.uniform(-scale, scale, k)
            if k > 3:
                x[0, 1] = x[0].max()  # a tie at the max: only one copy is the max term
            yield scale, x.astype(dtype)


def max_ulp(fn: str, x: np.ndarray, got: np.ndarray, dtype) -> float:
    worst = 0.0
    for row, g in zip(x, got.reshape(len(x), -1)):
        ref = reference(fn, row)
        scale = max(abs(ref[0]), float(np.max(np.abs(row)))) if fn == "logsumexp" else None
        worst = max(worst, max(ulp_error(gv, rv, dtype, scale) for gv, rv in zip(g, ref)))
    return worst


class TestAvailable:
    def test_env_var_turns_kernels_off(self, monkeypatch):
        monkeypatch.setenv("STABLESOFTMAX_DISABLE_KERNELS", "1")
        assert not _kernels.available()
        monkeypatch.setenv("STABLESOFTMAX_DISABLE_KERNELS", "0")
        assert _kernels.available()


@pytest.mark.parametrize("fn", FUNCS)
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
class TestAccuracy:
    def test_against_mpmath(self, fn, dtype, rng):
        """Float64: the issue's ulp goals; float32: at most 1 ulp of the exact value."""
        for _, x in battery(rng, dtype, widths=[1, 2, 3, 7, 64, 1000]):
            got = kernel(fn, x)
            assert max_ulp(fn, x, got, dtype) <= ulp_goal(fn, dtype)

    def test_wide_rows_against_mpmath(self, fn, dtype, rng):
        """10000 terms: many vector blocks and the compensated sum of block sums."""
        x = (rng.standard_normal((1, 10000)) * 3).astype(dtype)
        assert max_ulp(fn, x, kernel(fn, x), dtype) <= ulp_goal(fn, dtype)

    def test_matches_numpy_path(self, fn, dtype, rng):
        """Within 1 ulp of ``stablesoftmax.<fn>`` (float32) or the float64 goal, widths 1..10000."""
        for _, x in battery(rng, dtype, widths=[1, 2, 5, 31, 513, 4099, 10000], rows=3):
            got = kernel(fn, x).astype(np.float64)
            want = getattr(ss, fn)(x, axis=-1).astype(np.float64)
            if fn == "logsumexp":  # the NumPy path's own scale: max(|result|, max|x|)
                scale = np.maximum(np.abs(want), np.abs(x).max(-1))
            else:
                scale = np.abs(want)
            ulps = np.abs(got - want) / np.spacing(scale.astype(dtype)).astype(np.float64)
            bound = 1.0 if dtype == np.float32 else 2 * ulp_goal(fn, dtype)  # two paths, each within the goal
            assert np.nanmax(np.where(got == want, 0.0, ulps)) <= bound

    def test_subnormal_and_extreme_shifts(self, fn, dtype):
        """Terms below 2**-1022 (float64 softmax keeps them, correctly rounded) and x - m overflowing."""
        big = float(np.finfo(dtype).max)
        x = np.array([[0.0, -720.0, -740.0, -744.0, -800.0], [big, 0.0, big / 2, -1.0, -3.0]], dtype=dtype)
        assert max_ulp(fn, x, kernel(fn, x), dtype) <= ulp_goal(fn, dtype)
        over = np.array([[big, -big]], dtype=dtype)  # x - m overflows to -inf, as in the NumPy path
        with np.errstate(over="ignore"):  # the NumPy path warns here (x - m, and the cast of -2*big)
            want = getattr(ss, fn)(over, axis=-1)
        _expect_equal(kernel(fn, over), want)


def test_float64_far_from_the_max_log_softmax_is_x_minus_m_rounded_once(rng):
    """Where the other terms are below an ulp, log_softmax is ``x - m`` correctly rounded (0.5 ulp)."""
    m = math.sqrt(0.5)  # bits below the ulp of x: x - m rounds
    x = np.concatenate([[[m]] * 50, -rng.uniform(100.0, 700.0, (50, 8))], axis=1)
    got = kernel("log_softmax", x)
    for row, g in zip(x, got):
        with mpmath.workprec(200):
            rest = mpmath.fsum(mpmath.exp(mpmath.mpf(float(v)) - m) for v in row[1:])
            ref = [(mpmath.mpf(float(v)) - m) - mpmath.log1p(rest) for v in row[1:]]
        assert max(ulp_error(gv, rv, np.float64) for gv, rv in zip(g[1:], ref)) <= 0.5 + 1e-6


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
def test_float64_out_rounds_to_the_float32_out(fn, rng):
    """float32 input may write float64 output (for 16-bit callers); rounding it gives the float32 output."""
    x = (rng.standard_normal((3, 300)) * 10).astype(np.float32)
    wide = kernel(fn, x, out_dtype=np.float64)
    np.testing.assert_array_equal(wide, kernel(fn, x))


def _expect_equal(got, want):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape
    assert np.array_equal(got, want, equal_nan=True), (got, want)


CONTRACT_CASES = [r for r in CONTRACT if set(r.example) == {"x"}]


@pytest.mark.parametrize("rule", CONTRACT_CASES, ids=[r.case for r in CONTRACT_CASES])
@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
class TestContract:
    def test_rule_alone_and_between_finite_rows(self, rule, dtype):
        """The contract's example gives its exact value, alone and between ordinary rows."""
        row = np.asarray(rule.example["x"], dtype=dtype)
        filler = np.linspace(-2.0, 3.0, row.size).astype(dtype)
        for x, at in ((row[None], 0), (np.stack([filler, row, filler, row]), 1)):
            for fn in FUNCS:
                if fn not in rule.expect:
                    continue
                got = kernel(fn, np.ascontiguousarray(x))
                want = np.asarray(rule.expect[fn], dtype=np.float64).astype(dtype)  # e.g. -log 2 rounded
                _expect_equal(got[at], want)
                _expect_equal(got[3 if at else 0], want)
                if x.shape[0] > 1 and x.shape[1] > 0:  # the ordinary rows are untouched
                    _expect_equal(got[0], kernel(fn, filler[None])[0])


@pytest.mark.parametrize("dtype", KERNEL_DTYPES, ids=str)
class TestSpecialRows:
    inf, nan = math.inf, math.nan
    ROWS = [
        [inf, nan, 0.0],
        [nan, -inf, -inf],
        [nan, nan],
        [-inf, nan],
        [inf, inf, inf],
        [inf, -inf, inf, 1.0, inf],
        [0.0, 0.0, 0.0, 0.0],
        [5.0, 1.0, nan],
        [-inf],
        [inf],
        [nan],
        [3.0],
    ]

    def test_each_row_matches_numpy_path_exactly(self, dtype):
        for row in self.ROWS:
            x = np.asarray([row], dtype=dtype)
            for fn in FUNCS:
                _expect_equal(kernel(fn, x), getattr(ss, fn)(x, axis=-1))

    def test_random_mix_of_special_and_finite_rows(self, dtype, rng):
        """Special rows next to finite ones: the fused next-row max must not leak between rows."""
        x = rng.standard_normal((40, 33)).astype(dtype)
        for i in rng.choice(40, 15, replace=False):
            x[i, rng.integers(0, 33, 2)] = rng.choice([math.inf, -math.inf, math.nan], 2)
        x[7] = -math.inf
        for fn in FUNCS:
            got = kernel(fn, x).astype(np.float64)
            want = getattr(ss, fn)(x, axis=-1).astype(np.float64)
            special = ~np.isfinite(x).all(-1)
            _expect_equal(got[special], want[special])
            assert np.allclose(got[~special], want[~special], rtol=4 * np.finfo(dtype).eps, atol=0)

    def test_empty_rows(self, dtype):
        _expect_equal(_kernels.lse_rows(np.empty((3, 0), dtype)), [-math.inf] * 3)
        _expect_equal(_kernels.lse_rows(np.empty((0, 5), dtype)), np.empty(0))

    def test_parts_are_max_and_rest(self, dtype):
        x = np.asarray([[1.0, 0.0, 1.0], [-math.inf, 0.0, -math.inf], [1.0, math.nan, 0.0], [-math.inf, math.nan, math.inf]], dtype=dtype)
        m, s = _kernels.lse_parts_rows(x)
        _expect_equal(m, [1.0, 0.0, math.nan, math.nan])
        assert s[0] == pytest.approx(1.0 + math.exp(-1.0), rel=2e-14)  # the tie counts as 1
        _expect_equal(s[1:], [0.0, math.nan, math.nan])


class TestArguments:
    def test_rejects_other_dtypes(self):
        with pytest.raises(DtypeError, match="float32 or float64"):
            _kernels.lse_rows(np.zeros((2, 2), np.float16))

    def test_rejects_non_contiguous_rows(self):
        with pytest.raises(ShapeError, match="C-contiguous 2-D"):
            _kernels.lse_rows(np.zeros((4, 4))[:, ::2])

    def test_rejects_out_of_another_shape_or_dtype(self):
        x = np.zeros((2, 3), np.float32)
        with pytest.raises(ShapeError, match="shape"):
            _kernels.softmax_rows(x, np.empty((3, 2), np.float32))
        with pytest.raises(DtypeError, match="float64 or x's dtype"):
            _kernels.log_softmax_rows(x, np.empty((2, 3), np.float16))


@pytest.mark.parametrize("fn", FUNCS)
def test_threads_give_the_same_numbers(fn, rng):
    """Bands of rows on two threads: each row is computed exactly as on one thread."""
    x = rng.standard_normal((37, 700)) * 10
    x[5, 3], x[6] = math.nan, -math.inf
    if fn == "logsumexp":
        _expect_equal(_kernels.lse_rows(x, threads=2), _kernels.lse_rows(x))
        return
    one, two = np.empty_like(x), np.empty_like(x)
    getattr(_kernels, f"{fn}_rows")(x, one)
    getattr(_kernels, f"{fn}_rows")(x, two, threads=2)
    _expect_equal(two, one)
