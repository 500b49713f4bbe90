"""PyTorch: every function of the family as a custom op with our own gradient.

Each op is registered once with ``torch.library.custom_op``, with a fake
implementation (shapes and dtypes only) so that ``torch.compile`` traces
it whole and meta tensors pass through, and with ``register_autograd``
wiring its backward to the matching VJP op. The VJP ops have no gradient of
their own: asking for a second derivative raises PyTorch's error naming the
op, never a silent zero.

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

_LIB = "stablesoftmax"


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
    ctx.save_for_backward(x, mask, b)


def _lse_backward(ctx: Any, g: Tensor, _g_sign: Tensor) -> tuple[Tensor, None, None]:
    x, mask, b = ctx.saved_tensors
    return _logsumexp_grad(x, g, mask, b), None, None


_logsumexp.register_autograd(_lse_backward, setup_context=_lse_setup)


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
) -> Tensor:
    opts = dict(
        ignore_index=ignore_index, reduction=reduction, smoothing=smoothing, z_loss=z_loss, softcap=softcap, probs=probs
    )
    return _run1(
        lambda x_, t_, w_, m_, ns: _compute.cross_entropy(x_, t_, ns, grad=False, weight=w_, mask=m_, **opts)[0],
        x,
        target,
        weight,
        mask,
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
) -> Tensor:
    return x.new_empty(x.shape[:1] if reduction == "none" else ())


@torch.library.custom_op(f"{_LIB}::cross_entropy_grad", mutates_args=())
def _cross_entropy_grad(
    x: Tensor,
    target: Tensor,
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
    opts = dict(
        ignore_index=ignore_index, reduction=reduction, smoothing=smoothing, z_loss=z_loss, softcap=softcap, probs=probs
    )
    return _run1(
        lambda x_, t_, g_, w_, m_, ns: _compute.cross_entropy(x_, t_, ns, grad=True, g=g_, weight=w_, mask=m_, **opts)[
            1
        ],
        x,
        target,
        g,
        weight,
        mask,
    )


@_cross_entropy_grad.register_fake
def _(
    x: Tensor,
    target: Tensor,
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
    return x.new_empty(x.shape)  # contiguous, as the real op returns


def _ce_setup(ctx: Any, inputs: tuple[Any, ...], output: Any) -> None:
    x, target, weight, mask, *opts = inputs
    ctx.save_for_backward(x, target, weight, mask)
    ctx.opts = opts


def _ce_backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
    x, target, weight, mask = ctx.saved_tensors
    return (_cross_entropy_grad(x, target, g, weight, mask, *ctx.opts),) + (None,) * 9


_cross_entropy.register_autograd(_ce_backward, setup_context=_ce_setup)


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
    return (_bce_grad(x, t, g, weight, pos_weight, ctx.reduction),) + (None,) * 4


_bce.register_autograd(_bce_backward, setup_context=_bce_setup)


# --------------------------------------------------------------------------
# The row-level interface every backend module exposes
# --------------------------------------------------------------------------


def _tensor(result: Any) -> Tensor:
    """A custom op's result, typed: torch types an op's call as ``Any`` (``CustomOpDef.__call__`` is
    unannotated), while the op's schema, read from its annotations above, says it returns a Tensor."""
    return cast(Tensor, result)


def logsumexp(x: Tensor, xp_: Any, *, mask: Tensor | None = None, b: Tensor | None = None) -> tuple[Tensor, Any]:
    lse, sign = _logsumexp(x, mask, b)
    return lse, (None if b is None else sign)


def softmax(x: Tensor, xp_: Any, *, mask: Tensor | None = None, temperature: float = 1.0, log: bool = False) -> Tensor:
    return _tensor(_softmax(x, mask, float(temperature), bool(log)))


def logsumexp_grad(x: Tensor, g: Tensor, xp_: Any, *, mask: Tensor | None = None, b: Tensor | None = None) -> Tensor:
    return _tensor(_logsumexp_grad(x, g, mask, b))


def softmax_grad(
    x: Tensor, g: Tensor, xp_: Any, *, mask: Tensor | None = None, temperature: float = 1.0, log: bool = False
) -> Tensor:
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
    loss = _cross_entropy(x, target, weight, mask, *opts)
    if not grad:
        return loss, None
    gt = g if isinstance(g, Tensor) else torch.as_tensor(1.0 if g is None else g, dtype=x.dtype, device=x.device)
    return loss, _cross_entropy_grad(x.detach(), target, gt, weight, mask, *opts)


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
    if grad:
        return _tensor(_bce_grad(x, t, g, weight, pos_weight, reduction))
    return _tensor(_bce(x, t, weight, pos_weight, reduction))


# --------------------------------------------------------------------------
# Losses computed on the host in one piece (the linear cross-entropy)
# --------------------------------------------------------------------------


HostFn = Callable[..., Tensor]
"""A host loss: ``loss(*inputs)``, a tensor."""
HostVjp = Callable[..., tuple[Tensor | None, ...]]
"""Its VJP: ``vjp(g, *inputs)``, one gradient per input (None where an input was None)."""


class _HostLoss(torch.autograd.Function):
    """A loss whose forward and VJP are host functions handed in: ``loss(*inputs)``, ``vjp(g, *inputs)``.

    ``vjp`` returns one gradient per input (None where an input was None).
    The functions come from the caller, so this file imports nothing above it.
    """

    @staticmethod
    def forward(ctx: Any, fns: tuple[HostFn, HostVjp], *inputs: Tensor | None) -> Tensor:
        ctx.fns = fns
        ctx.save_for_backward(*inputs)
        return fns[0](*inputs)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, g: Tensor) -> tuple[Any, ...]:
        return (None, *ctx.fns[1](g, *ctx.saved_tensors))


def host_loss(loss: HostFn, vjp: HostVjp, *inputs: Tensor | None) -> Tensor:
    """``loss(*inputs)`` with autograd through ``vjp`` when any input requires grad."""
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in inputs):
        return _apply_host_loss((loss, vjp), *inputs)
    return loss(*inputs)


# torch leaves ``Function.apply`` unannotated; it returns what ``forward`` returns.
_apply_host_loss = cast("Callable[..., Tensor]", _HostLoss.apply)
