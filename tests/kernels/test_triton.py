"""The Triton kernels against the numba kernels, mpmath, the edge-case contract, and their memory traffic.

Without a GPU the kernels run under Triton's interpreter (``TRITON_INTERPRET=1``,
set here before triton is imported), which executes the kernel code on CPU
tensors through NumPy: the arithmetic the device would do, in the same order
within a row. The interpreter is slow, so shapes stay small; the multi-block
(online) path is reached by lowering the block size.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # before anything imports triton

import functools  # noqa: E402
import math  # noqa: E402

import ml_dtypes  # noqa: E402
import mpmath  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from stablesoftmax import ArgumentError, DtypeError, ShapeError  # noqa: E402
from tests.accuracy_harness import battery, reference, ulp_errors  # noqa: E402
from tests.helpers import ulp_goal  # noqa: E402

torch = pytest.importorskip("torch")
pytest.importorskip("triton")
pytest.importorskip("numba")
from stablesoftmax._kernels import cpu as _kernels  # noqa: E402
from stablesoftmax._kernels import triton as tk  # noqa: E402

if not tk.available():
    pytest.skip("no device for Triton and TRITON_INTERPRET is not 1", allow_module_level=True)

INTERPRETING = os.environ["TRITON_INTERPRET"] == "1"
DEVICE = "cpu" if INTERPRETING else "cuda"
EPS64 = 2.0**-52
NUMBA_DTYPES = [np.dtype(np.float32), np.dtype(np.float64)]
NARROW = {"float16": np.dtype(np.float16), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float32": np.dtype(np.float32)}
INF, NAN = math.inf, math.nan


# --------------------------------------------------------------------------
# Moving arrays between NumPy (numba, mpmath) and torch (the kernels)
# --------------------------------------------------------------------------


def to_torch(a: np.ndarray):
    if a.dtype == ml_dtypes.bfloat16:  # torch.from_numpy does not know ml_dtypes
        return torch.from_numpy(a.view(np.uint16).copy()).view(torch.bfloat16).to(DEVICE)
    return torch.from_numpy(a.copy()).to(DEVICE)


def to_numpy(t) -> np.ndarray:
    t = t.cpu()
    if t.dtype == torch.bfloat16:
        return t.view(torch.uint16).numpy().view(ml_dtypes.bfloat16)
    return t.numpy()


def triton_state(x: np.ndarray, where=None, out_dtype=None, log=False):
    """``(m, k, s)`` and, with ``out_dtype``, the softmax (log-softmax) of the Triton kernels, as NumPy."""
    out = None if out_dtype is None else torch.empty(x.shape, dtype=out_dtype, device=DEVICE)
    m, k, s = tk.state_rows(to_torch(x), where=None if where is None else to_torch(where), out=out, log=log)
    return to_numpy(m), to_numpy(k), to_numpy(s), None if out is None else to_numpy(out)


def numba_state(x: np.ndarray, where=None, out_dtype=None, log=False):
    out = None if out_dtype is None else np.empty(x.shape, out_dtype)
    m, k, s = _kernels.state_rows(x, where=where, out=out, log=log)
    return m, k, s, out


def torch_dtype(dt: np.dtype):
    return {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}.get(dt.name, torch.float64)


def assert_same(got: np.ndarray, want: np.ndarray) -> None:
    """Bit-for-bit equal values, NaN equal to NaN (the contract's special values)."""
    np.testing.assert_array_equal(got, want, strict=True)


def assert_s_close(got: np.ndarray, want: np.ndarray, dtype: np.dtype) -> None:
    """``s`` from two summation orders: within 16 float64 epsilons, special values equal.

    For float32 input both use the degree-9 ``exp`` (4.1e-14 relative) whose one-constant
    reduction ``d - n ln2`` numba contracts to an FMA and the interpreter does not: the terms
    differ by up to ``|d|`` float64 ulps, so there the bound is twice the ``exp``'s error.
    """
    finite = np.isfinite(want)
    assert_same(got[~finite], want[~finite])
    rtol = 16 * EPS64 if dtype == np.float64 else 2 * 4.1e-14 + 16 * EPS64
    np.testing.assert_allclose(got[finite], want[finite], rtol=rtol, atol=0)


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 16 logits: rows of a few dozen take the online path, with its rescaling."""
    monkeypatch.setattr(tk, "_MAX_BLOCK", 16)


# Rows that test the contract: (values, where), with NaN/inf in and out of the mask.
SPECIAL_ROWS = [
    ([-INF, -INF, -INF, -INF], None),
    ([1.0, INF, 2.0, INF], None),
    ([INF, -INF, 0.0, 3.0], None),
    ([1.0, NAN, INF, NAN], None),
    ([INF, 1.0, NAN, 0.0], None),
    ([1.0, 2.0, 3.0, 4.0], [False, False, False, False]),
    ([NAN, 4.0, INF, 4.0], [False, True, False, True]),
    ([3.0, NAN, 3.0, -INF], [True, False, True, True]),
]


def special_batch(dtype: np.dtype, width: int = 4):
    """The special rows, each spread over ``width`` columns (the others ``-inf``, allowed)."""
    x = np.full((len(SPECIAL_ROWS), width), -INF)
    where = np.ones(x.shape, bool)
    cols = np.linspace(0, width - 1, 4).astype(int)
    for i, (row, mask) in enumerate(SPECIAL_ROWS):
        x[i, cols] = row
        if mask is not None:
            where[i, cols] = mask
    return x.astype(dtype), where


# --------------------------------------------------------------------------
# state_rows
# --------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", NUMBA_DTYPES, ids=str)
class TestStateRowsAgainstNumba:
    def test_state(self, dtype, rng):
        """m and k exactly, s within a few float64 ulps, over widths 1..300 and four scales."""
        for scale in (1.0, 10.0, 100.0, 1e4):
            for width in (1, 2, 7, 64, 300):
                x = (rng.standard_normal((3, width)) * scale).astype(dtype)
                if width > 3:
                    x[0, 2] = x[0].max()  # a tie: the first copy is the max
                m, k, s, _ = triton_state(x)
                m2, k2, s2, _ = numba_state(x)
                assert_same(m, m2)
                assert_same(k, k2)
                assert_s_close(s, s2, dtype)

    def test_masked(self, dtype, rng):
        """Masked entries count as -inf, even when they hold NaN, +inf or the largest value."""
        x = (rng.standard_normal((4, 50)) * 5).astype(dtype)
        where = rng.random(x.shape) < 0.6
        x[~where] = rng.choice(np.array([NAN, INF, 1e30, -3.0], dtype))
        m, k, s, out = triton_state(x, where, torch_dtype(dtype))
        m2, k2, s2, out2 = numba_state(x, where, dtype)
        assert_same(m, m2)
        assert_same(k, k2)
        assert_s_close(s, s2, dtype)
        np.testing.assert_allclose(out, out2, rtol=8 * np.finfo(dtype).eps, atol=0)

    @pytest.mark.usefixtures("small_blocks")
    def test_online_blocks(self, dtype, rng):
        """Several blocks per row: a max that rises in every block, a falling one, a random one."""
        x = rng.standard_normal((4, 100)) * 3
        x[1] = np.sort(x[1])  # ascending: the state is rescaled at every block
        x[2] = np.sort(x[2])[::-1]
        x[3, 99] = 40.0  # the max in the last block, far above the rest
        x = x.astype(dtype)
        m, k, s, _ = triton_state(x)
        m2, k2, s2, _ = numba_state(x)
        assert_same(m, m2)
        assert_same(k, k2)
        assert_s_close(s, s2, dtype)

    @pytest.mark.parametrize("width", [4, 40], ids=["one block", "three blocks"])
    @pytest.mark.parametrize("log", [False, True], ids=["softmax", "log_softmax"])
    @pytest.mark.usefixtures("small_blocks")
    def test_special_rows_exactly(self, dtype, width, log):
        """All -inf, +inf, NaN, all masked and masked specials: every output equal to the numba kernels'."""
        x, where = special_batch(dtype, width)
        got = triton_state(x, where, torch_dtype(dtype), log)
        want = numba_state(x, where, dtype, log)
        for g, w in zip(got, want, strict=True):
            assert_same(g, w)

    def test_float64_output_of_narrower_input(self, dtype, rng):
        """out may be float64 for float32 input: the float64 result, not a widened float32."""
        x = rng.standard_normal((3, 33)).astype(dtype)
        for log in (False, True):
            *_, out = triton_state(x, out_dtype=torch.float64, log=log)
            *_, out2 = numba_state(x, out_dtype=np.float64, log=log)
            rtol = 8 * EPS64 if dtype == np.float64 else 2 * 4.1e-14  # see assert_s_close
            np.testing.assert_allclose(out, out2, rtol=rtol, atol=0)


def test_empty_rows_and_no_rows():
    """K = 0: m = -inf, k = -1, s = 0 for every row (no launch); N = 0: empty results."""
    m, k, s, _ = triton_state(np.empty((3, 0)))
    assert_same(m, np.full(3, -INF))
    assert_same(k, np.full(3, -1, np.int64))
    assert_same(s, np.zeros(3))
    m, k, s, out = triton_state(np.empty((0, 5), np.float32), out_dtype=torch.float32)
    assert m.shape == k.shape == s.shape == (0,) and out.shape == (0, 5)


# --------------------------------------------------------------------------
# Accuracy against mpmath: the battery, padded into one masked batch per dtype
# --------------------------------------------------------------------------


@functools.cache
def battery_results(dtype_name: str):
    """The quick battery run as one ``[rows, width]`` batch, each row padded with masked entries.

    Returns the cases and, per function, the results as computed by the kernels (a
    launch is slow under the interpreter: one batch per dtype serves three tests).
    """
    dtype = {**NARROW, "float64": np.dtype(np.float64)}[dtype_name]
    cases = battery(dtype, seed=0, quick=True)
    width = max(c.x.size for c in cases)
    x = np.zeros((len(cases), width), dtype)
    where = np.zeros(x.shape, bool)
    for i, c in enumerate(cases):
        x[i, : c.x.size] = c.x
        where[i, : c.x.size] = True if c.where is None else c.where
    m, _, s, softmax = triton_state(x, where, torch_dtype(dtype))
    *_, log_softmax = triton_state(x, where, torch_dtype(dtype), log=True)
    lse = rounded_once(m + np.log1p(s), dtype)[:, None]  # the caller's finish, on [N] vectors
    return cases, {"softmax": softmax, "log_softmax": log_softmax, "logsumexp": lse}


def worst_ulps(cases, values, function: str) -> float:
    worst = 0.0
    for c, row in zip(cases, values, strict=True):
        got = row[: c.x.size] if function != "logsumexp" else row
        worst = max(worst, float(ulp_errors(got, reference(c)[function]).max()))
    return worst


def rounded_once(v64, dtype: np.dtype) -> np.ndarray:
    """float64 values correctly rounded to ``dtype`` (round-to-odd to float32 first for 16-bit)."""
    import array_api_compat

    from stablesoftmax._precision import round_to

    t = torch.as_tensor(v64)
    like = torch.empty(0, dtype=torch_dtype(dtype))
    return to_numpy(round_to(t, like, array_api_compat.array_namespace(t)))


@pytest.mark.parametrize("dtype", [*NARROW.values(), np.dtype(np.float64)], ids=str)
class TestAccuracy:
    """16-bit and float32 correctly rounded; float64 within the project's goals.

    A narrow result is rounded once from a float64 value within 1e-13 relative
    of the exact one (the module's bound): correctly, unless the exact value
    lies closer than that to a midpoint, ``1e-13 * 2**(p-1)`` ulp for a
    ``p``-bit significand, which float64 work cannot resolve.
    """

    def goal(self, function: str, dtype: np.dtype) -> float:
        if dtype == np.float64:
            return ulp_goal(function, dtype)
        bits = {"float16": 11, "bfloat16": 8, "float32": 24}[dtype.name]
        return 0.5 + 1e-13 * 2.0 ** (bits - 1)

    @pytest.mark.parametrize("function", ["softmax", "log_softmax", "logsumexp"])
    def test_battery(self, dtype, function):
        cases, results = battery_results(dtype.name)
        assert worst_ulps(cases, results[function], function) <= self.goal(function, dtype)

    @pytest.mark.usefixtures("small_blocks")
    def test_online_rescaling(self, dtype, rng):
        """Rows of 25 blocks whose max rises in every block: the rescaled sum stays within the goals."""
        x = np.sort(rng.standard_normal((2, 400)) * 4, axis=-1).astype(dtype)
        x[1] = x[1, ::-1]
        *_, out = triton_state(x, out_dtype=torch_dtype(dtype), log=True)
        for row, got in zip(x, out, strict=True):
            with mpmath.workprec(200):
                xs = [mpmath.mpf(float(v)) for v in row]
                top = max(xs)
                lse = top + mpmath.log(mpmath.fsum(mpmath.exp(v - top) for v in xs))
                err = max(
                    abs(mpmath.mpf(float(g)) - (v - lse)) / _ulp(v - lse, dtype) for g, v in zip(got, xs, strict=True)
                )
            assert err <= self.goal("log_softmax", dtype)


def test_log1p_within_one_ulp(rng):
    """The in-kernel log1p of the fused log-softmax, against mpmath over [0, 1e6], NaN kept."""
    import triton
    import triton.language as tl

    @triton.jit
    def apply(x_ptr, out_ptr, BLOCK: tl.constexpr):
        cols = tl.arange(0, BLOCK)
        tl.store(out_ptr + cols, tk._log1p(tl.load(x_ptr + cols)))

    edges = [0.0, 5e-324, 1e-300, 2.0**-53, 1.2e-16, 1e-8, 0.41421, 0.4142135623730951, 0.5, 1.0, 2.0, 3.0, 1e6]
    x = np.concatenate([edges, 10.0 ** rng.uniform(-17, 6, 1024 - len(edges) - 1), [NAN]])
    out = torch.empty(x.size, dtype=torch.float64, device=DEVICE)
    with np.errstate(all="ignore"):
        apply[(1,)](to_torch(x), out, BLOCK=x.size)
    got = to_numpy(out)
    assert math.isnan(got[-1])
    with mpmath.workprec(120):
        worst = max(
            abs(mpmath.mpf(float(g)) - mpmath.log1p(mpmath.mpf(float(v)))) / _ulp(mpmath.log1p(float(v)), x.dtype)
            for v, g in zip(x[:-1], got[:-1], strict=True)
            if v > 0
        )
    assert got[0] == 0.0 and worst <= 1.0


def _ulp(v, dtype: np.dtype):
    from tests.accuracy_harness import ulp

    return ulp(v, dtype)


# --------------------------------------------------------------------------
# Cross-entropy
# --------------------------------------------------------------------------

CE_OPTIONS = {
    "plain": {},
    "weight": {"weight": True},
    "smoothing": {"label_smoothing": 0.1},
    "weight+smoothing": {"weight": True, "label_smoothing": 0.3},
    "where": {"where": True},
    "where+weight+smoothing": {"where": True, "weight": True, "label_smoothing": 0.2},
    "z_grad": {"z_grad": True},
    "full smoothing": {"label_smoothing": 1.0, "where": True},
}


def ce_inputs(rng, dtype: np.dtype, shape=(6, 37), **opts):
    """Logits, targets (row 1 ignored: g = 0) and the options, as NumPy; masked targets included."""
    n, c = shape
    x = (rng.standard_normal(shape) * 4).astype(dtype)
    y = rng.integers(0, c, n)
    kw = {"g": rng.uniform(0.5, 2.0, n)}
    kw["g"][1] = 0.0
    if opts.get("where"):
        where = rng.random(shape) < 0.7
        where[np.arange(n), y] = True
        where[0, y[0]] = False  # a masked target: the loss is +inf, its gradient entry 0
        where[2] = False  # a fully masked row
        kw["where"] = where
    if opts.get("weight"):
        kw["weight"] = rng.uniform(0.1, 3.0, c)
    if opts.get("z_grad"):
        kw["z_grad"] = rng.uniform(0.0, 0.1, n)
    kw["label_smoothing"] = opts.get("label_smoothing", 0.0)
    return x, y, kw


def triton_ce(x, y, kw, grad_dtype=None):
    tkw = {k: (to_torch(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
    grad = None if grad_dtype is None else torch.empty(x.shape, dtype=grad_dtype, device=DEVICE)
    if grad is None:
        tkw.pop("g"), tkw.pop("z_grad", None)
    parts = tk.cross_entropy_rows(to_torch(x), to_torch(y), grad=grad, **tkw)
    return [to_numpy(p) for p in parts], None if grad is None else to_numpy(grad)


def numba_ce(x, y, kw, grad_dtype=None):
    grad = None if grad_dtype is None else np.empty(x.shape, grad_dtype)
    kw = dict(kw)
    if grad is None:
        kw.pop("g"), kw.pop("z_grad", None)
    parts = _kernels.cross_entropy_rows(x, y, grad=grad, **kw)
    return list(parts), grad


def assert_close_rows(got: np.ndarray, want: np.ndarray, rtol: float) -> None:
    """Elementwise within ``rtol`` of each row's largest magnitude (entries that cancel, ``A p_c - a_c``,
    are held to the row's scale), special values equal."""
    special = ~np.isfinite(want)
    assert_same(got[special], want[special])
    scale = np.nanmax(np.where(np.isfinite(want), np.abs(want), 0.0), axis=-1, keepdims=True)
    assert (np.abs(got - want)[~special] <= (rtol * np.broadcast_to(scale, want.shape))[~special]).all()


@pytest.mark.parametrize("option", CE_OPTIONS, ids=str)
class TestCrossEntropyAgainstNumba:
    def test_float64_parts_and_gradient(self, option, rng):
        """Every option: the parts and the gradient within 1e-13 of the numba kernels' (float64)."""
        x, y, kw = ce_inputs(rng, np.dtype(np.float64), **CE_OPTIONS[option])
        parts, grad = triton_ce(x, y, kw, torch.float64)
        want, grad2 = numba_ce(x, y, kw, np.float64)
        for name, got, ref in zip(tk.CrossEntropyRows._fields, parts, want, strict=True):
            if name in ("m", "k", "x_target", "allowed"):
                assert_same(got, ref)
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-13, atol=0, err_msg=name)
        assert_close_rows(grad, grad2, 1e-13)

    @pytest.mark.usefixtures("small_blocks")
    def test_online_blocks(self, option, rng):
        """Rows of three blocks, ascending in one row: the shift sum is rebased as the max rises."""
        x, y, kw = ce_inputs(rng, np.dtype(np.float64), (4, 45), **CE_OPTIONS[option])
        x[3] = np.sort(x[3])
        parts, grad = triton_ce(x, y, kw, torch.float64)
        want, grad2 = numba_ce(x, y, kw, np.float64)
        for name, got, ref in zip(tk.CrossEntropyRows._fields, parts, want, strict=True):
            np.testing.assert_allclose(got, ref, rtol=1e-13, atol=0, err_msg=name)
        assert_close_rows(grad, grad2, 1e-13)

    def test_float32_gradient_within_one_ulp(self, option, rng):
        """Both round the same float64 value once: equal but within a float32 ulp of a midpoint."""
        x, y, kw = ce_inputs(rng, np.dtype(np.float32), **CE_OPTIONS[option])
        _, grad = triton_ce(x, y, kw, torch.float32)
        _, grad2 = numba_ce(x, y, kw, np.float32)
        special = ~np.isfinite(grad2)
        assert_same(grad[special], grad2[special])
        ulps = np.abs(grad - grad2)[~special] / np.spacing(np.abs(grad2[~special]))
        assert ulps.max(initial=0.0) <= 1.0


class TestCrossEntropy:
    @pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
    @pytest.mark.parametrize("option", ["plain", "where+weight+smoothing"])
    def test_16bit_gradient_rounded_once(self, dtype, option, rng):
        """16-bit logits are read as they are: the parts are those of the same logits in float64 (to the
        narrow exp's 4.1e-14), and the gradient is their float64 gradient, correctly rounded."""
        dt = NARROW[dtype]
        x, y, kw = ce_inputs(rng, dt, (6, 300), **CE_OPTIONS[option])
        parts, grad = triton_ce(x, y, kw, torch_dtype(dt))
        want, grad64 = numba_ce(x.astype(np.float64), y, kw, np.float64)
        for name, got, ref in zip(tk.CrossEntropyRows._fields, parts, want, strict=True):
            if name in ("m", "k", "x_target", "allowed"):
                assert_same(got, ref)
            else:
                np.testing.assert_allclose(got, ref, rtol=1e-13, atol=0, err_msg=name)
        assert_same(grad.astype(np.float64), rounded_once(grad64, dt).astype(np.float64))

    @pytest.mark.parametrize("dtype", NUMBA_DTYPES, ids=str)
    @pytest.mark.parametrize("width", [4, 40], ids=["one block", "three blocks"])
    @pytest.mark.usefixtures("small_blocks")
    def test_special_rows(self, dtype, width):
        """The contract rows: the state, the target logit and the gradient equal the numba kernels'."""
        x, where = special_batch(dtype, width)
        y = np.array([0, 1, 2, 0, 3, 0, 1, 0]) * (width // 4)
        kw = {"where": where, "g": np.ones(len(x)), "label_smoothing": 0.0}
        parts, grad = triton_ce(x, y, kw, torch_dtype(dtype))
        want, grad2 = numba_ce(x, y, kw, dtype)
        for got, ref in zip(parts[:4], want[:4], strict=True):
            assert_same(got, ref)
        assert_same(grad, grad2)

    def test_smoothing_sums_of_special_rows(self):
        """shift_sum is -inf with an allowed -inf logit, and on a +inf row -inf unless every allowed entry is +inf."""
        x = np.array([[0.0, -INF, 1.0], [INF, 0.0, 1.0], [-INF, -INF, -INF], [2.0, 1.0, 0.0]])
        where = np.array([[True] * 3, [True] * 3, [True, False, True], [True, True, False]])
        kw = {"where": where, "g": np.ones(4), "label_smoothing": 0.5}
        parts, _ = triton_ce(x, np.zeros(4, np.int64), kw)
        want, _ = numba_ce(x, np.zeros(4, np.int64), kw)
        for got, ref in zip(parts[4:], want[4:], strict=True):
            assert_same(got, ref)

    def test_inputs_are_not_written(self, rng):
        x, y, kw = ce_inputs(rng, np.dtype(np.float32), where=True, weight=True, z_grad=True, label_smoothing=0.1)
        tx, ty = to_torch(x), to_torch(y)
        tkw = {k: (to_torch(v) if isinstance(v, np.ndarray) else v) for k, v in kw.items()}
        before = [t.clone() for t in (tx, ty, *[v for v in tkw.values() if isinstance(v, torch.Tensor)])]
        tk.cross_entropy_rows(tx, ty, grad=torch.empty_like(tx), **tkw)
        after = (tx, ty, *[v for v in tkw.values() if isinstance(v, torch.Tensor)])
        assert all(torch.equal(a, b) for a, b in zip(before, after, strict=True))


# --------------------------------------------------------------------------
# Bad input: clear errors, raised before any launch
# --------------------------------------------------------------------------


class TestErrors:
    def test_state_rows_arguments(self):
        x = torch.zeros((2, 3), device=DEVICE)
        with pytest.raises(DtypeError, match="int64"):
            tk.state_rows(torch.zeros((2, 3), dtype=torch.int64))
        with pytest.raises(ShapeError, match=r"shape \(3,\)"):
            tk.state_rows(torch.zeros(3))
        with pytest.raises(ShapeError, match="unit stride"):
            tk.state_rows(torch.zeros((3, 2)).t())
        with pytest.raises(DtypeError, match="where has dtype torch.float32"):
            tk.state_rows(x, where=torch.ones((2, 3)))
        with pytest.raises(DtypeError, match="float64 or x's dtype"):
            tk.state_rows(x, out=torch.empty((2, 3), dtype=torch.float16))
        with pytest.raises(ShapeError, match=r"out has shape \(3, 2\)"):
            tk.state_rows(x, out=torch.empty((3, 2)))

    def test_cross_entropy_arguments(self):
        x, y = torch.zeros((2, 3)), torch.zeros(2, dtype=torch.int64)
        with pytest.raises(ShapeError, match="at least one class"):
            tk.cross_entropy_rows(torch.zeros((2, 0)), y)
        with pytest.raises(DtypeError, match="integers"):
            tk.cross_entropy_rows(x, torch.zeros(2))
        with pytest.raises(ShapeError, match=r"target has shape \(3,\)"):
            tk.cross_entropy_rows(x, torch.zeros(3, dtype=torch.int64))
        with pytest.raises(ArgumentError, match="label_smoothing=1.5"):
            tk.cross_entropy_rows(x, y, label_smoothing=1.5)
        with pytest.raises(ArgumentError, match="g is None"):
            tk.cross_entropy_rows(x, y, grad=torch.empty_like(x))
        with pytest.raises(ShapeError, match=r"g has shape \(3,\)"):
            tk.cross_entropy_rows(x, y, grad=torch.empty_like(x), g=torch.ones(3))
        with pytest.raises(DtypeError, match="grad has dtype torch.float16"):
            tk.cross_entropy_rows(x, y, grad=torch.empty((2, 3), dtype=torch.float16), g=torch.ones(2))
        with pytest.raises(ShapeError, match=r"weight has shape \(2,\)"):
            tk.cross_entropy_rows(x, y, weight=torch.ones(2))

    @pytest.mark.skipif(not INTERPRETING, reason="counts the interpreter's launches")
    def test_raised_before_any_launch(self, monkeypatch):
        """A bad gradient argument is found before the forward launch, not after it."""
        traffic = Traffic(monkeypatch)
        x, y = torch.zeros((2, 3)), torch.zeros(2, dtype=torch.int64)
        with pytest.raises(ShapeError, match="z_grad"):
            tk.cross_entropy_rows(x, y, grad=torch.empty_like(x), g=torch.ones(2), z_grad=torch.ones(5))
        assert traffic.launches == 0

    def test_out_of_range_target_reads_nothing(self):
        """Not checked on the device (a sync): the target logit is NaN, so is the loss."""
        parts = tk.cross_entropy_rows(torch.zeros((2, 3)), torch.tensor([0, 7]))
        assert_same(to_numpy(parts.x_target), np.array([0.0, NAN]))


# --------------------------------------------------------------------------
# Memory traffic and launches, counted by the interpreter
# --------------------------------------------------------------------------


class Traffic:
    """Bytes every load and store moves (masked-off lanes excluded) and the number of launches."""

    def __init__(self, monkeypatch):
        from triton.runtime import interpreter

        self.loaded = self.stored = self.launches = 0
        builder = interpreter.interpreter_builder
        load, store = builder.create_masked_load, builder.create_masked_store

        def counted_load(ptrs, mask, *args):
            self.loaded += int(np.count_nonzero(np.broadcast_to(mask.data, ptrs.data.shape))) * self.size(ptrs)
            return load(ptrs, mask, *args)

        def counted_store(ptrs, value, mask, *args):
            self.stored += int(np.count_nonzero(np.broadcast_to(mask.data, ptrs.data.shape))) * self.size(ptrs)
            return store(ptrs, value, mask, *args)

        call = interpreter.GridExecutor.__call__

        def counted_call(executor, *args, **kwargs):
            self.launches += 1
            return call(executor, *args, **kwargs)

        monkeypatch.setattr(builder, "create_masked_load", counted_load)
        monkeypatch.setattr(builder, "create_masked_store", counted_store)
        monkeypatch.setattr(interpreter.GridExecutor, "__call__", counted_call)

    @staticmethod
    def size(ptrs) -> int:
        return max(1, ptrs.get_element_ty().primitive_bitwidth // 8)  # a bool is a byte

    def total(self) -> int:
        return self.loaded + self.stored


@pytest.mark.skipif(not INTERPRETING, reason="counts the interpreter's loads and stores")
class TestTraffic:
    """At (16, 4096) bfloat16: the logits are read once per pass, outputs written once, at most 4 launches."""

    N, C = 16, 4096
    PER_ROW = 128  # bytes per row for the [N] vectors (state, targets, cotangents): O(N)

    @pytest.fixture
    def logits(self, rng):
        return torch.from_numpy(rng.standard_normal((self.N, self.C)).astype(np.float32)).to(torch.bfloat16)

    def bound(self, factor: float, x) -> float:
        return factor * x.numel() * x.element_size() + self.PER_ROW * self.N

    def test_logsumexp(self, monkeypatch, logits):
        traffic = Traffic(monkeypatch)
        tk.state_rows(logits)
        assert traffic.total() <= self.bound(1.1, logits) and traffic.launches <= 4

    def test_softmax(self, monkeypatch, logits):
        traffic = Traffic(monkeypatch)
        tk.state_rows(logits, out=torch.empty_like(logits))
        assert traffic.total() <= self.bound(2.1, logits) and traffic.launches <= 4

    def test_log_softmax(self, monkeypatch, logits):
        traffic = Traffic(monkeypatch)
        tk.state_rows(logits, out=torch.empty_like(logits), log=True)
        assert traffic.total() <= self.bound(2.1, logits) and traffic.launches <= 4

    def test_cross_entropy_forward(self, monkeypatch, logits, rng):
        traffic = Traffic(monkeypatch)
        tk.cross_entropy_rows(logits, torch.from_numpy(rng.integers(0, self.C, self.N)), label_smoothing=0.1)
        assert traffic.total() <= self.bound(1.1, logits) and traffic.launches <= 4

    def test_cross_entropy_forward_and_backward(self, monkeypatch, logits, rng):
        traffic = Traffic(monkeypatch)
        y = torch.from_numpy(rng.integers(0, self.C, self.N))
        tk.cross_entropy_rows(logits, y, grad=torch.empty_like(logits), g=torch.ones(self.N))
        assert traffic.total() <= self.bound(3.1, logits) and traffic.launches <= 4

    def test_the_gradient_given_the_parts_is_one_read_and_one_write(self, monkeypatch, logits, rng):
        y = torch.from_numpy(rng.integers(0, self.C, self.N))
        want = torch.empty_like(logits)
        tk.cross_entropy_rows(logits, y, grad=want, g=torch.ones(self.N))
        parts = tk.cross_entropy_rows(logits, y)
        traffic = Traffic(monkeypatch)
        got = torch.empty_like(logits)
        tk.cross_entropy_rows(logits, y, grad=got, g=torch.ones(self.N), parts=parts)
        assert traffic.total() <= self.bound(2.1, logits) and traffic.launches == 1
        assert torch.equal(got.view(torch.int16), want.view(torch.int16))  # the same bits as with its own parts

    def test_block_gradient_is_one_read_and_one_write(self, monkeypatch, logits, rng):
        m, k, s = tk.state_rows(logits)
        y = torch.from_numpy(rng.integers(0, self.C, self.N))
        ones, zeros = torch.ones(self.N, dtype=torch.float64), torch.zeros(self.N, dtype=torch.float64)
        traffic = Traffic(monkeypatch)
        alive = torch.ones(self.N, dtype=torch.bool)
        tk.block_gradient_rows(logits, 0, m, k, s, y, alive, ones, ones, zeros, zeros, 1.0, out=logits)
        assert traffic.total() <= self.bound(2.1, logits) and traffic.launches == 1

    @pytest.mark.parametrize("options", [{}, {"label_smoothing": 0.1, "reduction": "sum"}], ids=["plain", "smoothed"])
    def test_public_cross_entropy_forward_and_backward(self, monkeypatch, logits, rng, options):
        """Through the public API and autograd: the forward's read, then the gradient's, from the forward's parts."""
        import stablesoftmax as ss

        x = logits.clone().requires_grad_()
        y = torch.from_numpy(rng.integers(0, self.C, self.N))
        traffic = Traffic(monkeypatch)
        with ss.triton_path():
            ss.cross_entropy(x, y, **options).backward()
        assert traffic.total() <= self.bound(3.1, logits) and traffic.launches == 2

    def test_public_cross_entropy_with_grad(self, monkeypatch, logits, rng):
        """``cross_entropy_with_grad`` on a tensor: the same two launches."""
        import stablesoftmax as ss

        y = torch.from_numpy(rng.integers(0, self.C, self.N))
        traffic = Traffic(monkeypatch)
        with ss.triton_path():
            ss.cross_entropy_with_grad(logits, y)
        assert traffic.total() <= self.bound(3.1, logits) and traffic.launches == 2

    def test_the_counter_counts(self, monkeypatch, logits):
        """The softmax both reads and writes the logits' bytes: the counter sees each (not a vacuous bound)."""
        traffic = Traffic(monkeypatch)
        tk.state_rows(logits, out=torch.empty_like(logits))
        size = logits.numel() * logits.element_size()
        assert traffic.loaded >= size and traffic.stored >= size and traffic.launches == 1


# --------------------------------------------------------------------------
# The compiled path: the same kernels through Triton's compiler for sm_90
# --------------------------------------------------------------------------

_COMPILE = """
import sys
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from stablesoftmax._kernels import triton as tk

X = sys.argv[1]
KIND = {"bf16": 2, "fp16": 1}.get(X, 0)
SAME_AS_X = ("x_ptr", "out_ptr", "grad_ptr")
INTS = ("where_ptr", "k_ptr", "y_ptr", "allowed_ptr", "alive_ptr")
BOOLS = ("where_ptr", "alive_ptr")

def compile_(fn, **flags):
    sig = {}
    for name in fn.arg_names:
        if name in flags:
            sig[name] = "constexpr"
        elif name in SAME_AS_X:
            sig[name] = "*" + X
        elif name in INTS:
            sig[name] = "*i1" if name in BOOLS else "*i64"
        else:
            sig[name] = "*fp64" if name.endswith("_ptr") else "i32"
    consts = {(fn.arg_names.index(k),): v for k, v in flags.items()}
    options = {"num_warps": 8, "enable_fp_fusion": True}
    triton.compile(ASTSource(fn, sig, consts), target=GPUTarget("cuda", 90, 32), options=options)

common = dict(HAS_WHERE=True, WIDE=X == "fp64", BLOCK=4096)
for one, out, log in ((True, True, False), (True, True, True), (True, False, False), (False, False, False)):
    compile_(tk._forward_kernel, **common, ONE_BLOCK=one, WRITE_OUT=out, LOG=log, OUT_KIND=KIND,
             CE=not out, SMOOTH=not out, HAS_WEIGHT=True)
for log in (True, False):
    compile_(tk._write_kernel, **common, LOG=log, OUT_KIND=KIND)
compile_(tk._grad_kernel, **common, HAS_WEIGHT=True, HAS_Z=True, OUT_KIND=KIND)
compile_(tk._block_grad_kernel, WIDE=X == "fp64", BLOCK=4096, HAS_WEIGHT=True, OUT_KIND=KIND)
print("compiled")
"""


@pytest.mark.parametrize("dtype", ["bf16", "fp64"])
def test_kernels_compile_for_sm90(dtype):
    """The interpreter runs Python and lets through what the compiler rejects (names bound in a loop,
    types that change across iterations): every kernel variant is compiled for sm_90, through ptxas."""
    import subprocess
    import sys

    pytest.importorskip("triton.backends.nvidia.compiler")
    import stablesoftmax

    package_root = os.path.dirname(os.path.dirname(stablesoftmax.__file__))
    path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "TRITON_INTERPRET": "0", "PYTHONPATH": path}
    run = subprocess.run([sys.executable, "-c", _COMPILE, dtype], env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and "compiled" in run.stdout, run.stderr[-3000:]
