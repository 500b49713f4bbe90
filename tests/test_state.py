"""The per-slice state and the loss parts (:mod:`stablesoftmax._state`): merged in any order, finished once.

Every producer (the kernels, the reference, vocabulary chunks, ranks) hands
its parts to :func:`merge_parts` and :func:`finish`. These tests hold the two
to what they promise, against mpmath: a merge is associative and respects the
order of its operands (``k`` is the first max), and the one cross-entropy
finish and gradient are accurate for every option, confident rows included.
"""

from __future__ import annotations

import math

import array_api_compat.numpy as npx
import mpmath
import numpy as np
import pytest

from stablesoftmax import _state

EPS = np.finfo(np.float64).eps


@pytest.fixture(autouse=True)
def _mpmath_precision():
    """50 digits for the oracle, set per test: mpmath's precision is process-wide, and other files set their own."""
    with mpmath.workdps(50):
        yield


def _parts(x: np.ndarray, first: int = 0, **kw) -> _state.Parts:
    with np.errstate(all="ignore"):  # -inf entries: the shift rule expects inf - inf
        return _state.part(x, first, npx, needs_twosum=True, **kw)


def _chunks(x: np.ndarray, cuts: list[int], **kw) -> list[_state.Parts]:
    edges = [0, *cuts, x.shape[1]]
    out = []
    for lo, hi in zip(edges[:-1], edges[1:], strict=True):
        y = kw.get("y")
        extra = {} if y is None else {"y": y}
        w = kw.get("w")
        if w is not None:
            extra["w"] = w[lo:hi]
        if kw.get("smoothing"):
            extra["smoothing"] = True
        out.append(_parts(x[:, lo:hi], lo, **extra))
    return out


def _merge_all(parts: list[_state.Parts], order: str) -> _state.Parts:
    with np.errstate(all="ignore"):
        if order == "left":
            acc = parts[0]
            for p in parts[1:]:
                acc = _state.merge_parts(acc, p, npx)
            return acc
        if order == "right":
            acc = parts[-1]
            for p in reversed(parts[:-1]):
                acc = _state.merge_parts(p, acc, npx)
            return acc
        # a balanced tree, as ranks reduce
        while len(parts) > 1:
            pairs = [parts[i : i + 2] for i in range(0, len(parts), 2)]
            parts = [p[0] if len(p) == 1 else _state.merge_parts(p[0], p[1], npx) for p in pairs]
        return parts[0]


def _mp_lse(row: np.ndarray) -> mpmath.mpf:
    return mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in row if v != -math.inf))


def _rows(rng: np.random.Generator) -> np.ndarray:
    x = rng.normal(scale=8.0, size=(12, 40))
    x[1] = -745.0 + rng.normal(size=40)  # every term subnormal but the max's
    x[2, :] = 3.0  # all tied: k is the first
    x[3, 5] = 60.0  # one dominant entry: s far below an ulp of 1
    x[4, 35] = 60.0  # ... in the last chunk
    x[5, :20] = -np.inf
    x[6, [7, 23]] = 50.0  # a tie across chunks
    return x


class TestMerge:
    @pytest.mark.parametrize("order", ["left", "right", "tree"])
    @pytest.mark.parametrize("cuts", [[20], [3, 17, 30], list(range(1, 40))])
    def test_any_grouping_gives_the_whole_rows_state(self, rng, order, cuts):
        x = _rows(rng)
        whole = _parts(x)
        merged = _merge_all(_chunks(x, cuts), order)
        np.testing.assert_array_equal(merged.m, whole.m)  # the max and where it is are exact
        np.testing.assert_array_equal(merged.k, whole.k)
        for i, row in enumerate(x):
            exact = _mp_lse(row)
            got = float(_state.lse(merged.state, npx)[i])
            assert abs(got - float(exact)) <= 2 * EPS * max(abs(float(exact)), 1.0), (i, got, exact)

    def test_first_operand_keeps_a_tied_max(self):
        a = _parts(np.array([[1.0, 2.0]]), 0)
        b = _parts(np.array([[2.0, 0.0]]), 2)
        assert int(_state.merge_parts(a, b, npx).k[0]) == 1
        assert int(_state.merge_parts(b, a, npx).k[0]) == 2

    def test_special_rows_follow_the_contract(self):
        inf, nan = math.inf, math.nan
        x = np.array([[-inf, -inf, -inf, -inf], [1.0, inf, 0.0, inf], [0.0, nan, 1.0, 2.0]])
        merged = _merge_all(_chunks(x, [2]), "left")
        np.testing.assert_array_equal(merged.m[:2], [-inf, inf])
        np.testing.assert_array_equal(merged.s[:2], [0.0, 1.0])  # two +inf entries: s counts the other one
        assert math.isnan(merged.m[2]) and math.isnan(merged.s[2])

    def test_smoothing_sums_are_rebased_to_the_merged_max(self, rng):
        x = _rows(rng)[[0, 3, 6]]
        w = rng.uniform(0.5, 2.0, x.shape[1])
        whole = _parts(x, w=w, smoothing=True)
        merged = _merge_all(_chunks(x, [11, 29], w=w, smoothing=True), "tree")
        assert whole.u is not None and merged.u is not None
        for i, row in enumerate(x):
            top = max(row)
            terms = (mpmath.mpf(float(c)) * (mpmath.mpf(float(v)) - top) for c, v in zip(w, row, strict=True))
            exact = mpmath.fsum(terms)
            for u in (whole.u, merged.u):
                got = (u.d[i] + u.e[i]) / _state.SUM_SCALE
                assert abs(got - float(exact)) <= 8 * EPS * abs(float(exact))


def _mp_ce(row, y, w, smoothing, z_loss, q=None):
    """The cross-entropy of one row in mpmath: ``sum_c a_c (lse - x_c) + z lse**2``."""
    lse = _mp_lse(row)
    k = len(row)
    wts = [mpmath.mpf(1)] * k if w is None else [mpmath.mpf(float(v)) for v in w]
    if q is None:
        q = [1.0 if c == y else 0.0 for c in range(k)]
    keep, share = 1 - mpmath.mpf(smoothing), mpmath.mpf(smoothing) / k
    a = [keep * mpmath.mpf(float(qc)) * wc + share * wc for qc, wc in zip(q, wts, strict=True)]
    ce = mpmath.fsum(ac * (lse - mpmath.mpf(float(v))) for ac, v in zip(a, row, strict=True) if ac != 0)
    return ce + z_loss * lse**2, a, lse


class TestFinish:
    @pytest.mark.parametrize("smoothing", [0.0, 0.1, 1.0])
    @pytest.mark.parametrize("weighted", [False, True])
    @pytest.mark.parametrize("z_loss", [0.0, 1e-3])
    def test_class_targets_against_mpmath(self, rng, smoothing, weighted, z_loss):
        x = _rows(rng)[[0, 2, 3, 4, 6]]
        x[2, 5] = 60.0  # confident rows: the loss is w_y log1p(s), which lse - x_y rounds to 0
        y = np.array([4, 0, 5, 35, 23])
        w = rng.uniform(0.5, 2.0, x.shape[1]) if weighted else None
        parts = _merge_all(_chunks(x, [10, 30], y=y, w=w, smoothing=bool(smoothing)), "left")
        with np.errstate(all="ignore"):
            rows, ce, zt = _state.finish(
                parts,
                npx,
                target=y,
                counted=np.ones(len(y), bool),
                weight=w,
                probs=False,
                smoothing=smoothing,
                z_loss=z_loss,
                needs_twosum=True,
            )
        total = ce + (0 if zt is None else zt)
        for i, row in enumerate(x):
            want, _, _ = _mp_ce(row, y[i], w, smoothing, z_loss)
            assert abs(total[i] - float(want)) <= 4 * EPS * abs(float(want)), (i, total[i], want)
        assert total[2] > 0  # the confident row keeps its tiny loss

    def test_probability_targets_against_mpmath(self, rng):
        x = _rows(rng)[[0, 3, 6]]
        q = rng.uniform(0, 1, x.shape)
        q[1] = 0.0
        q[1, 5] = 1.0
        parts = _parts(x, q=q)
        with np.errstate(all="ignore"):
            _, ce, _ = _state.finish(
                parts,
                npx,
                target=q,
                counted=np.ones(3, bool),
                weight=None,
                probs=True,
                smoothing=0.0,
                z_loss=0.0,
                needs_twosum=True,
            )
        for i, row in enumerate(x):
            want, _, _ = _mp_ce(row, None, None, 0.0, 0.0, q=q[i])
            assert abs(ce[i] - float(want)) <= 4 * EPS * abs(float(want))

    def test_reductions_share_one_denominator(self):
        ce = np.array([1.0, 2.0, 0.0])
        wy = np.array([0.5, 1.5, 0.0])
        alive = np.array([True, True, False])
        assert _state.reduce(ce, None, wy, alive, "mean", npx) == pytest.approx(3.0 / 2.0)
        assert _state.reduce(ce, None, np.zeros(3), ~alive & False, "mean", npx) == 0.0  # a mean of nothing
        g = np.array(2.0)
        scale, _ = _state.row_scales("mean", alive, wy, g, npx, dtype=np.float64)
        np.testing.assert_array_equal(scale, [1.0, 1.0, 1.0])  # g / sum(wy), per row


class TestGradient:
    @pytest.mark.parametrize("smoothing", [0.0, 0.2])
    @pytest.mark.parametrize("weighted", [False, True])
    def test_block_gradient_against_mpmath(self, rng, smoothing, weighted):
        x = _rows(rng)[[0, 3, 4, 6]]
        y = np.array([4, 5, 0, 23])  # row 1: the target is the dominant max, where A p_k - a_k would cancel
        w = rng.uniform(0.5, 2.0, x.shape[1]) if weighted else None
        parts = _merge_all(_chunks(x, [10, 30], y=y, w=w, smoothing=bool(smoothing)), "left")
        alive = np.ones(len(y), bool)
        with np.errstate(all="ignore"):
            rows, _, _ = _state.finish(
                parts,
                npx,
                target=y,
                counted=alive,
                weight=w,
                probs=False,
                smoothing=smoothing,
                z_loss=0.0,
                needs_twosum=True,
            )
            scales = _state.row_scales("sum", rows.alive, rows.row_weight, np.array(1.0), npx, dtype=np.float64)
            blocks = []
            for lo, hi in ((0, 10), (10, 30), (30, 40)):
                blocks.append(
                    _state.block_gradient(
                        x[:, lo:hi],
                        lo,
                        parts,
                        rows,
                        scales,
                        npx,
                        target=y,
                        probs=False,
                        weight=None if w is None else w[lo:hi],
                        allowed=None,
                        smoothing=smoothing,
                        z_loss=0.0,
                        softcap=None,
                        needs_twosum=True,
                    )
                )
        grad = np.concatenate(blocks, axis=1)
        for i, row in enumerate(x):
            _, a, lse = _mp_ce(row, y[i], w, smoothing, 0.0)
            big_a = mpmath.fsum(a)
            for c, v in enumerate(row):
                want = big_a * mpmath.exp(mpmath.mpf(float(v)) - lse) - a[c]
                tol = 4 * EPS * (abs(float(big_a * mpmath.exp(mpmath.mpf(float(v)) - lse))) + abs(float(a[c])))
                if c == int(parts.k[i]):  # at the max the gradient is formed without cancellation
                    tol = 4 * EPS * abs(float(want))
                assert abs(grad[i, c] - float(want)) <= tol, (i, c, grad[i, c], want)
