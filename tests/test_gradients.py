"""Analytic VJPs against central finite differences and PyTorch autograd."""

import itertools

import numpy as np
import pytest

import stablesoftmax as ss
from tests.helpers import eps

pytestmark = pytest.mark.usefixtures("each_path")  # every test on the compiled and the NumPy path

H = 1e-6
FD_RTOL = 1e-6


def fd_grad(f, x, h=H):
    """Central differences of the scalar function ``f`` at every entry of ``x``."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += h
        down[i] -= h
        grad[i] = (f(up) - f(down)) / (2 * h)
    return grad


def assert_fd(analytic, numeric):
    scale = max(np.abs(numeric).max(), 1e-3)
    np.testing.assert_allclose(analytic, numeric, rtol=FD_RTOL, atol=FD_RTOL * scale)


@pytest.fixture
def x(rng):
    return rng.uniform(-5, 5, (3, 4))


class TestReductionGradients:
    @pytest.mark.parametrize(("axis", "keepdims"), [(-1, False), (0, False), ((0, 1), False), (1, True)])
    @pytest.mark.parametrize("use_b", [False, True])
    def test_logsumexp_grad_fd(self, x, rng, axis, keepdims, use_b):
        b = rng.uniform(0.2, 2, x.shape) if use_b else None
        g = rng.normal(size=np.shape(ss.logsumexp(x, axis=axis, keepdims=keepdims)))

        def f(v):
            return np.sum(g * ss.logsumexp(v, axis=axis, keepdims=keepdims, b=b))

        assert_fd(ss.logsumexp_grad(x, g, axis=axis, keepdims=keepdims, b=b), fd_grad(f, x))

    @pytest.mark.parametrize("fn", ["softmax", "log_softmax"])
    @pytest.mark.parametrize(("axis", "temperature"), [(-1, 1.0), (0, 1.0), ((0, 1), 1.0), (-1, 0.7), (0, 3.0)])
    def test_grad_fd(self, x, rng, fn, axis, temperature):
        g = rng.normal(size=x.shape)

        def f(v):
            return np.sum(g * getattr(ss, fn)(v, axis=axis, temperature=temperature))

        got = getattr(ss, fn + "_grad")(x, g, axis=axis, temperature=temperature)
        assert_fd(got, fd_grad(f, x))

    @pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
    def test_masked_grad_fd(self, x, rng, fn):
        keep = rng.random(x.shape) < 0.7
        keep[:, 0] = True
        g = rng.normal(size=x.shape if fn != "logsumexp" else x.shape[:1])
        if fn == "logsumexp":

            def f(v):
                return np.sum(g * ss.logsumexp(v, where=keep))
        else:  # only unmasked outputs: the masked ones are constant (0 or -inf)

            def f(v):
                return np.sum(g[keep] * getattr(ss, fn)(v, where=keep)[keep])

        got = getattr(ss, fn + "_grad")(x, np.where(keep, g, 0) if fn != "logsumexp" else g, where=keep)
        assert_fd(got, fd_grad(f, x))
        assert (got[~keep] == 0).all()

    def test_softmax_grad_sums_to_zero(self, rng):
        x, g = rng.normal(0, 10, (5, 7)), rng.normal(size=(5, 7))
        np.testing.assert_allclose(ss.softmax_grad(x, g).sum(axis=-1), 0.0, atol=8 * eps(np.float64) * np.abs(g).max())
        np.testing.assert_allclose(
            ss.log_softmax_grad(x, g).sum(axis=-1), 0.0, atol=8 * eps(np.float64) * np.abs(g).sum(-1).max()
        )

    @pytest.mark.parametrize("fn", ["softmax_grad", "log_softmax_grad"])
    def test_shift_invariance(self, rng, fn):
        x, g = rng.uniform(-5, 5, (4, 6)), rng.normal(size=(4, 6))
        np.testing.assert_allclose(
            getattr(ss, fn)(x + 64.0, g), getattr(ss, fn)(x, g), rtol=64 * eps(np.float64), atol=64 * eps(np.float64)
        )

    @pytest.mark.parametrize("fn", ["softmax", "log_softmax", "logsumexp"])
    def test_torch_autograd_parity(self, rng, fn):
        torch = pytest.importorskip("torch")
        x = rng.normal(0, 3, (3, 5, 4))
        for axis in (0, 1, 2):
            t = torch.tensor(x, requires_grad=True)
            out = torch.logsumexp(t, axis) if fn == "logsumexp" else getattr(torch, fn)(t, dim=axis)
            g = rng.normal(size=tuple(out.shape))
            out.backward(torch.tensor(g))
            np.testing.assert_allclose(
                getattr(ss, fn + "_grad")(x, g, axis=axis), t.grad.numpy(), rtol=1e-12, atol=1e-15
            )

    @pytest.mark.parametrize("dtype", [np.float16, np.float32])
    def test_grad_keeps_dtype(self, rng, dtype):
        x = rng.normal(size=(2, 3)).astype(dtype)
        assert ss.softmax_grad(x, np.ones((2, 3), dtype)).dtype == dtype


CE_OPTIONS = [
    {},
    {"weight": "w"},
    {"ignore": True},
    {"label_smoothing": 0.2},
    {"probs": True},
    {"z_loss": 1e-2},
    {"softcap": 4.0},
    {"weight": "w", "ignore": True, "label_smoothing": 0.3},
    {"probs": True, "weight": "w", "label_smoothing": 0.1},
    {"z_loss": 0.1, "softcap": 3.0, "weight": "w", "ignore": True},
    {"where": True},
    {"where": True, "label_smoothing": 0.2},
]


def _ce_args(rng, opts, shape=(4, 5), axis=-1):
    c = shape[axis]
    batch = tuple(n for i, n in enumerate(shape) if i != axis % len(shape))
    if opts.get("probs"):
        target = np.moveaxis(rng.dirichlet(np.ones(c), size=batch), -1, axis % len(shape))
    else:
        target = rng.integers(0, c, batch)
        if opts.get("ignore"):
            target.reshape(-1)[1] = -100
    kw = {k: v for k, v in opts.items() if k in ("label_smoothing", "z_loss", "softcap")}
    if opts.get("weight"):
        kw["weight"] = rng.uniform(0.5, 2, c)
    if opts.get("where"):
        keep = np.ones(shape, bool)
        np.moveaxis(keep, axis, -1)[..., -1] = False
        kw["where"] = keep
        if not opts.get("probs"):
            target = np.minimum(target, c - 2)
    return target, kw


class TestCrossEntropyGradient:
    @pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: ",".join(o) or "plain")
    @pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
    def test_fd(self, rng, opts, reduction):
        x = rng.uniform(-5, 5, (4, 5))
        target, kw = _ce_args(rng, opts)
        g = rng.normal(size=4) if reduction == "none" else 1.7

        def f(v):
            return np.sum(g * ss.cross_entropy(v, target, reduction=reduction, **kw))

        got = ss.cross_entropy_grad(x, target, g=g, reduction=reduction, **kw)
        assert_fd(got, fd_grad(f, x))

    def test_fd_class_axis_one(self, rng):
        x = rng.uniform(-5, 5, (2, 3, 2))
        target, kw = _ce_args(rng, {"weight": "w", "label_smoothing": 0.1}, shape=(2, 3, 2), axis=1)

        def f(v):
            return ss.cross_entropy(v, target, axis=1, **kw)

        assert_fd(ss.cross_entropy_grad(x, target, axis=1, **kw), fd_grad(f, x))

    @pytest.mark.parametrize(
        ("opts", "reduction"),
        list(
            itertools.product(
                [o for o in CE_OPTIONS if not ({"z_loss", "softcap", "where"} & set(o))], ["mean", "sum", "none"]
            )
        ),
    )
    def test_torch_parity(self, rng, opts, reduction):
        torch = pytest.importorskip("torch")
        x = rng.uniform(-5, 5, (4, 3, 2))
        target, kw = _ce_args(rng, opts, shape=(4, 3, 2), axis=1)
        t = torch.tensor(x, requires_grad=True)
        tkw = {k: torch.tensor(v) if isinstance(v, np.ndarray) else v for k, v in kw.items()}
        loss = torch.nn.functional.cross_entropy(t, torch.tensor(target), reduction=reduction, **tkw)
        g = rng.normal(size=tuple(loss.shape))
        loss.backward(torch.tensor(g))
        got = ss.cross_entropy_grad(x, target, g=g, axis=1, reduction=reduction, **kw)
        np.testing.assert_allclose(got, t.grad.numpy(), rtol=1e-12, atol=1e-15)

    @pytest.mark.parametrize("opts", CE_OPTIONS, ids=lambda o: ",".join(o) or "plain")
    def test_with_grad_equals_separate_calls(self, rng, opts):
        x = rng.uniform(-5, 5, (4, 5))
        target, kw = _ce_args(rng, opts)
        loss, grad = ss.cross_entropy_with_grad(x, target, **kw)
        assert loss == ss.cross_entropy(x, target, **kw)
        np.testing.assert_array_equal(grad, ss.cross_entropy_grad(x, target, **kw))

    def test_gradient_rows_sum_to_zero_without_z_loss(self, rng):
        x, y = rng.normal(size=(6, 5)), rng.integers(0, 5, 6)
        grad = ss.cross_entropy_grad(x, y, weight=rng.uniform(0.5, 2, 5), label_smoothing=0.2)
        np.testing.assert_allclose(grad.sum(axis=-1), 0.0, atol=8 * eps(np.float64))

    def test_shift_invariance(self, rng):
        x, y = rng.uniform(-5, 5, (6, 5)), rng.integers(0, 5, 6)
        np.testing.assert_allclose(
            ss.cross_entropy_grad(x + 128.0, y), ss.cross_entropy_grad(x, y), atol=64 * eps(np.float64)
        )

    def test_masked_nan_and_inf_get_zero_gradient(self):
        x = np.array([[0.0, 0.0, np.nan, np.inf]])
        keep = np.array([[True, True, False, False]])
        grad = ss.cross_entropy_grad(x, np.array([0]), where=keep, label_smoothing=0.1)
        assert np.isfinite(grad).all() and (grad[0, 2:] == 0).all()

    def test_unknown_option_to_with_grad(self):
        with pytest.raises(ss.ArgumentError, match=r"unknown option\(s\) \['smoothing'\]"):
            ss.cross_entropy_with_grad(np.zeros((1, 2)), np.array([0]), smoothing=0.1)

    def test_g_must_be_scalar_for_mean(self):
        with pytest.raises(ss.ShapeError, match=r"g of shape \(2,\) must be a scalar for reduction='mean'"):
            ss.cross_entropy_grad(np.zeros((2, 2)), np.array([0, 1]), g=np.ones(2))


def test_seed_article_example():
    # article-softmax-from-scratch.txt: the naive softmax overflows on row 2; the stable loss and
    # its gradients are finite and equal PyTorch's.
    torch = pytest.importorskip("torch")
    logits = np.array([[2.0, 1.0, 0.1], [1000.0, 1.0, -1000.0], [3.0, 2.0, 1.0]])
    targets = np.array([0, 2, 1])
    t = torch.tensor(logits, requires_grad=True)
    ref = torch.nn.functional.cross_entropy(t, torch.tensor(targets))
    ref.backward()
    loss, grad = ss.cross_entropy_with_grad(logits, targets)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    assert loss == pytest.approx(ref.item(), rel=1e-15)
    np.testing.assert_allclose(grad, t.grad.numpy(), rtol=1e-12, atol=1e-15)
