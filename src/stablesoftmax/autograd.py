r"""A scalar reverse-mode autograd ``Value``, and the softmax family on lists of them.

The course version of the task (the labs' "softmax on Value objects"), done so
that it stays correct on the inputs the labs break.

Engine
------
Each primitive (``+``, ``*``, ``** c``, ``c ** x``, :meth:`Value.exp`,
:meth:`Value.log`, :meth:`Value.log1p`, :meth:`Value.tanh`, :meth:`Value.relu`) computes its output
and a backward closure that adds its local chain-rule term to its operands'
``grad`` with ``+=``. Subtraction, negation and division are written in terms
of them, so each gradient rule exists once. Children are kept in a tuple in
operand order and :meth:`Value.backward` walks the graph with an explicit
stack (no recursion: a chain of a million nodes works), so gradients are
accumulated in the same order, and round the same way, on every run.
Backward closures hold their operands, never their own output, so a graph
holds no reference cycles and is freed as soon as it is dropped.

Edge behaviour (floats follow IEEE 754 where math has an answer)
----------------------------------------------------------------
* ``exp`` overflow gives ``inf`` (never ``OverflowError``); its gradient is
  ``inf`` times the incoming gradient. ``exp(-inf)`` is 0 with gradient 0.
* ``log(0)`` is ``-inf``, the limit from the right; its gradient is the
  right-hand limit of ``1/x``, ``+inf`` times the incoming gradient.
  ``log(x)`` for ``x < 0`` raises :class:`~stablesoftmax.ArgumentError`
  naming ``x``: the real logarithm has no value there. ``log(inf)`` is
  ``inf`` with gradient 0; ``log(nan)`` is NaN.
* ``x ** c`` and ``c ** x`` follow IEEE ``pow``: ``0 ** -1`` is ``inf`` (so
  ``x / 0`` is ``+-inf`` and ``0 / 0`` NaN, as in NumPy and PyTorch) and
  overflow is ``+-inf``. A negative base with a non-integer exponent raises
  :class:`~stablesoftmax.ArgumentError` (the result would be complex), as
  does ``c ** x`` with a base ``c <= 0``.
* A node whose gradient is exactly 0 passes nothing back, so a term that does
  not reach the output never turns ``0 * inf`` into NaN.
* :meth:`Value.backward` seeds the output with 1 and recomputes every
  intermediate gradient; gradients of leaves accumulate across calls, as
  PyTorch's ``.grad`` does. Set ``v.grad = 0.0`` between optimisation steps.

List functions
--------------
:func:`logsumexp`, :func:`softmax`, :func:`log_softmax` and
:func:`cross_entropy` shift by ``m = max(x.data) = x_k``, a plain float,
so the shift carries no gradient (it cancels exactly in each result), and
use the log-sum-exp trick of the course:

.. math:: \operatorname{lse}(x) = m + \log\sum_j e^{x_j - m}, \qquad
          \log\sigma(x)_i = (x_i - m) - \log\sum_j e^{x_j - m}

with one refinement from the array functions (Blanchard, Higham & Higham,
IMA J. Numer. Anal. 41, 2021): the sum is ``1 + s`` (the max term is exactly
1) and ``log(1 + s)`` is taken as ``log1p(s)``, which keeps the bits of ``s``
that ``1 + s`` rounds away. So ``log_softmax([0, -30])[0]`` is
``-9.357622968839737e-14``, not 0.1% off. Cross-entropy is
``lse(x) - x[target]``, computed as ``log1p(s) - (x[target] - m)``, never
``-log(softmax)``. Results match the float64 array functions to ~1e-15
relative, the rounding of ``x - m`` aside (``|x - m| * 2**-53``).
Special values follow the one table of the array functions,
``stablesoftmax.CONTRACT``: ``-inf`` entries have probability 0; an empty
list gives ``lse = -inf`` and empty lists; an all ``-inf`` list gives
``lse = -inf``, softmax zeros and log_softmax all ``-inf``; with ``+inf``
entries the distribution is uniform over them; NaN anywhere gives NaN
everywhere, gradients included. Gradients follow the array VJPs
(``stablesoftmax.logsumexp_grad`` and siblings): an entry at ``-inf`` gets
gradient 0 and its ``-inf`` output passes none back, since no finite change
of the input moves anything; where the max is infinite the results are
constants from the table, with zero gradient. Cross-entropy of an all
``-inf`` list is 0 with zero gradient: such a row holds no distribution and
``stablesoftmax.cross_entropy`` leaves it out.

Examples
--------
>>> from stablesoftmax.autograd import Value, cross_entropy
>>> logits = [Value(10.0), Value(92.0), Value(30.0), Value(-50.0), Value(40.0)]
>>> loss = cross_entropy(logits, 3)   # -log(softmax) would give inf here
>>> loss.data
142.0
>>> loss.backward()
>>> [round(v.grad, 6) for v in logits]
[0.0, 1.0, 0.0, -1.0, 0.0]
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from typing import TypeGuard, Union

from ._errors import ArgumentError, DtypeError, TargetError

__all__ = ["Value", "logsumexp", "softmax", "log_softmax", "cross_entropy"]

Number = int | float
# What _is_real accepts: Python's int and float, and any other numbers.Real (NumPy's scalars, Fraction).
_Real = int | float | numbers.Real
Operand = Union["Value", int, float]
_Backward = Callable[[float], None]


def _no_backward(g: float) -> None:
    """The backward step of a leaf: there is nothing below it."""


class Value:
    """A float that records how it was computed, for reverse-mode differentiation.

    Parameters
    ----------
    data : int or float
        The value. Any real number (Python or NumPy), stored as a float;
        ``bool`` is refused.

    Attributes
    ----------
    data : float
        The value computed in the forward pass.
    grad : float
        ``d output / d self`` after :meth:`backward` on some output; 0 before.

    Examples
    --------
    >>> from stablesoftmax.autograd import Value
    >>> x = Value(2.0)
    >>> y = x * x + 3 * x
    >>> y.backward()
    >>> y.data, x.grad
    (10.0, 7.0)
    """

    __slots__ = ("data", "grad", "_children", "_backward", "__weakref__")

    def __init__(self, data: _Real) -> None:
        self.data = _as_float(data, "data")
        self.grad = 0.0
        self._children: tuple[Value, ...] = ()
        self._backward: _Backward = _no_backward

    def __repr__(self) -> str:
        return f"Value(data={self.data!r}, grad={self.grad!r})"

    # ---- primitives: each computes its output and its one gradient rule ----

    def __add__(self, other: Operand) -> Value:
        """``self + other``; ``d/dself = d/dother = 1``."""
        if (b := _lift(other)) is NotImplemented:
            return NotImplemented

        def backward(g: float) -> None:
            self.grad += g
            b.grad += g

        return _node(self.data + b.data, (self, b), backward)

    def __mul__(self, other: Operand) -> Value:
        """``self * other``; ``d/dself = other``, ``d/dother = self``."""
        if (b := _lift(other)) is NotImplemented:
            return NotImplemented

        def backward(g: float) -> None:
            self.grad += b.data * g
            b.grad += self.data * g

        return _node(self.data * b.data, (self, b), backward)

    def __pow__(self, exponent: Number) -> Value:
        r"""``self ** c`` for a constant real ``c``; ``d/dself = c x^{c-1}``.

        IEEE ``pow``: ``0 ** -1`` is ``inf``, overflow is ``+-inf``. A negative
        base with a non-integer ``c`` raises :class:`ArgumentError`. For
        ``c = 0`` the result is 1 with gradient 0 everywhere, 0 included.
        """
        c = _exponent(exponent)
        x = self.data

        def backward(g: float) -> None:
            if c != 0:  # c x^(c-1) would be 0 * inf at x = 0
                self.grad += c * _pow(x, c - 1) * g

        return _node(_pow(x, c), (self,), backward)

    def __rpow__(self, base: Number) -> Value:
        r"""``c ** self`` for a constant real ``c > 0``; ``d/dself = c^x \log c``."""
        c = _as_float(base, "base")
        if not c > 0:
            raise ArgumentError(f"base of c ** Value must be > 0, got {c!r}")
        out = _pow(c, self.data)

        def backward(g: float) -> None:
            self.grad += out * math.log(c) * g

        return _node(out, (self,), backward)

    def exp(self) -> Value:
        r"""``e ** self``; ``d/dself = e^x``.

        Overflow (``x > 709.78``) gives ``inf``, as IEEE ``exp`` does, with
        gradient ``inf`` times the incoming one. ``exp(-inf)`` is 0.
        """
        try:
            out = math.exp(self.data)
        except OverflowError:  # math.exp raises where IEEE exp returns inf
            out = math.inf

        def backward(g: float) -> None:
            self.grad += out * g

        return _node(out, (self,), backward)

    def log(self) -> Value:
        r"""Natural log; ``d/dself = 1/x``.

        ``log(0) = -inf``, the limit from the right, and its gradient is that
        side's limit of ``1/x``: ``+inf`` times the incoming gradient.

        Raises
        ------
        ArgumentError
            If ``self.data < 0``: the real logarithm has no value there.
        """
        x = self.data
        if x < 0:
            raise ArgumentError(f"log needs a value >= 0, got {x!r}")
        out = math.log(x) if x != 0 else -math.inf

        def backward(g: float) -> None:
            self.grad += g / x if x != 0 else math.copysign(math.inf, g)

        return _node(out, (self,), backward)

    def log1p(self) -> Value:
        r"""``log(1 + self)``, accurate for tiny ``x``; ``d/dself = 1 / (1 + x)``.

        ``log1p(-1) = -inf`` with gradient ``+inf`` times the incoming one,
        as :meth:`log` at 0.

        Raises
        ------
        ArgumentError
            If ``self.data < -1``.
        """
        x = self.data
        if x < -1:
            raise ArgumentError(f"log1p needs a value >= -1, got {x!r}")
        out = math.log1p(x) if x != -1 else -math.inf

        def backward(g: float) -> None:
            self.grad += g / (1.0 + x) if x != -1 else math.copysign(math.inf, g)

        return _node(out, (self,), backward)

    def tanh(self) -> Value:
        r"""Hyperbolic tangent; ``d/dself = 1 - tanh^2 x = 4 e^{-2|x|} / (1 + e^{-2|x|})^2``.

        The second form keeps full relative accuracy in the tails, where
        ``1 - tanh^2`` cancels to 0 (PyTorch's rule, off by ~1e-8 at ``x = 10``).
        """
        x = self.data

        def backward(g: float) -> None:
            a = math.exp(-2.0 * abs(x))  # underflows to 0 for |x| > 372: sech^2 is 0 there too
            self.grad += 4.0 * a / (1.0 + a) ** 2 * g

        return _node(math.tanh(x), (self,), backward)

    def relu(self) -> Value:
        """``max(0, self)``; ``d/dself = 1`` for ``x > 0``, else 0 (0 at ``x = 0``). NaN stays NaN."""
        x = self.data

        def backward(g: float) -> None:
            if x > 0:
                self.grad += g

        return _node(0.0 if x <= 0 else x, (self,), backward)

    # ---- derived: no gradient rule of their own ----

    def __neg__(self) -> Value:
        """``-self``, as ``self * -1``."""
        return self * -1.0

    def __sub__(self, other: Operand) -> Value:
        """``self - other``, as ``self + (-other)``."""
        if (b := _lift(other)) is NotImplemented:
            return NotImplemented
        return self + (-b)

    def __truediv__(self, other: Operand) -> Value:
        """``self / other``, as ``self * other ** -1``: ``x / 0`` is ``+-inf``."""
        if (b := _lift(other)) is NotImplemented:
            return NotImplemented
        return self * b**-1

    def __radd__(self, other: Number) -> Value:
        return self + other

    def __rmul__(self, other: Number) -> Value:
        return self * other

    def __rsub__(self, other: Number) -> Value:
        return -self + other

    def __rtruediv__(self, other: Number) -> Value:
        return self**-1 * other

    # ---- reverse pass ----

    def backward(self) -> None:
        """Fill ``grad`` of every node this one depends on with ``d self / d node``.

        Seeds ``self.grad`` with 1, resets every intermediate node's ``grad``
        and accumulates into the leaves (they keep what earlier calls left,
        as in PyTorch). The graph is walked iteratively in a fixed order.
        """
        order = _topological_order(self)
        for node in order:
            if node._children:
                node.grad = 0.0
        self.grad += 1.0
        for node in reversed(order):
            if node.grad != 0:  # a zero gradient contributes nothing, even through an inf
                node._backward(node.grad)


# --------------------------------------------------------------------------
# The softmax family on lists of Value
# --------------------------------------------------------------------------


def logsumexp(values: Iterable[Operand], /) -> Value:
    r"""``log(sum(exp(x)))`` of a list of :class:`Value`, computed stably.

    .. math:: \operatorname{lse}(x) = m + \log\sum_j e^{x_j - m}
              = m + \operatorname{log1p}\Big(\sum_{j \ne k} e^{x_j - m}\Big), \quad m = x_k = \max_j x_j

    Gradient: ``d lse / d x_i = softmax(x)_i`` (0 at ``-inf`` entries).

    Parameters
    ----------
    values : iterable of Value or real numbers
        The ``K`` logits; numbers are constants (no gradient).

    Returns
    -------
    Value
        ``-inf`` for an empty or all ``-inf`` list, ``+inf`` if any entry is
        ``+inf`` (both constants: no gradient), NaN if any entry is NaN.

    Examples
    --------
    >>> from stablesoftmax.autograd import Value, logsumexp
    >>> logsumexp([Value(1000.0), Value(1000.0)]).data   # log(2) + 1000; naive: inf
    1000.6931471805599
    """
    xs = _as_values(values)
    k, m = _max_entry(xs)
    if math.isinf(m):
        return Value(m)
    return _log_sum_exp([x - m for x in xs], k) + m


def softmax(values: Iterable[Operand], /) -> list[Value]:
    r"""Softmax of a list of :class:`Value`: ``exp(x_i - m) / sum(exp(x_j - m))``.

    Gradient: ``d sigma_i / d x_j = sigma_i (delta_ij - sigma_j)``, applied as one
    vector-Jacobian product over the outputs, ``v_j = p_j (g_j - <g, p>)``. At the
    max ``k``, ``g_k - <g, p> = sum_{i != k} (g_k - g_i) p_i`` is formed as that
    sum: by subtraction it would be 0 once ``p_k`` rounds to 1 (``[0, -40]``).

    Parameters
    ----------
    values : iterable of Value or real numbers
        The ``K`` logits.

    Returns
    -------
    list of Value
        ``K`` probabilities: 0 at ``-inf`` entries, all 0 for an all ``-inf``
        list, uniform over the ``+inf`` entries if there are any (constants
        in both of these cases).

    Examples
    --------
    >>> from stablesoftmax.autograd import Value, softmax
    >>> [p.data for p in softmax([Value(1.0), Value(1000.0)])]  # naive: [0.0, nan]
    [0.0, 1.0]
    """
    xs = _as_values(values)
    k, m = _max_entry(xs)
    if math.isinf(m):
        return [Value(p) for p in _contract_probs(xs, m)]
    exps = [math.exp(x.data - m) for x in xs]
    rest = math.fsum(exps[:k] + exps[k + 1 :])
    probs = [e / (1.0 + rest) for e in exps]
    cotangents = [0.0] * len(xs)
    hub = _node(math.nan, tuple(xs), lambda _: _softmax_vjp(xs, probs, k, cotangents))
    return [_node(p, (hub,), _collect(hub, cotangents, i)) for i, p in enumerate(probs)]


def log_softmax(values: Iterable[Operand], /) -> list[Value]:
    r"""Log-softmax of a list of :class:`Value`, never forming the softmax.

    .. math:: \log\sigma(x)_i = (x_i - m) - \log\sum_j e^{x_j - m}
              = (x_i - m) - \operatorname{log1p}\Big(\sum_{j \ne k} e^{x_j - m}\Big)

    Gradient: ``d log sigma_i / d x_j = delta_ij - sigma_j``.

    Parameters
    ----------
    values : iterable of Value or real numbers
        The ``K`` logits.

    Returns
    -------
    list of Value
        ``K`` log-probabilities: ``-inf`` (a constant) at ``-inf`` entries and
        everywhere for an all ``-inf`` list; ``-log k`` at the ``k`` ``+inf``
        entries.

    Examples
    --------
    >>> from stablesoftmax.autograd import Value, log_softmax
    >>> [v.data for v in log_softmax([Value(0.0), Value(-800.0)])]  # log(softmax): -inf
    [0.0, -800.0]
    """
    xs = _as_values(values)
    k, m = _max_entry(xs)
    if math.isinf(m):
        return [Value(_log(p)) for p in _contract_probs(xs, m)]
    shifted = [x - m for x in xs]
    lse = _log_sum_exp(shifted, k)  # computed once, shared by every output
    return [Value(-math.inf) if _dead(x) else s - lse for x, s in zip(xs, shifted, strict=True)]


def cross_entropy(values: Iterable[Operand], target: int, /) -> Value:
    r"""Cross-entropy of logits against a class index: ``lse(x) - x[target]``.

    .. math:: \ell = \operatorname{log1p}\Big(\sum_{j \ne k} e^{x_j - m}\Big) - (x_t - m)

    Gradient: ``d loss / d x_j = softmax(x)_j - delta_jt``. Never computed as
    ``-log(softmax(x)[target])``, which is ``inf`` once the target's
    probability underflows.

    Parameters
    ----------
    values : iterable of Value or real numbers
        The ``K`` logits.
    target : int
        The true class, ``0 <= target < K``.

    Returns
    -------
    Value
        The loss. ``+inf`` when only the target's logit is ``-inf`` (its
        probability is exactly 0); 0 with no gradient for an all ``-inf``
        list, which holds no distribution (as ``stablesoftmax.cross_entropy``
        drops such a row); ``log k`` or ``+inf`` with no gradient when ``k``
        entries are ``+inf``, as the target is one of them or not.

    Raises
    ------
    TargetError
        If ``target`` is not an integer in ``[0, K)``.

    Examples
    --------
    >>> from stablesoftmax.autograd import Value, cross_entropy
    >>> cross_entropy([Value(1.2), Value(4.7), Value(3.1), Value(0.5), Value(2.9)], 2).data
    1.9452821483198477
    """
    xs = _as_values(values)
    t = _check_target(target, len(xs))
    k, m = _max_entry(xs)
    if math.isinf(m):
        return Value(0.0 if m < 0 else -_log(_contract_probs(xs, m)[t]))
    shifted = [x - m for x in xs]
    x_t = Value(-math.inf) if _dead(xs[t]) else shifted[t]
    return _log_sum_exp(shifted, k) - x_t


# --------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------


def _node(data: float, children: tuple[Value, ...], backward: _Backward) -> Value:
    out = Value.__new__(Value)  # data is already a float: skip the constructor's checks
    out.data, out.grad = data, 0.0
    out._children = children
    out._backward = backward
    return out


def _dead(x: Value) -> bool:
    """An entry at ``-inf``: no finite change moves it, so it gets and passes no gradient.

    As the array VJPs (``stablesoftmax.log_softmax_grad``) treat it.
    """
    return x.data == -math.inf


def _topological_order(root: Value) -> list[Value]:
    """Every node ``root`` depends on, children before parents.

    Depth-first post-order with an explicit stack of child iterators (a
    recursive walk hits Python's recursion limit near 1000 nodes deep).
    Children are visited in operand order, so the order is reproducible.
    """
    order: list[Value] = []
    seen = {id(root)}
    stack = [(root, iter(root._children))]
    while stack:
        node, children = stack[-1]
        for child in children:
            if id(child) not in seen:
                seen.add(id(child))
                stack.append((child, iter(child._children)))
                break
        else:  # every child is done
            stack.pop()
            order.append(node)
    return order


def _sum(values: list[Value]) -> Value:
    """Left-to-right sum without Python ``sum``'s extra ``0 +`` node."""
    total = values[0]
    for v in values[1:]:
        total = total + v
    return total


def _collect(hub: Value, cotangents: list[float], i: int) -> _Backward:
    """The backward step of softmax output ``i``: its cotangent is kept for the one VJP of ``hub``.

    ``hub.grad`` only marks that a cotangent arrived (so that the engine runs
    the hub's step); cotangents of opposite signs must not cancel it to 0.
    """

    def backward(g: float) -> None:
        cotangents[i] += g
        hub.grad += abs(g) if g == g else g  # NaN stays NaN: the step must still run

    return backward


def _softmax_vjp(xs: list[Value], probs: list[float], k: int, cotangents: list[float]) -> None:
    r"""``x_j.grad += p_j (g_j - <g, p>)``, with ``g_j - <g, p> = (g_j - g_k) - \sum_{i \ne k} (g_i - g_k) p_i``.

    ``<g, p>`` is ``g_k`` to within the small probabilities when ``p_k`` rounds
    to 1, so ``g_k - <g, p>`` by subtraction would be 0 or a rounding error;
    differences to ``g_k`` keep it exact to a few ulps. The cotangents are
    then cleared for the next :meth:`Value.backward`.
    """
    g_k = cotangents[k]
    spread = math.fsum((g - g_k) * p for i, (g, p) in enumerate(zip(cotangents, probs, strict=True)) if i != k)
    for x, g, p in zip(xs, cotangents, probs, strict=True):
        if p != 0.0:  # a -inf entry: probability 0, and no gradient
            x.grad += p * ((g - g_k) - spread)
    cotangents[:] = [0.0] * len(cotangents)


def _log_sum_exp(shifted: list[Value], k: int) -> Value:
    """``log(sum(exp(s)))`` of entries shifted by the max, ``s[k] = 0``.

    The sum is ``e_k + rest`` with ``e_k = exp(s_k) = 1``, and
    ``log(e_k + rest) = s_k + log1p(rest / e_k)``: the same value and the same
    gradient, but ``log(1 + rest)`` would round ``rest`` to the ulp of 1
    (``logsumexp([0, -30])`` would be 0.1% off).
    """
    exps = [s.exp() for s in shifted]
    others = exps[:k] + exps[k + 1 :]
    rest = _sum(others) if others else Value(0.0)
    return shifted[k] + (rest / exps[k]).log1p()


def _max_entry(xs: list[Value]) -> tuple[int, float]:
    """``(k, m)``: the first max entry and its value.

    ``m`` is ``-inf`` for no entries, NaN if any entry is NaN (Python's
    ``max`` would then depend on the order).
    """
    data = [x.data for x in xs]
    if any(map(math.isnan, data)):
        return 0, math.nan
    m = max(data, default=-math.inf)
    return (data.index(m) if data else 0), m


def _contract_probs(xs: list[Value], m: float) -> list[float]:
    """The contract's probabilities when the max ``m`` is infinite.

    All zeros when every entry is ``-inf``; uniform over the ``+inf`` entries
    otherwise (the limit as they grow together).
    """
    if m < 0:
        return [0.0] * len(xs)
    hits = [x.data == math.inf for x in xs]
    return [h / sum(hits) for h in hits]


def _log(p: float) -> float:
    return math.log(p) if p > 0 else -math.inf


def _pow(x: float, c: float) -> float:
    """IEEE ``pow(x, c)`` on floats, but a complex result raises.

    ``math.pow`` raises where IEEE gives ``+-inf`` (a zero base with a
    negative exponent, overflow); this returns the IEEE value instead.
    """
    try:
        return math.pow(x, c)
    except OverflowError:  # |result| > max float: +-inf, negative only for x < 0 and odd integer c
        return -math.inf if x < 0 and _odd_integer(c) else math.inf
    except ValueError:
        if x != 0:  # x < 0, c not an integer
            msg = f"Value ** c needs a base >= 0 when c is not an integer, got base {x!r} and c = {c!r}"
            raise ArgumentError(msg) from None
        return math.copysign(math.inf, x) if _odd_integer(c) else math.inf


def _odd_integer(c: float) -> bool:
    return c.is_integer() and c % 2 == 1


def _is_real(x: object) -> TypeGuard[_Real]:
    if type(x) is float or type(x) is int:  # the common case, without the slow ABC check
        return True
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _as_float(x: object, name: str) -> float:
    if not _is_real(x):
        raise DtypeError(f"{name} must be a real number (int or float), got {type(x).__name__} {x!r}")
    try:
        return float(x)
    except OverflowError:  # an int, or a Fraction, too big for a float
        bits = int(math.trunc(x)).bit_length()  # trunc: numbers.Real promises __trunc__, not __int__
        raise ArgumentError(f"{name} must fit in a float64, got an integer of {bits} bits") from None


def _exponent(c: object) -> float:
    if isinstance(c, Value):
        msg = (
            "the exponent of Value ** c must be a constant real number, got a Value; for x ** y use (x.log() * y).exp()"
        )
        raise DtypeError(msg)
    return _as_float(c, "exponent")


def _lift(x: object) -> Value:
    """``x`` as a Value: itself, or a constant for a real number; else NotImplemented."""
    if isinstance(x, Value):
        return x
    return Value(x) if _is_real(x) else NotImplemented


def _as_values(values: Iterable[Operand]) -> list[Value]:
    if isinstance(values, (Value, str, bytes)) or not isinstance(values, Iterable):
        raise DtypeError(f"values must be a list of Value or real numbers, got {type(values).__name__}")
    xs = []
    for i, v in enumerate(values):
        if not isinstance(v, Value) and not _is_real(v):
            raise DtypeError(f"values[{i}] must be a Value or a real number, got {type(v).__name__} {v!r}")
        xs.append(v if isinstance(v, Value) else Value(v))
    return xs


def _check_target(target: object, k: int) -> int:
    if isinstance(target, bool) or not isinstance(target, (int, numbers.Integral)):
        raise TargetError(f"target must be an integer class index in [0, {k}), got {type(target).__name__} {target!r}")
    t = int(target)
    if not 0 <= t < k:
        raise TargetError(f"target must be in [0, {k}) for {k} values, got {target}")
    return t
