"""Tests for stablesoftmax.autograd: the scalar Value engine and the softmax family on it.

Oracles: closed-form derivatives, PyTorch autograd in float64, central finite
differences, mpmath, and the array functions and their VJPs.
"""

from __future__ import annotations

import gc
import math
import sys
import weakref
from functools import reduce

import mpmath
import numpy as np
import pytest

try:  # PyTorch is an oracle here, not a requirement: without it only these comparisons skip
    import torch
except ImportError:
    torch = None

from hypothesis import given
from hypothesis import strategies as st

import stablesoftmax
from stablesoftmax import ArgumentError, DtypeError, TargetError, autograd
from stablesoftmax.autograd import Value, cross_entropy, log_softmax, logsumexp, softmax
from tests.helpers import eps

needs_torch = pytest.mark.skipif(torch is None, reason="PyTorch is not installed")

inf, nan = math.inf, math.nan
EPS = eps(np.float64)

# Issue 4, item 5: values within 1e-12 relative of the float64 array functions,
# gradients within 1e-12 relative of PyTorch autograd. The one place it lives.
GOAL = 1e-12


def assert_rel(got, ref, rtol=GOAL):
    """Elementwise ``|got - ref| <= rtol * |ref|``; special values must be equal exactly."""
    got, ref = np.asarray(got, float), np.asarray(ref, float)
    assert got.shape == ref.shape
    special = ~np.isfinite(ref) | (ref == 0)
    np.testing.assert_array_equal(got[special], ref[special])
    np.testing.assert_allclose(got[~special], ref[~special], rtol=rtol, atol=0)


def term_scale(name, x, w, target=None):
    """Per entry, the sum of the magnitudes of the terms its gradient adds up.

    A gradient entry that cancels (softmax's ``p_i (g_i - <g, p>)`` at a
    dominant entry, cross-entropy's ``p_t - 1`` when ``p_t`` is near 1) is not
    correct to 1e-12 of itself in any float64 computation, PyTorch's
    included; it is correct to 1e-12 of the terms that cancel.
    """
    p = stablesoftmax.softmax(np.array(x))
    g = np.abs(np.asarray(w, float))
    if name == "logsumexp":
        return g[0] * p
    if name == "softmax":
        return p * (g + np.dot(p, g))
    if name == "log_softmax":
        return g + p * g.sum()
    return p + (np.arange(len(x)) == target)  # cross_entropy


def assert_vjp(got, ref, scale):
    """``|got - ref| <= GOAL * scale`` entrywise; infinities and NaN must be equal exactly.

    A zero in ``ref`` is held to the same bound: ``p_t - 1`` rounds to 0 when
    ``p_t`` rounds to 1 (the exact value at ``x = [0, -37]`` is ``-8.5e-17``).
    """
    got, ref = np.asarray(got, float), np.asarray(ref, float)
    special = ~np.isfinite(ref)
    np.testing.assert_array_equal(got[special], ref[special])
    assert np.all(np.abs(got - ref)[~special] <= GOAL * scale[~special]), (got, ref)


def data(values):
    return np.array([v.data for v in values])


def value_vjp(fn, x, w):
    """``(outputs, d sum(w * outputs) / dx)`` through the Value graph."""
    xs = [Value(v) for v in x]
    out = fn(xs)
    outs = out if isinstance(out, list) else [out]
    loss = reduce(lambda a, b: a + b, [wi * o for wi, o in zip(w, outs, strict=True)])
    loss.backward()
    return data(outs), np.array([v.grad for v in xs])


def torch_vjp(fn, x, w):
    t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
    out = fn(t).reshape(-1)
    (out * torch.tensor(w, dtype=torch.float64)).sum().backward()
    return out.detach().numpy(), t.grad.numpy()


def central_difference(f, x, i, h):
    """``(f(x + h e_i) - f(x - h e_i)) / 2h`` on plain floats."""
    up, down = list(x), list(x)
    up[i] += h
    down[i] -= h
    return (f(up) - f(down)) / (2 * h)


# Each family member: (Value function, torch function, array function, array VJP).
FAMILY = {
    "logsumexp": (logsumexp, lambda t: torch.logsumexp(t, 0), stablesoftmax.logsumexp, stablesoftmax.logsumexp_grad),
    "softmax": (softmax, lambda t: torch.softmax(t, 0), stablesoftmax.softmax, stablesoftmax.softmax_grad),
    "log_softmax": (
        log_softmax,
        lambda t: torch.log_softmax(t, 0),
        stablesoftmax.log_softmax,
        stablesoftmax.log_softmax_grad,
    ),
}


def random_logits(rng, k, scale, offset=0.0):
    return (offset + scale * rng.standard_normal(k)).tolist()


def cotangent(rng, name, k):
    return [1.0] if name == "logsumexp" else rng.standard_normal(k).tolist()


# ---------------------------------------------------------------------------
# The engine
# ---------------------------------------------------------------------------


class TestValue:
    def test_holds_a_float_and_a_zero_grad(self):
        v = Value(3)
        assert type(v.data) is float and v.data == 3.0 and v.grad == 0.0

    def test_accepts_numpy_scalars(self):
        assert Value(np.float32(0.5)).data == 0.5
        assert Value(np.int64(-2)).data == -2.0

    def test_repr_shows_data_and_grad(self):
        assert repr(Value(1.5)) == "Value(data=1.5, grad=0.0)"

    @pytest.mark.parametrize("bad", ["1.0", None, [1.0], True, 1j])
    def test_rejects_non_real_data(self, bad):
        with pytest.raises(DtypeError, match="data must be a real number"):
            Value(bad)

    def test_rejects_an_int_past_float64(self):
        with pytest.raises(ArgumentError, match="must fit in a float64"):
            Value(10**400)

    def test_unsupported_operand_is_a_type_error(self):
        with pytest.raises(TypeError):
            Value(1.0) + "a"
        with pytest.raises(TypeError):
            "a" * Value(1.0)

    def test_public_names(self):
        assert sorted(autograd.__all__) == sorted(["Value", "logsumexp", "softmax", "log_softmax", "cross_entropy"])
        for name in autograd.__all__:
            obj = getattr(autograd, name)
            assert obj.__doc__ and "Examples" in obj.__doc__, name


def grads_of(fn, *xs):
    vs = [Value(x) for x in xs]
    out = fn(*vs)
    out.backward()
    return out.data, [v.grad for v in vs]


class TestArithmetic:
    """Each operator against its closed-form derivative, numbers on either side."""

    @pytest.mark.parametrize(
        ("fn", "x", "y", "value", "dx", "dy"),
        [
            (lambda a, b: a + b, 2.0, 3.0, 5.0, 1.0, 1.0),
            (lambda a, b: a - b, 2.0, 3.0, -1.0, 1.0, -1.0),
            (lambda a, b: a * b, 2.0, 3.0, 6.0, 3.0, 2.0),
            (lambda a, b: a / b, 3.0, 2.0, 1.5, 0.5, -0.75),
            (lambda a, b: -a * b, 2.0, 3.0, -6.0, -3.0, -2.0),
        ],
        ids=["add", "sub", "mul", "div", "neg"],
    )
    def test_binary(self, fn, x, y, value, dx, dy):
        assert grads_of(fn, x, y) == (value, [dx, dy])

    @pytest.mark.parametrize(
        ("fn", "value", "grad"),
        [
            (lambda a: a + 2, 5.0, 1.0),
            (lambda a: 2 + a, 5.0, 1.0),
            (lambda a: a - 2, 1.0, 1.0),
            (lambda a: 2 - a, -1.0, -1.0),
            (lambda a: a * 2, 6.0, 2.0),
            (lambda a: 2 * a, 6.0, 2.0),
            (lambda a: a / 2, 1.5, 0.5),
            (lambda a: 6 / a, 2.0, -6 / 9),
            (lambda a: a**2, 9.0, 6.0),
            (lambda a: 2**a, 8.0, 8 * math.log(2)),
        ],
        ids=["radd-r", "radd-l", "sub-r", "rsub", "mul-r", "rmul", "div-r", "rdiv", "pow", "rpow"],
    )
    def test_with_a_number(self, fn, value, grad):
        assert grads_of(fn, 3.0) == (value, [grad])

    def test_same_operand_twice(self):
        assert grads_of(lambda a: a * a + a / a, 3.0) == (10.0, [6.0])

    def test_pow_fractional(self):
        value, (g,) = grads_of(lambda a: a**0.5, 4.0)
        assert (value, g) == (2.0, 0.25)

    def test_pow_zero_exponent_has_zero_gradient_at_zero(self):
        assert grads_of(lambda a: a**0, 0.0) == (1.0, [0.0])

    def test_pow_at_zero_base_is_ieee(self):
        assert grads_of(lambda a: a**-1, 0.0) == (inf, [-inf])
        assert grads_of(lambda a: a**-2, 0.0) == (inf, [-inf])
        assert grads_of(lambda a: a**-2, -0.0) == (inf, [inf])  # -2 x**-3 from the left
        assert (Value(-0.0) ** -1).data == -inf
        assert grads_of(lambda a: a**0.5, 0.0) == (0.0, [inf])

    def test_pow_overflow_is_signed_inf(self):
        assert (Value(1e200) ** 2).data == inf
        assert (Value(-1e200) ** 3).data == -inf
        assert (Value(-1e200) ** 2).data == inf
        assert (Value(0.5) ** -2000).data == inf

    def test_division_by_zero_is_ieee(self):
        assert (Value(1.0) / 0).data == inf
        assert (Value(-1.0) / Value(0.0)).data == -inf
        assert math.isnan((Value(0.0) / 0.0).data)

    def test_negative_base_with_fractional_exponent_raises(self):
        with pytest.raises(ArgumentError, match=r"base >= 0 .* got base -8\.0"):
            Value(-8.0) ** (1 / 3)

    def test_value_exponent_raises(self):
        with pytest.raises(DtypeError, match="exponent of Value \\*\\* c must be a constant"):
            Value(2.0) ** Value(3.0)

    @pytest.mark.parametrize("base", [0.0, -2.0])
    def test_rpow_needs_a_positive_base(self, base):
        with pytest.raises(ArgumentError, match=f"base of c \\*\\* Value must be > 0, got {base}"):
            base ** Value(1.0)


class TestExp:
    def test_value_and_gradient(self):
        assert grads_of(Value.exp, 1.0) == (math.e, [math.e])

    def test_overflow_is_inf_not_an_error(self):
        assert grads_of(Value.exp, 1000.0) == (inf, [inf])

    def test_minus_inf_gives_zero_with_zero_gradient(self):
        assert grads_of(Value.exp, -inf) == (0.0, [0.0])

    def test_underflow_is_zero(self):
        assert grads_of(Value.exp, -1000.0) == (0.0, [0.0])


class TestLog:
    def test_value_and_gradient(self):
        assert grads_of(Value.log, 4.0) == (math.log(4.0), [0.25])

    def test_log_of_zero_is_minus_inf_with_gradient_plus_inf(self):
        assert grads_of(Value.log, 0.0) == (-inf, [inf])

    def test_log_of_zero_passes_the_upstream_sign(self):
        x = Value(0.0)
        (-x.log()).backward()
        assert x.grad == -inf

    def test_log_of_inf(self):
        assert grads_of(Value.log, inf) == (inf, [0.0])

    def test_log_of_nan_is_nan(self):
        value, (g,) = grads_of(Value.log, nan)
        assert math.isnan(value) and math.isnan(g)

    @pytest.mark.parametrize("x", [-1.0, -1e-300, -inf])
    def test_log_of_negative_raises_naming_the_value(self, x):
        with pytest.raises(ArgumentError, match=f"log needs a value >= 0, got {x!r}"):
            Value(x).log()


class TestLog1p:
    def test_keeps_tiny_arguments(self):
        assert grads_of(Value.log1p, 1e-20) == (1e-20, [1.0])

    def test_minus_one_is_minus_inf(self):
        assert grads_of(Value.log1p, -1.0) == (-inf, [inf])

    def test_below_minus_one_raises(self):
        with pytest.raises(ArgumentError, match="log1p needs a value >= -1, got -2.0"):
            Value(-2.0).log1p()


class TestTanh:
    @pytest.mark.parametrize("x", [-3.0, 0.0, 0.5, 10.0, 20.0, -300.0])
    def test_gradient_against_mpmath(self, x):
        value, (g,) = grads_of(Value.tanh, x)
        assert value == math.tanh(x)
        ref = mpmath.sech(mpmath.mpf(x)) ** 2
        assert abs(g - ref) <= 4 * EPS * ref

    def test_gradient_in_the_tail_beats_one_minus_tanh_squared(self):
        # 1 - tanh(10)**2 is 1.1e-8 relative off (PyTorch's rule); ours is within 4 eps.
        _, (g,) = grads_of(Value.tanh, 10.0)
        ref = mpmath.sech(10) ** 2
        assert abs(1 - math.tanh(10.0) ** 2 - ref) > 1e6 * EPS * ref
        assert abs(g - ref) <= 4 * EPS * ref

    def test_gradient_far_out_is_zero(self):
        assert grads_of(Value.tanh, 400.0) == (1.0, [0.0])


class TestRelu:
    @pytest.mark.parametrize(
        ("x", "value", "grad"), [(2.0, 2.0, 1.0), (-2.0, 0.0, 0.0), (0.0, 0.0, 0.0), (-0.0, 0.0, 0.0)]
    )
    def test_value_and_gradient(self, x, value, grad):
        assert grads_of(Value.relu, x) == (value, [grad])

    def test_nan_stays_nan(self):
        assert math.isnan(Value(nan).relu().data)


def composite(a, b, c):
    """Every primitive and derived op at least once."""
    u = (a * b + 3.0).tanh() - (c / a) ** 2
    v = (b - 1.5).relu() * (a.exp() + 2.0**c).log()
    return u * v - (-c) / (1.0 + b**3) + (a * 0.1).log1p()


class TestAgainstTorch:
    @needs_torch
    @pytest.mark.parametrize("seed", range(8))
    def test_composite_expression(self, seed):
        rng = np.random.default_rng(seed)
        x = (rng.uniform(0.2, 2.0, 3) * [1, 1, rng.choice([-1, 1])]).tolist()
        value, grads = grads_of(composite, *x)
        t = torch.tensor(x, dtype=torch.float64, requires_grad=True)
        a, b, c = t
        ref = ((a * b + 3.0).tanh() - (c / a) ** 2) * ((b - 1.5).relu() * (a.exp() + 2.0**c).log())
        ref = ref - (-c) / (1.0 + b**3) + torch.log1p(a * 0.1)
        ref.backward()
        assert_rel([value], [ref.item()])
        assert_rel(grads, t.grad.numpy())

    @pytest.mark.parametrize("seed", range(4))
    def test_composite_against_central_differences(self, seed):
        rng = np.random.default_rng(seed)
        x = rng.uniform(0.5, 2.0, 3).tolist()
        _, grads = grads_of(composite, *x)
        h = 1e-5
        for i in range(3):
            fd = central_difference(lambda z: composite(*map(Value, z)).data, x, i, h)
            # error bound: h^2 |f'''| / 6 (f''' = O(10) here) + 2 eps |f| / h
            assert abs(fd - grads[i]) <= 1e-8 * max(1.0, abs(grads[i]))


class TestBackward:
    def test_a_chain_of_100k_nodes(self):
        assert sys.getrecursionlimit() < 100_000  # a recursive sort could not do this
        x = Value(0.5)
        y = x
        for _ in range(100_000):
            y = y + 0.0
        y = y.tanh()
        y.backward()
        assert x.grad == 4 * math.exp(-1.0) / (1 + math.exp(-1.0)) ** 2

    def test_children_are_kept_in_operand_order(self):
        a, b = Value(1.0), Value(2.0)
        assert (a * b)._children == (a, b)
        assert (b * a)._children == (b, a)

    def test_accumulation_order_is_the_same_on_every_run(self):
        # Contributions 1e16, 1 and -1e16 reach x; their sum depends on the order.
        # With children in a set, the order (and the result) would follow object ids.
        results = set()
        for _ in range(50):
            x = Value(1.0)
            y = x * 1e16 + x * 1.0 + x * -1e16
            y.backward()
            results.add(x.grad)
        assert results == {0.0}  # the reverse topological order: -1e16 + 1 + 1e16

    def test_leaves_accumulate_across_calls_and_intermediates_do_not(self):
        x = Value(3.0)
        h = x * x
        y = h + 1.0
        y.backward()
        y.backward()
        assert (x.grad, h.grad, y.grad) == (12.0, 1.0, 1.0)

    def test_zero_gradient_never_turns_inf_into_nan(self):
        x, w = Value(1000.0), Value(2.0)
        y = x.exp() * 0.0 + w
        y.backward()
        assert (x.grad, w.grad) == (0.0, 1.0)

    def test_a_leaf_alone(self):
        x = Value(2.0)
        x.backward()
        assert x.grad == 1.0

    def test_graph_has_no_reference_cycles(self):
        gc.disable()
        try:
            x = Value(2.0)
            y = (x * 3.0).exp().log()
            ref = weakref.ref(y)
            y.backward()
            del y
            assert ref() is None  # freed by reference counting alone
        finally:
            gc.enable()


# ---------------------------------------------------------------------------
# The softmax family on lists of Value
# ---------------------------------------------------------------------------

SCALES = [(1.0, 0.0), (10.0, 0.0), (30.0, 0.0), (3.0, 1e4), (3.0, -1e4)]
SCALE_IDS = ["unit", "x10", "x30", "offset+1e4", "offset-1e4"]


@pytest.mark.parametrize("name", list(FAMILY))
class TestFamilyAgainstOracles:
    @pytest.mark.parametrize("k", [1, 2, 5, 40])
    @pytest.mark.parametrize(("scale", "offset"), SCALES, ids=SCALE_IDS)
    def test_values_match_the_array_function(self, name, k, scale, offset, rng):
        fn, _, array_fn, _ = FAMILY[name]
        for _ in range(5):
            x = random_logits(rng, k, scale, offset)
            out = fn([Value(v) for v in x])
            got = data(out) if isinstance(out, list) else out.data
            assert_rel(got, array_fn(np.array(x)))

    @needs_torch
    @pytest.mark.parametrize("k", [1, 2, 5, 40])
    @pytest.mark.parametrize(("scale", "offset"), SCALES, ids=SCALE_IDS)
    def test_gradients_match_torch(self, name, k, scale, offset, rng):
        fn, torch_fn, _, _ = FAMILY[name]
        for _ in range(5):
            x = random_logits(rng, k, scale, offset)
            w = cotangent(rng, name, k)
            _, got = value_vjp(fn, x, w)
            _, ref = torch_vjp(torch_fn, x, w)
            assert_vjp(got, ref, term_scale(name, x, w))

    @pytest.mark.parametrize("k", [2, 5, 40])
    @pytest.mark.parametrize(("scale", "offset"), SCALES, ids=SCALE_IDS)
    def test_gradients_match_the_array_vjp(self, name, k, scale, offset, rng):
        fn, _, _, vjp = FAMILY[name]
        for _ in range(5):
            x = random_logits(rng, k, scale, offset)
            w = cotangent(rng, name, k)
            _, got = value_vjp(fn, x, w)
            ref = vjp(np.array(x), np.array(w[0] if name == "logsumexp" else w))
            assert_vjp(got, ref, term_scale(name, x, w))

    def test_gradients_match_central_differences(self, name, rng):
        fn, *_ = FAMILY[name]
        x = random_logits(rng, 6, 2.0)
        w = cotangent(rng, name, 6)
        _, got = value_vjp(fn, x, w)

        def f(z):
            out = fn([Value(v) for v in z])
            return float(np.dot(w, data(out) if isinstance(out, list) else [out.data]))

        h = 1e-5
        for i in range(6):
            # error bound: h^2 |f'''| / 6 + 2 eps |f| / h, both below 1e-9 for |x| <= 10
            assert abs(central_difference(f, x, i, h) - got[i]) <= 1e-8


# Special inputs: every CONTRACT example without `where`/`b` weights, and more.
SPECIAL = [
    [0.0, -inf],
    [-inf, -inf],
    [inf, 0.0, inf],
    [-inf, inf],
    [0.0, nan, 1.0],
    [1.0, -inf, 3.0, 0.0, 2.0],
    [-inf, 2.0, -inf],
    [inf],
    [-inf],
]


@pytest.mark.parametrize("name", list(FAMILY))
class TestFamilySpecialValues:
    @pytest.mark.parametrize(
        "rule", [r for r in stablesoftmax.CONTRACT if set(r.example) == {"x"}], ids=lambda r: r.case
    )
    def test_contract_examples(self, name, rule):
        if name not in rule.expect:
            pytest.skip(f"the rule says nothing about {name}")
        out = FAMILY[name][0]([Value(v) for v in rule.example["x"]])
        got = data(out) if isinstance(out, list) else out.data
        np.testing.assert_array_equal(got, rule.expect[name])

    @pytest.mark.parametrize("x", SPECIAL, ids=str)
    def test_values_match_the_array_function(self, name, x):
        fn, _, array_fn, _ = FAMILY[name]
        out = fn([Value(v) for v in x])
        got = data(out) if isinstance(out, list) else out.data
        assert_rel(got, array_fn(np.array(x)))

    @pytest.mark.parametrize("x", SPECIAL, ids=str)
    def test_gradients_equal_the_array_vjp(self, name, x):
        fn, _, _, vjp = FAMILY[name]
        w = [0.5] if name == "logsumexp" else [0.5 + i for i in range(len(x))]
        _, got = value_vjp(fn, x, w)
        ref = vjp(np.array(x), np.array(w[0] if name == "logsumexp" else w))
        assert_rel(got, ref)

    @pytest.mark.parametrize(
        "rule",
        [r for r in stablesoftmax.CONTRACT if "gradients" in r.outcome and set(r.example) <= {"x", "g"}],
        ids=lambda r: r.case,
    )
    def test_contract_gradient_examples(self, name, rule):
        (x, g), _ = rule.arguments(f"{name}_grad")
        _, got = value_vjp(FAMILY[name][0], x.tolist(), np.atleast_1d(g).tolist())
        np.testing.assert_array_equal(got, rule.expect[f"{name}_grad"])

    def test_empty_list(self, name):
        out = FAMILY[name][0]([])
        if name == "logsumexp":
            assert out.data == -inf
        else:
            assert out == []


class TestLogsumexp:
    @pytest.mark.parametrize(
        ("x", "expected"),
        [
            ([1000.0, 1001.0, 1002.0], 1002.4076059644444),  # lab 02, overflows naively
            ([-1000.0, -999.0, -998.0], -997.5923940355556),  # lab 02, underflows naively
            ([0.0, -30.0], 9.357622968839737e-14),  # log(1 + s) would be 0.1% off
        ],
    )
    def test_lab_inputs(self, x, expected):
        # mpmath.mp.dps = 50; float(mpmath.log(sum(mpmath.exp(v) for v in x)))
        assert logsumexp(x).data == expected

    def test_gradient_is_softmax_and_sums_to_one(self, rng):
        xs = [Value(v) for v in random_logits(rng, 7, 5.0)]
        logsumexp(xs).backward()
        grads = [v.grad for v in xs]
        assert_rel(grads, stablesoftmax.softmax(np.array([v.data for v in xs])))
        assert abs(math.fsum(grads) - 1.0) <= 8 * EPS

    def test_numbers_are_constants(self):
        x = Value(0.0)
        lse = logsumexp([x, 0.0])
        lse.backward()
        assert (lse.data, x.grad) == (math.log(2.0), 0.5)

    def test_single_entry_has_gradient_one(self):
        x = Value(-3.0)
        lse = logsumexp([x])
        lse.backward()
        assert (lse.data, x.grad) == (-3.0, 1.0)


class TestSoftmax:
    def test_the_course_example_is_finite(self):
        p = softmax([Value(v) for v in [1.0, 92.0, 3.0, 0.0, 2.0]])
        assert_rel(data(p), stablesoftmax.softmax(np.array([1.0, 92.0, 3.0, 0.0, 2.0])))

    def test_temperature_as_the_course_writes_it(self):
        logits = [Value(v) for v in [1.0, 2.0, 3.0]]
        p = softmax([v / 0.5 for v in logits])
        assert_rel(data(p), stablesoftmax.softmax(np.array([1.0, 2.0, 3.0]), temperature=0.5))

    @given(st.lists(st.floats(-700, 700), min_size=1, max_size=12))
    def test_sums_to_one(self, x):
        p = data(softmax(x))
        assert abs(math.fsum(p) - 1.0) <= len(x) * 2 * EPS
        assert (p >= 0).all()


class TestLogSoftmax:
    def test_never_underflows_to_minus_inf(self):
        out = log_softmax([Value(0.0), Value(-800.0)])
        assert data(out).tolist() == [0.0, -800.0]

    @given(
        st.lists(st.floats(-50, 50), min_size=1, max_size=10),
        st.floats(-1e6, 1e6),
    )
    def test_shift_invariance(self, x, c):
        a = data(log_softmax(x))
        b = data(log_softmax([v + c for v in x]))
        # the shifted inputs are rounded at |c|'s scale: a few ulps of max(|x|, |c|)
        assert np.all(np.abs(a - b) <= 8 * EPS * (max(map(abs, x)) + abs(c) + 1))

    def test_gradient_rows_sum_to_zero_for_a_uniform_cotangent(self, rng):
        xs = [Value(v) for v in random_logits(rng, 5, 3.0)]
        reduce(lambda a, b: a + b, log_softmax(xs)).backward()
        # d/dx_j sum_i log sigma_i = 1 - K sigma_j
        p = stablesoftmax.softmax(np.array([v.data for v in xs]))
        assert_rel([v.grad for v in xs], 1 - 5 * p, rtol=1e3 * EPS)


class TestCrossEntropy:
    def test_the_lab_break_case_is_exact(self):
        # lab "break CE via log softmax": -log(softmax) gives inf, the fused form 142
        logits = [Value(v) for v in [10.0, 92.0, 30.0, -50.0, 40.0]]
        loss = cross_entropy(logits, 3)
        loss.backward()
        assert loss.data == 142.0
        assert [v.grad for v in logits][1::2] == [1.0, -1.0]

    @pytest.mark.parametrize(("scale", "offset"), SCALES, ids=SCALE_IDS)
    def test_equals_minus_log_softmax_at_the_target(self, scale, offset, rng):
        for _ in range(5):
            x = random_logits(rng, 5, scale, offset)
            t = int(rng.integers(5))
            assert_rel([cross_entropy(x, t).data], [-stablesoftmax.log_softmax(np.array(x))[t]])

    @needs_torch
    @pytest.mark.parametrize(("scale", "offset"), SCALES, ids=SCALE_IDS)
    def test_gradient_matches_torch(self, scale, offset, rng):
        for _ in range(5):
            x = random_logits(rng, 5, scale, offset)
            t = int(rng.integers(5))
            _, got = value_vjp(lambda xs, t=t: cross_entropy(xs, t), x, [1.0])
            tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)
            torch.nn.functional.cross_entropy(tx[None], torch.tensor([t])).backward()
            assert_vjp(got, tx.grad.numpy(), term_scale("cross_entropy", x, [1.0], t))

    def test_gradient_matches_central_differences(self, rng):
        x = random_logits(rng, 5, 2.0)
        _, got = value_vjp(lambda xs: cross_entropy(xs, 2), x, [1.0])
        for i in range(5):
            fd = central_difference(lambda z: cross_entropy(z, 2).data, x, i, 1e-5)
            assert abs(fd - got[i]) <= 1e-8  # h^2 |f'''| / 6 + 2 eps |f| / h

    @pytest.mark.parametrize(("scale", "offset"), SCALES, ids=SCALE_IDS)
    def test_gradient_matches_the_array_vjp(self, scale, offset, rng):
        for _ in range(5):
            x = random_logits(rng, 5, scale, offset)
            t = int(rng.integers(5))
            _, got = value_vjp(lambda xs, t=t: cross_entropy(xs, t), x, [1.0])
            ref = stablesoftmax.cross_entropy_grad(np.array(x), np.array(t))
            assert_vjp(got, ref, term_scale("cross_entropy", x, [1.0], t))

    @pytest.mark.parametrize(
        "rule",
        [
            r
            for r in stablesoftmax.CONTRACT
            if "cross_entropy" in r.expect
            and r.example.get("reduction") == "none"
            and all(isinstance(t, int) for t in r.example["target"])  # class indices, the Value API's kind
        ],
        ids=lambda r: r.case,
    )
    def test_contract_examples(self, rule):
        (x, target), _ = rule.arguments("cross_entropy")
        got = [cross_entropy(row.tolist(), int(t)).data for row, t in zip(x, target, strict=True)]
        np.testing.assert_array_equal(got, rule.expect["cross_entropy"])

    @pytest.mark.parametrize(
        ("x", "t", "loss", "grad"),
        [
            ([0.0, -inf], 1, inf, [1.0, 0.0]),  # the target has probability 0
            ([-inf, -inf], 0, 0.0, [0.0, 0.0]),  # no distribution: dropped
            ([inf, 1.0, inf], 0, math.log(2.0), [0.0, 0.0, 0.0]),
            ([inf, 1.0, inf], 1, inf, [0.0, 0.0, 0.0]),
        ],
    )
    def test_special_values(self, x, t, loss, grad):
        xs = [Value(v) for v in x]
        out = cross_entropy(xs, t)
        out.backward()
        assert out.data == loss
        assert [v.grad for v in xs] == grad
        ref_loss, ref_grad = stablesoftmax.cross_entropy_with_grad(np.array(x), np.array(t))
        assert (float(ref_loss), ref_grad.tolist()) == (loss, grad)

    def test_nan_gives_nan_loss_and_gradient(self):
        xs = [Value(v) for v in [0.0, nan, 1.0]]
        out = cross_entropy(xs, 0)
        out.backward()
        assert math.isnan(out.data) and all(math.isnan(v.grad) for v in xs)

    @pytest.mark.parametrize(
        ("target", "match"),
        [
            (5, r"target must be in \[0, 5\) for 5 values, got 5"),
            (-1, r"target must be in \[0, 5\) for 5 values, got -1"),
            (1.0, r"target must be an integer class index in \[0, 5\), got float 1.0"),
            (True, r"got bool True"),
        ],
    )
    def test_bad_targets(self, target, match):
        with pytest.raises(TargetError, match=match):
            cross_entropy([0.0] * 5, target)

    def test_empty_list_has_no_valid_target(self):
        with pytest.raises(TargetError, match=r"in \[0, 0\) for 0 values"):
            cross_entropy([], 0)

    def test_numpy_integer_target(self):
        assert cross_entropy([0.0, 0.0], np.int64(1)).data == math.log(2.0)

    @given(st.lists(st.floats(-300, 300), min_size=1, max_size=10), st.data())
    def test_gradient_is_softmax_minus_one_hot(self, x, draw):
        t = draw.draw(st.integers(0, len(x) - 1))
        _, got = value_vjp(lambda xs, t=t: cross_entropy(xs, t), x, [1.0])
        ref = stablesoftmax.softmax(np.array(x)) - (np.arange(len(x)) == t)
        assert_vjp(got, ref, term_scale("cross_entropy", x, [1.0], t))


class TestListArguments:
    @pytest.mark.parametrize("fn", [logsumexp, softmax, log_softmax])
    def test_not_a_list(self, fn):
        with pytest.raises(DtypeError, match="values must be a list of Value or real numbers, got Value"):
            fn(Value(1.0))

    @pytest.mark.parametrize("fn", [logsumexp, softmax, log_softmax])
    def test_bad_entry_is_named(self, fn):
        with pytest.raises(DtypeError, match=r"values\[1\] must be a Value or a real number, got str"):
            fn([Value(1.0), "2"])

    def test_generators_are_accepted(self):
        assert logsumexp(Value(0.0) for _ in range(2)).data == math.log(2.0)


def course_softmax(logits):
    """The course page's code, verbatim."""
    max_val = max(val.data for val in logits)
    exps = [(val - max_val).exp() for val in logits]
    total = sum(exps)
    return [e / total for e in exps]


def course_log_softmax(logits):
    """The course page's code, verbatim."""
    max_val = max(val.data for val in logits)
    shifted = [val - max_val for val in logits]
    log_sum = sum(s.exp() for s in shifted).log()
    return [s - log_sum for s in shifted]


class TestCourse:
    """The course page's own code runs on Value, and ours agrees with it where it is accurate."""

    @pytest.mark.parametrize(("mine", "course"), [(softmax, course_softmax), (log_softmax, course_log_softmax)])
    def test_same_values_and_gradients_on_ordinary_logits(self, mine, course, rng):
        x = random_logits(rng, 5, 3.0)
        w = rng.standard_normal(5).tolist()
        out_mine, grad_mine = value_vjp(mine, x, w)
        out_course, grad_course = value_vjp(course, x, w)
        assert_rel(out_mine, out_course)
        assert_vjp(grad_mine, grad_course, term_scale(mine.__name__, x, w))

    def test_temperature_example(self):
        logits = [Value(v) for v in [1.0, 2.0, 3.0]]
        mine = data(softmax([v / 0.7 for v in logits]))
        assert_rel(mine, data(course_softmax([v / 0.7 for v in logits])))

    def test_log1p_where_the_course_formula_rounds(self):
        # log(1 + e^-30) rounds e^-30 to the ulp of 1: the course formula is 0.1% off.
        ref = stablesoftmax.log_softmax(np.array([0.0, -30.0]))[0]
        assert log_softmax([0.0, -30.0])[0].data == ref
        assert abs(course_log_softmax([Value(0.0), Value(-30.0)])[0].data / ref - 1) > 1e-4
