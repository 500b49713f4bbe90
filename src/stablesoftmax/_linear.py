"""Cross-entropy of a linear layer's output without materialising the logits.

``linear_cross_entropy(hidden, weight, target)`` equals
``cross_entropy(hidden @ weight.T + bias, target)`` but computes the ``(N, V)``
logits one vocabulary chunk at a time: each chunk's row-wise logsumexp is
merged into a running one (``lse = logaddexp(lse, lse_chunk)``, the
online-softmax merge of Milakov & Gimelshein 2018), the target logit is picked
from the chunk that holds it, and the chunk is dropped. Peak extra memory is
one ``(N, chunk_size)`` block instead of ``(N, V)``; Apple's Cut Cross-Entropy
and Liger-Kernel's fused linear cross-entropy do the same on GPUs.

The gradients need ``p = softmax(logits)``, which needs the final ``lse``; so
they take a second pass that recomputes each chunk's logits (one more matmul
per chunk) and multiplies the chunk's ``dloss/dlogits`` straight into
``d hidden`` and ``d weight``.

Options are those of :func:`~stablesoftmax.cross_entropy` for class-index
targets. The per-class weights are named ``class_weight`` here, since
``weight`` is the layer's. Probability targets and ``where`` are not taken:
both would need an ``(N, V)`` array, which is what this function avoids.
"""

from __future__ import annotations

from typing import Any, overload

import array_api_compat.numpy as npx
import numpy as np
import numpy.typing as npt

from . import _compute, _losses
from . import _dispatch as D
from ._errors import ShapeError
from ._linear_chunks import _check_cotangent, _Linear, backward, forward
from ._typing import ArrayIn, ArrayT, NumpyArray, NumpyIn, NumpyResult

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]


@overload
def linear_cross_entropy(
    hidden: NumpyIn,
    weight: NumpyIn,
    target: ArrayIn,
    /,
    *,
    bias: ArrayIn | None = None,
    chunk_size: int | None = None,
    class_weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> NumpyResult: ...


@overload
def linear_cross_entropy(
    hidden: ArrayT,
    weight: ArrayT,
    target: ArrayIn,
    /,
    *,
    bias: ArrayIn | None = None,
    chunk_size: int | None = None,
    class_weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> ArrayT: ...


@overload
def linear_cross_entropy(
    hidden: npt.ArrayLike,
    weight: npt.ArrayLike,
    target: ArrayIn,
    /,
    *,
    bias: ArrayIn | None = None,
    chunk_size: int | None = None,
    class_weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> NumpyResult: ...


def linear_cross_entropy(
    hidden: Any,
    weight: Any,
    target: ArrayIn,
    /,
    *,
    bias: ArrayIn | None = None,
    chunk_size: int | None = None,
    class_weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    r"""``cross_entropy(hidden @ weight.T + bias, target)``, never forming the logits.

    .. math:: \ell_n = \operatorname{lse}_v(h_n \cdot w_v + b_v) - (h_n \cdot w_{y_n} + b_{y_n})

    Parameters
    ----------
    hidden : array_like, shape ``[N, H]``
        Final hidden states.
    weight : array_like, shape ``[V, H]``
        The output layer (``V`` classes), as in ``torch.nn.Linear``.
    target : array_like of int, shape ``[N]``
        Class indices in ``[0, V)`` or ``ignore_index``.
    bias : array_like, shape ``[V]``, optional
        The output layer's bias.
    chunk_size : int, optional
        Classes per chunk. The default keeps one chunk of logits at 1/32 of
        the full ``[N, V]`` logits; the peak extra memory stays under 1/16.
    class_weight, ignore_index, reduction, label_smoothing, z_loss, softcap
        As ``weight``, ``ignore_index`` ... in :func:`cross_entropy`.

    Returns
    -------
    array
        The loss, in ``hidden``'s array type, device and dtype. The matmul
        runs in float32 for 16-bit and float32 input, float64 for float64
        input; the logsumexp merge runs in float64.

    Notes
    -----
    PyTorch tensors are computed on their own device by custom ops, so
    meta tensors pass, ``torch.compile(fullgraph=True)`` traces the call whole
    and autograd reaches ``hidden``, ``weight`` and ``bias``. CPU tensors go
    through zero-copy NumPy views, which is faster there; 16-bit ``hidden`` is
    widened to float32 once and a 16-bit ``weight`` a chunk at a time.
    Other arrays (JAX, array-API libraries) are computed on the host, copied
    there and back; under a JAX transformation (``jit``, ``grad``) the call is
    refused with a named error, since a host computation cannot be traced.

    See Also
    --------
    linear_cross_entropy_with_grad, cross_entropy
    """
    options: dict[str, Any] = dict(
        bias=bias,
        chunk_size=chunk_size,
        class_weight=class_weight,
        ignore_index=ignore_index,
        reduction=reduction,
        label_smoothing=label_smoothing,
        z_loss=z_loss,
        softcap=softcap,
    )
    if D.library(hidden) == "torch":
        return D.backend(hidden).linear_cross_entropy(_problem(hidden, weight, target, **options, native=True))
    prob = _problem(hidden, weight, target, **options)
    return _restore(prob, forward(prob)[2])


@overload
def linear_cross_entropy_with_grad(
    hidden: NumpyIn, weight: NumpyIn, target: ArrayIn, /, *, g: ArrayIn = 1.0, **options: Any
) -> tuple[NumpyResult, tuple[NumpyArray, NumpyArray, NumpyArray | None]]: ...


@overload
def linear_cross_entropy_with_grad(
    hidden: ArrayT, weight: ArrayT, target: ArrayIn, /, *, g: ArrayIn = 1.0, **options: Any
) -> tuple[ArrayT, tuple[ArrayT, ArrayT, ArrayT | None]]: ...


@overload
def linear_cross_entropy_with_grad(
    hidden: npt.ArrayLike, weight: npt.ArrayLike, target: ArrayIn, /, *, g: ArrayIn = 1.0, **options: Any
) -> tuple[NumpyResult, tuple[NumpyArray, NumpyArray, NumpyArray | None]]: ...


def linear_cross_entropy_with_grad(
    hidden: Any, weight: Any, target: ArrayIn, /, *, g: ArrayIn = 1.0, **options: Any
) -> tuple[Any, tuple[Any, Any, Any]]:
    r"""The loss of :func:`linear_cross_entropy` and its gradients, in two passes over the vocabulary.

    Returns ``(loss, (d_hidden, d_weight, d_bias))`` (``d_bias`` is None
    without a bias). With ``G = d loss / d logits`` for one chunk (see
    :func:`cross_entropy_grad`):

    .. math:: \bar h \mathrel{+}= G\, W_c, \qquad \bar W_c = G^\top h, \qquad \bar b_c = \textstyle\sum_n G_n

    ``g`` is the cotangent of the loss. Options as :func:`linear_cross_entropy`.
    """
    checked = _losses.options_of(linear_cross_entropy, options)
    if D.library(hidden) == "torch":
        prob = _problem(hidden, weight, target, **checked, native=True)
        result: tuple[Any, tuple[Any, Any, Any]] = D.backend(hidden).linear_cross_entropy_with_grad(
            prob, cotangent(g, prob)
        )
        return result
    prob = _problem(hidden, weight, target, **checked)
    parts, rows, loss = forward(prob)
    d_h, d_w, d_b = backward(prob, parts, rows, _host_any(g))
    grads = (_restore(prob, d_h), _restore(prob, d_w), None if d_b is None else _restore(prob, d_b))
    return _restore(prob, loss), grads


# --------------------------------------------------------------------------


def _problem(
    hidden: Any,
    weight: Any,
    target: Any,
    bias: Any,
    chunk_size: Any,
    class_weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    z_loss: Any,
    softcap: Any,
    *,
    native: bool = False,
) -> _Linear:
    """The checked problem: NumPy arrays on the host in the compute dtype, or with ``native`` the caller's
    own arrays (PyTorch tensors on their device, in their dtypes; the ops cast them chunk by chunk)."""
    h0, xp = D.array_in(hidden, "hidden")
    if native:
        h, w, cx = h0, D.array_in(D.like(weight, h0, xp, "weight"), "weight")[0], xp
        tgt = D.like(target, h0, xp, "target")
        b = None if bias is None else D.array_in(D.like(bias, h0, xp, "bias"), "bias")[0]
    else:
        h, w, cx = _host(h0, "hidden"), _host(D.array_in(weight, "weight")[0], "weight"), npx
        tgt = D.numpy_in(_host_any(target), "target")
        b = None if bias is None else _host(D.array_in(bias, "bias")[0], "bias")
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[1]:
        raise ShapeError(
            f"hidden of shape {tuple(h.shape)} and weight of shape {tuple(w.shape)} must be [N, H] and [V, H] "
            "with the same H."
        )
    n, v = h.shape[0], w.shape[0]
    rows = D.Rows.of((n, v), (1,))
    red, ignore, smoothing, z, cap = _losses.loss_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
    y = _losses.class_target(tgt, rows, (n, v), cx, "logits", ignore)
    if b is not None and tuple(b.shape) != (v,):
        raise ShapeError(f"bias of shape {tuple(b.shape)} must have one entry per class: shape ({v},).")
    chunk = max(1, -(-v // 32)) if chunk_size is None else _losses.chunk_size_option(chunk_size)
    class_w = _losses.check_class_weight(class_weight, v, h if native else np.zeros(1), cx, "class_weight")
    if not native:
        compute = np.float64 if h.dtype == np.float64 else np.float32
        h, w = h.astype(compute, copy=False), w.astype(compute, copy=False)
        b = None if b is None else b.astype(compute)
    cweights = None if class_w is None else cx.astype(class_w, cx.float64)
    return _Linear(h, w, b, y, y != ignore, cweights, chunk, h0, xp, red, smoothing, z, cap, ignore)


def _host(a: Any, name: str) -> np.ndarray:
    """This function computes on the host: a view of a CPU tensor, a copy of anything else."""
    return D.numpy_in(_host_any(a), name)


def _host_any(a: Any) -> Any:
    lib = D.library(a)
    if lib == "torch":
        return a.detach().cpu().numpy() if str(a.dtype) != "torch.bfloat16" else a.detach().float().cpu().numpy()
    if lib == "numpy":
        return a
    if lib == "array_api" and hasattr(a, "__dlpack__"):
        # DLPack copies from any device to the host, where np.asarray may refuse a non-CPU device
        return np.from_dlpack(a, device="cpu")
    try:  # JAX arrays reach the host through NumPy's protocols
        return np.asarray(a)
    except Exception as err:  # a JAX tracer refuses (TracerArrayConversionError): name why
        if "Tracer" not in type(err).__name__:
            raise
        raise D.ArgumentError(
            f"linear_cross_entropy got a {type(a).__name__} traced by a JAX transformation (jit, grad, vmap); "
            "it computes on the host and cannot be traced: call it outside the transformation, or use "
            "cross_entropy on the logits, which JAX traces."
        ) from None


def _restore(p: _Linear, a: np.ndarray | np.generic) -> Any:
    """A float64/float32 host result as hidden's library, device and dtype, rounded once."""
    if D.library(p.like) == "numpy" and isinstance(a, np.ndarray) and a.dtype == p.like.dtype:
        return D.out(a, p.xp)  # already in its dtype: no float64 copy of a gradient the size of weight
    a64 = np.asarray(a, np.float64)
    if D.library(p.like) == "numpy":
        return D.out(_compute.round_to(a64, p.like, D.namespace(p.like)), p.xp)
    # The library's own array, then round_to: a plain float64 -> 16-bit cast rounds twice.
    return _compute.round_to(p.xp.asarray(a64, device=D.device(p.like)), p.like, p.xp)


def cotangent(g: Any, p: _Linear) -> Any:
    """``g`` as a float64 array of ``p``'s library and device: (N,) for ``reduction='none'``, else a scalar."""
    xp = p.xp
    garr = xp.astype(D.like(g, p.h, xp, "g"), xp.float64)
    _check_cotangent(tuple(garr.shape), p.reduction)
    n = p.h.shape[0]
    return xp.broadcast_to(garr, (n,)) if p.reduction == "none" else xp.reshape(garr, ())


# --------------------------------------------------------------------------
# The same two passes in the arrays' own library and device (PyTorch's ops call these)
# --------------------------------------------------------------------------
