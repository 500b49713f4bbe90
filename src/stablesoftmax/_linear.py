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
from typing import Any, overload

import array_api_compat.numpy as npx
import numpy as np
import numpy.typing as npt

from . import _compute, _losses, _state
from . import _dispatch as D
from ._errors import ShapeError
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
    and autograd reaches ``hidden``, ``weight`` and ``bias`` (CPU float32 and
    float64 tensors go through zero-copy NumPy views, which is faster there).
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
    return _restore(prob, _forward(prob)[2])


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
    parts, rows, loss = _forward(prob)
    d_h, d_w, d_b = _backward(prob, parts, rows, g)
    grads = (_restore(prob, d_h), _restore(prob, d_w), None if d_b is None else _restore(prob, d_b))
    return _restore(prob, loss), grads


# --------------------------------------------------------------------------


@dataclass
class _Linear:
    """A checked problem: NumPy arrays on the host in the compute dtype, or the caller's own (PyTorch) arrays."""

    h: Any  # (N, H)
    w: Any  # (V, H)
    b: Any  # (V,) or None
    y: Any  # (N,) int64
    counted: Any  # (N,) bool
    class_weight: Any  # (V,) float64 or None
    chunk: int
    like: Any  # an array of hidden's library and dtype, for the results
    xp: Any
    reduction: str
    smoothing: float
    z_loss: float
    softcap: float | None
    ignore_index: int = -100


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
    cw = None if class_w is None else cx.astype(class_w, cx.float64)
    return _Linear(h, w, b, y, y != ignore, cw, chunk, h0, xp, red, smoothing, z, cap, ignore)


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
    _check_cotangent(tuple(garr.shape), p.reduction)
    garr = np.broadcast_to(garr, rows.alive.shape) if p.reduction == "none" else garr.reshape(())
    ce, z = _state.row_scales(p.reduction, rows.alive, rows.wy, garr, npx, dtype=np.float64)
    return np.broadcast_to(ce, rows.alive.shape), np.broadcast_to(z, rows.alive.shape)


def _check_cotangent(shape: tuple[int, ...], reduction: str) -> None:
    if reduction != "none" and int(np.prod(shape)) != 1:
        raise ShapeError(f"g of shape {shape} must be a scalar for reduction={reduction!r}.")


def cotangent(g: Any, p: _Linear) -> Any:
    """``g`` as a float64 array of ``p``'s library and device: (N,) for ``reduction='none'``, else a scalar."""
    xp = p.xp
    garr = xp.astype(D.like(g, p.h, xp, "g"), xp.float64)
    _check_cotangent(tuple(garr.shape), p.reduction)
    n = p.h.shape[0]
    return xp.broadcast_to(garr, (n,)) if p.reduction == "none" else xp.reshape(garr, ())


def op_problem(h: Any, w: Any, b: Any, y: Any, class_weight: Any, xp: Any, **options: Any) -> _Linear:
    """A problem rebuilt from an op's arguments, checked before by :func:`_problem`.

    ``options``: ``ignore_index, chunk, reduction, smoothing, z_loss, softcap``.
    """
    o = options
    counted = y != o["ignore_index"]
    return _Linear(
        h,
        w,
        b,
        y,
        counted,
        class_weight,
        o["chunk"],
        h,
        xp,
        o["reduction"],
        o["smoothing"],
        o["z_loss"],
        o["softcap"],
        o["ignore_index"],
    )


def saved_parts(m: Any, k: Any, s: Any, p: _Linear) -> _state.Parts:
    """The merged parts a gradient needs, from the state its forward kept (smoothing counts all V classes)."""
    xp = p.xp
    count = xp.full(m.shape, float(p.w.shape[0]), dtype=m.dtype, device=D.device(m)) if p.smoothing else None
    return _state.Parts(m, k, s, count=count)


# --------------------------------------------------------------------------
# The same two passes in the arrays' own library and device (PyTorch's ops call these)
# --------------------------------------------------------------------------

# A chunk's float64 temporaries (about ten live in the gradient) are taken in 16 row blocks, so together they
# hold about as much as the chunk's float32 logits; a block keeps at least 2**14 entries, for few launches on a GPU.
_ROW_BLOCKS, _MIN_BLOCK = 16, 1 << 14


def native_forward(p: _Linear) -> tuple[Any, _state.Parts, _state.Loss]:
    """:func:`_forward` on ``p``'s own arrays (namespace ``p.xp``): ``(reduced float64 loss, parts, rows)``.

    Each chunk's logits are a matmul in the compute dtype; their parts are
    taken in float64 by :func:`._state.part`, in row blocks.
    """
    xp, h = p.xp, _compute_h(p)
    merged: _state.Parts | None = None
    for i in _starts(p):
        chunk = _native_parts(p, _native_logits(p, h, i), i)
        merged = chunk if merged is None else _state.merge_parts(merged, chunk, xp)
    assert merged is not None  # V >= 1: at least one chunk
    rows, ce, zt = _state.finish(
        merged,
        xp,
        target=p.y,
        counted=p.counted,
        weight=p.class_weight,
        probs=False,
        smoothing=p.smoothing,
        z_loss=p.z_loss,
        needs_twosum=_needs_twosum(p),
    )
    return _state.reduce(ce, zt, rows.wy, rows.alive, p.reduction, xp), merged, rows


def native_backward(p: _Linear, parts: _state.Parts, rows: _state.Loss, g: Any) -> tuple[Any, Any, Any]:
    """:func:`_backward` on ``p``'s own arrays: ``d hidden``, ``d weight``, ``d bias`` in the compute dtype.

    ``d weight`` is written chunk by chunk from ``G^T h``, each a float32 (or
    float64) matmul; only one chunk of ``G`` exists at a time.
    """
    xp, h = p.xp, _compute_h(p)
    ce_g, z_g = _state.row_scales(p.reduction, rows.alive, rows.wy, g, xp, dtype=xp.float64)
    scales = (xp.broadcast_to(ce_g, rows.alive.shape), xp.broadcast_to(z_g, rows.alive.shape))
    h_alive = xp.where(rows.alive[:, None], h, xp.zeros_like(h))  # a NaN in a dropped row moves nothing
    dev = D.device(h)
    d_h = xp.zeros(h.shape, dtype=h.dtype, device=dev)
    d_w = xp.empty((p.w.shape[0], h.shape[1]), dtype=h.dtype, device=dev)
    d_b = xp.empty((p.w.shape[0],), dtype=h.dtype, device=dev)
    for i in _starts(p):
        grad = _native_grad(p, _native_logits(p, h, i), i, parts, rows, scales)
        d_h += xp.matmul(grad, xp.astype(p.w[i : i + p.chunk], h.dtype, copy=False))
        d_w[i : i + grad.shape[1], ...] = xp.matmul(grad.T, h_alive)
        d_b[i : i + grad.shape[1]] = xp.sum(grad, axis=0)
    return d_h, d_w, d_b


def _needs_twosum(p: _Linear) -> bool:
    """Float64 logits need the shift's TwoSum error; float32 logits widened to float64 shift exactly."""
    return bool(p.h.dtype == p.xp.float64)


def _compute_h(p: _Linear) -> Any:
    """``hidden`` in the compute dtype: float64 stays, 16-bit and float32 are multiplied in float32."""
    xp = p.xp
    return xp.astype(p.h, xp.float64 if _needs_twosum(p) else xp.float32, copy=False)


def _native_logits(p: _Linear, h: Any, i: int) -> Any:
    """:func:`_chunk_logits` in ``p``'s library: the chunk's matmul in ``h``'s dtype, bias, softcap."""
    xp = p.xp
    logits = xp.matmul(h, xp.astype(p.w[i : i + p.chunk], h.dtype, copy=False).T)
    if p.b is not None:
        logits = logits + xp.astype(p.b[i : i + p.chunk], h.dtype, copy=False)
    if p.softcap is not None:
        logits = xp.tanh(logits / p.softcap) * p.softcap
    return logits


def _row_blocks(n: int, width: int) -> list[slice]:
    step = max(1, -(-n // _ROW_BLOCKS), _MIN_BLOCK // max(width, 1))
    return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)] or [slice(0, 0)]


def _native_parts(p: _Linear, logits: Any, first: int) -> _state.Parts:
    """The chunk's parts (float64, global positions), one row block at a time."""
    xp = p.xp
    width = logits.shape[1]
    cw = None if p.class_weight is None else p.class_weight[first : first + width]
    blocks = [
        _state.part(
            xp.astype(logits[r, ...], xp.float64),
            first,
            xp,
            needs_twosum=_needs_twosum(p),
            y=p.y[r],
            w=cw,
            smoothing=bool(p.smoothing),
        )
        for r in _row_blocks(logits.shape[0], width)
    ]
    return _state.concat_parts(blocks, xp)


def _native_grad(
    p: _Linear, logits: Any, first: int, parts: _state.Parts, rows: _state.Loss, scales: tuple[Any, Any]
) -> Any:
    """``G = d loss / d logits`` of one chunk in the compute dtype, by :func:`._state.block_gradient` in row blocks."""
    xp = p.xp
    width = logits.shape[1]
    cw = None if p.class_weight is None else p.class_weight[first : first + width]
    grad = xp.empty(logits.shape, dtype=logits.dtype, device=D.device(logits))
    for r in _row_blocks(logits.shape[0], width):
        block = _state.block_gradient(
            xp.astype(logits[r, ...], xp.float64),
            first,
            _state.rows_of(parts, r),
            _state.rows_of(rows, r),
            (scales[0][r], scales[1][r]),
            xp,
            target=p.y[r],
            probs=False,
            weight=cw,
            allowed=None,
            smoothing=p.smoothing,
            z_loss=p.z_loss,
            softcap=p.softcap,
            needs_twosum=_needs_twosum(p),
        )
        grad[r, ...] = xp.astype(block, logits.dtype)
    return grad
