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

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, overload

import array_api_compat.numpy as npx
import numpy as np
import numpy.typing as npt

from . import _compute, _losses, _state
from . import _dispatch as D
from ._errors import ShapeError
from ._typing import ArrayIn, ArrayT, NumpyArray, NumpyIn, NumpyResult

if TYPE_CHECKING:
    from torch import Tensor

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
    The chunks are computed on the host: CPU tensors through zero-copy views,
    other arrays (JAX, array-API libraries, accelerator devices) copied there
    and back. PyTorch's autograd reaches ``hidden``, ``weight`` and ``bias``;
    under a JAX transformation (``jit``, ``grad``) the call is refused with a
    named error, since a host computation cannot be traced.

    See Also
    --------
    linear_cross_entropy_with_grad, cross_entropy
    """
    options = dict(
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
        return _torch_autograd(hidden, weight, target, options)
    prob = _problem(hidden, weight, target, **options)
    return _restore(prob, _forward(prob)[2])


def _torch_autograd(hidden: Any, weight: Any, target: Any, options: dict[str, Any]) -> Any:
    """PyTorch tensors: the loss, with ``backward()`` reaching hidden, weight and bias through our VJP.

    The computation runs on the host (a view of CPU tensors), so under
    ``torch.compile`` this call is a graph break, not a traced op.
    """
    bias = options.pop("bias")

    def loss(h: Any, w: Any, b: Any) -> Any:
        prob = _problem(h.detach(), w.detach(), target, None if b is None else b.detach(), **options)
        return _restore(prob, _forward(prob)[2])

    def vjp(g: Tensor, h: Tensor, w: Tensor, b: Tensor | None) -> tuple[Tensor, Tensor, Tensor | None]:
        _, grads = linear_cross_entropy_with_grad(
            h.detach(), w.detach(), target, g=g.detach(), bias=None if b is None else b.detach(), **options
        )
        return grads

    return D.backend(hidden).host_loss(loss, vjp, hidden, weight, bias)


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
    prob = _problem(hidden, weight, target, **_losses.options_of(linear_cross_entropy, options))
    parts, rows, loss = _forward(prob)
    d_h, d_w, d_b = _backward(prob, parts, rows, g)
    grads = (_restore(prob, d_h), _restore(prob, d_w), None if d_b is None else _restore(prob, d_b))
    return _restore(prob, loss), grads


# --------------------------------------------------------------------------


@dataclass
class _Linear:
    h: np.ndarray  # (N, H) compute dtype
    w: np.ndarray  # (V, H)
    b: np.ndarray | None
    y: np.ndarray  # (N,) int64
    counted: np.ndarray
    class_weight: np.ndarray | None  # (V,)
    chunk: int
    like: Any  # an array of hidden's library and dtype, for the results
    xp: Any
    reduction: str
    smoothing: float
    z_loss: float
    softcap: float | None


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
) -> _Linear:
    h0, xp = D.array_in(hidden, "hidden")
    h = _host(h0, "hidden")
    w = _host(D.array_in(weight, "weight")[0], "weight")
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[1]:
        raise ShapeError(
            f"hidden of shape {h.shape} and weight of shape {w.shape} must be [N, H] and [V, H] with the same H."
        )
    compute = np.float64 if h.dtype == np.float64 else np.float32
    n, v = h.shape[0], w.shape[0]
    rows = D.Rows.of((n, v), (1,))
    ignore = D.int_option(ignore_index, "ignore_index", "an int (the class index to ignore, -100 by default)")
    y = _losses.class_target(D.numpy_in(_host_any(target), "target"), rows, (n, v), npx, "logits", ignore)
    b = None if bias is None else _host(D.array_in(bias, "bias")[0], "bias").astype(compute)
    if b is not None and b.shape != (v,):
        raise ShapeError(f"bias of shape {b.shape} must have one entry per class: shape ({v},).")
    chunk = max(1, -(-v // 32)) if chunk_size is None else _chunk_size(chunk_size)
    opts = _losses.check_options(label_smoothing, z_loss, softcap)
    class_w = _losses.check_class_weight(class_weight, v, np.zeros(1), D.namespace(np.zeros(1)), "class_weight")
    red = D.choice(reduction, "reduction", _losses.REDUCTIONS)
    return _Linear(
        h.astype(compute, copy=False),
        w.astype(compute, copy=False),
        b,
        y,
        y != ignore,
        None if class_w is None else np.asarray(class_w, np.float64),
        chunk,
        h0,
        xp,
        red,
        *opts,
    )


def _chunk_size(value: Any) -> int:
    if isinstance(value, (bool, np.bool_)):
        raise D.ArgumentError(f"chunk_size={value!r} is not allowed; it must be a whole number >= 1.")
    return int(D.real_option(value, "chunk_size", lambda c: c >= 1 and c == int(c), "a whole number >= 1"))


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
    a64 = np.asarray(a, np.float64)
    if D.library(p.like) == "numpy":
        return D.out(_compute.round_to(a64, p.like, D.namespace(p.like)), p.xp)
    # The library's own array, then round_to: a plain float64 -> 16-bit cast rounds twice.
    return _compute.round_to(p.xp.asarray(a64, device=D.device(p.like)), p.like, p.xp)


def _starts(p: _Linear) -> range:
    return range(0, p.w.shape[0], p.chunk)


def _chunk_logits(p: _Linear, i: int) -> np.ndarray:
    """Logits of classes ``i : i + chunk``, softcap applied: the only block ever held."""
    logits: np.ndarray = p.h @ p.w[i : i + p.chunk].T  # NumPy's stubs give Any for a matmul of unknown dtypes
    if p.b is not None:
        logits += p.b[i : i + p.chunk]
    if p.softcap is not None:
        np.divide(logits, p.softcap, out=logits)
        np.tanh(logits, out=logits)
        logits *= p.softcap
    return logits


def _forward(p: _Linear) -> tuple[_state.Parts, _state.Loss, np.ndarray | np.generic]:
    """Each chunk's parts merged into the rows' parts, then the one finish: ``(parts, rows, reduced loss)``."""
    merged: _state.Parts | None = None
    with np.errstate(all="ignore"):  # see _backends.plain
        for i in _starts(p):
            logits = _chunk_logits(p, i)
            chunk = _chunk_parts(p, logits, i)
            merged = chunk if merged is None else _state.merge_parts(merged, chunk, npx)
            del logits  # before the next chunk's matmul, so two chunks never coexist
        assert merged is not None  # V >= 1: at least one chunk
        rows, ce, zt = _state.finish(
            merged,
            npx,
            target=p.y,
            counted=p.counted,
            weight=p.class_weight,
            probs=False,
            smoothing=p.smoothing,
            z_loss=p.z_loss,
            needs_twosum=p.h.dtype == np.float64,
        )
        loss: np.ndarray | np.generic = _state.reduce(ce, zt, rows.wy, rows.alive, p.reduction, npx)
    return merged, rows, loss


def _chunk_parts(p: _Linear, logits: np.ndarray, first: int) -> _state.Parts:
    """The parts of one chunk of classes, with global positions: its state, the target's logit, smoothing's sums."""
    st = _compute.host_state(logits)
    xy = _state.pick(logits, p.y - first, npx).astype(np.float64)
    u = count = None
    if p.smoothing:
        x64 = logits.astype(np.float64)
        sh = _state.shift(x64, st.m[:, None], npx, needs_twosum=p.h.dtype == np.float64)
        width = logits.shape[1]
        w = np.ones(width) if p.class_weight is None else p.class_weight[first : first + width]
        u = _state.sums(sh, np.broadcast_to(w, x64.shape), npx)
        count = np.full(len(xy), float(width))
    return _state.Parts(st.m, st.k + first, st.s, xy, None, u, count)


def _backward(
    p: _Linear, parts: _state.Parts, rows: _state.Loss, g: Any
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """``d hidden``, ``d weight``, ``d bias``: each chunk's ``d loss / d logits``, then its matmuls."""
    scales = _scales(p, rows, g)
    h = p.h if rows.alive.all() else np.where(rows.alive[:, None], p.h, 0)  # a NaN in a dropped row moves nothing
    d_h = np.zeros_like(p.h)
    d_w = np.empty_like(p.w)
    d_b = None if p.b is None else np.empty_like(p.b)
    for i in _starts(p):
        logits = _chunk_logits(p, i)
        width = logits.shape[1]
        with np.errstate(all="ignore"):  # see _backends.plain
            grad = _compute.ce_block_grad(
                logits,
                i,
                parts,
                rows,
                scales,
                target=p.y,
                weight=None if p.class_weight is None else p.class_weight[i : i + width],
                smoothing=p.smoothing,
                z_loss=p.z_loss,
                softcap=p.softcap,
                needs_twosum=p.h.dtype == np.float64,
            ).astype(p.h.dtype, copy=False)
        del logits
        d_h += grad @ p.w[i : i + width]
        d_w[i : i + width] = grad.T @ h
        if d_b is not None:
            d_b[i : i + width] = grad.sum(axis=0)
        del grad
    return d_h, d_w, d_b


def _scales(p: _Linear, rows: _state.Loss, g: Any) -> tuple[np.ndarray, np.ndarray]:
    garr = np.asarray(_host_any(g), dtype=np.float64)
    if p.reduction == "none":
        garr = np.broadcast_to(garr, rows.alive.shape)
    elif garr.size != 1:
        raise ShapeError(f"g of shape {garr.shape} must be a scalar for reduction={p.reduction!r}.")
    else:
        garr = garr.reshape(())
    ce, z = _state.row_scales(p.reduction, rows.alive, rows.wy, garr, npx, dtype=np.float64)
    return np.broadcast_to(ce, rows.alive.shape), np.broadcast_to(z, rows.alive.shape)
