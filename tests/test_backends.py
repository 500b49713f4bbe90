"""Native computation: PyTorch (eager, meta, compile, autograd), JAX (jit, grad), array-api-strict devices.

Each library's tests skip on their own when the library is missing; the core
suites never import these libraries.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import stablesoftmax as ss

REDUCTIONS = ("logsumexp", "softmax", "log_softmax")


def _rows(rng, n=5, c=7):
    x = rng.normal(scale=30, size=(n, c))
    x[1, :] = -np.inf
    x[2, 3] = np.inf
    x[3, 0] = -np.inf
    return x


class TestTorch:
    @pytest.fixture(autouse=True)
    def _library(self):
        self.torch = pytest.importorskip("torch")  # per test: a missing library skips only these

    @pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
    @pytest.mark.parametrize("fn", REDUCTIONS)
    def test_matches_numpy_in_every_dtype(self, fn, dtype, rng):
        import ml_dtypes

        torch = self.torch
        x = rng.normal(scale=20, size=(6, 9))
        np_dtype = ml_dtypes.bfloat16 if dtype == "bfloat16" else np.dtype(dtype)
        xn = x.astype(np_dtype)
        xt = torch.tensor(xn.astype(np.float64)).to(getattr(torch, dtype))
        got = getattr(ss, fn)(xt)
        assert got.dtype == xt.dtype
        want = getattr(ss, fn)(xn)
        # Both are correctly rounded from a float64 result far inside half an ulp: equal.
        np.testing.assert_array_equal(got.double().numpy(), np.asarray(want, np.float64))

    @pytest.mark.parametrize("fn", REDUCTIONS)
    def test_special_rows_follow_the_contract(self, fn, rng):
        torch = self.torch
        x = _rows(rng)
        np.testing.assert_array_equal(getattr(ss, fn)(torch.tensor(x)).numpy(), getattr(ss, fn)(x))

    def test_meta_tensors_pass_through_every_function(self):
        torch = self.torch
        x = torch.empty((4, 6), device="meta", dtype=torch.bfloat16)
        y = torch.empty((4,), device="meta", dtype=torch.int64)
        for fn in REDUCTIONS:
            out = getattr(ss, fn)(x)
            assert out.device.type == "meta" and out.dtype == torch.bfloat16
        assert ss.logsumexp(x).shape == (4,)
        assert ss.softmax(x, axis=0).shape == (4, 6)
        loss = ss.cross_entropy(x, y, label_smoothing=0.1)
        assert loss.device.type == "meta" and loss.shape == () and loss.dtype == torch.bfloat16
        assert ss.cross_entropy(x, y, reduction="none").shape == (4,)
        assert ss.cross_entropy_grad(x, y).shape == (4, 6)
        assert ss.nll_loss(x, y).device.type == "meta"
        assert ss.binary_cross_entropy_with_logits(x, x).device.type == "meta"

    @pytest.mark.parametrize(
        "options",
        [
            {},
            {"label_smoothing": 0.1},
            {"reduction": "sum"},
            {"reduction": "none"},
            {"weight": True},
            {"ignore_index": 2},
        ],
        ids=lambda o: ",".join(o) or "plain",
    )
    def test_cross_entropy_backward_matches_pytorch(self, options, rng):
        torch = self.torch
        F = torch.nn.functional
        x = torch.tensor(rng.normal(size=(8, 5)), requires_grad=True)
        y = torch.tensor(rng.integers(0, 5, size=8))
        opts = dict(options)
        if opts.pop("weight", False):
            opts["weight"] = torch.tensor(rng.uniform(0.5, 2, size=5))
        ours = ss.cross_entropy(x, y, **opts)
        theirs = F.cross_entropy(x, y, **opts)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
        g = torch.ones_like(ours)
        (ga,) = torch.autograd.grad(ours, x, g)
        (gb,) = torch.autograd.grad(theirs, x, g)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-15)

    def test_nll_and_bce_backpropagate(self, rng):
        torch = self.torch
        F = torch.nn.functional
        x = torch.tensor(rng.normal(size=(6, 4)), requires_grad=True)
        y = torch.tensor(rng.integers(0, 4, size=6))
        t = torch.tensor(rng.uniform(size=(6, 4)))
        ours = ss.nll_loss(torch.log_softmax(x, -1), y) + ss.binary_cross_entropy_with_logits(x, t)
        theirs = F.nll_loss(torch.log_softmax(x, -1), y) + F.binary_cross_entropy_with_logits(x, t)
        (ga,) = torch.autograd.grad(ours, x)
        (gb,) = torch.autograd.grad(theirs, x)
        torch.testing.assert_close(ga, gb, rtol=1e-12, atol=1e-15)

    def test_all_masked_row_has_zero_gradient_not_nan(self):
        torch = self.torch
        x = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64, requires_grad=True)
        where = torch.tensor([[False, False], [True, True]])
        out = ss.softmax(x, where=where)
        out[:, 0].sum().backward()
        assert torch.equal(x.grad[0], torch.zeros(2, dtype=torch.float64))
        assert torch.isfinite(x.grad).all()

    def test_second_derivatives_raise_instead_of_zeros(self, rng):
        torch = self.torch
        x = torch.tensor(rng.normal(size=(2, 3)), requires_grad=True)
        y = torch.tensor([0, 2])
        with pytest.raises(RuntimeError, match=r"stablesoftmax.cross_entropy_grad"):
            torch.autograd.functional.hessian(lambda z: ss.cross_entropy(z, y), x)

    def test_linear_cross_entropy_backpropagates_to_hidden_weight_and_bias(self, rng):
        torch = self.torch
        F = torch.nn.functional
        h = torch.tensor(rng.normal(size=(6, 4)), requires_grad=True)
        w = torch.tensor(rng.normal(size=(9, 4)), requires_grad=True)
        b = torch.tensor(rng.normal(size=9), requires_grad=True)
        y = torch.tensor(rng.integers(0, 9, size=6))
        ours = ss.linear_cross_entropy(h, w, y, bias=b, chunk_size=4, label_smoothing=0.1)
        theirs = F.cross_entropy(h @ w.T + b, y, label_smoothing=0.1)
        torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=0)
        for a, c in zip(torch.autograd.grad(ours, (h, w, b)), torch.autograd.grad(theirs, (h, w, b)), strict=True):
            torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-14)

    def test_linear_bias_at_minus_inf_gets_zero_gradient(self, rng):
        h = rng.normal(size=(3, 2))
        w = rng.normal(size=(4, 2))
        b = np.array([0.0, -np.inf, 0.0, 0.0])
        _, (_, _, d_b) = ss.linear_cross_entropy_with_grad(h, w, np.array([1, 0, 2]), bias=b)
        assert d_b[1] == 0.0

    def test_compile_fullgraph_training_step(self, rng):
        torch = self.torch
        w0 = torch.tensor(rng.normal(size=(5, 3)))
        h = torch.tensor(rng.normal(size=(8, 3)))
        y = torch.tensor(rng.integers(0, 5, size=8))

        def loss_of(w, ours):
            logits = h @ w.T
            if ours:
                return ss.cross_entropy(logits, y, label_smoothing=0.1) + 1e-3 * ss.logsumexp(logits).pow(2).mean()
            return (
                torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.1)
                + 1e-3 * torch.logsumexp(logits, -1).pow(2).mean()
            )

        # aot_eager traces forward and backward through AOTAutograd, as inductor does, without a C compiler.
        compiled = torch.compile(loss_of, fullgraph=True, backend="aot_eager")
        wa = w0.clone().requires_grad_()
        wb = w0.clone().requires_grad_()
        la = compiled(wa, True)
        la.backward()
        lb = loss_of(wb, False)
        lb.backward()
        torch.testing.assert_close(la, lb, rtol=1e-12, atol=0)
        torch.testing.assert_close(wa.grad, wb.grad, rtol=1e-12, atol=1e-15)


class TestJax:
    @pytest.fixture(autouse=True)
    def _library(self):
        self.jax = pytest.importorskip("jax")  # per test: a missing library skips only these

    @pytest.fixture(autouse=True)
    def _x64(self):
        jax = self.jax
        old = jax.config.read("jax_enable_x64")
        jax.config.update("jax_enable_x64", True)
        yield
        jax.config.update("jax_enable_x64", old)

    def test_jit_and_grad_match_numpy(self, rng):
        jax = self.jax
        jnp = jax.numpy
        x = rng.normal(size=(6, 5))
        y = rng.integers(0, 5, size=6)
        loss = jax.jit(lambda z: ss.cross_entropy(z, jnp.asarray(y), label_smoothing=0.1))
        grad = jax.jit(jax.grad(lambda z: ss.cross_entropy(z, jnp.asarray(y), label_smoothing=0.1)))
        want, want_grad = ss.cross_entropy_with_grad(x, y, label_smoothing=0.1)
        np.testing.assert_allclose(float(loss(jnp.asarray(x))), want, rtol=1e-14)
        np.testing.assert_allclose(np.asarray(grad(jnp.asarray(x))), want_grad, rtol=1e-12, atol=1e-16)

    def test_jaxpr_holds_only_jax_operations(self):
        jax = self.jax
        jnp = jax.numpy
        text = str(jax.make_jaxpr(lambda z: ss.cross_entropy(z, jnp.array([0, 1])))(jnp.ones((2, 3))))
        assert "callback" not in text and "custom_vjp" in text

    def test_masked_gradient_is_exactly_zero(self):
        jax = self.jax
        jnp = jax.numpy
        where = jnp.array([[True, True, False], [False, False, False]])
        g = jax.grad(lambda z: ss.logsumexp(z, where=where).sum())(jnp.array([[0.0, 1.0, jnp.nan], [1.0, 2.0, 3.0]]))
        assert np.asarray(g)[0, 2] == 0.0
        np.testing.assert_array_equal(np.asarray(g)[1], [0.0, 0.0, 0.0])

    @pytest.mark.parametrize("fn", REDUCTIONS)
    def test_special_rows_follow_the_contract(self, fn, rng):
        jnp = self.jax.numpy
        x = _rows(rng)
        np.testing.assert_array_equal(np.asarray(getattr(ss, fn)(jnp.asarray(x))), getattr(ss, fn)(x))


class TestFloat32Compute:
    """Where a device has no float64 (JAX without x64, Apple MPS) the compute dtype is float32.

    The shift keeps its TwoSum term there; the goals this path meets, in ulps of
    the correctly rounded float32 result (the float64 path, itself held to
    mpmath in tests/test_accuracy.py): logsumexp 1, log_softmax 3, softmax 4.
    XLA flushes subnormals to zero, so terms below float32's smallest normal
    number ``tiny`` are lost: within ``K tiny`` of zero (``K`` terms a slice) the
    error is counted in units of ``K tiny`` instead.
    """

    @pytest.fixture(autouse=True)
    def _library(self):
        self.jax = pytest.importorskip("jax")  # per test: a missing library skips only these

    GOALS = {"logsumexp": 1.0, "log_softmax": 3.0, "softmax": 4.0}

    @pytest.mark.parametrize("scale", [1.0, 10.0, 100.0, 1000.0])
    @pytest.mark.parametrize("fn", REDUCTIONS)
    def test_within_its_goals(self, fn, scale, rng):
        jax = self.jax
        assert not jax.config.read("jax_enable_x64")
        x = (rng.normal(size=(64, 1000)) * scale).astype(np.float32)
        want = np.asarray(getattr(ss, fn)(x), np.float64)
        got = getattr(ss, fn)(jax.numpy.asarray(x))
        assert got.dtype == jax.numpy.float32
        fin = np.isfinite(want)
        tiny = float(np.finfo(np.float32).tiny)
        spacing = np.spacing(np.abs(want[fin]).astype(np.float32)).astype(np.float64)
        spacing = np.maximum(spacing, x.shape[-1] * tiny)
        err = np.abs(np.asarray(got, np.float64)[fin] - want[fin]) / spacing
        assert err.max() <= self.GOALS[fn]


class TestArrayApiStrict:
    @pytest.fixture(autouse=True)
    def _library(self):
        self.xps = pytest.importorskip("array_api_strict")  # per test: a missing library skips only these

    @pytest.mark.parametrize("fn", REDUCTIONS)
    def test_stays_on_its_device(self, fn, rng, monkeypatch):
        xps = self.xps
        dev = xps.Device("device1")
        x = xps.asarray(rng.normal(size=(3, 4)), device=dev)

        def refuse(*args, **kwargs):
            raise AssertionError("reached NumPy")

        monkeypatch.setattr(np, "from_dlpack", refuse)
        out = getattr(ss, fn)(x)
        assert out.device == dev
        np.testing.assert_allclose(
            np.asarray(xps.asarray(out, device=xps.Device("CPU_DEVICE")) if False else _host(out)),
            getattr(ss, fn)(_host(x)),
            rtol=1e-15,
        )

    def test_cross_entropy_on_device(self, rng):
        xps = self.xps
        dev = xps.Device("device1")
        x = xps.asarray(rng.normal(size=(3, 4)), device=dev)
        y = xps.asarray([0, 3, 1], device=dev)
        loss = ss.cross_entropy(x, y, label_smoothing=0.2)
        assert loss.device == dev
        assert math.isclose(
            float(_host(loss)),
            float(ss.cross_entropy(_host(x), np.array([0, 3, 1]), label_smoothing=0.2)),
            rel_tol=1e-15,
        )


def _host(a):
    import array_api_strict as xps

    return np.asarray(xps.asarray(a, device=xps.Device("CPU_DEVICE"))._array)


class TestTorchRefusals:
    @pytest.fixture(autouse=True)
    def _library(self):
        self.torch = pytest.importorskip("torch")  # per test: a missing library skips only these

    def test_sparse_tensors_are_refused_by_name(self):
        with pytest.raises(ss.ArgumentError, match=r"x is a torch.sparse_coo tensor; sparse tensors are not supported"):
            ss.softmax(self.torch.ones(3).to_sparse())

    def test_torch_func_transforms_are_refused_by_name(self):
        torch = self.torch
        x = torch.randn(3, 4, dtype=torch.float64)
        with pytest.raises(ss.ArgumentError, match=r"torch.func transform"):
            torch.func.grad(lambda z: ss.cross_entropy(z, torch.tensor([0, 1, 2])))(x)
        with pytest.raises(ss.ArgumentError, match=r"torch.func transform"):
            torch.func.vmap(ss.logsumexp)(x)
