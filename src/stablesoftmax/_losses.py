"""Cross-entropy from logits, never through ``log(softmax)``.

The per-element loss for a class-index target ``y`` is
``logsumexp(x) - x[y]``, computed as ``log1p(s) - (x[y] - m)`` with the exact
shift of :mod:`._reductions`, so each element is as accurate as
:func:`log_softmax`. The fp32 case of the labs, ``[10, 92, 30, -50, 40]``
with target 3, gives exactly 142 where ``-log(softmax(x)[3])`` gives ``inf``.

Conventions, chosen to match ``torch.nn.functional`` where it has them:

* ``weight[c]`` scales the loss of elements whose target is ``c``;
  ``reduction="mean"`` divides by the sum of those weights over the elements
  that count (ignored ones leave both sums, pytorch#69339 and #73205).
* Label smoothing ``a`` mixes the target with the uniform distribution:
  ``(1 - a) * onehot + a / K`` over the ``K`` classes ``where`` allows (all of
  them without ``where``), as PyTorch does. Megatron's convention, which puts
  ``a`` on the ``K - 1`` other classes, is ours with ``a * K / (K - 1)``.
* ``z_loss`` (PaLM) adds ``z_loss * logsumexp(x)**2`` per element that
  counts, unweighted; ``"mean"`` averages it over those elements (as
  Liger-Kernel does).
* ``softcap`` (Gemma 2) replaces the logits by ``softcap * tanh(x / softcap)``
  before anything else.
* A slice whose logits are all ``-inf`` or all masked carries no
  distribution: it is left out like an ignored element. When nothing
  counts, ``"mean"`` gives 0.0 with zero gradient, not NaN (pytorch#70348).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _arrays, _torch_autograd
from ._arrays import Rows, Source
from ._contract import documented
from ._errors import ArgumentError, DtypeError, ShapeError, TargetError
from ._reductions import Shifted, _log_probs, _probs, _shift, _terms, _twosum_error, contract_rows, kernels

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "nll_loss",
    "binary_cross_entropy_with_logits",
]

REDUCTIONS = ("none", "mean", "sum")


@documented("cross_entropy")
def cross_entropy(
    logits: Any,
    target: Any,
    /,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: Any = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    r"""Cross-entropy between logits and targets: ``logsumexp(x) - x[target]``.

    .. math:: \ell_n = w_{y_n}\big(\operatorname{lse}(x_n) - x_{n, y_n}\big)
              \quad\text{or}\quad \ell_n = -\sum_c w_c\, q_{n,c} \log\sigma(x_n)_c

    Parameters
    ----------
    logits : array_like, shape ``[..., C, ...]``
        Unnormalised scores; ``axis`` is the class axis. Any array type and
        float dtype :func:`logsumexp` takes; 16-bit input is computed wide.
    target : array_like
        Integer class indices shaped like ``logits`` without the class axis,
        or class probabilities (float) shaped like ``logits``.
    axis : int, default -1
        The class axis (PyTorch's ``(N, C, d1, ...)`` layout is ``axis=1``).
    weight : array_like, shape ``[C]``, optional
        Per-class weights.
    ignore_index : int, default -100
        Class-index targets equal to it count for nothing (loss and gradient
        0, left out of the mean). Not allowed with probability targets.
    reduction : {"mean", "sum", "none"}, default "mean"
        ``"none"`` returns the per-element losses, shaped like the class-index
        target.
    label_smoothing : float in [0, 1], default 0.0
        PyTorch's convention: the target becomes ``(1 - a) q + a / K``.
    where : array_like of bool, optional
        Masks logits (broadcast to ``logits``' shape); a masked class has
        probability 0 and is outside the smoothing distribution.
    z_loss : float, default 0.0
        Weight of the PaLM z-loss ``logsumexp(x)**2``, >= 0.
    softcap : float, optional
        Gemma 2 soft-capping ``softcap * tanh(x / softcap)``, > 0.

    Returns
    -------
    array
        The loss in ``logits``' array type and dtype: a 0-d result for
        ``"mean"`` and ``"sum"``. Sums accumulate in float64.

    See Also
    --------
    cross_entropy_grad, cross_entropy_with_grad, nll_loss, log_softmax

    Examples
    --------
    >>> import numpy as np
    >>> from stablesoftmax import cross_entropy, naive
    >>> x = np.array([10.0, 92.0, 30.0, -50.0, 40.0], dtype=np.float32)
    >>> float(cross_entropy(x, 3))
    142.0
    >>> with np.errstate(divide="ignore", under="ignore"):
    ...     float(naive.cross_entropy(x, 3))
    inf
    """
    if _torch_autograd.wants_grad(logits):
        return _torch_autograd.apply("cross_entropy", logits, target, axis=axis, weight=weight, ignore_index=ignore_index,
                                     reduction=reduction, label_smoothing=label_smoothing, where=where, z_loss=z_loss,
                                     softcap=softcap)
    problem = _problem(logits, target, axis, weight, ignore_index, reduction, label_smoothing, where, z_loss, softcap)
    return problem.src.restore(_forward(problem, need_probs=False).loss)


def cross_entropy_grad(
    logits: Any,
    target: Any,
    /,
    *,
    g: Any = 1.0,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: Any = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> Any:
    r"""Gradient of :func:`cross_entropy` with respect to ``logits``, times ``g``.

    With ``a_c`` the weighted target mass on class ``c`` (``w_y (1 - s)``
    on the target plus ``w_c s / K`` from smoothing ``s``, or ``w_c q_c``)
    and ``p = softmax(x)``:

    .. math:: \frac{\partial \ell_n}{\partial x_{n,c}}
              = \Big(\sum_j a_j\Big) p_c - a_c + 2 z\, \operatorname{lse}(x_n)\, p_c

    scaled by the reduction (``g``, or ``g`` over the mean's denominator), and
    by ``1 - tanh^2(x / softcap)`` under ``softcap``. ``g`` is the cotangent:
    a scalar for ``"mean"``/``"sum"``, the loss's shape for ``"none"``.
    Ignored elements, dropped slices, masked and ``+-inf`` logits, and slices
    holding ``+inf`` get exactly 0; NaN slices give NaN.
    """
    problem = _problem(logits, target, axis, weight, ignore_index, reduction, label_smoothing, where, z_loss, softcap)
    return problem.src.restore(_backward(problem, _forward(problem), g))


def cross_entropy_with_grad(logits: Any, target: Any, /, *, g: Any = 1.0, **options: Any) -> tuple[Any, Any]:
    """``(cross_entropy(...), cross_entropy_grad(...))`` with the softmax computed once.

    Takes every option of :func:`cross_entropy`. This is the fused step a
    training loop wants: one shift, one pass of ``exp``, reused for the loss
    and for ``p`` in the gradient (Liger-Kernel computes both in one kernel
    for the same reason).
    """
    problem = _problem(logits, target, **options_of(cross_entropy, options))
    fwd = _forward(problem)
    loss = problem.src.restore(fwd.loss)
    return loss, problem.src.restore(_backward(problem, fwd, g))


def nll_loss(
    log_probs: Any,
    target: Any,
    /,
    *,
    axis: int = -1,
    weight: Any = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Any:
    r"""Negative log-likelihood of class-index targets given log-probabilities.

    .. math:: \ell_n = -w_{y_n}\, \text{log\_probs}_{n, y_n}

    Same shapes, ``weight``, ``ignore_index`` and ``reduction`` as
    :func:`cross_entropy`, which equals ``nll_loss(log_softmax(x), y)``.
    Only class-index targets are accepted, as in PyTorch.
    """
    arr, src = _arrays.to_numpy(log_probs, "log_probs")
    rows, lp = _class_rows(arr, axis, "log_probs")
    tgt = class_target(_arrays.host(target, "target"), rows, arr.shape, ignore_index, "log_probs")
    red = check_reduction(reduction)
    w = check_class_weight(weight, rows.k)
    live = tgt != ignore_index
    y = np.where(live, tgt, 0)[:, None]
    wy = np.where(live, 1.0 if w is None else w[y[:, 0]], 0.0)
    with np.errstate(invalid="ignore"):  # 0 * inf on ignored elements; they are zeroed next
        elem = np.where(live, -wy * np.take_along_axis(lp, y, axis=-1)[:, 0], 0.0)
    return src.restore(reduce_losses(elem, None, wy, live, red, rows.batch))


def binary_cross_entropy_with_logits(
    logits: Any,
    target: Any,
    /,
    *,
    weight: Any = None,
    pos_weight: Any = None,
    reduction: str = "mean",
) -> Any:
    r"""Binary cross-entropy on logits, never through ``log(sigmoid(x))``.

    .. math:: \ell = w\,\big[\,p_w\, t\, \operatorname{softplus}(-x)
              + (1 - t)\, \operatorname{softplus}(x)\big],
              \quad \operatorname{softplus}(x) = \max(x, 0) + \operatorname{log1p}(e^{-|x|})

    ``log(sigmoid(x))`` underflows exactly as ``log(softmax(x))`` does: at
    ``x = -200`` in float32 it is ``-inf``; ``-softplus(-x)`` is ``-200``.
    ``target`` has ``logits``' shape (values in [0, 1]); ``weight``
    broadcasts to it; ``pos_weight`` broadcasts along the last axis, as in
    PyTorch. A term whose coefficient is 0 contributes 0 even at ``+-inf``.
    """
    arr, src = _arrays.to_numpy(logits, "logits")
    x = _arrays.wide(arr)
    t = _arrays.wide(_arrays.to_numpy(target, "target")[0])
    if t.shape != x.shape:
        raise ShapeError(f"target of shape {t.shape} must have the logits' shape {x.shape}.")
    red = check_reduction(reduction)
    pw = 1.0 if pos_weight is None else _arrays.wide(_arrays.to_numpy(pos_weight, "pos_weight")[0])
    pos = pw * t
    elem = _times_softplus(pos, -x) + _times_softplus(1.0 - t, x)
    if weight is not None:
        elem = elem * _arrays.broadcast_like(_arrays.wide(_arrays.to_numpy(weight, "weight")[0]), x.shape, "weight", "the logits'")
    if red == "none":
        return src.restore(elem)
    total = elem.sum()
    return src.restore(np.asarray(total if red == "sum" else (total / elem.size if elem.size else 0.0)))


def _times_softplus(c: np.ndarray, x: np.ndarray) -> np.ndarray:
    """``c * softplus(x)``, with 0 wherever ``c`` is 0 (even at ``x = +inf``)."""
    with np.errstate(under="ignore"):  # exp(-|x|) below the subnormals is 0, and log1p(0) = 0 is exact
        sp = np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x)))
    return np.multiply(c, sp, out=np.zeros(np.broadcast_shapes(np.shape(c), sp.shape)), where=c != 0)


# --------------------------------------------------------------------------
# The problem, validated once and shared by the loss and its gradient
# --------------------------------------------------------------------------


@dataclass
class _Problem:
    """Cross-entropy inputs as rows: ``x`` is ``(B, C)`` float64 after softcap."""

    x: np.ndarray
    mask: np.ndarray | None
    target: np.ndarray  # (B,) int64 class indices, or (B, C) float64 probabilities
    probs: bool
    counted: np.ndarray  # (B,) bool: not ignored
    weight: np.ndarray | None
    rows: Rows
    src: Source
    exact: bool
    reduction: str
    smoothing: float
    z_loss: float
    softcap: float | None
    numpy_like: bool


@dataclass
class _Forward:
    sh: Shifted | None  # the NumPy path's shift; None on the compiled path
    t: np.ndarray | None
    s: np.ndarray
    lse: np.ndarray  # (B,)
    live: np.ndarray  # (B,) counted and not a dropped (all -inf / masked) slice
    wy: np.ndarray  # (B,) weight of each element in the mean's denominator
    loss: np.ndarray
    p: np.ndarray | None = None  # softmax rows, from the compiled path when a gradient follows
    x_y: np.ndarray | None = None  # (B,) the target logits, on the compiled path
    m: np.ndarray | None = None  # (B,) the row max, on the compiled path


def options_of(fn: Any, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` completed with ``fn``'s keyword-only defaults; an unknown name is an ArgumentError.

    The defaults come from ``fn``'s signature, so a fused variant taking
    ``**options`` cannot drift from the public function it mirrors.
    """
    defaults = {p.name: p.default for p in inspect.signature(fn).parameters.values() if p.kind is p.KEYWORD_ONLY}
    unknown = sorted(set(options) - set(defaults))
    if unknown:
        raise ArgumentError(f"unknown option(s) {unknown}; {fn.__name__} takes {list(defaults)}.")
    return {**defaults, **options}


def _problem(logits, target, axis, weight, ignore_index, reduction, label_smoothing, where, z_loss, softcap) -> _Problem:
    arr, src = _arrays.to_numpy(logits, "logits")
    rows, x = _class_rows(arr, axis, "logits", widen=False)
    red = check_reduction(reduction)
    smoothing, z, cap = check_options(label_smoothing, z_loss, softcap)
    mask = _arrays.as_mask(where, arr.shape)
    mask = None if mask is None else rows.split(mask).reshape(x.shape)
    tgt = _arrays.host(target, "target")
    probs = tgt.dtype.kind == "f" or tgt.dtype == _arrays.BFLOAT16
    if probs and tgt.shape == arr.shape:
        if ignore_index != -100:
            raise ArgumentError(f"ignore_index={ignore_index} cannot be used with probability targets; mask classes with where= instead.")
        tgt = _prob_target(tgt, rows, x.shape)
        counted = np.ones(x.shape[0], bool)
    else:
        tgt = class_target(tgt, rows, arr.shape, ignore_index, "logits")
        counted = tgt != ignore_index
        probs = False
    if cap is not None:
        x = apply_softcap(np.array(x, dtype=np.float64), cap)
    return _Problem(x, mask, tgt, probs, counted, check_class_weight(weight, rows.k), rows, src,
                    arr.dtype == np.float64 and cap is None, red, smoothing, z, cap, _arrays.is_numpy_like(logits))


def _class_rows(arr: np.ndarray, axis: Any, name: str, *, widen: bool = True) -> tuple[Rows, np.ndarray]:
    """``arr`` as ``(B, C)`` with the class axis last: float64, or its own dtype without ``widen``."""
    if arr.ndim == 0:
        raise ShapeError(f"{name} is 0-d; it needs a class axis (shape [C], [N, C] or [N, C, d1, ...]).")
    if not _arrays._is_int(axis):
        raise ArgumentError(f"axis={axis!r} must be a single int: the class axis.")
    rows = Rows.of(arr.shape, _arrays.normalize_axes(axis, arr.ndim))
    n = int(np.prod(rows.batch, dtype=np.int64))
    if rows.k == 0 and n:
        raise ShapeError(f"{name} of shape {arr.shape} has no classes along axis {axis}; it needs at least one.")
    x = rows.split(arr).reshape(n, rows.k)
    return rows, _arrays.wide(x) if widen else x


def check_options(label_smoothing: Any, z_loss: Any, softcap: Any) -> tuple[float, float, float | None]:
    """``(label_smoothing, z_loss, softcap)`` checked: in [0, 1], finite >= 0, finite > 0 or None."""
    smoothing = _arrays.real_option(label_smoothing, "label_smoothing", lambda v: 0 <= v <= 1, "in [0, 1]")
    z = _arrays.real_option(z_loss, "z_loss", lambda v: 0 <= v < np.inf, "finite and >= 0")
    if softcap is None:
        return smoothing, z, None
    return smoothing, z, _arrays.real_option(softcap, "softcap", lambda v: 0 < v < np.inf, "finite and > 0, or None")


def apply_softcap(x: np.ndarray, cap: float) -> np.ndarray:
    """Gemma 2's ``cap * tanh(x / cap)``, in place on ``x`` (which it returns)."""
    with np.errstate(over="ignore"):  # x / cap past the float range is +-inf, and tanh(+-inf) = +-1
        np.divide(x, cap, out=x)
    np.tanh(x, out=x)
    x *= cap
    return x


def class_target(tgt: np.ndarray, rows: Rows, shape: tuple, ignore_index: int, name: str) -> np.ndarray:
    if tgt.dtype.kind == "f" or tgt.dtype == _arrays.BFLOAT16:
        if tgt.shape == rows.batch:
            raise TargetError(f"target holds float class indices (dtype {tgt.dtype}); class indices must be integers, "
                              f"or give probabilities of the {name}' shape {shape}.")
        raise ShapeError(f"target of shape {tgt.shape} matches neither {name} {shape} (probabilities) "
                         f"nor {rows.batch} (class indices).")
    if tgt.dtype.kind not in "iu":
        raise DtypeError(f"target has dtype {tgt.dtype}; give integer class indices or float probabilities.")
    if tgt.shape != rows.batch:
        raise ShapeError(f"target of shape {tgt.shape} does not match {name} of shape {shape} without its class "
                         f"axis {rows.axes[0]}: expected {rows.batch}.")
    flat = tgt.reshape(-1).astype(np.int64)
    bad = (flat != ignore_index) & ((flat < 0) | (flat >= rows.k))
    if bad.any():
        i = int(np.argmax(bad))
        where = tuple(int(v) for v in np.unravel_index(i, rows.batch)) if rows.batch else ()
        raise TargetError(f"target value {int(flat[i])} at position {where} is out of range; class indices must be "
                          f"in [0, {rows.k}) or equal ignore_index={ignore_index}.")
    return flat


def _prob_target(tgt: np.ndarray, rows: Rows, shape: tuple) -> np.ndarray:
    q = _arrays.wide(rows.split(tgt.astype(np.float64))).reshape(shape)
    if (q < 0).any():
        i = np.unravel_index(int(np.argmax((q < 0).reshape(-1))), q.shape)
        raise ArgumentError(f"probability target has a negative entry {q[i]} at row {i[0]}, class {i[1]}; "
                            f"probabilities must be >= 0 (they need not sum to 1, as in PyTorch).")
    return q


def check_reduction(reduction: Any) -> str:
    if reduction not in REDUCTIONS:
        raise ArgumentError(f"reduction={reduction!r} is not one of {REDUCTIONS}.")
    return reduction


def check_class_weight(weight: Any, c: int) -> np.ndarray | None:
    if weight is None:
        return None
    w = _arrays.wide(_arrays.to_numpy(weight, "weight")[0])
    if w.shape != (c,):
        raise ShapeError(f"weight of shape {w.shape} must have one entry per class: shape ({c},).")
    return w


# --------------------------------------------------------------------------
# Forward and backward
# --------------------------------------------------------------------------


def _forward(pb: _Problem, *, need_probs: bool = True) -> _Forward:
    module = _compiled_module(pb)
    if module is not None:
        return _compiled_forward(pb, module, need_probs)
    sh = _shift(_arrays.wide(pb.x), pb.mask, pb.exact)
    live = pb.counted & (sh.m[:, 0] != -np.inf)
    dense = pb.probs or bool(pb.smoothing)
    if not dense:  # only x[y] - m is needed: take it now, then exp may overwrite the shift in place
        y = np.where(live, pb.target, 0)[:, None]
        d_y = np.take_along_axis(sh.d, y, axis=-1)
        err_y = None if sh.err is None else np.take_along_axis(sh.err, y, axis=-1)
    t, s = _terms(sh, reuse=not dense)
    log_rest = np.log1p(s)
    lse = (sh.m + log_rest)[:, 0]
    if dense:
        ce, wy = _ce_dense(pb, _log_probs(sh, log_rest), live)
    else:
        ce, wy = _ce_gathered(pb, sh, log_rest, live, y, d_y, err_y)
    zt = None
    if pb.z_loss:
        with np.errstate(invalid="ignore", over="ignore"):  # lse**2 past float64's range is inf, as is the loss
            zt = np.where(live, pb.z_loss * lse * lse, 0.0)
    return _Forward(sh, t, s, lse, live, wy, reduce_losses(ce, zt, wy, live, pb.reduction, pb.rows.batch))


def _ce_gathered(pb: _Problem, sh: Shifted, log_rest: np.ndarray, live: np.ndarray, y: np.ndarray,
                 d_y: np.ndarray, err_y: np.ndarray | None):
    """Class targets without smoothing: only the target's log-probability ``(d_y - log1p(s)) + err_y``."""
    lp = d_y - log_rest
    if err_y is not None:
        lp += err_y
    bad = ~sh.finite[:, 0]
    if bad.any():
        lp[bad] = np.take_along_axis(contract_rows(sh.xm[bad], sh.m[bad], "log_softmax"), y[bad], axis=-1)
    wy = np.where(live, 1.0 if pb.weight is None else pb.weight[y[:, 0]], 0.0)
    with np.errstate(invalid="ignore"):  # 0 * inf on dropped elements; they are zeroed here
        return np.where(live, -wy * lp[:, 0], 0.0), wy


def _ce_dense(pb: _Problem, lp: np.ndarray, live: np.ndarray):
    """Probability targets or label smoothing: ``-sum_c a_c log p_c`` with ``0 log 0 = 0``."""
    a, wy = _target_mass(pb, live)
    contrib = np.zeros_like(lp)
    np.multiply(a, lp, out=contrib, where=a != 0)
    with np.errstate(invalid="ignore"):  # -inf + inf only in NaN rows, which stay NaN
        ce = -contrib.sum(axis=-1)
    return np.where(live, ce, 0.0), wy


def _target_mass(pb: _Problem, live: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``a``: the weighted target distribution (B, C); ``wy``: each element's denominator weight."""
    c = pb.x.shape[1]
    allowed = np.ones(pb.x.shape, bool) if pb.mask is None else pb.mask
    uniform = allowed / np.maximum(allowed.sum(axis=-1, keepdims=True), 1)
    w = np.ones(c) if pb.weight is None else pb.weight
    if pb.probs:
        q = pb.target if not pb.smoothing else (1 - pb.smoothing) * pb.target + pb.smoothing * uniform
        return q * w, live.astype(np.float64)
    y = np.where(live, pb.target, 0)
    q = pb.smoothing * uniform
    q[np.arange(len(y)), y] += 1 - pb.smoothing
    a = q * w
    a[~live] = 0.0
    return a, np.where(live, w[y], 0.0)


def reduce_losses(ce: np.ndarray, zt: np.ndarray | None, wy: np.ndarray, live: np.ndarray, reduction: str, batch: tuple) -> np.ndarray:
    """Apply the reduction; the mean of nothing is 0.0 (pytorch#70348)."""
    if reduction == "none":
        return (ce if zt is None else ce + zt).reshape(batch)
    total_ce = ce.sum()
    total_z = 0.0 if zt is None else zt.sum()
    if reduction == "sum":
        return np.asarray(total_ce + total_z)
    denom, count = wy.sum(), np.count_nonzero(live)
    mean_ce = total_ce / denom if denom else 0.0
    mean_z = total_z / count if count else 0.0
    return np.asarray(mean_ce + mean_z)


def row_scales(reduction: str, batch: tuple, live: np.ndarray, wy: np.ndarray, g: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per-element factors of the cotangent ``g`` for the CE part and the z part of a gradient."""
    garr = _arrays.wide(_arrays.to_numpy(g, "g")[0])
    if reduction == "none":
        gb = _arrays.broadcast_like(garr, batch, "g", "the loss's").reshape(-1)
        return gb, gb
    if garr.size != 1:
        raise ShapeError(f"g of shape {garr.shape} must be a scalar for reduction={reduction!r}.")
    gs = float(garr.reshape(()))
    if reduction == "sum":
        return np.full(len(live), gs), np.full(len(live), gs)
    denom, count = wy.sum(), np.count_nonzero(live)
    return np.full(len(live), gs / denom if denom else 0.0), np.full(len(live), gs / count if count else 0.0)


def _backward(pb: _Problem, fwd: _Forward, g: Any) -> np.ndarray:
    """d loss / d logits, in the caller's layout."""
    ce_scale, z_scale = row_scales(pb.reduction, pb.rows.batch, fwd.live, fwd.wy, g)
    if fwd.p is not None:
        return _compiled_backward(pb, fwd, ce_scale, z_scale)
    p = _probs(fwd.sh, fwd.t, fwd.s)
    if pb.probs or pb.smoothing:
        a, _ = _target_mass(pb, fwd.live)
        grad = p * a.sum(axis=-1, keepdims=True) - a
    else:
        wy = fwd.wy
        grad = p * wy[:, None]
        y = np.where(fwd.live, pb.target, 0)
        grad[np.arange(len(y)), y] -= wy
    grad *= ce_scale[:, None]
    if pb.z_loss:
        with np.errstate(invalid="ignore"):  # inf lse only on +inf slices, zeroed below
            grad += p * (2 * pb.z_loss * np.where(fwd.live, fwd.lse, 0.0) * z_scale)[:, None]
    _zero_dead_ce(grad, pb, fwd)
    if pb.softcap is not None:
        grad *= 1.0 - (pb.x / pb.softcap) ** 2
    return pb.rows.join(grad.reshape(pb.rows.batch + (pb.rows.k,)))


def _zero_dead_ce(grad: np.ndarray, pb: _Problem, fwd: _Forward) -> None:
    sh = fwd.sh
    with np.errstate(invalid="ignore"):  # comparisons on NaN rows
        live = sh.finite & np.isfinite(sh.xm) & fwd.live[:, None]
    np.copyto(grad, 0.0, where=~live)
    grad[np.isnan(sh.m[:, 0]) & fwd.live] = np.nan



# --------------------------------------------------------------------------
# The compiled path: class targets without smoothing, where or softcap
# --------------------------------------------------------------------------


def _compiled_module(pb: _Problem) -> Any:
    """The kernels when this problem can use them: the common training case on NumPy logits."""
    if pb.probs or pb.smoothing or pb.mask is not None or pb.softcap is not None or not pb.numpy_like:
        return None
    if pb.x.shape[1] == 0:
        return None
    return kernels()


def _compiled_forward(pb: _Problem, module: Any, need_probs: bool) -> _Forward:
    """One kernel pass gives each row's ``(m, s)`` (and the softmax, for a gradient).

    The loss is ``log1p(s) - (x[y] - m)`` as on the NumPy path; ``x[y] - m``
    is exact for narrow logits (taken in float64) and carries its TwoSum
    error for float64 ones.
    """
    x2 = np.ascontiguousarray(pb.x)
    if x2.dtype.itemsize == 2:
        x2 = x2.astype(np.float32)  # exact
    if need_probs:
        p = np.empty(x2.shape, x2.dtype)
        m, s = module.softmax_parts_rows(x2, p)
    else:
        p, (m, s) = None, module.lse_parts_rows(x2)
    live = pb.counted & (m != -np.inf)
    y = np.where(live, pb.target, 0)
    x_y = x2[np.arange(len(y)), y].astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):  # inf - inf on rows set below; -max - max is an exact -inf
        d_y = x_y - m
    log_rest = np.log1p(s)
    lp = d_y - log_rest
    if x2.dtype == np.float64:
        lp += _twosum_error(x_y, m, d_y)
    bad = ~np.isfinite(m)
    if bad.any():
        rows_ = contract_rows(x2[bad].astype(np.float64), m[bad, None], "log_softmax")
        lp[bad] = np.take_along_axis(rows_, y[bad, None], axis=-1)[:, 0]
    wy = np.where(live, 1.0 if pb.weight is None else pb.weight[y], 0.0)
    with np.errstate(invalid="ignore"):  # 0 * inf on dropped elements; zeroed here
        ce = np.where(live, -wy * lp, 0.0)
    lse = m + log_rest
    zt = None
    if pb.z_loss:
        with np.errstate(invalid="ignore", over="ignore"):  # lse**2 past float64's range is inf, as is the loss
            zt = np.where(live, pb.z_loss * lse * lse, 0.0)
    loss = reduce_losses(ce, zt, wy, live, pb.reduction, pb.rows.batch)
    return _Forward(None, None, s, lse, live, wy, loss, p=p, x_y=x_y, m=m)


def _compiled_backward(pb: _Problem, fwd: _Forward, ce_scale: np.ndarray, z_scale: np.ndarray) -> np.ndarray:
    """``p * (w_y c + 2 z lse c_z) - w_y c onehot``, written over the kernel's softmax rows."""
    grad = fwd.p
    coef = fwd.wy * ce_scale
    if pb.z_loss:
        with np.errstate(invalid="ignore"):  # inf lse only on +inf rows, zeroed below
            coef = coef + 2 * pb.z_loss * np.where(fwd.live, fwd.lse, 0.0) * z_scale
    grad *= coef.astype(grad.dtype)[:, None]
    rows = np.arange(len(coef))
    y = np.where(fwd.live, pb.target, 0)
    grad[rows, y] -= (fwd.wy * ce_scale).astype(grad.dtype)
    finite_row = np.isfinite(fwd.m)
    grad[~(fwd.live & finite_row)] = 0.0  # ignored, dropped and +inf rows move nothing
    grad[fwd.live & np.isnan(fwd.m)] = np.nan
    at_minus_inf = fwd.live & finite_row & (fwd.x_y == -np.inf)
    grad[rows[at_minus_inf], y[at_minus_inf]] = 0.0  # a -inf logit stays -inf under any finite change
    return pb.rows.join(grad.reshape(pb.rows.batch + (pb.rows.k,)))
