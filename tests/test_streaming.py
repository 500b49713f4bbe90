"""LogSumExp, the streaming state, against the one-shot logsumexp and mpmath."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
from helpers import ulp_error, ulp_goal

import stablesoftmax as ss
from stablesoftmax import ShapeError
from stablesoftmax._streaming import LogSumExp, logsumexp_chunks

DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
EXTENDED_LONGDOUBLE = np.finfo(np.longdouble).nmant >= 63


@pytest.fixture(params=["kernels", "numpy"])
def backend(request, monkeypatch):
    """Run each test with the compiled kernels and with the NumPy fallback."""
    if request.param == "kernels":
        pytest.importorskip("numba")
        monkeypatch.delenv("STABLESOFTMAX_DISABLE_KERNELS", raising=False)
    else:
        monkeypatch.setenv("STABLESOFTMAX_DISABLE_KERNELS", "1")
    return request.param


def within_goal(got, want, x, axis, dtype) -> bool:
    """``got`` and the one-shot ``want`` agree to the logsumexp goal (each is within it of the truth)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    scale = np.maximum(np.abs(want), np.max(np.abs(np.where(np.isfinite(x), x, 0)), axis=axis))
    with np.errstate(invalid="ignore"):  # inf - inf where both are inf: `same` covers those
        ulps = np.abs(got - want) / np.spacing(scale.astype(dtype)).astype(np.float64)
    bound = 1.0 if dtype != np.float64 else 2 * ulp_goal("logsumexp", dtype)
    return bool(np.all(same | (ulps <= bound)))


def random_splits(rng, n, parts):
    cuts = np.sort(rng.integers(0, n + 1, parts - 1))
    return np.split(np.arange(n), cuts)  # some pieces may be empty


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
class TestUpdate:
    def test_random_chunkings_match_one_shot(self, dtype, rng, backend):
        for scale in (1.0, 10.0, 100.0, 1e4):
            x = (rng.standard_normal((6, 500)) * scale).astype(dtype)
            state = LogSumExp()
            for idx in random_splits(rng, 500, 9):
                state.update(x[:, idx])
            assert state.dtype == dtype
            assert within_goal(state.result(), ss.logsumexp(x, axis=-1), x, -1, dtype)

    def test_chunks_along_axis_0(self, dtype, rng, backend):
        x = (rng.standard_normal((300, 4)) * 10).astype(dtype)
        state = LogSumExp()
        for idx in random_splits(rng, 300, 5):
            state.update(x[idx], axis=0)
        assert within_goal(state.result(), ss.logsumexp(x, axis=0), x, 0, dtype)

    def test_empty_chunks_change_nothing(self, dtype, rng, backend):
        x = rng.standard_normal((3, 50)).astype(dtype)
        state = LogSumExp().update(np.empty((3, 0), dtype)).update(x).update(np.empty((3, 0), dtype))
        np.testing.assert_array_equal(state.result(), LogSumExp().update(x).result())
        only_empty = LogSumExp().update(np.empty((3, 0), dtype)).result()
        np.testing.assert_array_equal(only_empty, np.full(3, -np.inf, dtype))

    def test_special_chunks_follow_the_contract(self, dtype, backend):
        """Row 0 sees a NaN, row 1 a +inf, row 2 only -inf, row 3 +inf then NaN, row 4 -inf and finite."""
        inf, nan = math.inf, math.nan
        chunks = [
            np.array([[0.0, nan], [1.0, 2.0], [-inf, -inf], [inf, 0.0], [-inf, 3.0]], dtype),
            np.array([[1.0], [inf], [-inf], [nan], [-inf]], dtype),
            np.array([[2.0, 5.0], [-inf, 0.0], [-inf, -inf], [0.0, 1.0], [1.0, -inf]], dtype),
        ]
        got = logsumexp_chunks(iter(chunks))
        want = ss.logsumexp(np.concatenate(chunks, axis=1), axis=-1)
        np.testing.assert_array_equal(got[:4], [nan, inf, -inf, nan])
        assert within_goal(got, want, np.concatenate(chunks, axis=1), -1, dtype)


class TestMerge:
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_any_merge_order_matches_one_shot(self, dtype, rng, backend):
        x = (rng.standard_normal((4, 900)) * 30).astype(dtype)
        pieces = [LogSumExp().update(x[:, idx]) for idx in random_splits(rng, 900, 7)]
        for _ in range(3):
            order = rng.permutation(len(pieces))
            total = LogSumExp()
            for i in order:
                total.merge(_copy(pieces[i]))
            assert within_goal(total.result(), ss.logsumexp(x, axis=-1), x, -1, dtype)

    def test_merge_with_an_empty_state(self, rng):
        x = rng.standard_normal(10)
        a = LogSumExp().update(x)
        np.testing.assert_array_equal(LogSumExp().merge(a).result(), a.result())
        np.testing.assert_array_equal(_copy(a).merge(LogSumExp()).result(), a.result())

    def test_merge_of_special_states(self):
        nan_state = LogSumExp().update(np.array([np.nan]))
        inf_state = LogSumExp().update(np.array([np.inf]))
        none_state = LogSumExp().update(np.array([-np.inf]))
        assert np.isnan(_copy(inf_state).merge(nan_state).result())
        assert _copy(none_state).merge(inf_state).result() == np.inf
        assert _copy(none_state).merge(none_state).result() == -np.inf

    def test_shapes_must_agree(self):
        with pytest.raises(ShapeError, match=r"reduces to shape \(3,\).*holds shape \(2,\)"):
            LogSumExp().update(np.zeros((2, 5))).update(np.zeros((3, 5)))
        with pytest.raises(ShapeError, match="holds shape"):
            LogSumExp().update(np.zeros((2, 5))).merge(LogSumExp().update(np.zeros((4, 1))))

    def test_merge_takes_only_a_state(self):
        with pytest.raises(TypeError, match="LogSumExp"):
            LogSumExp().merge(np.zeros(3))


class TestAccuracy:
    @pytest.mark.skipif(not EXTENDED_LONGDOUBLE, reason="rescaling is exact to 2**-64 only with an x87 longdouble")
    @pytest.mark.parametrize(
        "x", [np.linspace(0.0, 0.01, 3000), np.linspace(-1.0, 0.0, 3000)], ids=["0..0.01", "-1..0"]
    )
    def test_rising_max_one_term_per_chunk(self, x, backend):
        """3000 changes of max: float64 rescaling drifts by ~60-80 ulp here; the state stays within the goal."""
        state = LogSumExp()
        for v in x:
            state.update(np.array([v]))
        with mpmath.workprec(200):
            ref = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in x))
        scale = max(abs(ref), float(np.abs(x).max()))
        assert ulp_error(state.result(), ref, np.float64, scale) <= ulp_goal("logsumexp", np.float64)

    def test_random_chunks_against_mpmath(self, rng, backend):
        x = rng.standard_normal(2000) * 20
        state = LogSumExp()
        for idx in random_splits(rng, 2000, 40):
            state.update(x[idx])
        with mpmath.workprec(200):
            ref = mpmath.log(mpmath.fsum(mpmath.exp(mpmath.mpf(float(v))) for v in x))
        scale = max(abs(ref), float(np.abs(x).max()))
        assert ulp_error(state.result(), ref, np.float64, scale) <= ulp_goal("logsumexp", np.float64)


class TestMemmap:
    @pytest.mark.parametrize("axis", [-1, 0, None])
    def test_memmap_read_in_blocks(self, axis, tmp_path, rng, monkeypatch, backend):
        x = (rng.standard_normal((64, 300)) * 5).astype(np.float32)
        np.save(tmp_path / "x.npy", x)
        mm = np.load(tmp_path / "x.npy", mmap_mode="r")
        monkeypatch.setattr(LogSumExp, "block_bytes", 4 * 300 * 3)  # three rows per block, or less
        got = logsumexp_chunks(mm, axis=axis)
        assert np.shape(got) == np.shape(ss.logsumexp(x, axis=axis))
        assert within_goal(got, ss.logsumexp(x, axis=axis), x, axis, np.float32)

    def test_row_blocks_give_the_one_block_answer(self, tmp_path, rng, monkeypatch):
        """Blocks of whole rows reduce each row once: the same numbers as one block."""
        x = rng.standard_normal((50, 200))
        mm = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float64, shape=x.shape)
        mm[:] = x
        whole = logsumexp_chunks(mm)
        monkeypatch.setattr(LogSumExp, "block_bytes", 8 * 200 * 7)
        np.testing.assert_array_equal(logsumexp_chunks(mm), whole)


class TestInputs:
    def test_result_before_any_chunk_is_the_empty_sum(self):
        assert LogSumExp().result() == -np.inf
        assert LogSumExp().shape is None

    def test_dtypes_promote_and_round_once(self):
        state = LogSumExp().update(np.float16([1.0, 2.0])).update(np.float32([3.0]))
        assert state.dtype == np.float32 and state.result().dtype == np.float32
        assert LogSumExp().update([1, 2, 3]).result().dtype == np.float64  # integers promote

    def test_torch_chunks(self):
        torch = pytest.importorskip("torch")
        t = torch.linspace(-3, 3, 40, dtype=torch.float64).reshape(2, 20)
        got = LogSumExp().update(t[:, :7]).update(t[:, 7:]).result()
        assert within_goal(got, ss.logsumexp(t.numpy(), axis=-1), t.numpy(), -1, np.float64)

    def test_scalar_chunks(self):
        got = logsumexp_chunks([np.float64(0.0), np.float64(0.0)], axis=None)
        assert got == pytest.approx(math.log(2.0), rel=2**-52)


def _copy(state: LogSumExp) -> LogSumExp:
    """A fresh state holding the same numbers (merge changes its left side)."""
    return LogSumExp().merge(state)
