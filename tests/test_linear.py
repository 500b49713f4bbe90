"""linear_cross_entropy: the materialised cross_entropy's values and gradients, in chunks."""

import math
import os
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import stablesoftmax as ss
from stablesoftmax import ArgumentError, ShapeError, TargetError

pytestmark = pytest.mark.usefixtures("each_path")  # every test on the compiled and the NumPy path

OPTIONS = [
    {},
    {"reduction": "sum"},
    {"reduction": "none"},
    {"label_smoothing": 0.2},
    {"class_weight": "w"},
    {"z_loss": 1e-2},
    {"softcap": 3.0},
    {"label_smoothing": 0.1, "class_weight": "w", "z_loss": 1e-3, "softcap": 8.0},
]


@pytest.fixture
def layer(rng):
    n, h, v = 40, 16, 300
    hidden = rng.standard_normal((n, h))
    weight = rng.standard_normal((v, h)) * 0.4
    bias = rng.standard_normal(v)
    target = rng.integers(0, v, n)
    target[::5] = -100
    return hidden, weight, bias, target, rng.uniform(0.5, 2.0, v)


def _split(opts, cw):
    ours = {k: (cw if v == "w" else v) for k, v in opts.items()}
    theirs = {("weight" if k == "class_weight" else k): v for k, v in ours.items()}
    return ours, theirs


class TestLinearCrossEntropy:
    @pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "plain")
    @pytest.mark.parametrize("chunk_size", [1, 7, 64, 300, 1000])
    def test_equals_materialised_cross_entropy(self, layer, opts, chunk_size):
        hidden, weight, bias, target, cw = layer
        ours, theirs = _split(opts, cw)
        got = ss.linear_cross_entropy(hidden, weight, target, bias=bias, chunk_size=chunk_size, **ours)
        ref = ss.cross_entropy(hidden @ weight.T + bias, target, **theirs)
        np.testing.assert_allclose(got, ref, rtol=1e-12)

    @pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "plain")
    def test_gradients_equal_the_chain_rule_through_cross_entropy_grad(self, layer, opts, rng):
        hidden, weight, bias, target, cw = layer
        ours, theirs = _split(opts, cw)
        g = rng.normal(size=len(target)) if opts.get("reduction") == "none" else 1.3
        loss, (d_h, d_w, d_b) = ss.linear_cross_entropy_with_grad(
            hidden, weight, target, bias=bias, chunk_size=37, g=g, **ours
        )
        dlogits = ss.cross_entropy_grad(hidden @ weight.T + bias, target, g=g, **theirs)
        for got, ref in ((d_h, dlogits @ weight), (d_w, dlogits.T @ hidden), (d_b, dlogits.sum(axis=0))):
            np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-13 * np.abs(ref).max())
        np.testing.assert_allclose(loss, ss.cross_entropy(hidden @ weight.T + bias, target, **theirs), rtol=1e-12)

    def test_torch_autograd_parity(self, layer):
        torch = pytest.importorskip("torch")
        hidden, weight, bias, target, _ = layer
        h, w, b = (torch.tensor(a, requires_grad=True) for a in (hidden, weight, bias))
        torch.nn.functional.cross_entropy(h @ w.T + b, torch.tensor(target), label_smoothing=0.1).backward()
        _, (d_h, d_w, d_b) = ss.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias, label_smoothing=0.1)
        for ours, t in ((d_h, h), (d_w, w), (d_b, b)):
            np.testing.assert_allclose(ours, t.grad.numpy(), rtol=1e-10, atol=1e-14)

    def test_float32_goals(self, rng):
        # The performance issue's goals: loss within 1e-6, gradients within 1e-5, relative.
        n, h, v = 128, 64, 4096
        hidden = rng.standard_normal((n, h), dtype=np.float32)
        weight = (rng.standard_normal((v, h)) * 0.1).astype(np.float32)
        target = rng.integers(0, v, n)
        loss, (d_h, d_w, _) = ss.linear_cross_entropy_with_grad(hidden, weight, target)
        logits = hidden.astype(np.float64) @ weight.T.astype(np.float64)
        ref_loss, g = ss.cross_entropy_with_grad(logits, target)
        assert loss.dtype == np.float32 and d_w.dtype == np.float32
        assert abs(loss - ref_loss) <= 1e-6 * abs(ref_loss)
        for got, ref in ((d_h, g @ weight.astype(np.float64)), (d_w, g.T @ hidden.astype(np.float64))):
            assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()

    def test_peak_memory_is_a_fraction_of_the_logits(self, rng):
        n, h, v = 512, 32, 16384
        hidden = rng.standard_normal((n, h), dtype=np.float32)
        weight = rng.standard_normal((v, h), dtype=np.float32)
        target = rng.integers(0, v, n)
        logits_bytes = n * v * 4
        tracemalloc.start()
        ss.linear_cross_entropy(hidden, weight, target)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak <= logits_bytes / 16, f"peak {peak} bytes vs logits {logits_bytes}"

    def test_gradient_peak_memory_is_the_gradients_and_one_chunk(self, rng, each_path):
        """Beyond d hidden and d weight: one chunk of logits (become its gradient), the 1 MiB buffer of
        ``G W_c`` and O(N) row values (20 float64 a row), and on the NumPy path the reference's row-block
        temporaries; an (N, H) product buffer would not fit."""
        from stablesoftmax import _compute, _linear_chunks

        n, h, v, chunk = 4096, 128, 2048, 256  # N x H is twice the buffer's entries
        hidden = rng.standard_normal((n, h), dtype=np.float32)
        weight = rng.standard_normal((v, h), dtype=np.float32)
        target = rng.integers(0, v, n)
        ss.linear_cross_entropy_with_grad(hidden, weight, target, chunk_size=chunk)  # compiled before measuring
        tracemalloc.start()
        ss.linear_cross_entropy_with_grad(hidden, weight, target, chunk_size=chunk)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        grads, logits_chunk = (n * h + v * h) * 4, n * chunk * 4
        buffer = _linear_chunks._PRODUCT_ENTRIES * 4
        if each_path == "numpy":
            buffer += _compute._HOST_BLOCK * 8 * _compute._TEMPORARIES
        assert peak <= grads + logits_chunk + buffer + 160 * n, f"peak {peak} bytes"

    def test_all_ignored_mean_is_zero_with_zero_gradients(self, layer):
        hidden, weight, _, target, _ = layer
        loss, (d_h, d_w, d_b) = ss.linear_cross_entropy_with_grad(hidden, weight, np.full_like(target, -100))
        assert loss == 0.0 and not d_h.any() and not d_w.any() and d_b is None

    def test_inputs_not_modified(self, layer):
        hidden, weight, bias, target, _ = layer
        copies = [a.copy() for a in (hidden, weight, bias, target)]
        ss.linear_cross_entropy_with_grad(hidden, weight, target, bias=bias, softcap=2.0)
        for a, c in zip((hidden, weight, bias, target), copies, strict=True):
            np.testing.assert_array_equal(a, c)


class TestLinearCrossEntropyErrors:
    def test_shape_mismatch(self):
        with pytest.raises(
            ShapeError, match=r"hidden of shape \(2, 3\) and weight of shape \(5, 4\) must be \[N, H\] and \[V, H\]"
        ):
            ss.linear_cross_entropy(np.zeros((2, 3)), np.zeros((5, 4)), np.array([0, 1]))

    def test_target_out_of_range(self):
        with pytest.raises(
            TargetError, match=r"target value 5 at position \(1,\) is out of range; class indices must be in \[0, 5\)"
        ):
            ss.linear_cross_entropy(np.zeros((2, 3)), np.zeros((5, 3)), np.array([0, 5]))

    def test_bias_shape(self):
        with pytest.raises(ShapeError, match=r"bias of shape \(4,\) must have one entry per class: shape \(5,\)"):
            ss.linear_cross_entropy(np.zeros((2, 3)), np.zeros((5, 3)), np.array([0, 1]), bias=np.zeros(4))

    @pytest.mark.parametrize("bad", [0, 2.5, -3, "big"])
    def test_chunk_size(self, bad):
        with pytest.raises(ArgumentError, match=r"chunk_size=.* must be a whole number >= 1"):
            ss.linear_cross_entropy(np.zeros((2, 3)), np.zeros((5, 3)), np.array([0, 1]), chunk_size=bad)

    def test_unknown_option(self):
        with pytest.raises(ArgumentError, match=r"unknown option\(s\) \['weight'\]"):
            ss.linear_cross_entropy_with_grad(np.zeros((2, 3)), np.zeros((5, 3)), np.array([0, 1]), weight=np.ones(5))


class TestOtherArrayLibraries:
    """JAX and array-API arrays: computed on the host, returned in their own library, dtype and device."""

    def test_jax_arrays_give_jax_arrays_equal_to_numpy(self, layer):
        jnp = pytest.importorskip("jax.numpy")
        hidden, weight, bias, target, _ = layer
        h32, w32 = hidden.astype(np.float32), weight.astype(np.float32)
        ref, (ref_h, ref_w, _) = ss.linear_cross_entropy_with_grad(h32, w32, target, reduction="none")
        got, (d_h, d_w, _) = ss.linear_cross_entropy_with_grad(
            jnp.asarray(h32), jnp.asarray(w32), jnp.asarray(target), reduction="none"
        )
        for ours, theirs in ((got, ref), (d_h, ref_h), (d_w, ref_w)):
            assert type(ours).__module__.startswith("jax") and ours.dtype == jnp.float32
            np.testing.assert_array_equal(np.asarray(ours), theirs)

    def test_array_api_strict_stays_on_its_device(self, layer):
        xps = pytest.importorskip("array_api_strict")
        hidden, weight, _, target, _ = layer
        dev = xps.Device("device1")
        got = ss.linear_cross_entropy(
            xps.asarray(hidden, device=dev), xps.asarray(weight, device=dev), xps.asarray(target, device=dev)
        )
        assert isinstance(got, type(xps.asarray(1.0))) and got.device == dev and got.dtype == xps.float64
        assert float(got) == ss.linear_cross_entropy(hidden, weight, target)

    def test_under_jax_jit_a_named_error(self, layer):
        jax = pytest.importorskip("jax")
        hidden, weight, _, target, _ = layer
        with pytest.raises(ArgumentError, match=r"traced by a JAX transformation .* use cross_entropy on the logits"):
            jax.jit(lambda h: ss.linear_cross_entropy(h, weight, target))(hidden.astype(np.float32))

    def test_torch_bfloat16_rounds_once(self, layer):
        torch = pytest.importorskip("torch")
        hidden, weight, _, target, _ = layer
        h, w = torch.tensor(hidden, dtype=torch.bfloat16), torch.tensor(weight, dtype=torch.bfloat16)
        got = ss.linear_cross_entropy(h, w, torch.tensor(target), reduction="none")
        # the numpy bfloat16 path rounds once from float64 (round-to-odd through float32): the same bits
        import ml_dtypes

        bf = np.asarray(h.float().numpy(), ml_dtypes.bfloat16), np.asarray(w.float().numpy(), ml_dtypes.bfloat16)
        ref = ss.linear_cross_entropy(*bf, target, reduction="none")
        assert got.dtype == torch.bfloat16
        np.testing.assert_array_equal(got.float().numpy(), np.asarray(ref, np.float32))

    @pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
    def test_torch_16bit_weight_gradient_is_never_float32_whole(self, rng, dtype, each_path):
        """A CPU 16-bit weight's gradient is made in its dtype, chunk by chunk: beside it, float32 hidden and
        d hidden, one chunk of logits, one chunk of weight rows widened and their float32 gradient, the 1 MiB
        buffer and O(N) rows. A whole (V, H) float32 d weight would not fit."""
        torch = pytest.importorskip("torch")
        pytest.importorskip("ml_dtypes")
        from stablesoftmax import _compute, _linear_chunks

        n, h, v, chunk = 4096, 128, 8192, 256
        ht = torch.from_numpy(rng.standard_normal((n, h), dtype=np.float32)).to(getattr(torch, dtype))
        wt = torch.from_numpy(rng.standard_normal((v, h), dtype=np.float32)).to(getattr(torch, dtype))
        y = torch.from_numpy(rng.integers(0, v, n))
        ss.linear_cross_entropy_with_grad(ht, wt, y, chunk_size=chunk)  # compiled before measuring
        tracemalloc.start()  # NumPy's allocations are traced; torch's (the outputs' final casts) are not
        _, (d_h, d_w, _) = ss.linear_cross_entropy_with_grad(ht, wt, y, chunk_size=chunk)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert d_h.dtype == d_w.dtype == wt.dtype
        want = n * h * 4 * 2 + v * h * 2 + n * chunk * 4 + chunk * h * 4 * 2 + _linear_chunks._PRODUCT_ENTRIES * 4
        if each_path == "numpy":  # the reference's row-block temporaries
            want += _compute._HOST_BLOCK * 8 * _compute._TEMPORARIES
        assert peak <= want + 160 * n, f"peak {peak} bytes"


# --------------------------------------------------------------------------
# PyTorch tensors: the custom ops, on NumPy views (CPU tensors) and on torch ops
# --------------------------------------------------------------------------

TORCH_DTYPES = ["float64", "float32", "bfloat16", "float16"]


@pytest.fixture(params=["views", "torch ops"])
def torch_path(request, monkeypatch):
    """Every torch test on both computations of the ops: NumPy views of CPU tensors, and torch's own ops.

    The torch ops take each chunk in row blocks of a few rows here, as they do a large chunk.
    """
    pytest.importorskip("torch")
    from stablesoftmax import _compute
    from stablesoftmax._backends import torch as adapter

    if request.param == "torch ops":
        monkeypatch.setattr(adapter, "_LINEAR_HOST_DTYPES", ())
        monkeypatch.setattr(_compute, "_HOST_BLOCK", 1)  # the chunks' row blocks (no accelerator for CPU tensors)
    return request.param


def _tensors(torch, dtype, *arrays):
    return [torch.tensor(a, dtype=getattr(torch, dtype), requires_grad=True) for a in arrays]


def _materialised(torch, h, w, b, target, g, theirs):
    """Loss and gradients of ``ss.cross_entropy`` on the float64 logits of the same (rounded) inputs."""
    h64, w64, b64 = (t.detach().double().requires_grad_() for t in (h, w, b))
    loss = ss.cross_entropy(h64 @ w64.T + b64, torch.tensor(target), **theirs)
    loss.backward(g)
    return loss.detach(), h64.grad, w64.grad, b64.grad


def _close(got, ref, dtype, *, loss=False):
    """float64: 1e-12 of the largest entry; float32: a float32 matmul's error; 16-bit: its rounding."""
    tol = {"float64": 1e-12, "float32": 1e-6 if loss else 1e-5, "bfloat16": 2.0**-7, "float16": 2.0**-10}[dtype]
    got, ref = got.detach().double().numpy(), ref.numpy()
    assert np.isfinite(got).all() == np.isfinite(ref).all()
    assert np.abs(got - ref).max() <= tol * np.abs(ref).max(), (np.abs(got - ref).max(), np.abs(ref).max())


@pytest.mark.usefixtures("torch_path")
class TestTorchOps:
    @pytest.mark.parametrize("dtype", TORCH_DTYPES)
    @pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(o) or "plain")
    def test_loss_and_gradients_equal_the_materialised_cross_entropy(self, layer, opts, dtype, rng):
        torch = pytest.importorskip("torch")
        hidden, weight, bias, target, cw = layer
        ours, theirs = _split(opts, cw)
        h, w, b = _tensors(torch, dtype, hidden, weight, bias)
        g = torch.tensor(rng.normal(size=len(target))) if opts.get("reduction") == "none" else torch.tensor(1.3)
        loss = ss.linear_cross_entropy(h, w, torch.tensor(target), bias=b, chunk_size=37, **ours)
        loss.backward(g.to(loss.dtype))
        ref = _materialised(torch, h, w, b, target, g, theirs)
        assert loss.dtype == h.dtype and h.grad.dtype == w.grad.dtype == b.grad.dtype == h.dtype
        _close(loss, ref[0], dtype, loss=True)
        for got, want in zip((h.grad, w.grad, b.grad), ref[1:], strict=True):
            _close(got, want, dtype)

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    def test_with_grad_equals_autograd(self, layer, dtype):
        torch = pytest.importorskip("torch")
        hidden, weight, bias, target, _ = layer
        h, w, b = _tensors(torch, dtype, hidden, weight, bias)
        y = torch.tensor(target)
        loss, grads = ss.linear_cross_entropy_with_grad(h, w, y, bias=b, g=2.0, label_smoothing=0.1, chunk_size=50)
        (2 * ss.linear_cross_entropy(h, w, y, bias=b, label_smoothing=0.1, chunk_size=50)).backward()
        assert not loss.requires_grad
        for got, t in zip(grads, (h, w, b), strict=True):
            assert torch.equal(got, t.grad)

    @pytest.mark.parametrize("dtype", ["float64", "float32"])
    def test_confident_row_keeps_its_tiny_loss_and_gradient(self, dtype):
        # logits [40, 0 x 99], target 0: loss log1p(99 e^-40) = 4.2e-16 and d_bias[0] = -99 e^-40 / (1 + 99 e^-40),
        # which lse - x_y and p_0 - 1 would both round to 0
        torch = pytest.importorskip("torch")
        weight = np.zeros((100, 1))
        weight[0] = 40.0
        h, w, b = _tensors(torch, dtype, np.ones((1, 1)), weight, np.zeros(100))
        loss = ss.linear_cross_entropy(h, w, torch.tensor([0]), bias=b)
        loss.backward()
        tail = 99 * math.exp(-40)
        rtol = {"float64": 1e-12, "float32": 1e-6}[dtype]
        np.testing.assert_allclose(float(loss.detach()), math.log1p(tail), rtol=rtol)
        np.testing.assert_allclose(float(b.grad[0]), -tail / (1 + tail), rtol=rtol)
        np.testing.assert_allclose(float(w.grad[0, 0]), -tail / (1 + tail), rtol=rtol)
        assert b.grad[0] != 0

    @pytest.mark.parametrize("dtype", TORCH_DTYPES)
    def test_padding_rows_with_huge_or_nan_hidden_move_nothing(self, layer, dtype):
        torch = pytest.importorskip("torch")
        hidden, weight, bias, target, _ = layer
        padded_h = np.concatenate([hidden, np.full((2, hidden.shape[1]), 1e30), np.full((1, hidden.shape[1]), np.nan)])
        padded_y = np.concatenate([target, [-100, -100, -100]])
        results = []
        for hid, tgt in ((hidden, target), (padded_h, padded_y)):
            h, w, b = _tensors(torch, dtype, hid, weight, bias)
            ss.linear_cross_entropy(h, w, torch.tensor(tgt), bias=b, chunk_size=64, z_loss=1e-3).backward()
            results.append((h.grad, w.grad, b.grad))
        (h0, w0, b0), (h1, w1, b1) = results
        assert torch.isfinite(w1).all() and torch.isfinite(b1).all() and not h1[len(hidden) :].any()
        for got, ref in ((h1[: len(hidden)], h0), (w1, w0), (b1, b0)):
            assert torch.equal(got, ref)

    def test_infinite_bias_follows_the_contract(self, layer):
        # A +inf logit: loss 0 where the target is the only one, log 2 with two, inf otherwise; gradients 0.
        torch = pytest.importorskip("torch")
        hidden, weight, _, _, _ = layer
        bias = np.zeros(len(weight))
        bias[[3, 5]] = np.inf
        target = np.array([3, 7, 5, 3])
        h, w, b = _tensors(torch, "float64", hidden[:4], weight, bias)
        for only_3 in (True, False):
            b_used = b.detach().clone().requires_grad_()
            if only_3:
                with torch.no_grad():
                    b_used[5] = 0.0
            loss = ss.linear_cross_entropy(h, w, torch.tensor(target), bias=b_used, reduction="none", chunk_size=4)
            one_inf = [0.0, np.inf, np.inf, 0.0]
            two_inf = [math.log(2), np.inf, math.log(2), math.log(2)]
            assert loss.tolist() == (one_inf if only_3 else two_inf)
            loss.backward(torch.ones(4, dtype=torch.float64))
            assert not h.grad.any() and not w.grad.any() and not b_used.grad.any()
            h.grad = w.grad = None

    @pytest.mark.parametrize("dtype", TORCH_DTYPES)
    @pytest.mark.parametrize("reduction", ["mean", "none"])
    def test_meta_tensors_give_a_meta_loss_and_gradients(self, dtype, reduction):
        torch = pytest.importorskip("torch")
        dt = getattr(torch, dtype)
        h = torch.empty((6, 4), dtype=dt, device="meta", requires_grad=True)
        w = torch.empty((10, 4), dtype=dt, device="meta", requires_grad=True)
        b = torch.empty((10,), dtype=dt, device="meta", requires_grad=True)
        loss = ss.linear_cross_entropy(
            h, w, torch.zeros(6, dtype=torch.int64, device="meta"), bias=b, reduction=reduction
        )
        assert loss.device.type == "meta" and loss.dtype == dt and loss.shape == ((6,) if reduction == "none" else ())
        loss.sum().backward()
        for t in (h, w, b):
            assert t.grad.device.type == "meta" and t.grad.shape == t.shape and t.grad.dtype == dt

    def test_equals_torch_linear_cross_entropy(self, layer):
        torch = pytest.importorskip("torch")
        f = torch.nn.functional
        if not hasattr(f, "linear_cross_entropy"):
            pytest.skip("torch.nn.functional.linear_cross_entropy is new in torch 2.13")
        hidden, weight, bias, target, cw = layer
        h, w, b = _tensors(torch, "float64", hidden, weight, bias)
        y, cwt = torch.tensor(target), torch.tensor(cw)
        ours = ss.linear_cross_entropy(h, w, y, bias=b, class_weight=cwt, label_smoothing=0.1, chunk_size=64)
        theirs = f.linear_cross_entropy(h, w, y, linear_bias=b, weight=cwt, label_smoothing=0.1)
        ours.backward()
        grads = [t.grad for t in (h, w, b)]
        h.grad = w.grad = b.grad = None
        theirs.backward()
        np.testing.assert_allclose(float(ours.detach()), float(theirs.detach()), rtol=1e-12)
        for got, t in zip(grads, (h, w, b), strict=True):
            np.testing.assert_allclose(got.numpy(), t.grad.numpy(), rtol=1e-10, atol=1e-12 * float(t.grad.abs().max()))


_COMPILED = """
import sys, torch
import stablesoftmax as ss
from stablesoftmax._backends import torch as adapter

backend = sys.argv[1]
torch.manual_seed(0)
h = torch.randn(12, 8, dtype=torch.float64, requires_grad=True)
w = torch.randn(50, 8, dtype=torch.float64, requires_grad=True)
b = torch.randn(50, dtype=torch.float64, requires_grad=True)
y = torch.randint(0, 50, (12,))
y[::4] = -100

def loss(h, w, b):
    return ss.linear_cross_entropy(h, w, y, bias=b, chunk_size=16, label_smoothing=0.1, z_loss=1e-3, softcap=5.0)

def step(fn):
    args = [t.detach().clone().requires_grad_() for t in (h, w, b)]
    value = fn(*args)
    value.backward()  # AOT autograd traces the backward op into the compiled backward graph
    return [value.detach()] + [t.grad for t in args]

compiled = torch.compile(loss, backend=backend, fullgraph=True)
for host in (adapter._LINEAR_HOST_DTYPES, ()):  # NumPy views, then torch ops, inside the same traced graph
    adapter._LINEAR_HOST_DTYPES = host
    for got, want in zip(step(compiled), step(loss)):
        torch.testing.assert_close(got, want, rtol=1e-13, atol=0)
print("ok")
"""


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_traces_forward_and_backward_whole_from_cold(backend, tmp_path):
    pytest.importorskip("torch")
    env = dict(os.environ, PYTHONWARNINGS="error::UserWarning", TORCHINDUCTOR_CACHE_DIR=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", _COMPILED, backend], capture_output=True, text=True, timeout=600, env=env
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("chunk_size", [2, 4])
def test_smoothing_on_huge_logits_equals_the_materialised_loss(chunk_size):
    """A chunk's shift sum, sum_c (x_c - m), overflows float64 at logits near 1e308 unless held scaled."""
    h = np.array([[1.0], [1.0]])
    w = np.array([[1e308], [0.0], [0.0], [-5.0]])
    y = np.array([0, 1])
    got = ss.linear_cross_entropy(h, w, y, label_smoothing=0.1, reduction="none", chunk_size=chunk_size)
    want = ss.cross_entropy(h @ w.T, y, label_smoothing=0.1, reduction="none")
    assert np.isfinite(want).all()
    np.testing.assert_allclose(got, want, rtol=1e-15)
