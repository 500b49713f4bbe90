"""JAX: every function of the family with our own VJP, by ``jax.custom_vjp``.

The forward and the VJP are :mod:`.._compute`'s, run in ``jax.numpy``: they
trace under ``jax.jit`` (no host callback; ``jax.make_jaxpr`` shows only JAX
operations) and ``jax.grad`` uses our gradients, which are exactly 0 on
masked entries and all-masked rows. Masks, targets and weights are
constants: their cotangents are zeros. Without ``jax_enable_x64`` the compute
dtype is float32 (see :func:`.._compute.compute_dtype`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _compute


def _zeros_for(aux: Any) -> Any:
    def zero(a: Any) -> Any:
        if jnp.issubdtype(a.dtype, jnp.inexact):
            return jnp.zeros_like(a)
        return np.zeros(a.shape, dtype=jax.dtypes.float0)  # integer and bool inputs have no tangent space

    return jax.tree_util.tree_map(zero, aux)


def _with_vjp(forward: Callable[..., Any], backward: Callable[..., Any]) -> Callable[..., Any]:
    """``f(x, aux, static)`` with ``backward(x, aux, static, g)`` as its VJP in ``x``."""

    @partial(jax.custom_vjp, nondiff_argnums=(2,))
    def f(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
        return forward(x, aux, static)

    def fwd(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
        return forward(x, aux, static), (x, aux)

    def bwd(static: tuple[Any, ...], res: Any, g: Any) -> Any:
        x, aux = res
        return backward(x, aux, static, g), _zeros_for(aux)

    f.defvjp(fwd, bwd)
    return f


def _lse_forward(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
    mask, b = aux
    lse, sign = _compute.logsumexp(x, jnp, mask=mask, b=b)
    return lse, (jnp.zeros_like(lse) if sign is None else sign)


def _lse_backward(x: Any, aux: Any, static: tuple[Any, ...], g: Any) -> Any:
    mask, b = aux
    return _compute.logsumexp_grad(x, g[0], jnp, mask=mask, b=b)


def _softmax_forward(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
    (mask,) = aux
    temperature, log = static
    return _compute.softmax(x, jnp, mask=mask, temperature=temperature, log=log)


def _softmax_backward(x: Any, aux: Any, static: tuple[Any, ...], g: Any) -> Any:
    (mask,) = aux
    temperature, log = static
    return _compute.softmax_grad(x, g, jnp, mask=mask, temperature=temperature, log=log)


_CE_KEYS = ("ignore_index", "reduction", "smoothing", "z_loss", "softcap", "probs")


def _ce_forward(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
    target, weight, mask = aux
    return _compute.cross_entropy(
        x, target, jnp, grad=False, weight=weight, mask=mask, **dict(zip(_CE_KEYS, static, strict=True))
    )[0]


def _ce_backward(x: Any, aux: Any, static: tuple[Any, ...], g: Any) -> Any:
    target, weight, mask = aux
    return _compute.cross_entropy(
        x, target, jnp, grad=True, g=g, weight=weight, mask=mask, **dict(zip(_CE_KEYS, static, strict=True))
    )[1]


def _nll_forward(lp: Any, aux: Any, static: tuple[Any, ...]) -> Any:
    target, weight = aux
    return _compute.nll_loss(lp, target, jnp, weight=weight, ignore_index=static[0], reduction=static[1])


def _nll_backward(lp: Any, aux: Any, static: tuple[Any, ...], g: Any) -> Any:
    target, weight = aux
    return _compute.nll_loss(
        lp, target, jnp, weight=weight, ignore_index=static[0], reduction=static[1], grad=True, g=g
    )


def _bce_forward(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
    t, weight, pos_weight = aux
    return _compute.bce(x, t, jnp, weight=weight, pos_weight=pos_weight, reduction=static[0])


def _bce_backward(x: Any, aux: Any, static: tuple[Any, ...], g: Any) -> Any:
    t, weight, pos_weight = aux
    return _compute.bce(x, t, jnp, weight=weight, pos_weight=pos_weight, reduction=static[0], grad=True, g=g)


_lse = _with_vjp(_lse_forward, _lse_backward)
_softmax = _with_vjp(_softmax_forward, _softmax_backward)
_ce = _with_vjp(_ce_forward, _ce_backward)
_nll = _with_vjp(_nll_forward, _nll_backward)
_bce = _with_vjp(_bce_forward, _bce_backward)


# --------------------------------------------------------------------------
# The row-level interface every backend module exposes
# --------------------------------------------------------------------------


def logsumexp(x: Any, xp: Any, *, mask: Any = None, b: Any = None) -> tuple[Any, Any]:
    lse, sign = _lse(x, (mask, b), ())
    return lse, (None if b is None else sign)


def softmax(x: Any, xp: Any, *, mask: Any = None, temperature: float = 1.0, log: bool = False) -> Any:
    return _softmax(x, (mask,), (float(temperature), bool(log)))


def logsumexp_grad(x: Any, g: Any, xp: Any, *, mask: Any = None, b: Any = None) -> Any:
    return _compute.logsumexp_grad(x, g, jnp, mask=mask, b=b)


def softmax_grad(x: Any, g: Any, xp: Any, *, mask: Any = None, temperature: float = 1.0, log: bool = False) -> Any:
    return _compute.softmax_grad(x, g, jnp, mask=mask, temperature=temperature, log=log)


def cross_entropy(x: Any, target: Any, xp: Any, *, grad: bool, g: Any = None, **options: Any) -> tuple[Any, Any]:
    weight, mask = options.pop("weight"), options.pop("mask")
    static = tuple(options[k] for k in _CE_KEYS)
    loss = _ce(x, (target, weight, mask), static)
    if not grad:
        return loss, None
    g = jnp.asarray(1.0 if g is None else g, dtype=x.dtype)
    return loss, _ce_backward(x, (target, weight, mask), static, g)


def nll_loss(
    lp: Any, target: Any, xp: Any, *, weight: Any, ignore_index: int, reduction: str, grad: bool = False, g: Any = None
) -> Any:
    if grad:
        return _nll_backward(lp, (target, weight), (ignore_index, reduction), g)
    return _nll(lp, (target, weight), (ignore_index, reduction))


def bce(
    x: Any, t: Any, xp: Any, *, weight: Any, pos_weight: Any, reduction: str, grad: bool = False, g: Any = None
) -> Any:
    if grad:
        return _bce_backward(x, (t, weight, pos_weight), (reduction,), g)
    return _bce(x, (t, weight, pos_weight), (reduction,))
