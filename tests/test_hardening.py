"""Each silent wrong answer a hostile probe found, pinned; and properties that would have found them.

The regression tests are named after the defect. The property tests draw
dtypes, shapes, axes, masks, weights, temperatures and options for every
public function and its gradient, and check that NaN-free input gives a
NaN-free result (the contract has no NaN outcome for it), that the compiled
and the reference paths agree, and that gradients match central differences.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import stablesoftmax as ss
from stablesoftmax import ArgumentError, StableSoftmaxError

inf = math.inf


class TestWrongResults:
    def test_temperature_that_overflows_x_over_t_is_one_hot_at_the_max(self):
        np.testing.assert_array_equal(ss.softmax(np.array([1.0, 2.0]), temperature=1e-310), [0.0, 1.0])
        np.testing.assert_array_equal(ss.softmax(np.array([1e308, 1.7e308]), temperature=0.5), [0.0, 1.0])
        # The exact log-softmax is (1e308 - 1.7e308) / 0.5, about -1.4e308: finite.
        import mpmath

        exact = float((mpmath.mpf(1e308) - mpmath.mpf(1.7e308)) * 2)
        np.testing.assert_array_equal(ss.log_softmax(np.array([1e308, 1.7e308]), temperature=0.5), [exact, 0.0])
        np.testing.assert_array_equal(ss.log_softmax(np.array([1.0, 2.0]), temperature=1e-310), [-inf, 0.0])

    def test_zero_class_weight_on_an_infinite_loss_is_not_nan(self):
        x, y = np.array([[-inf, 0.0], [1.0, 2.0]]), np.array([0, 1])
        want = math.log1p(math.exp(-1.0))  # only the second element counts: lse(1, 2) - 2
        assert ss.cross_entropy(x, y, weight=np.array([0.0, 1.0]), reduction="sum") == pytest.approx(want, rel=1e-15)
        assert ss.nll_loss(ss.log_softmax(x), y, weight=np.array([0.0, 1.0]), reduction="sum") == pytest.approx(
            want, rel=1e-15
        )

    def test_infinite_b_gives_inf_without_warning(self):
        with np.errstate(all="raise"):
            assert ss.logsumexp(np.array([1.0, 2.0]), b=np.array([1.0, inf])) == inf

    def test_masked_entry_does_not_use_its_b(self):
        got = ss.logsumexp(
            np.array([5.0, 1.0, 2.0]), where=np.array([False, True, True]), b=np.array([math.nan, 1.0, 1.0])
        )
        assert got == pytest.approx(math.log(math.e + math.e**2), rel=1e-15)

    @pytest.mark.parametrize("path", ["compiled", "reference"])
    def test_softcap_with_where_leaves_masked_gradient_zero(self, path):
        x = np.array([[1.0, np.nan, 3.0]])
        where = np.array([[True, False, True]])
        ctx = ss.reference_path() if path == "reference" else _nullcontext()
        with ctx:
            _, grad = ss.cross_entropy_with_grad(x, np.array([0]), softcap=30.0, where=where)
        assert grad[0, 1] == 0.0 and np.isfinite(grad).all()

    @pytest.mark.parametrize("path", ["compiled", "reference"])
    def test_confident_float32_gradient_at_the_target_is_accurate(self, path):
        # d/dx_0 of lse(x) - x_0 = p_0 - 1 = -3 e^-20 / (1 + 3 e^-20), computed here in exact arithmetic.
        import mpmath

        mpmath.mp.dps = 50
        x = np.array([[20.0, 0.0, 0.0, 0.0]], np.float32)
        e = mpmath.exp(-20)
        want = [float(-3 * e / (1 + 3 * e))] + [float(e / (1 + 3 * e))] * 3
        ctx = ss.reference_path() if path == "reference" else _nullcontext()
        with ctx:
            got = ss.cross_entropy_grad(x, np.array([0]))
        np.testing.assert_array_equal(got, np.array([want], np.float32))  # correctly rounded
        assert abs(float(got.astype(np.float64).sum())) <= 2 * float(np.spacing(np.float32(want[1])))

    def test_smoothing_with_huge_logits_is_finite_on_every_path(self):
        # sum_c (x_c - m) overflows in the kernels' pass; the exact loss is a/K * 4e308 = 8e307.
        x = np.array([0.0, 0.0, 0.0, 0.0, 1e308])
        for ctx in (_nullcontext(), ss.reference_path()):
            with ctx:
                assert ss.cross_entropy(x, np.array(0), label_smoothing=1.0) == pytest.approx(8e307, rel=1e-15)

    def test_full_smoothing_on_a_minus_inf_target_is_inf_not_nan(self):
        for ctx in (_nullcontext(), ss.reference_path()):
            with ctx:
                assert ss.cross_entropy(np.array([0.0, -inf]), np.array(1), label_smoothing=1.0) == inf
                assert ss.cross_entropy(np.array([0.0, 0.0, inf]), np.array(2), label_smoothing=1.0) == inf

    def test_linear_bias_at_minus_inf_has_zero_bias_gradient(self, rng):
        h, w = rng.normal(size=(3, 2)), rng.normal(size=(4, 2))
        b = np.array([0.0, -inf, 0.0, 0.0])
        _, (_, _, d_b) = ss.linear_cross_entropy_with_grad(h, w, np.array([1, 0, 2]), bias=b)
        _, grad = ss.cross_entropy_with_grad(h @ w.T + b, np.array([1, 0, 2]))
        assert d_b[1] == 0.0 and grad[:, 1].tolist() == [0.0, 0.0, 0.0]

    def test_negative_class_weight_is_refused(self):
        with pytest.raises(ArgumentError, match=r"weight\[1\] = -1.0 is not allowed; class weights must be finite"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), weight=np.array([1.0, -1.0, 1.0]))

    def test_masked_array_is_refused_not_unmasked(self):
        with pytest.raises(ArgumentError, match=r"numpy.ma.MaskedArray; its mask would be lost"):
            ss.logsumexp(np.ma.masked_array([1000.0, 1.0], mask=[True, False]))

    def test_uint64_target_cannot_wrap_to_ignore_index(self):
        with pytest.raises(StableSoftmaxError, match=r"target value 18446744073709551516 is out of range"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([2**64 - 100, 0], dtype=np.uint64))


class TestUnclearErrors:
    @pytest.mark.parametrize(
        ("b", "match"),
        [
            (["a", "b"], "b has dtype <U1"),
            ([[1.0], [1.0, 2.0]], "b could not be read as an array"),
            ([1j, 2.0], "b has complex dtype"),
            ([object(), 1.0], "b has dtype object"),
        ],
    )
    def test_bad_b(self, b, match):
        with pytest.raises(StableSoftmaxError, match=match):
            ss.logsumexp(np.array([1.0, 2.0]), b=b)

    def test_ragged_where(self):
        with pytest.raises(StableSoftmaxError, match="where could not be read as an array"):
            ss.softmax(np.array([1.0, 2.0]), where=[[True], [True, False]])

    def test_temperature_array(self):
        with pytest.raises(ArgumentError, match=r"temperature=array\(\[1., 2.\]\) is not a real number"):
            ss.softmax(np.array([1.0, 2.0]), temperature=np.array([1.0, 2.0]))

    def test_sample_empty_axis_and_bad_rng(self):
        with pytest.raises(ArgumentError, match="have no classes along axis -1"):
            ss.sample(np.ones((2, 0)))
        with pytest.raises(ArgumentError, match="rng='a' is not allowed"):
            ss.sample(np.array([1.0, 2.0]), rng="a")

    def test_logsumexp_chunks_of_a_number(self):
        with pytest.raises(ArgumentError, match="chunks=5 is not an iterable"):
            ss.logsumexp_chunks(5)

    @pytest.mark.parametrize("value", ["a", 1.5, None, True])
    def test_ignore_index(self, value):
        with pytest.raises(ArgumentError, match=f"ignore_index={value!r} is not an int"):
            ss.cross_entropy(np.zeros((2, 3)), np.array([0, 1]), ignore_index=value)

    def test_chunk_size_true(self):
        with pytest.raises(ArgumentError, match="chunk_size=True is not allowed"):
            ss.linear_cross_entropy(np.ones((2, 3)), np.ones((4, 3)), np.array([0, 1]), chunk_size=True)

    def test_cross_entropy_of_an_empty_batch_without_classes(self):
        assert ss.cross_entropy(np.zeros((0, 0)), np.zeros(0, np.int64)) == 0.0

    def test_no_runtime_warning_at_tiny_temperature_or_z_loss_on_inf(self):
        with np.errstate(all="raise"):
            ss.sample(np.array([0.0, 1.0, -1e300]), temperature=1e-300, rng=0)
            assert ss.cross_entropy(np.array([[inf, 0.0]]), np.array([1]), z_loss=1e-4) == inf


class TestConsistency:
    def test_numpy_scalar_and_0d_array_give_the_same_type(self):
        assert type(ss.logsumexp(np.float32(3))) is type(ss.logsumexp(np.array(3.0, np.float32))) is np.float32

    def test_b_promotes_and_broadcasts_as_in_scipy(self, rng):
        special = pytest.importorskip("scipy.special")
        x = rng.normal(size=(4, 1, 2, 1)).astype(np.float32)
        b = rng.uniform(0.5, 2, size=(3, 1, 5))
        got = ss.logsumexp(x, b=b, axis=-1)
        want = special.logsumexp(x, b=b, axis=-1)
        assert got.dtype == want.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=1e-14)


# --------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------

DTYPES = [np.float16, np.float32, np.float64]
values = st.one_of(st.floats(-1e4, 1e4), st.sampled_from([-inf, inf, 0.0, -1e308, 1e308, 88.0, -745.0]))


@st.composite
def problems(draw):
    shape = draw(st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple))
    n = int(np.prod(shape))
    dtype = draw(st.sampled_from(DTYPES))
    with np.errstate(over="ignore"):
        x = np.array(draw(st.lists(values, min_size=n, max_size=n)), np.float64).reshape(shape).astype(dtype)
    axis = draw(st.integers(-len(shape), len(shape) - 1))
    where = draw(
        st.one_of(st.none(), st.lists(st.booleans(), min_size=n, max_size=n).map(lambda m: np.array(m).reshape(shape)))
    )
    return x, axis, where


def _has_nan(a):
    return bool(np.isnan(np.asarray(a, np.float64)).any())


@settings(max_examples=40)  # several calls per example; 40 keep the file under a minute
@given(problems(), st.sampled_from([1.0, 0.5, 3.0, 1e-300]))
def test_no_nan_from_nan_free_input(problem, temperature):
    x, axis, where = problem
    assert not _has_nan(x)
    for fn in (ss.logsumexp,):
        assert not _has_nan(fn(x, axis=axis, where=where))
    for fn in (ss.softmax, ss.log_softmax):
        assert not _has_nan(fn(x, axis=axis, where=where, temperature=temperature))
    g = np.ones(x.shape)
    for fn in (ss.softmax_grad, ss.log_softmax_grad):
        assert not _has_nan(fn(x, g, axis=axis, where=where, temperature=temperature))
    assert not _has_nan(ss.logsumexp_grad(x, np.ones(ss.logsumexp(x, axis=axis).shape), axis=axis, where=where))


@settings(max_examples=40)  # several calls per example; 40 keep the file under a minute
@given(
    problems(),
    st.floats(0, 1),
    st.floats(0, 1e-2),
    st.sampled_from([None, 5.0]),
    st.sampled_from(["none", "mean", "sum"]),
)
def test_cross_entropy_no_nan_and_paths_agree(problem, smoothing, z_loss, softcap, reduction):
    x, axis, where = problem
    rng = np.random.default_rng(0)
    shape = tuple(d for i, d in enumerate(x.shape) if i != axis % x.ndim)
    y = rng.integers(0, x.shape[axis], size=shape)
    y = np.where(rng.random(shape) < 0.2, -100, y)
    opts = dict(axis=axis, where=where, label_smoothing=smoothing, z_loss=z_loss, softcap=softcap, reduction=reduction)
    loss, grad = ss.cross_entropy_with_grad(x, y, **opts)
    with ss.reference_path():
        ref_loss, ref_grad = ss.cross_entropy_with_grad(x, y, **opts)
    # A NaN-free input may give +inf (a target of probability 0) but never NaN, and never a NaN gradient.
    assert not _has_nan(loss) and not _has_nan(grad)
    _close(loss, ref_loss, x.dtype)
    _close(grad, ref_grad, x.dtype, floor=1.0)  # gradient entries are on the scale of the target mass, <= 1


def _close(a, b, dtype, floor=0.0):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    fin = np.isfinite(a)
    np.testing.assert_array_equal(a[~fin], b[~fin])
    if fin.any():
        eps = float(np.finfo(dtype).eps)
        scale = np.maximum(np.abs(b[fin]), float(np.max(np.abs(b[fin]))) * 1e-6 + float(np.finfo(dtype).tiny))
        scale = np.maximum(scale, floor)
        assert np.all(np.abs(a[fin] - b[fin]) <= 4 * eps * scale + 1e-300)


@settings(max_examples=40)  # several calls per example; 40 keep the file under a minute
@given(
    st.lists(st.floats(-30, 30), min_size=2, max_size=6),
    st.floats(0, 0.5),
    st.floats(0, 0.1),
    st.sampled_from([None, 10.0]),
)
def test_cross_entropy_gradient_matches_central_differences(row, smoothing, z_loss, softcap):
    x = np.array([row])
    y = np.array([len(row) // 2])
    opts = dict(label_smoothing=smoothing, z_loss=z_loss, softcap=softcap)
    _, grad = ss.cross_entropy_with_grad(x, y, **opts)
    h = 1e-6
    for i in range(len(row)):
        up, down = x.copy(), x.copy()
        up[0, i] += h
        down[0, i] -= h
        fd = (float(ss.cross_entropy(up, y, **opts)) - float(ss.cross_entropy(down, y, **opts))) / (2 * h)
        assert grad[0, i] == pytest.approx(fd, rel=1e-5, abs=1e-7)


@settings(max_examples=40)  # several calls per example; 40 keep the file under a minute
@given(problems())
def test_bce_no_nan_from_nan_free_input(problem):
    x, _, _ = problem
    assume(x.dtype != np.float16 or np.isfinite(x).all())
    t = np.clip(np.abs(np.nan_to_num(x.astype(np.float64), posinf=1, neginf=0)) % 1, 0, 1)
    assert not _has_nan(ss.binary_cross_entropy_with_logits(x, t.astype(x.dtype), reduction="none"))


class _nullcontext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False
