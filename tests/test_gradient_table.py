"""The gradient table of docs/gradients.rst, row by row: what each argument gets in each mode and library.

The table is read from the page, so the page and the code cannot drift apart.
*gradient*: the derivative comes back (finite, of the argument's shape);
*refused*: a named stablesoftmax error whose message names the function or
the argument. Never a silent zero or a missing gradient.
"""

import pathlib
import re

import numpy as np
import pytest

import stablesoftmax as ss
from stablesoftmax._errors import GradientError

torch = pytest.importorskip("torch")
fwAD = torch.autograd.forward_ad

PAGE = pathlib.Path(__file__).resolve().parents[1] / "docs" / "gradients.rst"
COLUMNS = ("torch reverse", "torch forward", "JAX reverse", "JAX forward")


def _table() -> list[tuple[str, str, dict[str, str]]]:
    """``(function, argument, {column: entry})`` for every row of the page's list-table."""
    text = PAGE.read_text().split(":name: gradient-table", 1)[1].split("\n\n", 2)[1]
    cells = [c.strip() for c in re.split(r"\n\s*(?:\* )?- ", "\n" + text.strip())[1:]]
    rows = [cells[i : i + 6] for i in range(0, len(cells), 6)]
    assert rows[0] == ["function", "argument", *COLUMNS]
    return [(r[0], r[1], dict(zip(COLUMNS, r[2:], strict=True))) for r in rows[1:]]


TABLE = _table()
ROWS = [(fn, arg) for fn, arg, _ in TABLE]


def _inputs(rng) -> dict[str, np.ndarray]:
    x = rng.normal(0, 2, (4, 5))
    return {
        "x": x,
        "b": rng.uniform(0.2, 2.0, (4, 5)),
        "probs": np.exp(x) / np.exp(x).sum(1, keepdims=True),
        "labels": np.array([0, 3, 1, 4]),
        "weight": rng.uniform(0.5, 2.0, 5),
        "bits": rng.uniform(0, 1, (4, 5)),
        "hidden": rng.normal(0, 1, (4, 3)),
        "vocab": rng.normal(0, 1, (5, 3)),
        "bias": rng.normal(0, 1, 5),
    }


def _run(fn, arg, data, lib, diff):
    """The scalar loss of ``fn`` on ``data`` (arrays of ``lib``), with ``diff`` in place of argument ``arg``."""
    a = {k: lib(v) for k, v in data.items()}
    a[_source_key(fn, arg)] = diff
    return _call_with(fn, arg, a)


def _call_with(fn, arg, a):
    """``fn`` on the arrays ``a``, with the optional argument ``arg`` given where it is one."""
    if fn == "logsumexp":
        return ss.logsumexp(a["x"], b=a["b"]).sum()
    if fn in ("softmax", "log_softmax"):  # weighted: a softmax's plain sum is 1, of zero gradient
        return (getattr(ss, fn)(a["x"]) * a["bits"]).sum()
    if fn == "cross_entropy":
        tgt = a["probs"] if arg == "target (probabilities)" else a["labels"]
        return ss.cross_entropy(a["x"], tgt, weight=a["weight"] if arg == "weight" else None)
    if fn == "nll_loss":
        return ss.nll_loss(a["x"], a["labels"], weight=a["weight"] if arg == "weight" else None)
    if fn == "binary_cross_entropy_with_logits":
        opts = {arg: a["weight"]} if arg in ("weight", "pos_weight") else {}
        return ss.binary_cross_entropy_with_logits(a["x"], a["bits"], **opts)
    cw = a["weight"] if arg == "class_weight" else None
    return ss.linear_cross_entropy(a["hidden"], a["vocab"], a["labels"], bias=a["bias"], class_weight=cw)


def _expect(entry: str) -> bool:
    assert entry in ("gradient", "refused"), entry
    return entry == "gradient"


def _t(v):
    return torch.as_tensor(v, dtype=torch.float64) if np.asarray(v).dtype.kind == "f" else torch.as_tensor(v)


class TestTorchRows:
    @pytest.mark.parametrize(("fn", "arg"), ROWS)
    def test_reverse(self, rng, fn, arg):
        entry = dict((r[:2], r[2]) for r in TABLE)[(fn, arg)]["torch reverse"]
        data = _inputs(rng)
        leaf = _t(data[_source_key(fn, arg)]).requires_grad_()
        if not _expect(entry):
            with pytest.raises(ss.StableSoftmaxError, match=_arg_word(arg)):
                _run(fn, arg, data, _t, leaf).backward()
            return
        _run(fn, arg, data, _t, leaf).backward()
        assert leaf.grad is not None and leaf.grad.shape == leaf.shape
        assert torch.isfinite(leaf.grad).all() and (leaf.grad != 0).any()

    @pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")  # forward_ad's own
    @pytest.mark.parametrize(("fn", "arg"), ROWS)
    def test_forward(self, rng, fn, arg):
        entry = dict((r[:2], r[2]) for r in TABLE)[(fn, arg)]["torch forward"]
        assert not _expect(entry), "no function of the family has a forward-mode formula on torch"
        data = _inputs(rng)
        primal = _t(data[_source_key(fn, arg)])
        with fwAD.dual_level():
            dual = fwAD.make_dual(primal, torch.ones_like(primal))
            with pytest.raises(GradientError, match=r"forward-mode AD is not supported by stablesoftmax\."):
                _run(fn, arg, data, _t, dual)


def _source_key(fn: str, arg: str) -> str:
    """The entry of :func:`_inputs` the differentiated argument is made from."""
    if fn == "linear_cross_entropy":
        return {"weight": "vocab", "class_weight": "weight"}.get(arg, arg)
    if fn == "binary_cross_entropy_with_logits" and arg == "target":
        return "bits"
    return {"target (probabilities)": "probs", "log_probs": "x", "logits": "x", "pos_weight": "weight"}.get(arg, arg)


def _arg_word(arg: str) -> str:
    """The word a refusal's message names the argument by."""
    return {"target (probabilities)": "target"}.get(arg, arg)


class TestJaxRows:
    @pytest.fixture(autouse=True)
    def _jax(self):
        jax = pytest.importorskip("jax")
        before = jax.config.read("jax_enable_x64")
        jax.config.update("jax_enable_x64", True)  # int64 labels, float64 data: as the torch rows
        yield
        jax.config.update("jax_enable_x64", before)

    @staticmethod
    def _f(fn, arg, data):
        import jax.numpy as jnp

        return lambda d: _run(fn, arg, data, jnp.asarray, d)

    @pytest.mark.parametrize(("fn", "arg"), ROWS)
    def test_reverse(self, rng, fn, arg):
        import jax
        import jax.numpy as jnp

        entry = dict((r[:2], r[2]) for r in TABLE)[(fn, arg)]["JAX reverse"]
        data = _inputs(rng)
        primal = jnp.asarray(data[_source_key(fn, arg)])
        if not _expect(entry):
            with pytest.raises(ss.StableSoftmaxError, match=f"{fn}|{_arg_word(arg)}"):
                jax.grad(self._f(fn, arg, data))(primal)
            return
        grad = jax.grad(self._f(fn, arg, data))(primal)
        assert grad.shape == primal.shape and bool(jnp.isfinite(grad).all()) and bool((grad != 0).any())

    @pytest.mark.parametrize(("fn", "arg"), ROWS)
    def test_forward(self, rng, fn, arg):
        import jax
        import jax.numpy as jnp

        entry = dict((r[:2], r[2]) for r in TABLE)[(fn, arg)]["JAX forward"]
        assert not _expect(entry), "no function of the family has a forward-mode rule on JAX"
        data = _inputs(rng)
        primal = jnp.asarray(data[_source_key(fn, arg)])
        with pytest.raises(ss.StableSoftmaxError, match=f"{fn}|{_arg_word(arg)}"):
            jax.jvp(self._f(fn, arg, data), (primal,), (jnp.ones_like(primal),))


def test_every_public_differentiable_function_has_rows():
    public = {"logsumexp", "softmax", "log_softmax", "cross_entropy", "nll_loss"}
    public |= {"binary_cross_entropy_with_logits", "linear_cross_entropy"}
    assert {fn for fn, _ in ROWS} == public
    assert len(set(ROWS)) == len(ROWS)


class TestJaxValues:
    """The JAX cotangents the table promises, against PyTorch's autograd of the plain float64 formulas."""

    @pytest.fixture(autouse=True)
    def _x64(self):
        jax = pytest.importorskip("jax")
        before = jax.config.read("jax_enable_x64")
        jax.config.update("jax_enable_x64", True)
        yield
        jax.config.update("jax_enable_x64", before)

    def test_weights_b(self, rng):
        import jax
        import jax.numpy as jnp

        x, b = rng.normal(0, 2, (3, 5)), rng.uniform(-0.5, 2.0, (3, 5))
        got = jax.grad(lambda b_: ss.logsumexp(jnp.asarray(x), b=b_, axis=1, return_sign=True)[0].sum())(jnp.asarray(b))
        ref = torch.tensor(b, requires_grad=True)
        torch.log((ref * torch.tensor(x).exp()).sum(1).abs()).sum().backward()
        np.testing.assert_allclose(np.asarray(got), ref.grad.numpy(), rtol=1e-13, atol=1e-15)

    @pytest.mark.parametrize("reduction", ["mean", "sum"])
    def test_probability_targets(self, rng, reduction):
        import jax
        import jax.numpy as jnp

        x, w = rng.normal(0, 3, (5, 4)), rng.uniform(0.5, 2.0, 4)
        q = np.exp(rng.normal(size=(5, 4)))
        q /= q.sum(1, keepdims=True)
        opts = {"reduction": reduction, "label_smoothing": 0.1}
        got = jax.grad(lambda q_: ss.cross_entropy(jnp.asarray(x), q_, weight=jnp.asarray(w), **opts))(jnp.asarray(q))
        ref = torch.tensor(q, requires_grad=True)
        torch.nn.functional.cross_entropy(torch.tensor(x), ref, weight=torch.tensor(w), **opts).backward()
        np.testing.assert_allclose(np.asarray(got), ref.grad.numpy(), rtol=1e-13, atol=1e-16)

    @pytest.mark.parametrize("fn", ["logsumexp", "softmax", "log_softmax"])
    def test_second_derivatives_are_jaxs_own_and_true(self, rng, fn):
        # The page says: jax.hessian and grad-of-grad differentiate our JAX-written VJP, exactly.
        import jax
        import jax.numpy as jnp

        x, v = jnp.asarray(rng.normal(0, 2, (2, 4))), jnp.asarray(rng.normal(size=(2, 4)))
        ours = {"logsumexp": lambda a: ss.logsumexp(a, axis=1).sum()}.get(fn, lambda a: (getattr(ss, fn)(a) * v).sum())
        plain = {"logsumexp": lambda a: jax.nn.logsumexp(a, axis=1).sum()}.get(
            fn, lambda a: (getattr(jax.nn, fn)(a) * v).sum()
        )
        np.testing.assert_allclose(jax.hessian(ours)(x), jax.hessian(plain)(x), rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(jax.jacrev(jax.grad(ours))(x), jax.hessian(plain)(x), rtol=1e-12, atol=1e-14)

    def test_bce_target_weight_and_pos_weight(self, rng):
        import jax
        import jax.numpy as jnp

        x, t, w, pw = (
            rng.normal(0, 3, (4, 5)),
            rng.uniform(0, 1, (4, 5)),
            rng.uniform(0.5, 2, 5),
            rng.uniform(0.5, 3, 5),
        )

        def loss(t_, w_, pw_):
            return ss.binary_cross_entropy_with_logits(jnp.asarray(x), t_, weight=w_, pos_weight=pw_)

        got = jax.grad(loss, argnums=(0, 1, 2))(jnp.asarray(t), jnp.asarray(w), jnp.asarray(pw))
        ref = [torch.tensor(a, requires_grad=True) for a in (t, w, pw)]
        sp, xt = torch.nn.functional.softplus, torch.tensor(x)
        (ref[1] * (ref[2] * ref[0] * sp(-xt, threshold=1000) + (1 - ref[0]) * sp(xt, threshold=1000))).mean().backward()
        for a, b in zip(got, ref, strict=True):
            np.testing.assert_allclose(np.asarray(a), b.grad.numpy(), rtol=1e-13, atol=1e-16)

    def test_float32_weights_b_within_one_ulp_of_mpmath(self, rng):
        # With jax_enable_x64 the cotangent is computed in float64 and rounded once (without it, JAX computes
        # in float32 throughout, as the JAX adapter's docstring says).
        import jax
        import jax.numpy as jnp
        import mpmath

        from tests.helpers import ulp_error

        x = rng.normal(0, 20, (3, 16)).astype(np.float32)
        b = rng.uniform(0.1, 3.0, (3, 16)).astype(np.float32)
        got = jax.grad(lambda b_: ss.logsumexp(jnp.asarray(x), b=b_, axis=1).sum())(jnp.asarray(b))
        assert got.dtype == jnp.float32
        with mpmath.workdps(50):
            for i in range(3):
                s = mpmath.fsum(mpmath.mpf(float(c)) * mpmath.exp(float(v)) for v, c in zip(x[i], b[i], strict=True))
                for j in range(16):
                    assert ulp_error(float(got[i, j]), mpmath.exp(float(x[i, j])) / s, np.dtype(np.float32)) <= 1.0
