"""The reference backend: every function of the family on rows, in any array namespace.

Each function takes rows ``(B, K)`` in the compute dtype (float64 where the
device has it), already masked (a masked entry is ``-inf``) and validated by
:mod:`._dispatch`, and returns rows or per-row values in that dtype. The
algebra is :mod:`._state`'s; this module only says which state and which
finish each function needs, and writes each gradient next to its forward.

Nothing here branches on values or leaves the namespace ``xp``: the same code
serves NumPy (when the compiled kernels cannot), PyTorch on any device, JAX
under ``jit`` and fake tensors under ``torch.compile``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import _state

Array = Any


@dataclass(frozen=True)
class Problem:
    """A cross-entropy problem as rows, validated.

    ``x`` (B, C) after softcap and mask; ``target`` (B,) integer classes or
    (B, C) probabilities; ``counted`` (B,) bool (not ignored); ``weight`` (C,)
    or None; ``allowed`` (B, C) bool or None (the ``where`` mask).
    """

    x: Array
    target: Array
    probs: bool
    counted: Array
    weight: Array | None
    allowed: Array | None
    needs_twosum: bool
    reduction: str
    smoothing: float
    z_loss: float
    softcap: float | None


# --------------------------------------------------------------------------
# Reductions: logsumexp, softmax, log_softmax and their VJPs
# --------------------------------------------------------------------------


def logsumexp(x: Array, xp: Any, *, needs_twosum: bool) -> Array:
    return _state.lse(_state.state(x, xp, needs_twosum=needs_twosum)[0], xp)


def softmax(x: Array, xp: Any, *, needs_twosum: bool, temperature: float = 1.0) -> Array:
    st, _, t = _state.state(x, xp, needs_twosum=needs_twosum, scale=temperature)
    return _state.probs(t, st, xp)


def log_softmax(x: Array, xp: Any, *, needs_twosum: bool, temperature: float = 1.0) -> Array:
    st, sh, _ = _state.state(x, xp, needs_twosum=needs_twosum, scale=temperature)
    return _state.log_probs(sh, st, xp)


def weighted_logsumexp(x: Array, b: Array, xp: Any, *, needs_twosum: bool) -> tuple[Array, Array]:
    """``(log|sum(b exp x)|, sign)`` per row; ``b = 0`` drops its term (SciPy's ``b``).

    The sum is ``b_k exp(x_k) (1 + q)`` with ``q = sum_{i != k} (b_i / b_k) exp(x_i - x_k)``,
    the pivot ``k`` the largest term ``x_k + log|b_k|`` (not the largest ``x``: a
    tiny weight on the max would make ``q`` overflow), so ``|q|`` stays near or
    below the number of terms and ``log1p(q)`` keeps a tiny rest as the unweighted
    path does. An infinite weight on a term with mass makes the sum infinite (or
    NaN when weights of both signs are infinite).
    """
    x = xp.where(b != 0, x, xp.full_like(x, -xp.inf))
    k = _weighted_pivot(x, b, xp)
    xk = xp.take_along_axis(x, k, axis=-1)
    bk = xp.take_along_axis(b, k, axis=-1)
    bk = xp.where(xk == -xp.inf, xp.ones_like(bk), bk)  # no mass: the sum is 0 whatever the pivot's weight
    sh = _state.shift(x, xk, xp, needs_twosum=needs_twosum)
    at_pivot = xp.arange(x.shape[-1], device=_state._device(x)) == k
    u = _weighted_ratios(sh, b, bk, xp)
    q = xp.sum(xp.where(at_pivot | (sh.d == -xp.inf), xp.zeros_like(u), u), axis=-1)
    xk, bk = xk[:, 0], bk[:, 0]
    rest = xp.where(q > -1, xp.log1p(xp.where(q > -1, q, xp.zeros_like(q))), xp.log(xp.abs(1 + q)))
    out = xk + _log_abs(bk, xp) + rest
    sign = xp.sign(bk) * xp.sign(1 + q)
    sign = xp.where(xk == -xp.inf, xp.zeros_like(sign), sign)
    sign = xp.where(xp.isnan(out), xp.full_like(sign, xp.nan), sign)
    return out, sign


def _weighted_pivot(x: Array, b: Array, xp: Any) -> Array:
    """Per row (B, 1), the index of the largest ``x_i + log|b_i|``; on a row whose max or a weight
    is not finite, the first max of ``x`` (the state's ``k``, which the special-slice rule needs)."""
    m = xp.max(x, axis=-1, keepdims=True)
    ordinary = xp.isfinite(m) & xp.all(xp.isfinite(b), axis=-1, keepdims=True)
    y = xp.where(ordinary, x + _log_abs(b, xp), xp.full_like(x, -xp.inf))
    return xp.where(ordinary, xp.argmax(y, axis=-1, keepdims=True), xp.argmax(x, axis=-1, keepdims=True))


def _weighted_ratios(sh: _state.Shift, b: Array, bk: Array, xp: Any) -> Array:
    """``(b_i / b_k) exp(x_i - x_k)``: a product where both factors are normal numbers, else
    ``exp((x_i - x_k) + log|b_i / b_k|)`` with the sign (one factor would overflow or lose bits)."""
    t = _state.corrected(xp.exp(sh.d), sh.err, xp)
    lr = _log_abs(b, xp) - _log_abs(bk, xp)
    direct = (xp.abs(lr) < 600) & (sh.d < 600)  # e**600 and e**-600 are far from float64's limits
    far = xp.sign(b) * xp.sign(bk) * xp.exp(xp.where(direct, xp.zeros_like(lr), sh.d + lr))
    return xp.where(direct, (b / bk) * t, far)


def _log_abs(b: Array, xp: Any) -> Array:
    """``log|b|``, ``-inf`` at 0 without NumPy's divide-by-zero warning."""
    nonzero = b != 0
    return xp.where(nonzero, xp.log(xp.abs(xp.where(nonzero, b, xp.ones_like(b)))), xp.full_like(b, -xp.inf))


def logsumexp_grad(x: Array, g: Array, xp: Any, *, needs_twosum: bool, b: Array | None = None) -> Array:
    r"""``g * softmax(x)`` (with ``b``: ``g b_i e^{x_i} / sum_j b_j e^{x_j}``), 0 where nothing moves."""
    if b is None:
        p = softmax(x, xp, needs_twosum=needs_twosum)
    else:
        x = xp.where(b != 0, x, xp.full_like(x, -xp.inf))
        st, _, t = _state.state(x, xp, needs_twosum=needs_twosum)
        full = _state.probs(t, st, xp) * (1 + st.s)[:, None]  # exp(x - m), the max term 1
        bt = xp.where(full != 0, b * full, xp.zeros_like(full))
        p = bt / xp.sum(bt, axis=-1, keepdims=True)
    return dead_to_zero(p * g[:, None], x, xp)


def softmax_grad(x: Array, g: Array, xp: Any, *, needs_twosum: bool, temperature: float = 1.0) -> Array:
    r"""``p (g - <g, p>) / T``, written ``p_j ((g_j - g_k) - sum_{i != k} (g_i - g_k) p_i) / T``.

    The cotangents are taken relative to the max's ``g_k``, so that at the
    max, where ``p_k`` rounds to 1 and ``g_k - <g, p>`` would cancel, the
    value is the small sum it is: the row still sums to 0.
    """
    st, _, t = _state.state(x, xp, needs_twosum=needs_twosum, scale=temperature)
    p = _state.probs(t, st, xp)
    g = live_only(g, x, xp)
    rel = g - xp.take_along_axis(g, st.k[:, None], axis=-1)
    rest = t / (1 + st.s)[:, None]  # p_i for i != k, 0 at k
    inner = xp.sum(xp.where(rest != 0, rel * rest, xp.zeros_like(rest)), axis=-1, keepdims=True)
    return dead_to_zero(p * (rel - inner) / temperature, x, xp)


def log_softmax_grad(x: Array, g: Array, xp: Any, *, needs_twosum: bool, temperature: float = 1.0) -> Array:
    r"""``(g - p sum(g)) / T``; at the max ``(g_k s - sum_{i != k} g_i) / ((1 + s) T)``, which does not cancel."""
    st, _, t = _state.state(x, xp, needs_twosum=needs_twosum, scale=temperature)
    p = _state.probs(t, st, xp)
    g = live_only(g, x, xp)
    at_max = xp.arange(x.shape[-1], device=_device(x))[None, :] == st.k[:, None]
    out = g - p * xp.sum(g, axis=-1, keepdims=True)
    gk = xp.take_along_axis(g, st.k[:, None], axis=-1)
    others = xp.sum(xp.where(at_max, xp.zeros_like(g), g), axis=-1, keepdims=True)
    s = st.s[:, None]
    out = xp.where(at_max, (gk * s - others) / (1 + s), out)
    return dead_to_zero(out / temperature, x, xp)


def live(x: Array, xp: Any, m: Array | None = None) -> Array:
    """Entries a finite change can move: finite, in a row whose max ``m`` (B,) is finite (B, K) bool.

    ``m`` defaults to the max of ``x``'s own rows; a block of a row passes the whole row's.
    """
    top = xp.max(x, axis=-1, keepdims=True) if m is None else m[:, None]
    return xp.isfinite(x) & xp.isfinite(top)


def live_only(g: Array, x: Array, xp: Any, m: Array | None = None) -> Array:
    """The cotangent of an elementwise output, 0 where that output is constant."""
    return xp.where(live(x, xp, m), g, xp.zeros_like(g))


def dead_to_zero(grad: Array, x: Array, xp: Any, m: Array | None = None) -> Array:
    """Zero where the input cannot move the output; rows holding NaN stay NaN (``m`` as in :func:`live`)."""
    grad = xp.where(live(x, xp, m), grad, xp.zeros_like(grad))
    nan_row = xp.isnan(xp.max(x, axis=-1, keepdims=True) if m is None else m[:, None])
    return xp.where(nan_row, xp.full_like(grad, xp.nan), grad)


# --------------------------------------------------------------------------
# Cross-entropy: the loss and its gradient from one state
# --------------------------------------------------------------------------


@dataclass(frozen=True)
class Forward:
    parts: _state.Parts
    rows: _state.Loss
    loss: Array


def cross_entropy(problem: Problem, xp: Any) -> Forward:
    """``-sum_c a_c log p_c`` per element (``w_y (lse - x_y)`` for class targets), reduced: parts, then the finish."""
    parts = cross_entropy_parts(problem, xp)
    rows, loss = cross_entropy_finish(problem, parts, xp)
    return Forward(parts, rows, loss)


def cross_entropy_parts(problem: Problem, xp: Any) -> _state.Parts:
    """The loss parts of the problem's rows (:func:`._state.part`)."""
    return _state.part(
        problem.x,
        0,
        xp,
        needs_twosum=problem.needs_twosum,
        y=None if problem.probs else problem.target,
        q=problem.target if problem.probs else None,
        w=problem.weight,
        allowed=problem.allowed,
        smoothing=bool(problem.smoothing),
    )


def cross_entropy_finish(problem: Problem, parts: _state.Parts, xp: Any) -> tuple[_state.Loss, Array]:
    """``(rows, reduced loss)`` of parts of every row of the problem: :func:`._state.finish`, then the reduction."""
    rows, ce, zt = _state.finish(
        parts,
        xp,
        target=problem.target,
        counted=problem.counted,
        weight=problem.weight,
        probs=problem.probs,
        smoothing=problem.smoothing,
        z_loss=problem.z_loss,
        needs_twosum=problem.needs_twosum,
    )
    return rows, _state.reduce(ce, zt, rows.row_weight, rows.alive, problem.reduction, xp)


def cross_entropy_grad(problem: Problem, fwd: Forward, g: Array | tuple[Array, Array], xp: Any) -> Array:
    """:func:`._state.block_gradient` over the whole row; ``g`` the loss's cotangent, or the rows' scales already."""
    rows = fwd.rows
    scales = (
        g
        if isinstance(g, tuple)
        else _state.row_scales(problem.reduction, rows.alive, rows.row_weight, g, xp, dtype=problem.x.dtype)
    )
    return _state.block_gradient(
        problem.x,
        0,
        fwd.parts,
        rows,
        scales,
        xp,
        target=problem.target,
        probs=problem.probs,
        weight=problem.weight,
        allowed=problem.allowed,
        smoothing=problem.smoothing,
        z_loss=problem.z_loss,
        softcap=problem.softcap,
        needs_twosum=problem.needs_twosum,
    )


def nll_loss(lp: Array, target: Array, counted: Array, weight: Array | None, reduction: str, xp: Any) -> Array:
    """``-w_y lp_y`` per element; a slice that is all ``-inf`` (no distribution) is dropped.

    That is what makes ``nll_loss(log_softmax(x), y)`` equal ``cross_entropy(x, y)``
    on every row of the contract.
    """
    alive = counted & (xp.max(lp, axis=-1) != -xp.inf)
    y = xp.where(alive, target, xp.zeros_like(target))
    lp_y = xp.take_along_axis(lp, y[:, None], axis=-1)[:, 0]
    if weight is None:
        row_weight = xp.astype(alive, lp.dtype)
    else:
        row_weight = xp.where(alive, xp.take(weight, y), xp.zeros_like(lp_y))
    ce = xp.where(alive & (row_weight != 0), -row_weight * lp_y, xp.zeros_like(lp_y))
    return _state.reduce(ce, None, row_weight, alive, reduction, xp)


def nll_loss_grad(
    lp: Array, target: Array, counted: Array, weight: Array | None, reduction: str, g: Array, xp: Any
) -> Array:
    """``-w_y g_scaled`` at each element's target, 0 elsewhere."""
    alive = counted & (xp.max(lp, axis=-1) != -xp.inf)
    y = xp.where(alive, target, xp.zeros_like(target))
    row_weight = (
        xp.astype(alive, lp.dtype) if weight is None else xp.where(alive, xp.take(weight, y), xp.zeros_like(lp[:, 0]))
    )
    scale, _ = _state.row_scales(reduction, alive, row_weight, g, xp, dtype=lp.dtype)
    onehot = xp.arange(lp.shape[-1], device=_device(lp))[None, :] == y[:, None]
    grad = xp.where(onehot & alive[:, None], -(row_weight * scale)[:, None] * xp.ones_like(lp), xp.zeros_like(lp))
    return xp.where(xp.isfinite(lp), grad, xp.zeros_like(grad))


# --------------------------------------------------------------------------
# Binary cross-entropy with logits
# --------------------------------------------------------------------------


def softplus_times(c: Array, x: Array, xp: Any) -> Array:
    """``c * softplus(x)``, 0 wherever ``c`` is 0 (even at ``x = +inf``)."""
    sp = xp.maximum(x, xp.zeros_like(x)) + xp.log1p(xp.exp(-xp.abs(x)))
    return xp.where(c != 0, c * sp, xp.zeros_like(sp))


def bce(x: Array, t: Array, weight: Array | None, pos_weight: Array | None, xp: Any) -> Array:
    r"""``w [p_w t softplus(-x) + (1 - t) softplus(x)]`` elementwise."""
    pos = t if pos_weight is None else pos_weight * t
    elem = softplus_times(pos, -x, xp) + softplus_times(1 - t, x, xp)
    return elem if weight is None else xp.where(weight != 0, elem * weight, xp.zeros_like(elem))


def bce_grad(x: Array, t: Array, weight: Array | None, pos_weight: Array | None, g: Array, xp: Any) -> Array:
    r"""``w [(1 - t) sigmoid(x) - p_w t sigmoid(-x)] g``; 0 where the loss cannot move."""
    pos = t if pos_weight is None else pos_weight * t
    sig = 1 / (1 + xp.exp(-x))
    sig_neg = 1 / (1 + xp.exp(x))
    grad = xp.where(1 - t != 0, (1 - t) * sig, xp.zeros_like(x)) - xp.where(pos != 0, pos * sig_neg, xp.zeros_like(x))
    grad = grad if weight is None else xp.where(weight != 0, grad * weight, xp.zeros_like(grad))
    return xp.where(xp.isfinite(x), grad * g, xp.zeros_like(grad))


def _device(x: Array) -> Any:
    import array_api_compat

    return array_api_compat.device(x)
