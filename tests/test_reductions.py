"""logsumexp, softmax and log_softmax: values, dtypes, axes, array types, errors and properties."""

import numpy as np
import pytest
import scipy.special as sc
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import stablesoftmax as ss
from stablesoftmax import ArgumentError, AxisError, DtypeError, ShapeError
from tests.helpers import BFLOAT16, DTYPE_IDS, FLOAT_DTYPES, eps, rtol

pytestmark = pytest.mark.usefixtures("each_path")  # every test on the compiled and the NumPy path

FAMILY = ["logsumexp", "softmax", "log_softmax"]
SCIPY = {"logsumexp": sc.logsumexp, "softmax": sc.softmax, "log_softmax": sc.log_softmax}

# The labs' ordinary inputs plus seeded Gaussian rows: SciPy parity holds at 1e-12 here.
ORDINARY = [
    [0.1, 0.2, 0.3, 0.4, 0.5],
    [-3.0, 0.0, 1.0, 2.0, 5.0],
    [5.0] * 5,
    [0.0, 0.0, 0.0],
    [1.0, 2.0, 3.0],
    [1.2, 4.7, 3.1, 0.5, 2.9],
    list(np.random.default_rng(7).normal(0, 3, 600)),
]


class TestLogsumexp:
    def test_labs_overflow_case(self):
        assert ss.logsumexp(np.array([1000.0, 1001.0, 1002.0])) == pytest.approx(1002.4076059644444, rel=1e-15)

    def test_small_terms_are_not_lost(self):
        # torch.logsumexp gives exactly 0 here; the true value is 4 e^-37 = 3.4e-16.
        got = ss.logsumexp([0.0, -37.0, -37.0, -37.0, -37.0])
        assert got == pytest.approx(4 * np.exp(-37.0), rel=4 * eps(np.float64))

    @pytest.mark.parametrize("x", ORDINARY, ids=range(len(ORDINARY)))
    def test_scipy_parity(self, x):
        assert ss.logsumexp(x, axis=-1) == pytest.approx(sc.logsumexp(x, axis=-1), rel=1e-12)

    def test_weights_match_scipy(self, rng):
        x, b = rng.normal(size=(4, 7)), rng.uniform(-1, 2, (4, 7))
        for axis in (0, 1, (0, 1)):
            got, sign = ss.logsumexp(x, axis=axis, b=b, return_sign=True)
            ref, rsign = sc.logsumexp(x, axis=axis, b=b, return_sign=True)
            np.testing.assert_allclose(got, ref, rtol=1e-12)
            np.testing.assert_array_equal(sign, rsign)

    def test_keepdims(self, rng):
        x = rng.normal(size=(2, 3, 4))
        assert ss.logsumexp(x, axis=(0, 2), keepdims=True).shape == (1, 3, 1)
        np.testing.assert_allclose(ss.logsumexp(x, axis=(0, 2), keepdims=True)[0, :, 0], ss.logsumexp(x, axis=(0, 2)))

    def test_axis_none_reduces_everything(self, rng):
        x = rng.normal(size=(3, 4))
        assert ss.logsumexp(x, axis=None) == pytest.approx(sc.logsumexp(x, axis=None), rel=1e-13)

    def test_zero_d_input_is_its_own_slice(self):
        assert ss.logsumexp(np.float64(3.0)) == 3.0
        assert ss.softmax(np.float64(3.0)) == 1.0
        assert ss.log_softmax(np.float64(3.0)) == 0.0


class TestSoftmax:
    @pytest.mark.parametrize("x", ORDINARY, ids=range(len(ORDINARY)))
    def test_scipy_parity(self, x):
        np.testing.assert_allclose(ss.softmax(x, axis=-1), sc.softmax(x, axis=-1), rtol=1e-12)

    def test_labs_large_positive_row(self):
        p = ss.softmax(np.array([1.0, 92.0, 3.0, 0.0, 2.0], dtype=np.float32))
        assert p.dtype == np.float32 and not np.isnan(p).any() and p[1] == 1.0

    def test_temperature_divides_before_the_shift(self, rng):
        x = rng.normal(size=10)
        np.testing.assert_allclose(ss.softmax(x, temperature=0.5), sc.softmax(x / 0.5), rtol=1e-13)
        np.testing.assert_allclose(ss.log_softmax(x, temperature=3.0), sc.log_softmax(x / 3.0), rtol=1e-13)

    def test_batched_rows_are_independent(self, rng):
        x = rng.normal(size=(5, 6)) * [[1], [10], [100], [1000], [1e4]]
        for i in range(5):
            np.testing.assert_array_equal(ss.softmax(x)[i], ss.softmax(x[i]))


class TestLogSoftmax:
    def test_max_entry_keeps_its_tiny_value(self):
        # SciPy and PyTorch give 0.0 at entry 1; the exact value is -exp(-52)(1 + ...) = -2.61e-23.
        got = ss.log_softmax(np.array([10.0, 92.0, 30.0, -50.0, 40.0]))[1]
        exact = -np.log1p(np.exp(-52.0) + np.exp(-62.0) + np.exp(-82.0) + np.exp(-142.0))
        assert got == pytest.approx(exact, rel=2 * eps(np.float64)) and got < 0

    @pytest.mark.parametrize("x", ORDINARY, ids=range(len(ORDINARY)))
    def test_scipy_parity(self, x):
        np.testing.assert_allclose(ss.log_softmax(x, axis=-1), sc.log_softmax(x, axis=-1), rtol=1e-12)

    def test_labs_lab02_cases_are_finite(self):
        for x in ([1000.0, 1001.0, 1002.0], [-1000.0, -999.0, -998.0]):
            assert np.isfinite(ss.log_softmax(x)).all()


@pytest.mark.parametrize("fn", FAMILY)
class TestCommon:
    @pytest.mark.parametrize("dtype", FLOAT_DTYPES, ids=DTYPE_IDS)
    def test_dtype_is_kept(self, fn, dtype, rng):
        x = rng.normal(size=(3, 5)).astype(dtype)
        assert np.asarray(getattr(ss, fn)(x)).dtype == dtype

    @pytest.mark.parametrize("dtype", [np.int32, np.int64, np.uint8, np.bool_])
    def test_integers_and_bools_promote_to_float64(self, fn, dtype):
        out = getattr(ss, fn)(np.ones((2, 3), dtype=dtype))
        assert np.asarray(out).dtype == np.float64

    def test_python_sequences(self, fn):
        np.testing.assert_array_equal(getattr(ss, fn)([[1.0, 2.0]]), getattr(ss, fn)(np.array([[1.0, 2.0]])))

    def test_input_is_never_modified(self, fn, rng):
        x = rng.normal(size=(4, 6))
        x[0, 1], x[1, :] = -np.inf, -np.inf
        before = x.copy()
        getattr(ss, fn)(x, where=x > -1)
        np.testing.assert_array_equal(x, before)

    def test_axis_equals_moveaxis(self, fn, rng):
        x = rng.normal(size=(3, 4, 5))
        moved = getattr(ss, fn)(np.moveaxis(x, 1, -1), axis=-1)
        got = getattr(ss, fn)(x, axis=1)
        np.testing.assert_array_equal(got, moved if fn == "logsumexp" else np.moveaxis(moved, -1, 1))

    def test_tuple_axis_is_one_joint_slice(self, fn, rng):
        x = rng.normal(size=(3, 4, 5))
        flat = getattr(ss, fn)(x.reshape(3, 20), axis=-1)
        got = getattr(ss, fn)(x, axis=(1, 2))
        np.testing.assert_allclose(got, flat if fn == "logsumexp" else flat.reshape(3, 4, 5), rtol=1e-15)

    def test_axis_out_of_range(self, fn):
        with pytest.raises(AxisError, match=r"axis=2 is out of range .* allowed: \[-2, 2\)"):
            getattr(ss, fn)(np.zeros((2, 3)), axis=2)

    def test_axis_repeated(self, fn):
        with pytest.raises(AxisError, match=r"axis=\(0, -2\) repeats an axis"):
            getattr(ss, fn)(np.zeros((2, 3)), axis=(0, -2))

    def test_axis_not_an_int(self, fn):
        with pytest.raises(AxisError, match=r"axis=1.5 is not an int"):
            getattr(ss, fn)(np.zeros((2, 3)), axis=1.5)

    def test_where_that_does_not_broadcast(self, fn):
        with pytest.raises(ShapeError, match=r"where of shape \(4,\) does not broadcast to the input's shape \(2, 3\)"):
            getattr(ss, fn)(np.zeros((2, 3)), where=np.ones(4, bool))

    def test_where_must_be_bool(self, fn):
        with pytest.raises(DtypeError, match="where has dtype float64"):
            getattr(ss, fn)(np.zeros(3), where=np.ones(3))

    def test_complex_input(self, fn):
        with pytest.raises(DtypeError, match="complex dtype complex128.*real input only"):
            getattr(ss, fn)(np.zeros(3, complex))

    @pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([object(), 1], dtype=object)])
    def test_string_and_object_arrays(self, fn, bad):
        with pytest.raises(DtypeError, match=r"dtype (<U1|object).*Allowed: float16, bfloat16"):
            getattr(ss, fn)(bad)

    def test_ragged_input(self, fn):
        with pytest.raises(ShapeError, match="could not be read as an array"):
            getattr(ss, fn)([[1.0, 2.0], [3.0]])


def _round_to(vals, dtype):
    """The one rounding from the compute dtype to a narrow dtype, on NumPy arrays."""
    from stablesoftmax import _compute

    return _compute.round_to(vals, np.zeros(0, dtype), np)


def test_torch_and_jax_round_once_to_16_bits():
    """Their own float64 -> 16-bit casts go through float32 and round twice; ours does not."""
    torch = pytest.importorskip("torch")
    import array_api_compat.torch as txp

    from stablesoftmax import _compute

    v = 1 + 2.0**-8 + 2.0**-30  # just above a bfloat16 midpoint; float32 rounds it onto the midpoint
    t = torch.tensor([v], dtype=torch.float64)
    assert t.to(torch.bfloat16).item() == 1.0  # the double rounding this guards against
    assert _compute.round_to(t, torch.zeros(0, dtype=torch.bfloat16), txp).item() == 1 + 2.0**-7
    w = 1 + 2.0**-11 + 2.0**-40  # the same for float16
    assert (
        _compute.round_to(torch.tensor([w], dtype=torch.float64), torch.zeros(0, dtype=torch.float16), txp).item()
        == 1 + 2.0**-10
    )


@pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
@pytest.mark.parametrize("t", [0.0, -1.0, np.inf, np.nan, "hot"])
def test_bad_temperature(fn, t):
    with pytest.raises(ArgumentError, match=r"temperature=.* must be finite and > 0"):
        getattr(ss, fn)(np.zeros(3), temperature=t)


def test_b_that_does_not_broadcast():
    with pytest.raises(ShapeError, match=r"b of shape \(4,\) does not broadcast with x of shape \(2, 3\)"):
        ss.logsumexp(np.zeros((2, 3)), b=np.ones(4))


class TestBfloat16Rounding:
    def test_single_rounding_from_float64(self):
        # 1 + 2^-8 + 2^-30 lies just above the midpoint of 1 and 1 + 2^-7: the correct bfloat16 is 1 + 2^-7.
        # Rounding through float32 first lands exactly on the midpoint and ties to even, giving 1.
        x = np.array([0.0, np.log1p(2.0**-8 + 2.0**-30)])
        assert float(_round_to(np.array([1 + 2.0**-8 + 2.0**-30]), BFLOAT16)[0]) == 1 + 2.0**-7
        assert ss.logsumexp(x.astype(np.float64)).dtype == np.float64

    def test_round_to_odd_matches_exact_rounding(self, rng):
        vals = rng.normal(size=20000) * 10.0 ** rng.integers(-30, 30, 20000)
        got = _round_to(vals, BFLOAT16).astype(np.float64)
        # Exact: the two bfloat16 neighbours of each value, pick the nearer (ties to even mantissa).
        lo = np.asarray(vals.astype(np.float32).astype(BFLOAT16), np.float64)
        cands = np.stack(
            [
                np.nextafter(lo.astype(BFLOAT16), np.array(-np.inf, BFLOAT16)).astype(np.float64),
                lo,
                np.nextafter(lo.astype(BFLOAT16), np.array(np.inf, BFLOAT16)).astype(np.float64),
            ]
        )
        best = cands[np.argmin(np.abs(cands - vals), axis=0), np.arange(len(vals))]
        assert (np.abs(got - vals) <= np.abs(best - vals)).all()


class TestTorchTensors:
    @pytest.fixture(autouse=True)
    def _library(self):
        self.torch = pytest.importorskip("torch")  # per test: a missing library skips only these

    @pytest.mark.parametrize("fn", FAMILY)
    @pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
    def test_tensor_in_tensor_out(self, fn, dtype, rng):
        torch = self.torch
        x = rng.normal(size=(3, 7))
        t = torch.tensor(x, dtype=getattr(torch, dtype))
        out = getattr(ss, fn)(t, axis=1)
        assert isinstance(out, torch.Tensor) and out.dtype == t.dtype and out.device == t.device
        ref = getattr(torch, fn)(t.double(), 1) if fn == "logsumexp" else getattr(torch, fn)(t.double(), dim=1)
        np.testing.assert_allclose(
            out.double().numpy(), ref.numpy(), rtol=2 * eps(np.dtype(dtype) if dtype != "bfloat16" else BFLOAT16)
        )

    def test_tensor_matches_numpy_bit_for_bit(self, rng):
        x = rng.normal(size=(4, 9)).astype(np.float32)
        np.testing.assert_array_equal(ss.log_softmax(self.torch.from_numpy(x)).numpy(), ss.log_softmax(x))

    def test_integer_tensor_promotes(self):
        out = ss.softmax(self.torch.tensor([1, 2, 3]))
        assert out.dtype == self.torch.float64


class TestDispatch:
    def test_numpy_input_reaches_the_kernels(self, each_path, monkeypatch):
        from stablesoftmax import _kernels

        module = _kernels.host_kernels()
        if module is None:
            assert each_path == "numpy"
            return
        calls = []
        monkeypatch.setattr(module, "lse_rows", lambda x2, where=None: calls.append(x2.shape) or np.zeros(x2.shape[0]))
        ss.logsumexp(np.ones((3, 4)), axis=0)
        assert calls == [(4, 3)]

    def test_temperature_takes_the_reference_and_where_the_kernels(self, monkeypatch):
        from stablesoftmax import _kernels

        module = _kernels.host_kernels()
        if module is None:
            pytest.skip("no compiled path here")
        calls = []
        real = module.state_rows
        monkeypatch.setattr(
            module, "state_rows", lambda x2, **k: calls.append(k.get("where") is not None) or real(x2, **k)
        )
        ss.softmax(np.ones(3), temperature=2.0)
        assert calls == []
        ss.softmax(np.ones(3), where=np.array([True, False, True]))
        assert calls == [True]


class TestArrayApiStrict:
    """The generic array-API path, on the standard's reference implementation."""

    @pytest.fixture(autouse=True)
    def _library(self):
        self.xp = pytest.importorskip("array_api_strict")  # per test: a missing library skips only these

    @pytest.mark.parametrize("fn", FAMILY)
    def test_array_type_dtype_and_device_come_back(self, fn, rng):
        x = rng.normal(size=(3, 4)).astype(np.float32)
        a = self.xp.asarray(x)
        out = getattr(ss, fn)(a, axis=0)
        assert type(out) is type(a) and out.dtype == self.xp.float32 and out.device == a.device
        np.testing.assert_array_equal(np.asarray(out), getattr(ss, fn)(x, axis=0))

    def test_integer_targets_stay_integers(self, rng):
        x = rng.normal(size=(2, 3))
        got = ss.cross_entropy(self.xp.asarray(x), self.xp.asarray([0, 2]), reduction="none")
        np.testing.assert_array_equal(np.asarray(got), ss.cross_entropy(x, np.array([0, 2]), reduction="none"))


# ---------------------------------------------------------------------------
# Properties (Hypothesis, deterministic profile in conftest.py)
# ---------------------------------------------------------------------------

finite = st.floats(-50, 50, allow_nan=False, width=16)


def arrays(dtype, min_side=0):
    """Arrays of ``dtype``; bfloat16 ones are drawn as float16 values (exact in bfloat16's range) and cast."""
    shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=min_side, max_side=6)
    if np.dtype(dtype) == BFLOAT16:
        return hnp.arrays(
            np.float32, shapes, elements=st.floats(-50, 50, width=16).map(lambda v: float(np.float32(v)))
        ).map(lambda a: a.astype(BFLOAT16))
    return hnp.arrays(dtype, shapes, elements=finite)


dtypes = st.sampled_from([np.dtype(np.float16), BFLOAT16, np.dtype(np.float32), np.dtype(np.float64)])


def on_shift_grid(dtype):
    """Arrays of ``dtype`` on a grid whose every shift by ``SHIFTS`` is exact: multiples of ``2**(7 - p)``.

    ``|x + c| < 128 = 2**7`` for ``|x| <= 50`` and ``|c| <= 64``, so ``p`` bits
    (the dtype's precision) hold any multiple of ``2**(7 - p)`` there.
    """
    quantum = 2.0 ** (7 - round(1 - np.log2(eps(dtype))))
    top = int(50 / quantum)
    grid = st.integers(-top, top).map(lambda n: n * quantum)
    shapes = hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6)
    return hnp.arrays(np.float64, shapes, elements=grid).map(lambda a: a.astype(dtype))


SHIFTS = [-64.0, -8.0, 0.5, 8.0, 64.0]


@given(data=st.data(), dtype=dtypes)
def test_shift_invariance(data, dtype):
    x = data.draw(on_shift_grid(dtype))
    c = data.draw(st.sampled_from(SHIFTS))
    shifted = (x.astype(np.float64) + c).astype(dtype)
    assert (shifted.astype(np.float64) - c == x.astype(np.float64)).all()  # the grid keeps the shift exact
    tol = rtol(dtype, 4)
    np.testing.assert_allclose(
        np.asarray(ss.softmax(shifted), np.float64), np.asarray(ss.softmax(x), np.float64), rtol=tol, atol=tol
    )
    np.testing.assert_allclose(
        np.asarray(ss.logsumexp(shifted), np.float64),
        np.asarray(ss.logsumexp(x), np.float64) + c,
        rtol=tol,
        atol=tol * (abs(c) + 50),
    )


@given(x=arrays(np.float64, min_side=1))
def test_softmax_sums_to_one(x):
    np.testing.assert_allclose(ss.softmax(x).sum(axis=-1), 1.0, rtol=x.shape[-1] * eps(np.float64))


@given(x=arrays(np.float64))
def test_lse_bounds(x):
    lse = ss.logsumexp(x)
    if x.shape[-1] == 0:
        assert (lse == -np.inf).all()
        return
    m = x.max(axis=-1)
    assert (m <= lse).all() and (
        lse <= m + np.log(x.shape[-1]) * (1 + 4 * eps(np.float64)) + 4 * eps(np.float64) * abs(m)
    ).all()


@given(x=arrays(np.float64, min_side=1))
def test_log_softmax_is_log_of_softmax_where_finite(x):
    with np.errstate(divide="ignore"):  # log(0) where a probability underflows; those entries are skipped
        via = np.log(ss.softmax(x))
    ok = np.isfinite(via)
    np.testing.assert_allclose(ss.log_softmax(x)[ok], via[ok], rtol=8 * eps(np.float64), atol=8 * eps(np.float64))


@given(data=st.data(), dtype=dtypes)
def test_dtype_and_shape_are_kept(data, dtype):
    x = data.draw(arrays(dtype))
    for fn in ("softmax", "log_softmax"):
        out = np.asarray(getattr(ss, fn)(x))
        assert out.dtype == dtype and out.shape == x.shape
    assert np.asarray(ss.logsumexp(x)).shape == x.shape[:-1]


@given(data=st.data())
def test_masking_equals_slicing(data):
    x = data.draw(hnp.arrays(np.float64, st.integers(1, 12), elements=finite))
    keep = data.draw(hnp.arrays(np.bool_, x.shape))
    noise = np.where(keep, x, data.draw(st.sampled_from([np.nan, np.inf, -np.inf, 1e308])))
    # Not bit-equal: NumPy's pairwise sum groups the terms differently once zeros sit between them.
    tol = rtol(np.float64, 4)
    np.testing.assert_allclose(ss.logsumexp(noise, where=keep), ss.logsumexp(x[keep]), rtol=tol)
    np.testing.assert_allclose(ss.softmax(noise, where=keep)[keep], ss.softmax(x[keep]), rtol=tol)
    np.testing.assert_allclose(ss.log_softmax(noise, where=keep)[keep], ss.log_softmax(x[keep]), rtol=tol)
    assert (ss.softmax(noise, where=keep)[~keep] == 0).all()
    assert (ss.log_softmax(noise, where=keep)[~keep] == -np.inf).all()


@given(data=st.data())
def test_axis_equals_moveaxis_property(data):
    x = data.draw(hnp.arrays(np.float64, hnp.array_shapes(min_dims=2, max_dims=4, max_side=4), elements=finite))
    axis = data.draw(st.integers(0, x.ndim - 1))
    np.testing.assert_array_equal(ss.logsumexp(x, axis=axis), ss.logsumexp(np.moveaxis(x, axis, -1)))
    np.testing.assert_array_equal(ss.softmax(x, axis=axis), np.moveaxis(ss.softmax(np.moveaxis(x, axis, -1)), -1, axis))
