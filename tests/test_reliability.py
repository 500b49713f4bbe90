"""Reliability: weighted sums that must not overflow, bad input that meets a clear error, no stray warning.

Expected values come from mpmath (at 200 bits), never from the library's output.
"""

from __future__ import annotations

import math
import warnings

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


# ---------------------------------------------------------------------------
# Bad input meets a clear error (or is taken as it is), never a crash from below
# ---------------------------------------------------------------------------


def _calls(order):
    """Every public function, called on arrays of byte order and dtype ``order``."""
    x = np.array([[0.5, -1.0, 2.0], [3.0, -4.0, 0.25]]).astype(order)
    pos = np.array([0.5, 1.0, 2.0]).astype(order)
    w = np.linspace(-1.0, 1.0, 12).reshape(4, 3).astype(order)
    y = np.array([0, 2]).astype(order.replace("f", "i"))
    return {
        "logsumexp": lambda: ss.logsumexp(x),
        "logsumexp b": lambda: ss.logsumexp(x, b=x, return_sign=True),
        "logsumexp where": lambda: ss.logsumexp(x, where=x > 0),
        "softmax": lambda: ss.softmax(x),
        "log_softmax": lambda: ss.log_softmax(x, axis=0),
        "logsumexp_grad": lambda: ss.logsumexp_grad(x, x[:, 0]),
        "softmax_grad": lambda: ss.softmax_grad(x, x),
        "log_softmax_grad": lambda: ss.log_softmax_grad(x, x),
        "cross_entropy": lambda: ss.cross_entropy(x, y),
        "cross_entropy weight": lambda: ss.cross_entropy(x, y, weight=pos, label_smoothing=0.1),
        "cross_entropy_grad": lambda: ss.cross_entropy_grad(x, y, g=pos[0]),
        "cross_entropy_with_grad": lambda: ss.cross_entropy_with_grad(x, y),
        "nll_loss": lambda: ss.nll_loss(x, y, weight=pos),
        "binary_cross_entropy_with_logits": lambda: ss.binary_cross_entropy_with_logits(x, x > 0, pos_weight=pos),
        "sample": lambda: ss.sample(x, rng=0),
        "linear_cross_entropy": lambda: ss.linear_cross_entropy(x, w, y, bias=w[:, 0], class_weight=w[:, 0] ** 2),
        "linear_cross_entropy_with_grad": lambda: ss.linear_cross_entropy_with_grad(x, w, y),
        "LogSumExp": lambda: ss.LogSumExp().update(x).update(x).result(),
        "logsumexp_chunks": lambda: ss.logsumexp_chunks([x, x]),
        "logsumexp_chunks ndarray": lambda: ss.logsumexp_chunks(x),
    }


def _flat(result):
    """Every number of a result (nested tuples too; None is left out), as float64."""
    if isinstance(result, tuple):
        return np.concatenate([_flat(r) for r in result if r is not None])
    return np.asarray(result, np.float64).ravel()


# The public functions' NumPy fast paths (``_compute.numpy_rows``, ``fast_cross_entropy``) take native
# float32/float64 only; big-endian input goes through the dispatch layer, which takes it as native.
BYTE_ORDER_CASES = [pytest.param(fn, order) for fn in _calls("<f8") for order in (">f8", ">f4", ">f2", "=f8")]


@pytest.mark.parametrize(("fn", "order"), BYTE_ORDER_CASES)
def test_any_byte_order_is_taken_as_native_and_left_as_it_is(fn, order):
    """Big-endian input gives what the same numbers in native order give, and is not modified."""
    swapped = _calls(order)
    got = swapped[fn]()
    want = _calls(np.dtype(order).newbyteorder("=").str)[fn]()
    np.testing.assert_array_equal(_flat(got), _flat(want))


def test_byte_swapped_input_is_not_modified():
    x = np.array([[0.5, -1.0, 2.0], [3.0, -4.0, 0.25]]).astype(">f2")
    before = x.tobytes()
    ss.LogSumExp().update(x)
    ss.logsumexp(x, b=x)
    ss.cross_entropy_grad(x, np.array([0, 2]))
    assert x.tobytes() == before and x.dtype == np.dtype(">f2")


def test_streaming_complex_input_is_a_dtype_error():
    with pytest.raises(ss.DtypeError, match=r"chunk has dtype complex128, which is not supported\. Allowed: float16"):
        ss.LogSumExp().update(np.ones(3, complex))
    with pytest.raises(ss.DtypeError, match="chunk has dtype complex64"):
        ss.logsumexp_chunks([np.ones(3, np.complex64)])


def test_sample_axis_not_an_int_is_an_axis_error():
    """As in every other function: an AxisError naming the value."""
    with pytest.raises(ss.AxisError, match=r"axis=1\.5 must be a single int"):
        ss.sample(np.zeros((2, 3)), axis=1.5)


def test_merge_of_another_shape_names_the_merged_state():
    a = ss.LogSumExp().update(np.ones((2, 3)))
    with pytest.raises(ss.ShapeError, match=r"the merged LogSumExp holds shape \(3,\), but this LogSumExp holds"):
        a.merge(ss.LogSumExp().update(np.ones((3, 3))))


def test_class_weight_of_the_wrong_shape_is_named_class_weight():
    with pytest.raises(ss.ShapeError, match=r"^class_weight of shape \(5,\)"):
        ss.linear_cross_entropy(np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), class_weight=np.ones(5))


# ---------------------------------------------------------------------------
# No warning from NaN-free input
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_16_bit_streams_with_infinite_results_warn_nothing(dtype):
    """+inf, no mass and no terms are the contract's values, rounded to 16 bits without a warning."""
    from tests.helpers import BFLOAT16

    dt = BFLOAT16 if dtype == "bfloat16" else np.dtype(dtype)
    x = np.array([[np.inf, 0.0], [-np.inf, -np.inf], [1.0, 2.0]]).astype(dt)
    want = [np.inf, -np.inf, float(np.logaddexp(np.float64(1.0), 2.0).astype(dt))]
    np.testing.assert_array_equal(np.asarray(ss.logsumexp_chunks([x, x[:, :0]]), np.float64), want)
    np.testing.assert_array_equal(np.asarray(ss.LogSumExp().update(x).result(), np.float64), want)
    assert ss.LogSumExp().update(np.zeros((2, 0), dt)).result().tolist() == [-np.inf, -np.inf]


def test_an_option_given_as_a_tensor_that_requires_grad_warns_nothing():
    """A temperature read from a model's parameter: taken as its value (an option carries no gradient)."""
    x = torch.tensor([[1.0, 2.0, 3.0]], dtype=torch.float64, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = ss.softmax(x, temperature=torch.tensor(2.0, requires_grad=True))
    torch.testing.assert_close(got, ss.softmax(x, temperature=2.0), rtol=0, atol=0)


# ---------------------------------------------------------------------------
# Weights b of another dtype: the library's own promotion, as SciPy's logsumexp does
# ---------------------------------------------------------------------------


class TestWeightDtypes:
    @pytest.mark.parametrize(
        ("x_dtype", "b_dtype", "want"),
        [
            ("float32", "int64", "float32"),  # an integer array does not widen a float one
            ("int64", "float32", "float32"),
            ("float32", "float64", "float64"),
            ("int64", "int64", "float64"),  # integers alone: float64, as everywhere in the library
        ],
    )
    def test_torch(self, x_dtype, b_dtype, want):
        x = torch.tensor([2, 1], dtype=getattr(torch, x_dtype))
        b = torch.tensor([1, -1], dtype=getattr(torch, b_dtype))
        got = ss.logsumexp(x, b=b)
        assert got.dtype == getattr(torch, want)
        assert ulp_error(float(got), mpmath.log(mpmath.e**2 - mpmath.e), np.dtype(want)) <= 1.0

    @pytest.mark.parametrize(("x_dtype", "b_dtype"), [("float32", "int32"), ("int32", "float32")])
    def test_jax_keeps_float32(self, x_dtype, b_dtype):
        jnp = pytest.importorskip("jax.numpy")
        x = jnp.asarray([2, 1], dtype=getattr(jnp, x_dtype))
        got = ss.logsumexp(x, b=jnp.asarray([1, -1], dtype=getattr(jnp, b_dtype)))
        assert got.dtype == jnp.float32
        assert ulp_error(float(got), mpmath.log(mpmath.e**2 - mpmath.e), np.float32) <= 1.0

    def test_numpy_follows_numpy(self):
        """NumPy's own promotion: int64 with float32 is float64."""
        got = ss.logsumexp(np.array([2.0, 1.0], np.float32), b=np.array([1, -1]))
        assert got.dtype == np.float64

    @pytest.mark.parametrize("b", [2.0, 2])
    def test_python_scalar_weight_takes_the_array_dtype(self, b):
        """A Python scalar is weak (the array API's rule): float32 stays float32, on its device."""
        xp = pytest.importorskip("array_api_strict")
        x = xp.asarray([1.0, 2.0], dtype=xp.float32, device=xp.Device("device1"))
        got = ss.logsumexp(x, b=b)
        assert got.dtype == xp.float32 and got.device == x.device

    @pytest.mark.parametrize("raw", [1.0, [], [1.0, 2.0]])
    @pytest.mark.parametrize("b", ["scalar", "x"])
    def test_results_stay_on_the_input_device(self, raw, b):
        xp = pytest.importorskip("array_api_strict")
        for device in (xp.Device("CPU_DEVICE"), xp.Device("device1"), xp.Device("device2")):
            x = xp.asarray(raw, device=device)
            weight = 2.0 if b == "scalar" else x
            assert ss.logsumexp(x, b=weight).device == device
            out, sign = ss.logsumexp(x, b=weight, return_sign=True)
            assert out.device == device and sign.device == device


class TestCommonFloat:
    """The promotion rule itself (``_dispatch.weights_in``), library by library."""

    @staticmethod
    def promote(x, b):
        from stablesoftmax import _dispatch as D

        arr, xp = D.array_in(x, "x")
        a, bb = D.weights_in(b, x, arr, xp)
        assert a.dtype == bb.dtype
        return D.dtype_name(a.dtype)

    def test_torch_integers_do_not_widen_a_float(self):
        f32, i64 = torch.ones(2, dtype=torch.float32), torch.ones(2, dtype=torch.int64)
        assert self.promote(f32, i64) == self.promote(i64, f32) == "float32"
        assert self.promote(i64, i64) == "float64"

    def test_numpy_and_lists_follow_numpy(self):
        assert self.promote(np.ones(2, np.float32), np.ones(2, np.int64)) == "float64"
        assert self.promote(np.ones(2, np.float32), np.ones(2, np.float32)) == "float32"
        assert self.promote([1, 2], [0.5, 1.0]) == "float64"

    def test_array_api_strict_promotes_the_floats_with_the_default(self):
        xp = pytest.importorskip("array_api_strict")
        ints, f32 = xp.asarray([1, 2]), xp.asarray([1.0], dtype=xp.float32)
        assert self.promote(ints, f32) == "float64"
        assert self.promote(f32, 2.0) == self.promote(f32, 2) == self.promote(f32, True) == "float32"

    def test_complex_weights_are_refused_by_name(self):
        with pytest.raises(ss.DtypeError, match="^b has complex dtype"):
            self.promote(np.ones(2), np.ones(2, complex))
