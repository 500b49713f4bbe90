"""PyTorch: every function of the family as a custom op with our own gradient.

Each op is registered once with ``torch.library.custom_op``, with a fake
implementation (shapes and dtypes only) so that ``torch.compile`` traces
it whole and meta tensors pass through, and with ``register_autograd``
wiring its backward to the matching VJP op. Every input that can carry a
gradient gets one or is refused by name (:class:`.._errors.GradientError`):
logsumexp's weights ``b``, cross-entropy's probability targets and BCE's
target, weight and pos_weight get their gradients here; a second derivative (the VJP ops' own backward) and
forward-mode AD (dual tensors) are refused, never a silent zero or None.

The ops compute on the tensor's own device in its own library (the array-API
reference). A CPU tensor is handed to the compiled kernels through a zero-copy
NumPy view instead, which is faster there: float32, float64 and float16, and
bfloat16 where ml_dtypes gives NumPy a bfloat16 dtype to view it as (without
ml_dtypes a bfloat16 tensor takes the reference, in torch).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, cast

import array_api_compat.numpy as npx
import array_api_compat.torch as xp
import numpy as np
import torch
from torch import Tensor

from .. import _compute
from .._errors import GradientError

_LIB = "stablesoftmax"


def _refuse_forward_ad(name: str, *arrays: Tensor | None) -> None:
    """Refuse a dual tensor (``torch.autograd.forward_ad``) by name: custom ops carry no forward-mode formula.

    Without this the result would come back with no tangent at all, silently.
    """
    if torch.autograd.forward_ad._current_level < 0:  # no dual level is open: nothing can carry a tangent
        return
    for a in arrays:
        unpacked = torch.autograd.forward_ad.unpack_dual(a) if a is not None else None  # type: ignore[no-untyped-call]  # torch leaves it unannotated
        if unpacked is not None and unpacked.tangent is not None:
            raise GradientError(
                f"forward-mode AD is not supported by stablesoftmax.{name}: its input carries a tangent "
                "(torch.autograd.forward_ad); use reverse mode (loss.backward() or torch.autograd.grad)."
            )


def _no_second_derivative(op: Any, name: Callable[[Any], str]) -> None:
    """Give a VJP op a backward that refuses by name: the family's second derivatives are not computed.

    ``name(inputs)`` is the public function's name, read from the op's inputs.
    """

    def setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
        ctx.fn_name = name(inputs)

    def backward(ctx: Any, *grads: Any) -> Any:
        raise GradientError(
            f"the second derivative of stablesoftmax.{ctx.fn_name} is not computed (its gradient, the op "
            f"{op._qualname.replace('::', '.')}, has no gradient of its own); differentiate it once, or use "
            "PyTorch's own function for higher derivatives."
        )

    op.register_autograd(backward, setup_context=setup)


def _run(fn: Callable[..., Any], x: Tensor, *arrays: Tensor | None, **options: Any) -> Any:
    """``fn(x, *arrays, xp, **options)`` on the kernels' NumPy view (CPU tensors, see :func:`_viewable`) or natively.

    ``fn`` is array-API code, typed ``Any``; what it gives comes back as tensors, in ``fn``'s structure.
    """
    if _viewable(x, *arrays) and _compute.host_kernels_serve():
        host = [None if a is None else _numpy_view(a) for a in (x, *arrays)]
        with np.errstate(all="ignore"):  # see _backends.plain
            result = fn(*host, npx, **options)
        return _to_torch(result, x.device)
    return _contiguous(fn(x, *arrays, xp, **options))


def _contiguous(result: Any) -> Any:
    """Outputs in row-major layout, as the fakes promise: an elementwise op keeps its input's strides."""
    if isinstance(result, tuple):
        return tuple(_contiguous(r) for r in result)
    return result if result is None else result.contiguous()


def _run1(fn: Callable[..., Any], x: Tensor, *arrays: Tensor | None, **options: Any) -> Tensor:
    """:func:`_run` of an ``fn`` that gives one array, so one tensor."""
    return cast(Tensor, _run(fn, x, *arrays, **options))


def _viewable(x: Tensor, *arrays: Tensor | None) -> bool:
    """CPU tensors with storage of their own (not wrapped by ``torch.func``) of a dtype NumPy can view.

    float32, float64 and float16; bfloat16 when ml_dtypes is installed.
    """
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return False
    if x.dtype == torch.bfloat16 and _numpy_bfloat16() is None:
        return False
    wrapped = torch._C._functorch.is_functorch_wrapped_tensor
    return not any(a is not None and wrapped(a) for a in (x, *arrays))


@functools.cache
def _numpy_bfloat16() -> np.dtype[Any] | None:
    """NumPy's bfloat16 dtype (ml_dtypes'), or None without ml_dtypes: the library does not require it."""
    try:
        import ml_dtypes
    except ImportError:
        return None
    bfloat16: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)  # ml_dtypes is untyped
    return bfloat16


def _numpy_view(a: Tensor) -> np.ndarray:
    """A NumPy view of CPU tensor ``a``, no copy; a bfloat16 tensor's bits viewed as NumPy's bfloat16."""
    a = a.detach()
    bfloat16 = _numpy_bfloat16()
    if a.dtype == torch.bfloat16 and bfloat16 is not None:  # _viewable admits it only then
        return a.view(torch.int16).numpy().view(bfloat16)
    return a.numpy()


def _to_torch(result: Any, dev: Any) -> Any:
    if isinstance(result, tuple):
        return tuple(_to_torch(r, dev) for r in result)
    if result is None:
        return None
    arr = np.asarray(result)
    arr = arr if arr.flags.c_contiguous else arr.copy()  # fresh arrays: no copy
    if arr.dtype.name == "bfloat16":  # torch reads no ml_dtypes array: its bits, viewed back as bfloat16
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16).to(dev)
    return torch.from_numpy(arr).to(dev)


# --------------------------------------------------------------------------
# Reductions
# --------------------------------------------------------------------------


@torch.library.custom_op(f"{_LIB}::logsumexp", mutates_args=())
def _logsumexp(x: Tensor, mask: Tensor | None, b: Tensor | None) -> tuple[Tensor, Tensor]:
    def both(x_: Any, mask_: Any, b_: Any, ns: Any) -> tuple[Any, Any]:
        lse, sign = _compute.logsumexp(x_, ns, mask=mask_, b=b_)
        return lse, (ns.zeros_like(lse) if sign is None else sign)

    lse, sign = _run(both, x, mask, b)
    return lse, sign


@_logsumexp.register_fake
def _(x: Tensor, mask: Tensor | None, b: Tensor | None) -> tuple[Tensor, Tensor]:
    return x.new_empty(x.shape[:-1]), x.new_empty(x.shape[:-1])


@torch.library.custom_op(f"{_LIB}::logsumexp_grad", mutates_args=())
def _logsumexp_grad(x: Tensor, g: Tensor, mask: Tensor | None, b: Tensor | None) -> Tensor:
    return _run1(lambda x_, g_, m_, b_, ns: _compute.logsumexp_grad(x_, g_, ns, mask=m_, b=b_), x, g, mask, b)


@_logsumexp_grad.register_fake
def _(x: Tensor, g: Tensor, mask: Tensor | None, b: Tensor | None) -> Tensor:
    return x.new_empty(x.shape)  # contiguous, as the real op returns


def _lse_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, mask, b = inputs
    lse, sign = output
    ctx.save_for_backward(x, mask, b, lse, sign)


def _lse_backward(ctx: Any, g: Tensor, _g_sign: Tensor) -> tuple[Tensor | None, None, Tensor | None]:
    """``d x`` by the VJP op; ``d b`` by :func:`_lse_weights_grad`. The sign is piecewise constant: no gradient."""
    x, mask, b, lse, sign = ctx.saved_tensors
    dx = _logsumexp_grad(x, g, mask, b) if ctx.needs_input_grad[0] else None
    db = _lse_weights_grad(x, g, mask, b, lse, sign) if ctx.needs_input_grad[2] else None
    return dx, None, db


def _lse_weights_grad(x: Tensor, g: Tensor, mask: Tensor | None, b: Tensor, lse: Tensor, sign: Tensor) -> Tensor:
    r"""``g * d lse / d b``: with ``S = sum_i b_i e^{x_i}`` and ``lse = log|S|``,

    .. math:: \partial\, \mathrm{lse} / \partial b_i = e^{x_i} / S = \mathrm{sign}(S)\, e^{x_i - \mathrm{lse}}.

    Computed in float64, with ``lse`` recomputed in float64 for a narrower
    ``x`` (the saved one, rounded to ``x``'s dtype, would put ``|lse|`` ulps
    of error into ``exp``), then rounded once to ``x``'s dtype. A masked entry, or one whose
    ``x_i`` is ``-inf``, has ``e^{x_i} = 0``: its gradient is exactly 0. A
    row whose weighted sum is 0 has a pole there, and gets NaN.
    """
    wide = torch.float64 if x.device.type != "mps" else torch.float32  # MPS has no float64
    xw = x.to(wide)
    if x.dtype != wide:
        lse, sign = _logsumexp(xw.detach(), mask, b.detach().to(wide))
    d = (g.to(wide) * sign.to(wide))[..., None] * torch.exp(xw - lse.to(wide)[..., None])
    dead = xw == -torch.inf
    if mask is not None:
        dead = dead | ~mask
    return torch.where(dead, torch.zeros_like(d), d).to(x.dtype)


_logsumexp.register_autograd(_lse_backward, setup_context=_lse_setup)
_no_second_derivative(_logsumexp_grad, lambda inputs: "logsumexp")


@torch.library.custom_op(f"{_LIB}::softmax", mutates_args=())
def _softmax(x: Tensor, mask: Tensor | None, temperature: float, log: bool) -> Tensor:
    return _run1(lambda x_, m_, ns: _compute.softmax(x_, ns, mask=m_, temperature=temperature, log=log), x, mask)


@_softmax.register_fake
def _(x: Tensor, mask: Tensor | None, temperature: float, log: bool) -> Tensor:
    return x.new_empty(x.shape)  # contiguous, as the real op returns


@torch.library.custom_op(f"{_LIB}::softmax_grad", mutates_args=())
def _softmax_grad(x: Tensor, g: Tensor, mask: Tensor | None, temperature: float, log: bool) -> Tensor:
    return _run1(
        lambda x_, g_, m_, ns: _compute.softmax_grad(x_, g_, ns, mask=m_, temperature=temperature, log=log), x, g, mask
    )


@_softmax_grad.register_fake
def _(x: Tensor, g: Tensor, mask: Tensor | None, temperature: float, log: bool) -> Tensor:
    return x.new_empty(x.shape)  # contiguous, as the real op returns


def _softmax_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, mask, temperature, log = inputs
    ctx.save_for_backward(x, mask)
    ctx.temperature, ctx.log = temperature, log


def _softmax_backward(ctx: Any, g: Tensor) -> tuple[Tensor, None, None, None]:
    x, mask = ctx.saved_tensors
    return _softmax_grad(x, g, mask, ctx.temperature, ctx.log), None, None, None


_softmax.register_autograd(_softmax_backward, setup_context=_softmax_setup)
_no_second_derivative(_softmax_grad, lambda inputs: "log_softmax" if inputs[4] else "softmax")


# --------------------------------------------------------------------------
# Cross-entropy
# --------------------------------------------------------------------------


@torch.library.custom_op(f"{_LIB}::cross_entropy", mutates_args=())
def _cross_entropy(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    probs: bool,
) -> tuple[Tensor, Tensor]:
    """The loss, and the rows' parts for the backward: ``[fields, N]`` float64 on a device.

    A device's backward then reads the logits once, not twice (the parts are
    O(N)). Elsewhere the parts are ``[0, N]`` of ``x``'s dtype.
    """
    opts = dict(
        ignore_index=ignore_index, reduction=reduction, smoothing=smoothing, z_loss=z_loss, softcap=softcap, probs=probs
    )
    return cast(
        tuple[Tensor, Tensor],
        _run(
            lambda x_, t_, w_, m_, ns: _compute.cross_entropy_keeping_parts(x_, t_, ns, weight=w_, mask=m_, **opts),
            x,
            target,
            weight,
            mask,
        ),
    )


@_cross_entropy.register_fake
def _(
    x: Tensor,
    target: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    probs: bool,
) -> tuple[Tensor, Tensor]:
    kept = _compute.kept_ce_parts(x, xp, softcap=softcap, probs=probs)
    parts = x.new_empty((kept, x.shape[0]), dtype=torch.float64) if kept else x.new_empty((0, x.shape[0]))
    return x.new_empty(x.shape[:1] if reduction == "none" else ()), parts


@torch.library.custom_op(f"{_LIB}::cross_entropy_grad", mutates_args=())
def _cross_entropy_grad(
    x: Tensor,
    target: Tensor,
    g: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    parts: Tensor,
    ignore_index: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    probs: bool,
) -> Tensor:
    opts = dict(
        ignore_index=ignore_index, reduction=reduction, smoothing=smoothing, z_loss=z_loss, softcap=softcap, probs=probs
    )
    return _run1(
        lambda x_, t_, g_, w_, m_, p_, ns: _compute.cross_entropy(
            x_, t_, ns, grad=True, g=g_, weight=w_, mask=m_, parts=p_, **opts
        )[1],
        x,
        target,
        g,
        weight,
        mask,
        parts,
    )


@_cross_entropy_grad.register_fake
def _(
    x: Tensor,
    target: Tensor,
    g: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    parts: Tensor,
    ignore_index: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    probs: bool,
) -> Tensor:
    return x.new_empty(x.shape)  # contiguous, as the real op returns


def _ce_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, target, weight, mask, *opts = inputs
    ctx.mark_non_differentiable(output[1])
    ctx.save_for_backward(x, target, weight, mask, output[1])
    ctx.opts = opts


def _ce_backward(ctx: Any, g: Tensor, _g_parts: Any) -> tuple[Any, ...]:
    x, target, weight, mask, parts = ctx.saved_tensors
    dx = _cross_entropy_grad(x, target, g, weight, mask, parts, *ctx.opts) if ctx.needs_input_grad[0] else None
    dt = _ce_target_grad(x, g, weight, mask, *ctx.opts) if ctx.needs_input_grad[1] else None
    return (dx, dt) + (None,) * 8


def _ce_target_grad(
    x: Tensor,
    g: Tensor,
    weight: Tensor | None,
    mask: Tensor | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    probs: bool,
) -> Tensor:
    r"""``g * d loss / d q`` for probability targets ``q``: the loss is affine in ``q``, so

    .. math:: \partial \ell_n / \partial q_{nc} = -(1 - a)\, w_c \log p_{nc},

    times the reduction's factor (``1/N`` over the rows that are not all
    masked, for ``"mean"``), as PyTorch's ``F.cross_entropy``; the smoothing's
    and the z-loss's terms do not depend on ``q``. ``log p`` is our
    ``log_softmax`` of the (softcapped) logits. A class masked by ``where``
    or with a ``-inf`` logit has ``-log p = +inf``, as the forward reads it
    (mass there makes the loss ``+inf``): its entry is ``+inf`` times its
    factor, the true derivative, as in PyTorch. A row with no class left has
    loss 0 whatever ``q``: its entries are exactly 0, as is every entry whose
    factor is 0 (never ``0 * inf = NaN``).
    """
    if not probs:  # class indices: an integer target has no gradient, and autograd never asks for one
        raise GradientError("cross_entropy's class-index target has no gradient.")
    wide = torch.float64 if x.device.type != "mps" else torch.float32
    xw = x.to(wide)
    if softcap is not None:
        xw = softcap * torch.tanh(xw / softcap)
    lp = _tensor(_softmax(xw.detach(), mask, 1.0, True))
    allowed = (xw > -torch.inf) if mask is None else mask & (xw > -torch.inf)
    alive = allowed.any(dim=-1)
    scale = g.to(wide) * alive.to(wide)
    if reduction == "mean":
        scale = scale / torch.clamp(alive.sum(), min=1).to(wide)  # a tensor: no host sync, no graph break
    coef = scale[..., None] * (1.0 - smoothing) * (1.0 if weight is None else weight.to(wide))
    lp = torch.where(allowed, lp, torch.full_like(lp, -torch.inf))
    return torch.where(coef != 0, -coef * lp, torch.zeros_like(lp)).to(x.dtype)


_cross_entropy.register_autograd(_ce_backward, setup_context=_ce_setup)
_no_second_derivative(_cross_entropy_grad, lambda inputs: "cross_entropy")


@torch.library.custom_op(f"{_LIB}::nll_loss", mutates_args=())
def _nll_loss(lp: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str) -> Tensor:
    return _run1(
        lambda l_, t_, w_, ns: _compute.nll_loss(l_, t_, ns, weight=w_, ignore_index=ignore_index, reduction=reduction),
        lp,
        target,
        weight,
    )


@_nll_loss.register_fake
def _(lp: Tensor, target: Tensor, weight: Tensor | None, ignore_index: int, reduction: str) -> Tensor:
    return lp.new_empty(lp.shape[:1] if reduction == "none" else ())


@torch.library.custom_op(f"{_LIB}::nll_loss_grad", mutates_args=())
def _nll_loss_grad(
    lp: Tensor, target: Tensor, g: Tensor, weight: Tensor | None, ignore_index: int, reduction: str
) -> Tensor:
    return _run1(
        lambda l_, t_, g_, w_, ns: _compute.nll_loss(
            l_, t_, ns, weight=w_, ignore_index=ignore_index, reduction=reduction, grad=True, g=g_
        ),
        lp,
        target,
        g,
        weight,
    )


@_nll_loss_grad.register_fake
def _(lp: Tensor, target: Tensor, g: Tensor, weight: Tensor | None, ignore_index: int, reduction: str) -> Tensor:
    return lp.new_empty(lp.shape)  # contiguous, as the real op returns


def _nll_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    lp, target, weight, ignore_index, reduction = inputs
    ctx.save_for_backward(lp, target, weight)
    ctx.opts = (ignore_index, reduction)


def _nll_backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
    lp, target, weight = ctx.saved_tensors
    return (_nll_loss_grad(lp, target, g, weight, *ctx.opts),) + (None,) * 4


_nll_loss.register_autograd(_nll_backward, setup_context=_nll_setup)
_no_second_derivative(_nll_loss_grad, lambda inputs: "nll_loss")


@torch.library.custom_op(f"{_LIB}::bce", mutates_args=())
def _bce(x: Tensor, t: Tensor, weight: Tensor | None, pos_weight: Tensor | None, reduction: str) -> Tensor:
    return _run1(
        lambda x_, t_, w_, p_, ns: _compute.bce(x_, t_, ns, weight=w_, pos_weight=p_, reduction=reduction),
        x,
        t,
        weight,
        pos_weight,
    )


@_bce.register_fake
def _(x: Tensor, t: Tensor, weight: Tensor | None, pos_weight: Tensor | None, reduction: str) -> Tensor:
    return x.new_empty(x.shape if reduction == "none" else ())


@torch.library.custom_op(f"{_LIB}::bce_grad", mutates_args=())
def _bce_grad(
    x: Tensor, t: Tensor, g: Tensor, weight: Tensor | None, pos_weight: Tensor | None, reduction: str
) -> Tensor:
    return _run1(
        lambda x_, t_, g_, w_, p_, ns: _compute.bce(
            x_, t_, ns, weight=w_, pos_weight=p_, reduction=reduction, grad=True, g=g_
        ),
        x,
        t,
        g,
        weight,
        pos_weight,
    )


@_bce_grad.register_fake
def _(x: Tensor, t: Tensor, g: Tensor, weight: Tensor | None, pos_weight: Tensor | None, reduction: str) -> Tensor:
    return x.new_empty(x.shape)  # contiguous, as the real op returns


def _bce_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, t, weight, pos_weight, reduction = inputs
    ctx.save_for_backward(x, t, weight, pos_weight)
    ctx.reduction = reduction


def _bce_backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
    x, t, weight, pos_weight = ctx.saved_tensors
    dx = _bce_grad(x, t, g, weight, pos_weight, ctx.reduction) if ctx.needs_input_grad[0] else None
    aux: tuple[Tensor | None, ...] = (None, None, None)
    if any(ctx.needs_input_grad[1:4]):
        aux = _bce_aux_grads(x, t, weight, pos_weight, g, ctx.reduction)
    return (dx, *(a if need else None for a, need in zip(aux, ctx.needs_input_grad[1:4], strict=True)), None)


def _bce_aux_grads(
    x: Tensor, t: Tensor, weight: Tensor | None, pos_weight: Tensor | None, g: Tensor, reduction: str
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    r"""``g`` times the derivatives of :math:`\ell = w [p_w t\, \mathrm{sp}(-x) + (1 - t)\, \mathrm{sp}(x)]`:

    .. math:: \partial_t \ell = w [p_w\, \mathrm{sp}(-x) - \mathrm{sp}(x)], \quad
              \partial_w \ell = p_w t\, \mathrm{sp}(-x) + (1 - t)\, \mathrm{sp}(x), \quad
              \partial_{p_w} \ell = w t\, \mathrm{sp}(-x),

    in float64, each term 0 where its coefficient is 0 (as the loss's, even at
    ``x = +-inf``), and 0 where ``g`` (``g / n`` for ``"mean"``) is 0. Same
    formulas as the JAX backend's ``_bce_aux_backward``.
    """
    wide = torch.float64 if x.device.type != "mps" else torch.float32
    xw, tw, gw = x.to(wide), t.to(wide), g.to(wide)
    if reduction == "mean":
        gw = gw / max(x.numel(), 1)
    w = torch.ones_like(xw) if weight is None else weight.to(wide)
    pw = torch.ones_like(xw) if pos_weight is None else pos_weight.to(wide)

    def sp_times(c: Tensor, arg: Tensor) -> Tensor:  # c * softplus(arg), 0 where c is 0
        sp = torch.clamp(arg, min=0) + torch.log1p(torch.exp(-arg.abs()))
        return torch.where(c != 0, c * sp, torch.zeros_like(sp))

    def scaled(d: Tensor, like: Tensor | None) -> Tensor:
        return torch.where(gw != 0, gw * d, torch.zeros_like(d)).to(x.dtype if like is None else like.dtype)

    d_t = scaled(sp_times(w * pw, -xw) - sp_times(w, xw), t)
    d_w = scaled(sp_times(pw * tw, -xw) + sp_times(1 - tw, xw), weight) if weight is not None else None
    d_pw = scaled(sp_times(w * tw, -xw), pos_weight) if pos_weight is not None else None
    return d_t, d_w, d_pw


_bce.register_autograd(_bce_backward, setup_context=_bce_setup)
_no_second_derivative(_bce_grad, lambda inputs: "binary_cross_entropy_with_logits")


# --------------------------------------------------------------------------
# The row-level interface every backend module exposes
# --------------------------------------------------------------------------


def _tensor(result: Any) -> Tensor:
    """A custom op's result, typed: torch types an op's call as ``Any`` (``CustomOpDef.__call__`` is
    unannotated), while the op's schema, read from its annotations above, says it returns a Tensor."""
    return cast(Tensor, result)


def logsumexp(x: Tensor, xp_: Any, *, mask: Tensor | None = None, b: Tensor | None = None) -> tuple[Tensor, Any]:
    _refuse_forward_ad("logsumexp", x, b)
    lse, sign = _logsumexp(x, mask, b)
    return lse, (None if b is None else sign)


def softmax(x: Tensor, xp_: Any, *, mask: Tensor | None = None, temperature: float = 1.0, log: bool = False) -> Tensor:
    _refuse_forward_ad("log_softmax" if log else "softmax", x)
    return _tensor(_softmax(x, mask, float(temperature), bool(log)))


def logsumexp_grad(x: Tensor, g: Tensor, xp_: Any, *, mask: Tensor | None = None, b: Tensor | None = None) -> Tensor:
    _refuse_forward_ad("logsumexp_grad", x, g, b)
    return _tensor(_logsumexp_grad(x, g, mask, b))


def softmax_grad(
    x: Tensor, g: Tensor, xp_: Any, *, mask: Tensor | None = None, temperature: float = 1.0, log: bool = False
) -> Tensor:
    _refuse_forward_ad("log_softmax_grad" if log else "softmax_grad", x, g)
    return _tensor(_softmax_grad(x, g, mask, float(temperature), bool(log)))


def cross_entropy(
    x: Tensor,
    target: Tensor,
    xp_: Any,
    *,
    grad: bool,
    g: Any = None,
    weight: Tensor | None,
    mask: Tensor | None,
    ignore_index: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
    probs: bool,
) -> tuple[Tensor, Tensor | None]:
    opts = (
        ignore_index,
        reduction,
        float(smoothing),
        float(z_loss),
        None if softcap is None else float(softcap),
        probs,
    )
    _refuse_forward_ad("cross_entropy", x, target, weight, g if isinstance(g, Tensor) else None)
    loss, parts = _cross_entropy(x, target, weight, mask, *opts)
    if not grad:
        return loss, None
    gt = g if isinstance(g, Tensor) else torch.as_tensor(1.0 if g is None else g, dtype=x.dtype, device=x.device)
    return loss, _cross_entropy_grad(x.detach(), target, gt, weight, mask, parts, *opts)


def nll_loss(
    lp: Tensor,
    target: Tensor,
    xp_: Any,
    *,
    weight: Tensor | None,
    ignore_index: int,
    reduction: str,
    grad: bool = False,
    g: Any = None,
) -> Tensor:
    _refuse_forward_ad("nll_loss", lp, weight, g if isinstance(g, Tensor) else None)
    if grad:
        return _tensor(_nll_loss_grad(lp, target, g, weight, ignore_index, reduction))
    return _tensor(_nll_loss(lp, target, weight, ignore_index, reduction))


def bce(
    x: Tensor,
    t: Tensor,
    xp_: Any,
    *,
    weight: Tensor | None,
    pos_weight: Tensor | None,
    reduction: str,
    grad: bool = False,
    g: Any = None,
) -> Tensor:
    _refuse_forward_ad(
        "binary_cross_entropy_with_logits", x, t, weight, pos_weight, g if isinstance(g, Tensor) else None
    )
    if grad:
        return _tensor(_bce_grad(x, t, g, weight, pos_weight, reduction))
    return _tensor(_bce(x, t, weight, pos_weight, reduction))


# --------------------------------------------------------------------------
# The linear cross-entropy: vocabulary chunks on the tensors' own device
# --------------------------------------------------------------------------

from .. import _linear_chunks as _linear  # noqa: E402
from .. import _state  # noqa: E402  (kept with the ops that use them)

_LinearOpts = tuple[int, int, str, float, float, float | None]  # ignore_index, chunk, reduction, smoothing, z, softcap

# CPU tensors go through NumPy views, whose chunks take the compiled kernels' state: measured by
# benchmarks/linear_ce_torch.py at hidden (2048, 1024), weight (32000, 1024), float32, one thread,
# the views' forward takes 0.97x the bare matmul's time and the torch ops' 1.80x; forward + backward
# 4.3x and 6.3x. 16-bit hidden is multiplied in float32, as on every path, and a 16-bit weight is
# widened chunk by chunk. Other devices compute with torch ops (the tests empty this to force them).
_LINEAR_HOST_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def _linear_problem(
    h: Tensor, w: Tensor, b: Tensor | None, y: Tensor, class_weight: Tensor | None, opts: _LinearOpts
) -> tuple[_linear._Linear, bool]:
    """The op's problem, and whether it is computed through NumPy views (CPU tensors) or torch ops.

    Under ``stablesoftmax.triton_path()`` CPU tensors stay tensors, as every other function's do.
    """
    names = ("ignore_index", "chunk", "reduction", "smoothing", "z_loss", "softcap")
    options = dict(zip(names, opts, strict=True))
    host = not _compute.triton_active() and all(
        t is None or (t.dtype in _LINEAR_HOST_DTYPES and _viewable(t)) for t in (h, w, b)
    )
    if not host:
        return _linear.op_problem(h, w, b, y, class_weight, xp, **options), False
    hn = _numpy_view(h)
    hn = hn.astype(np.float64 if hn.dtype == np.float64 else np.float32, copy=False)  # 16-bit: one float32 copy
    wn = _numpy_view(w)  # in its own dtype: the chunks widen their rows (see _linear_chunks)
    bn = None if b is None else _numpy_view(b).astype(hn.dtype)
    cn = None if class_weight is None else class_weight.detach().numpy()
    return _linear.op_problem(hn, wn, bn, y.detach().numpy(), cn, npx, **options), True


def _tensors(dev: Any, *arrays: Any, fresh: bool = False) -> tuple[Tensor, ...]:
    """Tensors on ``dev``; ``fresh``: copies, since an op's outputs may not share storage.

    ``row_weight`` may be the very array ``big_a``.
    """
    out = (torch.as_tensor(a if isinstance(a, Tensor) else np.asarray(a), device=dev) for a in arrays)
    return tuple(t.clone() if fresh else t for t in out)


@torch.library.custom_op(f"{_LIB}::linear_cross_entropy", mutates_args=())
def _linear_ce(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    y: Tensor,
    class_weight: Tensor | None,
    ignore_index: int,
    chunk: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The loss (hidden's dtype) and the rows its gradient needs: m, k, s, alive, row_weight, big_a, lse."""
    p, _ = _linear_problem(h, w, b, y, class_weight, (ignore_index, chunk, reduction, smoothing, z_loss, softcap))
    parts, rows, loss = _linear.forward(p)
    out = _tensors(
        h.device, loss, parts.m, parts.k, parts.s, rows.alive, rows.row_weight, rows.big_a, rows.lse, fresh=True
    )
    return (_compute.round_to(out[0], h, xp).contiguous(), *out[1:])


@_linear_ce.register_fake
def _(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    y: Tensor,
    class_weight: Tensor | None,
    ignore_index: int,
    chunk: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    n = h.shape[0]
    wide = [h.new_empty((n,), dtype=torch.float64) for _ in range(6)]
    k, alive = h.new_empty((n,), dtype=torch.int64), h.new_empty((n,), dtype=torch.bool)
    loss = h.new_empty((n,) if reduction == "none" else ())
    return loss, wide[0], k, wide[1], alive, wide[2], wide[3], wide[4]


@torch.library.custom_op(f"{_LIB}::linear_cross_entropy_grad", mutates_args=())
def _linear_ce_grad(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    y: Tensor,
    class_weight: Tensor | None,
    rows: list[Tensor],
    g: Tensor,
    ignore_index: int,
    chunk: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    """``d hidden``, ``d weight``, ``d bias`` (empty without a bias), each in its input's dtype."""
    p, host = _linear_problem(h, w, b, y, class_weight, (ignore_index, chunk, reduction, smoothing, z_loss, softcap))
    if host:
        m, k, s, alive, row_weight, big_a, lse = (r.detach().numpy() for r in rows)
        with np.errstate(all="ignore"):  # see _backends.plain
            grads: tuple[Any, Any, Any] = _linear.backward(
                p,
                _linear.saved_parts(m, k, s, p),
                _state.Loss(alive, row_weight, big_a, lse),
                g.detach().double().numpy(),
            )
    else:
        saved = _linear.saved_parts(rows[0], rows[1], rows[2], p)
        grads = _linear.backward(p, saved, _state.Loss(*rows[3:]), g.to(torch.float64))
    d_b = np.empty(0) if grads[2] is None or b is None else grads[2]
    if host:  # fresh NumPy arrays; a 16-bit weight's gradient is already in its dtype (ml_dtypes' for bfloat16)
        d_h, d_w, d_b = _to_torch((grads[0], grads[1], d_b), h.device)
    else:
        d_h, d_w, d_b = _tensors(h.device, grads[0], grads[1], d_b)
    return d_h.to(h.dtype), d_w.to(w.dtype), d_b.to(h.dtype if b is None else b.dtype)


@_linear_ce_grad.register_fake
def _(
    h: Tensor,
    w: Tensor,
    b: Tensor | None,
    y: Tensor,
    class_weight: Tensor | None,
    rows: list[Tensor],
    g: Tensor,
    ignore_index: int,
    chunk: int,
    reduction: str,
    smoothing: float,
    z_loss: float,
    softcap: float | None,
) -> tuple[Tensor, Tensor, Tensor]:
    return h.new_empty(h.shape), w.new_empty(w.shape), h.new_empty((0,)) if b is None else b.new_empty(b.shape)


def _lce_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    h, w, b, y, class_weight, *opts = inputs
    ctx.save_for_backward(h, w, b, y, class_weight, *output[1:])
    ctx.opts = opts


def _lce_backward(ctx: Any, g: Tensor, *_rows: Any) -> tuple[Any, ...]:
    h, w, b, y, class_weight, *rows = ctx.saved_tensors
    d_h, d_w, d_b = _linear_ce_grad(h, w, b, y, class_weight, rows, g, *ctx.opts)
    return (d_h, d_w, None if b is None else d_b) + (None,) * 8


_linear_ce.register_autograd(_lce_backward, setup_context=_lce_setup)
_no_second_derivative(_linear_ce_grad, lambda inputs: "linear_cross_entropy")


def _linear_opts(p: _linear._Linear) -> _LinearOpts:
    return p.ignore_index, p.chunk, p.reduction, float(p.smoothing), float(p.z_loss), p.softcap


def linear_cross_entropy(p: _linear._Linear) -> Tensor:
    """The loss of a checked problem of tensors, with autograd to hidden, weight and bias."""
    _refuse_forward_ad("linear_cross_entropy", p.h, p.w, p.b, p.class_weight)
    return _tensor(_linear_ce(p.h, p.w, p.b, p.y, p.class_weight, *_linear_opts(p))[0])


def linear_cross_entropy_with_grad(
    p: _linear._Linear, g: Tensor
) -> tuple[Tensor, tuple[Tensor, Tensor, Tensor | None]]:
    """The loss and its three gradients for the cotangent ``g`` (float64, checked)."""
    _refuse_forward_ad("linear_cross_entropy_with_grad", p.h, p.w, p.b, p.class_weight)
    h, w = p.h.detach(), p.w.detach()
    b = None if p.b is None else p.b.detach()
    opts = _linear_opts(p)
    loss, *rows = _linear_ce(h, w, b, p.y, p.class_weight, *opts)
    d_h, d_w, d_b = _linear_ce_grad(h, w, b, p.y, p.class_weight, rows, g, *opts)
    return loss, (d_h, d_w, None if b is None else d_b)
