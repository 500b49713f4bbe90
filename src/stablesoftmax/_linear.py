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
from typing import Any

import numpy as np

from . import _arrays, _losses
from ._arrays import Rows, Source
from ._errors import ShapeError

__all__ = ["linear_cross_entropy", "linear_cross_entropy_with_grad"]


def linear_cross_entropy(
    hidden: Any,
    weight: Any,
    target: Any,
    /,
    *,
    bias: Any = None,
    chunk_size: int | None = None,
    class_weight: Any = None,
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
        The loss, in ``hidden``'s array type and dtype. The matmul runs in
        float32 for 16-bit and float32 input, float64 for float64 input; the
        logsumexp merge runs in float64.

    See Also
    --------
    linear_cross_entropy_with_grad, cross_entropy
    """
    prob = _problem(hidden, weight, target, bias, chunk_size, class_weight, ignore_index, reduction,
                    label_smoothing, z_loss, softcap)
    return prob.src.restore(_loss(prob, _forward(prob)))


def linear_cross_entropy_with_grad(
    hidden: Any, weight: Any, target: Any, /, *, g: Any = 1.0, **options: Any
) -> tuple[Any, tuple[Any, Any, Any]]:
    r"""The loss of :func:`linear_cross_entropy` and its gradients, in two passes over the vocabulary.

    Returns ``(loss, (d_hidden, d_weight, d_bias))`` (``d_bias`` is None
    without a bias). With ``G = d loss / d logits`` for one chunk (see
    :func:`cross_entropy_grad`):

    .. math:: \bar h \mathrel{+}= G\, W_c, \qquad \bar W_c = G^\top h, \qquad \bar b_c = \textstyle\sum_n G_n

    ``g`` is the cotangent of the loss. Options as :func:`linear_cross_entropy`.
    """
    prob = _problem(hidden, weight, target, **_losses.options_of(linear_cross_entropy, options))
    fwd = _forward(prob)
    loss = _loss(prob, fwd)
    d_h, d_w, d_b = _backward(prob, fwd, g)
    grads = (prob.src.restore(d_h), prob.src.restore(d_w), None if d_b is None else prob.src.restore(d_b))
    return prob.src.restore(loss), grads


# --------------------------------------------------------------------------


@dataclass
class _Linear:
    h: np.ndarray  # (N, H) compute dtype
    w: np.ndarray  # (V, H)
    b: np.ndarray | None
    y: np.ndarray  # (N,) int64
    counted: np.ndarray
    cw: np.ndarray | None  # (V,) class weights
    chunk: int
    src: Source
    reduction: str
    smoothing: float
    z_loss: float
    softcap: float | None


@dataclass
class _Sums:
    lse: np.ndarray  # (N,) float64
    xy: np.ndarray  # (N,) target logit
    wx: np.ndarray | None  # (N,) sum_c w_c x_c, for label smoothing
    wy: np.ndarray
    live: np.ndarray


def _problem(hidden, weight, target, bias, chunk_size, class_weight, ignore_index, reduction, label_smoothing,
             z_loss, softcap) -> _Linear:
    h, src = _arrays.to_numpy(hidden, "hidden")
    w = _arrays.to_numpy(weight, "weight")[0]
    if h.ndim != 2 or w.ndim != 2 or h.shape[1] != w.shape[1]:
        raise ShapeError(f"hidden of shape {h.shape} and weight of shape {w.shape} must be [N, H] and [V, H] with the same H.")
    compute = np.float64 if h.dtype == np.float64 else np.float32
    n, v = h.shape[0], w.shape[0]
    rows = Rows.of((n, v), (1,))
    y = _losses.class_target(_arrays.host(target, "target"), rows, (n, v), ignore_index, "logits")
    b = None if bias is None else _arrays.to_numpy(bias, "bias")[0].astype(compute)
    if b is not None and b.shape != (v,):
        raise ShapeError(f"bias of shape {b.shape} must have one entry per class: shape ({v},).")
    chunk = max(1, -(-v // 32)) if chunk_size is None else int(_arrays.real_option(
        chunk_size, "chunk_size", lambda c: c >= 1 and c == int(c), "a whole number >= 1"))
    opts = _losses.check_options(label_smoothing, z_loss, softcap)
    return _Linear(h.astype(compute, copy=False), w.astype(compute, copy=False), b, y, y != ignore_index,
                   _losses.check_class_weight(class_weight, v), chunk, src, _losses.check_reduction(reduction), *opts)


def _starts(p: _Linear) -> range:
    return range(0, p.w.shape[0], p.chunk)


def _chunk_logits(p: _Linear, i: int) -> np.ndarray:
    """Logits of classes ``i : i + chunk``, softcap applied: the only block ever held."""
    logits = p.h @ p.w[i:i + p.chunk].T
    if p.b is not None:
        logits += p.b[i:i + p.chunk]
    if p.softcap is not None:
        _losses.apply_softcap(logits, p.softcap)
    return logits


def _forward(p: _Linear) -> _Sums:
    n = p.h.shape[0]
    lse, xy = np.full(n, -np.inf), np.zeros(n)
    wx = np.zeros(n) if p.smoothing else None
    for i in _starts(p):
        logits = _chunk_logits(p, i)
        inside = p.counted & (p.y >= i) & (p.y < i + logits.shape[1])
        xy[inside] = logits[inside, p.y[inside] - i]
        if wx is not None:
            cw = np.ones(logits.shape[1]) if p.cw is None else p.cw[i:i + logits.shape[1]]
            wx += logits @ cw.astype(logits.dtype)
        lse = np.logaddexp(lse, _chunk_lse(logits))
        del logits  # before the next chunk's matmul, so two chunks never coexist
    live = p.counted & (lse != -np.inf)
    wy = np.where(live, 1.0 if p.cw is None else p.cw[np.where(live, p.y, 0)], 0.0)
    return _Sums(lse, xy, wx, wy, live)


def _chunk_lse(logits: np.ndarray) -> np.ndarray:
    """Row-wise logsumexp of a chunk, in float64, overwriting the chunk.

    The chunk is ours and used up, so the shift and exp run in place, in its
    own dtype, and only the row sums are float64: no temporary of the chunk's
    size. For float32 logits from a float32 matmul, float32 exp adds an error
    no larger than the one the logits already carry (the loss is within 1e-6
    relative of the float64 reference, see tests/test_linear.py).
    """
    m = logits.max(axis=1, keepdims=True)
    finite = np.isfinite(m)
    m = np.where(finite, m, 0.0).astype(logits.dtype)  # an all -inf row stays -inf below, +inf rows +inf
    logits -= m
    with np.errstate(under="ignore"):  # terms below the subnormals are negligible next to the max term, 1
        np.exp(logits, out=logits)
    with np.errstate(divide="ignore"):  # log(0) = -inf for a row with no mass
        return m[:, 0].astype(np.float64) + np.log(logits.sum(axis=1, dtype=np.float64))


def _loss(p: _Linear, s: _Sums) -> np.ndarray:
    """The reduced loss, by the rules of :func:`cross_entropy`."""
    with np.errstate(invalid="ignore"):  # lse - xy on dropped rows; zeroed below
        ce = (1 - p.smoothing) * s.wy * (s.lse - s.xy)
        if s.wx is not None:
            wsum = p.w.shape[0] if p.cw is None else p.cw.sum()
            ce += p.smoothing / p.w.shape[0] * (s.lse * wsum - s.wx)
    ce = np.where(s.live, ce, 0.0)
    zt = np.where(s.live, p.z_loss * s.lse**2, 0.0) if p.z_loss else None
    return _losses.reduce_losses(ce, zt, s.wy, s.live, p.reduction, (p.h.shape[0],))


def _backward(p: _Linear, s: _Sums, g: Any):
    ce_scale, z_scale = (np.where(s.live, f, 0.0) for f in _losses.row_scales(p.reduction, (p.h.shape[0],), s.live, s.wy, g))
    k = p.w.shape[0]
    total = (1 - p.smoothing) * s.wy + (p.smoothing / k * (k if p.cw is None else p.cw.sum()) if p.smoothing else 0.0)
    coef = ce_scale * total + (2 * p.z_loss * np.where(s.live, s.lse, 0.0) * z_scale if p.z_loss else 0.0)
    onehot = ce_scale * (1 - p.smoothing) * s.wy
    d_h = np.zeros_like(p.h)
    d_w = np.empty_like(p.w)
    d_b = None if p.b is None else np.empty_like(p.b)
    lse = np.where(s.live, s.lse, 0.0).astype(p.h.dtype)[:, None]
    for i in _starts(p):
        grad = _chunk_grad(p, _chunk_logits(p, i), lse, coef, ce_scale, onehot, i)
        d_h += grad @ p.w[i:i + grad.shape[1]]
        d_w[i:i + grad.shape[1]] = grad.T @ p.h
        if d_b is not None:
            d_b[i:i + grad.shape[1]] = grad.sum(axis=0)
        del grad
    return d_h, d_w, d_b


def _chunk_grad(p: _Linear, logits: np.ndarray, lse: np.ndarray, coef, ce_scale, onehot, i: int) -> np.ndarray:
    """``d loss / d logits`` for one chunk, through the softcap."""
    width = logits.shape[1]
    with np.errstate(under="ignore"):  # probabilities below the subnormals are 0
        grad = np.exp(logits - lse)
    grad *= coef.astype(grad.dtype)[:, None]
    if p.smoothing:
        cw = np.ones(width) if p.cw is None else p.cw[i:i + width]
        grad -= (ce_scale[:, None] * (p.smoothing / p.w.shape[0]) * cw[None, :]).astype(grad.dtype)
    inside = (p.y >= i) & (p.y < i + width)
    grad[inside, p.y[inside] - i] -= onehot[inside].astype(grad.dtype)
    if p.softcap is not None:
        grad *= 1 - (logits / p.softcap) ** 2
    return grad
