"""The array-API reference as an accelerator: the protocol of :mod:`._kernels` over :mod:`.._state`.

It computes what every accelerator computes, in any array library's own
namespace (NumPy, torch on any device, JAX), with no compiled code: the
parts come from :func:`.._state.part`, the outputs from its finishes, the
gradient from :func:`.._state.gradient`. It is the accelerator a new one is
measured against in the conformance suite (``tests/kernels/``), and the shape
a new one copies.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import array_api_compat
import numpy as np

from .. import _precision, _state

__all__ = ["available", "state_rows", "cross_entropy_rows", "CrossEntropyRows", "block_gradient_rows"]


class CrossEntropyRows(NamedTuple):
    """Per row (all ``[N]``): the state, the target's logit, and smoothing's sums (0 without smoothing)."""

    m: Any
    k: Any
    s: Any
    x_target: Any
    shift_sum: Any
    allowed: Any
    weight_sum: Any


def available() -> bool:
    """Always: the reference needs nothing beyond the array library."""
    return True


def _rows(x: Any, where: Any) -> tuple[Any, Any, bool]:
    """``(xp, rows in the compute dtype with masked entries -inf, needs_twosum)``."""
    xp = array_api_compat.array_namespace(x)
    xw, needs_twosum = _precision.widen(x, xp)
    return xp, _precision.masked(xw, where, xp), needs_twosum


def state_rows(x: Any, /, *, where: Any = None, out: Any = None, log: bool = False) -> tuple[Any, Any, Any]:
    """``(m, k, s)`` of each row; with ``out``, its softmax (log-softmax), rounded once to ``out``'s dtype."""
    with np.errstate(all="ignore"):  # NumPy warns on inf - inf and exp(-inf), which the formulas expect
        return _state_rows(x, where, out, log)


def _state_rows(x: Any, where: Any, out: Any, log: bool) -> tuple[Any, Any, Any]:
    xp, xw, needs_twosum = _rows(x, where)
    st, sh, terms = _state.state(xw, xp, needs_twosum=needs_twosum)
    if out is not None:
        value = _state.log_probs(sh, st, xp) if log else _state.probs(terms, st, xp)
        out[...] = _precision.round_to(value, out, xp)
    return st.m, st.k, st.s


def cross_entropy_rows(
    x: Any,
    target: Any,
    /,
    *,
    where: Any = None,
    weight: Any = None,
    label_smoothing: float = 0.0,
    grad: Any = None,
    g: Any = None,
    z_grad: Any = None,
    parts: Any = None,  # an earlier call's: unused, computed with the gradient anyway
) -> CrossEntropyRows:
    """The loss parts of each row and, with ``grad``, ``g_n (A p_c - a_c) + z_grad_n lse_n p_c`` written into it.

    The contract of :func:`.cpu.cross_entropy_rows`: every row counts (the
    caller gives ignored rows ``g = 0``), masked and ``+-inf`` logits get 0,
    rows whose max is not finite 0, rows holding NaN NaN.
    """
    with np.errstate(all="ignore"):  # as in state_rows
        return _cross_entropy_rows(x, target, where, weight, label_smoothing, grad, g, z_grad)


def _cross_entropy_rows(
    x: Any, target: Any, where: Any, weight: Any, label_smoothing: float, grad: Any, g: Any, z_grad: Any
) -> CrossEntropyRows:
    xp, xw, needs_twosum = _rows(x, where)
    w = None if weight is None else xp.astype(xp.asarray(weight), xw.dtype)
    smooth = bool(label_smoothing)
    parts = _state.part(xw, 0, xp, needs_twosum=needs_twosum, y=target, w=w, allowed=where, smoothing=smooth)
    n = xw.shape[0]
    zero = xp.zeros((n,), dtype=xw.dtype)
    u = parts.u
    shift_sum = zero if u is None else (u.d + u.e) / _state.SUM_SCALE
    allowed = zero if parts.count is None else parts.count
    weight_sum = zero if u is None else u.a
    if grad is not None:
        d = _gradient(xw, target, w, where, parts, g, z_grad, label_smoothing, needs_twosum, xp)
        grad[...] = _precision.round_to(d, grad, xp)
    return CrossEntropyRows(parts.m, parts.k, parts.s, parts.xy, shift_sum, allowed, weight_sum)


def _gradient(
    xw: Any,
    target: Any,
    w: Any,
    where: Any,
    parts: _state.Parts,
    g: Any,
    z_grad: Any,
    smoothing: float,
    needs_twosum: bool,
    xp: Any,
) -> Any:
    """:func:`.._state.gradient` with every row alive, the CE factor ``g`` and the z factor ``z_grad``."""
    alive = xp.ones(parts.m.shape, dtype=xp.bool)
    a = _state.target_mass(
        xw, 0, xp, target=target, probs=False, alive=alive, smoothing=smoothing, allowed=where, count=parts.count, w=w
    )
    z = None if z_grad is None else xp.asarray(z_grad) * _state.lse(parts.state, xp)
    coef = _state.Coefficients(alive, xp.sum(a, axis=-1), xp.asarray(g), z)
    p = _state.block_probs(xw, parts.m, parts.s, xp, needs_twosum=needs_twosum)
    at_k = xp.arange(xw.shape[1])[None, :] == parts.k[:, None]
    return _state.gradient(xw, p, a, parts.m, parts.s, at_k, coef, xp, softcap=None)


def block_gradient_rows(
    x: Any,
    first: int,
    m: Any,
    k: Any,
    s: Any,
    target: Any,
    alive: Any,
    big_a: Any,
    g: Any,
    z_coef: Any,
    smooth: Any,
    hot: float,
    *,
    weight: Any = None,
    softcap: float | None = None,
    out: Any,
) -> None:
    """The gradient of the block ``x`` of classes ``first : first + K``, from the rows' whole state, into ``out``.

    The contract of :func:`.cpu.block_gradient_rows`: :func:`.._state.gradient`
    with ``a_c = w_c (hot [c = target] + smooth)``, the per-row ``big_a``,
    ``g`` and ``z_coef``; rows not ``alive`` get 0.
    """
    with np.errstate(all="ignore"):  # as in state_rows
        xp = array_api_compat.array_namespace(x)
        xw, needs_twosum = _precision.widen(x, xp)
        p = _state.block_probs(xw, m, s, xp, needs_twosum=needs_twosum)
        cols = xp.arange(xw.shape[1], device=array_api_compat.device(xw))[None, :] + first
        w = xp.ones_like(xw[0]) if weight is None else xp.astype(xp.asarray(weight), xw.dtype)
        a = w[None, :] * (hot * xp.astype(cols == target[:, None], xw.dtype) + smooth[:, None])
        coef = _state.Coefficients(alive, big_a, g, z_coef)
        grad = _state.gradient(xw, p, a, m, s, cols == k[:, None], coef, xp, softcap=softcap)
        out[...] = _precision.round_to(grad, out, xp)
