"""JAX: every function of the family with our own VJP, by ``jax.custom_vjp``.

The forward and the VJP are :mod:`.._compute`'s, run in ``jax.numpy``: they
trace under ``jax.jit`` (no host callback; ``jax.make_jaxpr`` shows only JAX
operations) and ``jax.grad`` uses our gradients, which are exactly 0 on
masked entries and all-masked rows. Without ``jax_enable_x64`` the compute
dtype is float32 (see :func:`.._compute.compute_dtype`).

Every input JAX can differentiate gets its cotangent or a refusal by name
(:class:`.._errors.GradientError`), never a silent zero: logsumexp's weights
``b``, cross-entropy's probability targets and BCE's target, weight and
pos_weight have their cotangents here; class weights are refused when they
are differentiated (``symbolic_zeros`` tells which inputs are perturbed);
``jax.jvp`` (forward mode, which a ``custom_vjp`` does not have) is refused
by our name. Masks and integer targets have no tangent space.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from .. import _compute
from .._errors import GradientError


def _zeros_for(aux: Any) -> Any:
    def zero(a: Any) -> Any:
        if jnp.issubdtype(a.dtype, jnp.inexact):
            return jnp.zeros_like(a)
        return np.zeros(a.shape, dtype=jax.dtypes.float0)  # integer and bool inputs have no tangent space

    return jax.tree_util.tree_map(zero, aux)


def _dense(g: Any) -> Any:
    """A cotangent with JAX's symbolic zeros made real zeros."""
    zero = jax.custom_derivatives.SymbolicZero
    return jax.tree_util.tree_map(
        lambda t: jnp.zeros(t.shape, t.dtype) if isinstance(t, zero) else t, g, is_leaf=lambda t: isinstance(t, zero)
    )


def _with_vjp(
    name: str,
    forward: Callable[..., Any],
    backward: Callable[..., Any],
    aux_names: tuple[str, ...],
    aux_backward: Callable[..., Any] | None = None,
    differentiated: tuple[str, ...] = (),
) -> Callable[..., Any]:
    """``f(x, aux, static)`` with ``backward(x, aux, static, g)`` as its VJP in ``x``.

    ``aux_backward(x, aux, static, g, out)`` gives the cotangents of the
    ``aux`` entries named in ``differentiated`` (a tuple as long as ``aux``,
    None elsewhere); any other ``aux`` entry being differentiated is refused
    by its name in ``aux_names``.
    """

    @partial(jax.custom_vjp, nondiff_argnums=(2,))
    def f(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
        return forward(x, aux, static)

    def fwd(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
        for arg, a in zip(aux_names, aux, strict=True):
            if a is not None and a.perturbed and arg not in differentiated:
                raise GradientError(
                    f"{arg} is differentiated, and stablesoftmax.{name} gives {arg} no gradient; "
                    f"pass jax.lax.stop_gradient({arg})."
                )
        xv, auxv = x.value, tuple(None if a is None else a.value for a in aux)
        out = forward(xv, auxv, static)
        return out, (xv, auxv, out)

    def bwd(static: tuple[Any, ...], res: Any, g: Any) -> Any:
        x, aux, out = res
        g = _dense(g)
        d_aux = _zeros_for(aux)
        if aux_backward is not None:
            given = aux_backward(x, aux, static, g, out)
            d_aux = tuple(z if d is None else d for z, d in zip(d_aux, given, strict=True))
        return backward(x, aux, static, g), d_aux

    f.defvjp(fwd, bwd, symbolic_zeros=True)
    return _forward_mode_refused(name, f)


def _forward_mode_refused(name: str, f: Callable[..., Any]) -> Callable[..., Any]:
    """``f`` with JAX's own error for ``jax.jvp`` through a ``custom_vjp`` raised again under our name."""

    def call(*args: Any) -> Any:
        try:
            return f(*args)
        except TypeError as e:
            if "forward-mode autodiff" not in str(e):
                raise
            raise GradientError(
                f"forward-mode AD (jax.jvp, jax.jacfwd, jax.hessian) is not supported by stablesoftmax.{name}; "
                "use reverse mode (jax.grad, jax.vjp, jax.jacrev)."
            ) from e

    return call


def _wide(x: Any) -> Any:
    """``x`` in float64 where JAX has it, else float32: the dtype the aux cotangents are computed in."""
    x64 = jax.config.read("jax_enable_x64")  # type: ignore[no-untyped-call]  # jax leaves Config.read unannotated
    return x.astype(jnp.promote_types(x.dtype, jnp.float64 if x64 else jnp.float32))


def _lse_forward(x: Any, aux: Any, static: tuple[Any, ...]) -> Any:
    mask, b = aux
    lse, sign = _compute.logsumexp(x, jnp, mask=mask, b=b)
    return lse, (jnp.zeros_like(lse) if sign is None else sign)


def _lse_backward(x: Any, aux: Any, static: tuple[Any, ...], g: Any) -> Any:
    mask, b = aux
    return _compute.logsumexp_grad(x, g[0], jnp, mask=mask, b=b)


def _lse_weights_backward(x: Any, aux: Any, static: tuple[Any, ...], g: Any, out: Any) -> tuple[Any, Any]:
    """``d b = g sign(S) exp(x - lse)``: see :func:`._backends.torch._lse_weights_grad`, the same formula."""
    mask, b = aux
    if b is None:
        return None, None
    (lse, sign), xw = out, _wide(x)
    if xw.dtype != x.dtype:  # the saved lse is rounded to x's dtype: recompute it wide (see the torch adapter)
        lse, sign = _lse_forward(xw, (mask, _wide(b)), static)
    d = (_wide(g[0]) * _wide(sign))[..., None] * jnp.exp(xw - _wide(lse)[..., None])
    dead = xw == -jnp.inf
    if mask is not None:
        dead = dead | ~mask
    return None, jnp.where(dead, jnp.zeros_like(d), d).astype(b.dtype)


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


def _ce_target_backward(x: Any, aux: Any, static: tuple[Any, ...], g: Any, out: Any) -> tuple[Any, Any, Any]:
    """``d q = -g_n (1 - a) w_c log p``, scaled for the reduction: see :func:`._backends.torch._ce_target_grad`."""
    target, weight, mask = aux
    opts = dict(zip(_CE_KEYS, static, strict=True))
    if not opts["probs"]:
        return None, None, None
    xw = _wide(x)
    if opts["softcap"] is not None:
        xw = opts["softcap"] * jnp.tanh(xw / opts["softcap"])
    lp = _compute.softmax(xw, jnp, mask=mask, temperature=1.0, log=True)
    allowed = (xw > -jnp.inf) if mask is None else mask & (xw > -jnp.inf)
    alive = allowed.any(axis=-1)
    scale = _wide(g) * alive.astype(xw.dtype)
    if opts["reduction"] == "mean":
        scale = scale / jnp.maximum(alive.sum(), 1).astype(xw.dtype)
    coef = scale[..., None] * (1.0 - opts["smoothing"]) * (1.0 if weight is None else _wide(weight))
    lp = jnp.where(allowed, lp, -jnp.inf)
    return jnp.where(coef != 0, -coef * lp, jnp.zeros_like(lp)).astype(target.dtype), None, None


def _bce_aux_backward(x: Any, aux: Any, static: tuple[Any, ...], g: Any, out: Any) -> tuple[Any, Any, Any]:
    """``d target``, ``d weight``, ``d pos_weight``: the formulas of :func:`._backends.torch._bce_aux_grads`."""
    t, weight, pos_weight = aux
    xw, tw, gw = _wide(x), _wide(t), _wide(g)
    if static[0] == "mean":
        gw = gw / max(x.size, 1)
    w = jnp.ones_like(xw) if weight is None else _wide(weight)
    pw = jnp.ones_like(xw) if pos_weight is None else _wide(pos_weight)

    def sp_times(c: Any, arg: Any) -> Any:  # c * softplus(arg), 0 where c is 0
        sp = jnp.maximum(arg, 0) + jnp.log1p(jnp.exp(-jnp.abs(arg)))
        return jnp.where(c != 0, c * sp, jnp.zeros_like(sp))

    def scaled(d: Any, like: Any) -> Any:
        return jnp.where(gw != 0, gw * d, jnp.zeros_like(d)).astype(like.dtype)

    d_t = scaled(sp_times(w * pw, -xw) - sp_times(w, xw), t) if jnp.issubdtype(t.dtype, jnp.inexact) else None
    d_w = None if weight is None else scaled(sp_times(pw * tw, -xw) + sp_times(1 - tw, xw), weight)
    d_pw = None if pos_weight is None else scaled(sp_times(w * tw, -xw), pos_weight)
    return d_t, d_w, d_pw


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


_lse = _with_vjp("logsumexp", _lse_forward, _lse_backward, ("where", "b"), _lse_weights_backward, ("b",))
_softmax = _with_vjp("softmax", _softmax_forward, _softmax_backward, ("where",))
_log_softmax = _with_vjp("log_softmax", _softmax_forward, _softmax_backward, ("where",))
_ce = _with_vjp(
    "cross_entropy", _ce_forward, _ce_backward, ("target", "weight", "where"), _ce_target_backward, ("target",)
)
_nll = _with_vjp("nll_loss", _nll_forward, _nll_backward, ("target", "weight"))
_BCE_AUX = ("target", "weight", "pos_weight")
_bce = _with_vjp("binary_cross_entropy_with_logits", _bce_forward, _bce_backward, _BCE_AUX, _bce_aux_backward, _BCE_AUX)

# --------------------------------------------------------------------------
# The row-level interface every backend module exposes
# --------------------------------------------------------------------------


def logsumexp(x: Any, xp: Any, *, mask: Any = None, b: Any = None) -> tuple[Any, Any]:
    lse, sign = _lse(x, (mask, b), ())
    return lse, (None if b is None else sign)


def softmax(x: Any, xp: Any, *, mask: Any = None, temperature: float = 1.0, log: bool = False) -> Any:
    return (_log_softmax if log else _softmax)(x, (mask,), (float(temperature), bool(log)))


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
