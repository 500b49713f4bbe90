"""The plain-ndarray fast path of the public functions gives the same bytes as the general path.

``logsumexp``, ``softmax`` and ``log_softmax`` of a plain float32/float64
NumPy array over one int axis, and ``cross_entropy`` of ``[N, C]`` logits
with int targets and no options, skip the dispatch layers and call the
kernels once (``_compute.numpy_rows``, ``fast_cross_entropy``). An ndarray subclass takes the general path,
so comparing the two on the same values checks the fast path against the
path every other input takes, special rows of the contract included.
"""

from __future__ import annotations

import numpy as np
import pytest

import stablesoftmax as ss
from stablesoftmax import _compute, _kernels
from stablesoftmax._errors import ArgumentError, AxisError, TargetError

pytestmark = pytest.mark.skipif(_kernels.host_kernels() is None, reason="the fast path needs the kernels")

DTYPES = [np.float32, np.float64]


class General(np.ndarray):
    """An ndarray subclass: the public functions take the general path for it."""


def _general(x: np.ndarray) -> np.ndarray:
    return x.view(General)


def _same_bytes(got: object, want: object) -> None:
    """Equal values, dtypes, shapes and signs of zero (NaN equal to NaN)."""
    g, w = np.asarray(got), np.asarray(want)
    assert type(got) is not General
    assert g.dtype == w.dtype and g.shape == w.shape
    assert g.tobytes() == np.ascontiguousarray(w).view(np.ndarray).tobytes()


def _special_rows(dtype: type, rng: np.random.Generator) -> np.ndarray:
    """Ordinary rows and the contract's special ones: -inf, +inf, NaN, one huge entry, ties."""
    x = (rng.standard_normal((9, 37)) * 4).astype(dtype)
    x[1] = -np.inf
    x[2, 3] = np.inf
    x[3, [4, 9]] = np.inf
    x[4, 5] = np.nan
    x[5, 0] = 1e30
    x[6] = 2.5
    x[7, ::2] = -np.inf
    x[8] = np.finfo(dtype).max
    return x


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261202)


class TestFastLogsumexp:
    @pytest.mark.parametrize("dtype", DTYPES)
    def test_special_rows_match_general_path(self, dtype, rng):
        x = _special_rows(dtype, rng)
        assert _compute.fast_logsumexp(x, -1, False) is not None
        _same_bytes(ss.logsumexp(x), ss.logsumexp(_general(x)))

    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("axis", [0, 1, -1, 2, -3])
    @pytest.mark.parametrize("keepdims", [False, True])
    def test_axes_and_keepdims(self, dtype, axis, keepdims, rng):
        x = (rng.standard_normal((4, 6, 5)) * 3).astype(dtype)
        got = ss.logsumexp(x, axis=axis, keepdims=keepdims)
        _same_bytes(got, ss.logsumexp(_general(x), axis=axis, keepdims=keepdims))

    def test_non_contiguous_input(self, rng):
        x = rng.standard_normal((8, 40))[:, ::3]
        _same_bytes(ss.logsumexp(x), ss.logsumexp(_general(x)))

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_strided_vector_gives_a_numpy_scalar(self, dtype, rng):
        x = rng.standard_normal(100).astype(dtype)[::2]  # not contiguous: not the 1-D kernel's
        got = ss.logsumexp(x)
        assert type(got) is dtype
        _same_bytes(got, ss.logsumexp(_general(x)))

    def test_declines_what_it_does_not_take(self, rng):
        x = rng.standard_normal((3, 4))
        assert _compute.fast_logsumexp(x.astype(np.float16), -1, False) is None
        assert _compute.fast_logsumexp(x, (0, 1), False) is None
        assert _compute.fast_logsumexp(x, 2, False) is None  # the general path raises
        assert _compute.fast_logsumexp(np.zeros((3, 0)), -1, False) is None
        assert _compute.fast_logsumexp(x.tolist(), -1, False) is None
        with _compute.reference_path():
            assert _compute.fast_logsumexp(x, -1, False) is None

    def test_bad_axis_still_named(self, rng):
        with pytest.raises(AxisError, match="axis=2"):
            ss.logsumexp(rng.standard_normal((3, 4)), axis=2)

    def test_input_not_modified(self, rng):
        x = _special_rows(np.float64, rng)
        before = x.copy()
        ss.logsumexp(x)
        ss.softmax(x)
        np.testing.assert_array_equal(x, before)


class TestFastSoftmax:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
    def test_special_rows_match_general_path(self, dtype, fn, rng):
        x = _special_rows(dtype, rng)
        assert _compute.fast_softmax(x, -1, 1.0, fn == "log_softmax") is not None
        _same_bytes(getattr(ss, fn)(x), getattr(ss, fn)(_general(x)))

    @pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
    @pytest.mark.parametrize("axis", [0, 1, -1])
    def test_axes(self, fn, axis, rng):
        x = (rng.standard_normal((4, 6, 5)) * 3).astype(np.float32)
        _same_bytes(getattr(ss, fn)(x, axis=axis), getattr(ss, fn)(_general(x), axis=axis))

    def test_one_dimensional(self, rng):
        x = rng.standard_normal(33)
        _same_bytes(ss.softmax(x), ss.softmax(_general(x)))

    def test_temperature_other_than_one_declines(self, rng):
        x = rng.standard_normal((3, 4))
        assert _compute.fast_softmax(x, -1, 2.0, False) is None
        assert _compute.fast_softmax(x, -1, True, False) is None  # a bool is refused by the general path
        assert _compute.fast_softmax(x, -1, 1, False) is not None


class TestFastCrossEntropy:
    @pytest.mark.parametrize("dtype", DTYPES)
    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_special_rows_match_general_path(self, dtype, reduction, rng):
        x = _special_rows(dtype, rng)
        y = rng.integers(0, x.shape[1], x.shape[0])
        y[2], y[7] = 3, 1  # the +inf entry, and a -inf logit as target
        y[0] = -100  # ignored
        assert _compute.fast_cross_entropy(x, y, -1, reduction, -100, True)[0]
        _same_bytes(ss.cross_entropy(x, y, reduction=reduction), ss.cross_entropy(_general(x), y, reduction=reduction))

    @pytest.mark.parametrize("dtype", DTYPES)
    def test_ordinary_rows_and_axis_one(self, dtype, rng):
        x = (rng.standard_normal((64, 600)) * 3).astype(dtype)
        y = rng.integers(0, 600, 64)
        _same_bytes(ss.cross_entropy(x, y, axis=1), ss.cross_entropy(_general(x), y, axis=1))
        _same_bytes(ss.cross_entropy(x, y, ignore_index=5), ss.cross_entropy(_general(x), y, ignore_index=5))

    def test_all_ignored_mean(self, rng):
        x = rng.standard_normal((3, 5))
        y = np.full(3, -100)
        _same_bytes(ss.cross_entropy(x, y), ss.cross_entropy(_general(x), y))

    def test_target_out_of_range_is_named(self, rng):
        x = rng.standard_normal((3, 5))
        with pytest.raises(TargetError, match=r"target value 5 at position \(1,\)"):
            ss.cross_entropy(x, np.array([0, 5, 1]))

    def test_declines_what_it_does_not_take(self, rng):
        x = rng.standard_normal((3, 5))
        y = np.array([0, 1, 2])
        assert not _compute.fast_cross_entropy(x, y, -1, "mean", -100, False)[0]  # an option is set
        assert not _compute.fast_cross_entropy(x, y, 0, "mean", -100, True)[0]
        assert not _compute.fast_cross_entropy(x, y.astype(np.uint8), -1, "mean", -100, True)[0]
        assert not _compute.fast_cross_entropy(x, y.astype(float), -1, "mean", -100, True)[0]
        assert not _compute.fast_cross_entropy(x, y[:2], -1, "mean", -100, True)[0]
        assert not _compute.fast_cross_entropy(x, y, -1, "avg", -100, True)[0]
        assert not _compute.fast_cross_entropy(x[:, :0], y, -1, "mean", -100, True)[0]
        assert not _compute.fast_cross_entropy(x.astype(np.float16), y, -1, "mean", -100, True)[0]

    def test_options_still_validated(self, rng):
        x = rng.standard_normal((3, 5))
        with pytest.raises(ArgumentError, match="reduction"):
            ss.cross_entropy(x, np.array([0, 1, 2]), reduction="avg")
