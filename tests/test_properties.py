"""Lab 02 task 5's properties of the library, over arrays: shift invariance, the per-row sanity, SciPy parity.

Shifts are exactly representable and so are the shifted inputs (multiples of 1/8 plus an integer), so the
only error is the functions'. Tolerances come from the accuracy goals in ``tests.helpers``: each side is
within its goal of the exact value, so two sides are within the sum of their goals.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import stablesoftmax as ss
from tests.helpers import eps, ulp_goal

DTYPES = [np.dtype(np.float64), np.dtype(np.float32)]
PARITY = 1e-12  # lab 02: "reference parity against scipy within 1e-12"


def batches(draw, dtype):
    """A (B, K) batch of multiples of 1/8 in [-50, 50]: exact in float32 and float64, and after any integer shift."""
    b, k = draw(st.integers(1, 6)), draw(st.integers(1, 40))
    ints = draw(st.lists(st.integers(-400, 400), min_size=b * k, max_size=b * k))
    return (np.array(ints, dtype=np.float64).reshape(b, k) / 8).astype(dtype)


@st.composite
def shifted(draw, dtype):
    x = batches(draw, dtype)
    c = draw(st.integers(-1000, 1000) | st.sampled_from([-1000, 1000, 0]))
    return x, c


class TestShiftInvariance:
    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("axis", [-1, 0])
    def test_logsumexp(self, dtype, axis):
        @given(shifted(dtype))
        def check(case):
            x, c = case
            got = np.asarray(ss.logsumexp(x + dtype.type(c), axis=axis), np.float64)
            base = np.asarray(ss.logsumexp(x, axis=axis), np.float64) + c  # exact in float64
            # the goal is in ulps of max(|result|, max|x|): bound each side by eps * that scale
            scale = np.maximum(np.abs(base), np.max(np.abs(x), axis=axis) + abs(c))
            tol = 2 * ulp_goal("logsumexp", dtype) * eps(dtype) * scale
            assert np.all(np.abs(got - base) <= tol)

        check()

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    @pytest.mark.parametrize("axis", [-1, 0])
    def test_log_softmax(self, dtype, axis):
        @given(shifted(dtype))
        def check(case):
            x, c = case
            got = np.asarray(ss.log_softmax(x + dtype.type(c), axis=axis), np.float64)
            ref = np.asarray(ss.log_softmax(x, axis=axis), np.float64)
            tol = 2 * ulp_goal("log_softmax", dtype) * eps(dtype) * np.abs(ref)
            assert np.all((got == ref) | (np.abs(got - ref) <= tol))

        check()

    def test_naive_breaks_where_the_library_holds(self):
        # the property tests the shift: the textbook formula fails it at the lab's offsets
        x = np.array([[1.0, 2.0, 3.0]])
        with np.errstate(all="ignore"):
            assert np.isnan(ss.naive.log_softmax(x + 1000.0)).all()
        np.testing.assert_array_equal(ss.log_softmax(x + 1000.0), ss.log_softmax(x))


class TestPerRowSanity:
    """log_softmax(z).sum() == log_softmax([z, z]).sum() / 2: each row is normalised on its own."""

    @pytest.mark.parametrize("dtype", DTYPES, ids=str)
    def test_rows_do_not_see_each_other(self, dtype):
        @given(st.data())
        def check(data):
            x = batches(data.draw, dtype)
            twice = np.concatenate([x, x[::-1]])
            for fn in (ss.log_softmax, ss.softmax, ss.logsumexp):
                one, two = np.asarray(fn(x)), np.asarray(fn(twice))
                np.testing.assert_array_equal(two[: len(x)], one)
                np.testing.assert_array_equal(two[len(x) :], one[::-1])
            # lab 02's form, with exact sums (math.fsum) so that only the function can make it fail
            lsm = np.asarray(ss.log_softmax(x), np.float64).ravel()
            assert math.fsum(lsm) == math.fsum(np.asarray(ss.log_softmax(np.stack([x, x])), np.float64).ravel()) / 2

        check()

    def test_axis_zero_is_the_transpose(self, rng):
        x = rng.normal(0, 5, size=(7, 11))
        np.testing.assert_array_equal(ss.log_softmax(x, axis=0), ss.log_softmax(x.T, axis=-1).T)

    def test_the_whole_batch_formula_fails_it(self):
        z = np.array([1.0, 2.0, 3.0])
        one = np.sum(np.log(np.exp(z) / np.exp(z).sum()))
        two = np.sum(np.log(np.exp([z, z]) / np.exp([z, z]).sum())) / 2  # lab 02's naive formula on a batch
        assert abs(one - two - 3 * np.log(2)) < 1e-12


def parity_inputs(rng):
    """Lab 02's battery: uniform, peaked, large, small and negative rows, float64."""
    peaked = rng.normal(0, 1, (16, 600))
    peaked[np.arange(16), rng.integers(0, 600, 16)] += 30.0
    return {
        "uniform zeros": np.zeros((4, 600)),
        "uniform random": rng.uniform(-1, 1, (16, 600)),
        "peaked": peaked,
        "large": rng.normal(1e4, 10, (16, 600)),
        "large lab 02": np.array([[1000.0, 1001.0, 1002.0]]),
        "small": rng.normal(0, 1e-3, (16, 600)),
        "negative": rng.normal(-1e4, 10, (16, 600)),
        "negative lab 02": np.array([[-1000.0, -999.0, -998.0]]),
    }


def within(got, ref) -> bool:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    return bool(np.all(np.abs(got - ref) <= PARITY * np.maximum(1.0, np.abs(ref))))


@pytest.fixture(scope="module")
def special():
    return pytest.importorskip("scipy.special")


class TestScipyParity:
    """Within 1e-12, relative to max(1, |value|): absolute for log-probabilities near 0, where SciPy's
    log(1 + s) keeps only an absolute accuracy, and relative above."""

    @pytest.mark.parametrize(
        "name",
        ["uniform zeros", "uniform random", "peaked", "large", "large lab 02", "small", "negative", "negative lab 02"],
    )
    def test_within_1e_12(self, special, name):
        x = parity_inputs(np.random.default_rng(42))[name]
        y = np.arange(len(x)) % x.shape[-1]
        pairs = [
            (ss.logsumexp(x, axis=-1), special.logsumexp(x, axis=-1)),
            (ss.log_softmax(x, axis=-1), special.log_softmax(x, axis=-1)),
            (ss.softmax(x, axis=-1), special.softmax(x, axis=-1)),
            (ss.cross_entropy(x, y, reduction="none"), -special.log_softmax(x, axis=-1)[np.arange(len(x)), y]),
        ]
        for got, ref in pairs:
            assert within(got, ref), name

    def test_the_tolerance_is_not_vacuous(self, special):
        x = parity_inputs(np.random.default_rng(42))["large"]
        with np.errstate(all="ignore"):
            wrong = ss.naive.logsumexp(x)  # overflows: inf, not within any tolerance
        assert not within(wrong, special.logsumexp(x, axis=-1))
        assert not within(np.asarray(ss.logsumexp(x, axis=-1)) * (1 + 1e-11), special.logsumexp(x, axis=-1))


# ---------------------------------------------------------------------------
# No warning and no NaN from NaN-free input: every public function, NumPy and torch, every float dtype
# ---------------------------------------------------------------------------

FLOAT_NAMES = ["float16", "bfloat16", "float32", "float64"]


@st.composite
def nan_free(draw, dtype):
    """A (B, K) float64 batch holding ``dtype``'s values: its extremes, subnormals, zeros and ``-inf``."""
    b, k = draw(st.integers(1, 4)), draw(st.integers(1, 12))
    # bfloat16: float16's values (each rounds to a bfloat16 value, none overflows); the others their own
    width = {"float16": 16, "bfloat16": 16, "float32": 32, "float64": 64}[dtype]
    finite = st.floats(allow_nan=False, allow_infinity=False, width=width)
    values = draw(st.lists(finite | st.sampled_from([-math.inf, math.inf]), min_size=b * k, max_size=b * k))
    return np.array(values, dtype=np.float64).reshape(b, k)


def _as(lib, a, dtype):
    from tests.helpers import BFLOAT16

    if lib == "torch":
        torch = pytest.importorskip("torch")
        return torch.tensor(np.asarray(a, np.float64), dtype=getattr(torch, dtype), requires_grad=True)
    return np.asarray(a, np.float64).astype(BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype))


def _public_calls(x, lib, dtype):
    """Every public function on the batch ``x`` (in ``lib`` and ``dtype``), with NaN-free companions."""
    n, k = x.shape
    y = np.arange(n) % k
    a = _as(lib, x, dtype)
    small = _as(lib, np.linspace(-3.0, 3.0, 4 * n).reshape(n, 4), dtype)  # the linear layer's own inputs
    weight = _as(lib, np.linspace(-1.0, 1.0, 4 * k).reshape(k, 4), dtype)
    calls = {
        "logsumexp": lambda: ss.logsumexp(a),
        "logsumexp b": lambda: ss.logsumexp(a, b=_as(lib, np.full(x.shape, 0.5), dtype), axis=0),
        "softmax": lambda: ss.softmax(a),
        "log_softmax": lambda: ss.log_softmax(a, axis=0),
        "logsumexp_grad": lambda: ss.logsumexp_grad(a, _as(lib, np.ones(n), dtype)),
        "softmax_grad": lambda: ss.softmax_grad(a, _as(lib, np.ones(x.shape), dtype)),
        "log_softmax_grad": lambda: ss.log_softmax_grad(a, _as(lib, np.ones(x.shape), dtype)),
        "cross_entropy": lambda: ss.cross_entropy(a, y, label_smoothing=0.1, reduction="none"),
        "cross_entropy_grad": lambda: ss.cross_entropy_grad(a, y),
        "cross_entropy_with_grad": lambda: ss.cross_entropy_with_grad(a, y),
        "nll_loss": lambda: ss.nll_loss(ss.log_softmax(a), y, reduction="none"),
        "binary_cross_entropy_with_logits": lambda: ss.binary_cross_entropy_with_logits(
            a, _as(lib, np.full(x.shape, 0.25), dtype)
        ),
        "linear_cross_entropy_with_grad": lambda: ss.linear_cross_entropy_with_grad(small, weight, y),
        "LogSumExp": lambda: ss.LogSumExp().update(a).update(a, axis=-1).result(),
        "logsumexp_chunks": lambda: ss.logsumexp_chunks([a, a]),
    }
    if (x > -math.inf).any(axis=-1).all():  # sample refuses a row without mass, by name
        calls["sample"] = lambda: ss.sample(a, rng=0)
    return calls


def _numbers(result):
    """Every number of a result (tuples and torch tensors too) as float64."""
    if isinstance(result, tuple):
        return np.concatenate([_numbers(r) for r in result if r is not None] or [np.zeros(0)])
    if hasattr(result, "detach"):
        result = result.detach().double().cpu().numpy()
    return np.asarray(result, np.float64).ravel()


@pytest.mark.parametrize("lib", ["numpy", "torch"])
@pytest.mark.parametrize("dtype", FLOAT_NAMES)
def test_nan_free_input_gives_no_warning_and_no_nan(lib, dtype):
    """The contract's answer is a number wherever no input is NaN, and computing it warns of nothing."""

    @settings(max_examples=30)
    @given(nan_free(dtype))
    def check(x):
        for name, call in _public_calls(x, lib, dtype).items():
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                got = _numbers(call())
            assert not np.isnan(got).any(), (name, x, got)

    check()
