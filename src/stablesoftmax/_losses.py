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
from typing import Any, overload

import numpy as np
import numpy.typing as npt

from . import _checks, _compute
from . import _dispatch as D
from ._arrays import concrete_host
from ._contract import documented
from ._errors import ArgumentError, DtypeError, ShapeError, TargetError
from ._typing import ArrayIn, ArrayT, NumpyArray, NumpyIn, NumpyResult

__all__ = [
    "cross_entropy",
    "cross_entropy_grad",
    "cross_entropy_with_grad",
    "nll_loss",
    "binary_cross_entropy_with_logits",
]

REDUCTIONS = ("none", "mean", "sum")


@overload
def cross_entropy(
    logits: NumpyIn,
    target: ArrayIn,
    /,
    *,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> NumpyResult: ...


@overload
def cross_entropy(
    logits: ArrayT,
    target: ArrayIn,
    /,
    *,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> ArrayT: ...


@overload
def cross_entropy(
    logits: npt.ArrayLike,
    target: ArrayIn,
    /,
    *,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> NumpyResult: ...


@documented("cross_entropy")
def cross_entropy(
    logits: Any,
    target: ArrayIn,
    /,
    *,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
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

    plain = weight is None and where is None and softcap is None and _zero(label_smoothing) and _zero(z_loss)
    done, loss = _compute.fast_cross_entropy(logits, target, axis, reduction, ignore_index, plain)
    if done:  # plain ndarrays: the kernels at once, same bytes
        return loss
    return _run(
        _problem(logits, target, axis, weight, ignore_index, reduction, label_smoothing, where, z_loss, softcap),
        grad=False,
    )[0]


@overload
def cross_entropy_grad(
    logits: NumpyIn,
    target: ArrayIn,
    /,
    *,
    g: ArrayIn = 1.0,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> NumpyArray: ...


@overload
def cross_entropy_grad(
    logits: ArrayT,
    target: ArrayIn,
    /,
    *,
    g: ArrayIn = 1.0,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> ArrayT: ...


@overload
def cross_entropy_grad(
    logits: npt.ArrayLike,
    target: ArrayIn,
    /,
    *,
    g: ArrayIn = 1.0,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
    z_loss: float = 0.0,
    softcap: float | None = None,
) -> NumpyArray: ...


def cross_entropy_grad(
    logits: Any,
    target: ArrayIn,
    /,
    *,
    g: ArrayIn = 1.0,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    label_smoothing: float = 0.0,
    where: ArrayIn | None = None,
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
    return _run(problem, grad=True, g=g)[1]


@overload
def cross_entropy_with_grad(
    logits: NumpyIn, target: ArrayIn, /, *, g: ArrayIn = 1.0, **options: Any
) -> tuple[NumpyResult, NumpyArray]: ...


@overload
def cross_entropy_with_grad(
    logits: ArrayT, target: ArrayIn, /, *, g: ArrayIn = 1.0, **options: Any
) -> tuple[ArrayT, ArrayT]: ...


@overload
def cross_entropy_with_grad(
    logits: npt.ArrayLike, target: ArrayIn, /, *, g: ArrayIn = 1.0, **options: Any
) -> tuple[NumpyResult, NumpyArray]: ...


def cross_entropy_with_grad(logits: Any, target: ArrayIn, /, *, g: ArrayIn = 1.0, **options: Any) -> tuple[Any, Any]:
    """``(cross_entropy(...), cross_entropy_grad(...))`` with the softmax computed once.

    Takes every option of :func:`cross_entropy`. This is the fused step a
    training loop wants: one shift, one pass of ``exp``, reused for the loss
    and for ``p`` in the gradient (Liger-Kernel computes both in one kernel
    for the same reason).
    """

    opts = options_of(cross_entropy, options)
    return _run(_problem(logits, target, **opts), grad=True, g=g)


@dataclass(frozen=True)
class _Problem:
    """A cross-entropy call, validated: rows ``(B, C)`` of the caller's library and its options."""

    x: Any
    xp: Any
    rows: D.Rows
    target: Any  # (B,) integer classes or (B, C) probabilities
    probs: bool
    weight: Any
    mask: Any
    options: dict[str, Any]


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


def _zero(value: Any) -> bool:
    """``value`` is the option's default 0 as a Python int or float (anything else is validated by the general path)."""
    return type(value) in (int, float) and value == 0


def _problem(
    logits: Any,
    target: Any,
    axis: Any,
    weight: Any,
    ignore_index: Any,
    reduction: Any,
    label_smoothing: Any,
    where: Any,
    z_loss: Any,
    softcap: Any,
) -> _Problem:
    arr, xp = D.array_in(logits, "logits")
    rows = _class_rows(arr, axis, "logits")
    red, ignore, smoothing, z, cap = loss_options(reduction, ignore_index, label_smoothing, z_loss, softcap)
    mask = D.mask_in(where, arr, xp, tuple(arr.shape))
    tgt = D.like(target, arr, xp, "target")
    probs = D.dtype_name(tgt.dtype) in D.FLOATS and tuple(tgt.shape) == tuple(arr.shape)
    if probs:
        if ignore != -100:
            raise ArgumentError(
                f"ignore_index={ignore} cannot be used with probability targets; mask classes with where= instead."
            )
        tgt = rows.split(tgt, xp)
    else:
        tgt = class_target(tgt, rows, tuple(arr.shape), xp, "logits", ignore)
    w = check_class_weight(weight, rows.k, arr, xp)
    options = dict(ignore_index=ignore, reduction=red, smoothing=smoothing, z_loss=z, softcap=cap, probs=probs)
    return _Problem(
        rows.split(arr, xp), xp, rows, tgt, probs, w, None if mask is None else rows.split(mask, xp), options
    )


def _run(problem: _Problem, *, grad: bool, g: Any = 1.0) -> tuple[Any, Any]:
    """``(loss, gradient or None)`` in the caller's layout."""
    xp, rows = problem.xp, problem.rows
    if rows.n == 0:
        return _empty(problem, grad)
    gg = _loss_cotangent(g, problem) if grad else None
    loss, dx = D.backend(problem.x).cross_entropy(
        problem.x, problem.target, xp, grad=grad, g=gg, weight=problem.weight, mask=problem.mask, **problem.options
    )
    if problem.options["reduction"] == "none":
        loss = xp.reshape(loss, rows.batch)
    return D.out(loss, xp), (None if dx is None else rows.join(dx, xp))


def _empty(problem: _Problem, grad: bool) -> tuple[Any, Any]:
    """An empty batch: ``"mean"`` and ``"sum"`` are 0.0, ``"none"`` is empty; the gradient is empty."""
    xp = problem.xp
    loss = _empty_loss(problem.x, problem.rows, problem.options["reduction"], xp)
    if problem.probs:  # probabilities that require grad get theirs (empty) too
        loss = loss + _empty_loss(problem.target, problem.rows, problem.options["reduction"], xp)
    return D.out(loss, xp), (
        xp.zeros(problem.rows.shape, dtype=problem.x.dtype, device=D.device(problem.x)) if grad else None
    )


def _empty_loss(rows_x: Any, rows: D.Rows, reduction: str, xp: Any) -> Any:
    """The loss of no rows, as sums over the empty rows ``rows_x``: exactly 0.0 (or empty), and on the graph.

    A sum, not ``zeros``: a tensor that requires grad gets a loss that does too, so that
    ``loss.backward()`` gives it its gradient (empty) instead of raising.
    """
    if reduction == "none":
        return xp.reshape(xp.sum(rows_x, axis=-1), rows.batch)
    return xp.sum(rows_x)


def _loss_cotangent(g: Any, problem: _Problem) -> Any:
    """``g`` as an array: the loss's shape for ``"none"``, else a scalar."""
    xp = problem.xp
    garr, _ = D.array_in(D.like(g, problem.x, xp, "g"), "g")
    if problem.options["reduction"] == "none":
        return xp.reshape(D.broadcast(garr, problem.rows.batch, xp, "g", "the loss's"), (problem.rows.n,))
    if garr.ndim and tuple(garr.shape) != (1,) * garr.ndim:
        raise ShapeError(
            f"g of shape {tuple(garr.shape)} must be a scalar for reduction={problem.options['reduction']!r}."
        )
    return xp.reshape(garr, ())


def _class_rows(arr: Any, axis: Any, name: str) -> D.Rows:
    rows = D.Rows.of(tuple(arr.shape), D.class_axis(axis, arr.ndim, name))
    if rows.k == 0 and rows.n:
        raise ShapeError(f"{name} of shape {tuple(arr.shape)} has no classes along axis {axis}; it needs at least one.")
    return rows


def loss_options(
    reduction: Any, ignore_index: Any, label_smoothing: Any, z_loss: Any, softcap: Any
) -> tuple[str, int, float, float, float | None]:
    """``(reduction, ignore_index, label_smoothing, z_loss, softcap)`` checked, for every cross-entropy entry point."""
    red = D.choice(reduction, "reduction", REDUCTIONS)
    ignore = D.int_option(ignore_index, "ignore_index", "an int (the class index to ignore, -100 by default)")
    return (red, ignore, *check_options(label_smoothing, z_loss, softcap))


def chunk_size_option(value: Any) -> int:
    """A number of classes per chunk: a whole number >= 1 (``4.0`` is 4; a bool is refused)."""
    if isinstance(value, (bool, np.bool_)):
        raise ArgumentError(f"chunk_size={value!r} is not allowed; it must be a whole number >= 1.")
    return int(D.real_option(value, "chunk_size", lambda c: c >= 1 and c == int(c), "a whole number >= 1"))


def check_options(label_smoothing: Any, z_loss: Any, softcap: Any) -> tuple[float, float, float | None]:
    """``(label_smoothing, z_loss, softcap)`` checked: in [0, 1], finite >= 0, finite > 0 or None."""
    smoothing = D.real_option(label_smoothing, "label_smoothing", lambda v: 0 <= v <= 1, "in [0, 1]")
    z = D.real_option(z_loss, "z_loss", lambda v: 0 <= v < float("inf"), "finite and >= 0")
    if softcap is None:
        return smoothing, z, None
    return smoothing, z, D.real_option(softcap, "softcap", lambda v: 0 < v < float("inf"), "finite and > 0, or None")


def class_target(tgt: Any, rows: D.Rows, shape: tuple[int, ...], xp: Any, name: str, ignore_index: int) -> Any:
    """Integer class indices of shape ``rows.batch`` as ``(B,)`` int64, or a named error."""
    kind = D.dtype_name(tgt.dtype)
    if kind in D.FLOATS:
        if tuple(tgt.shape) == rows.batch:
            raise TargetError(
                f"target holds float class indices (dtype {kind}); class indices must be integers, "
                f"or give probabilities of the {name}' shape {shape}."
            )
        raise ShapeError(
            f"target of shape {tuple(tgt.shape)} matches neither {name} {shape} (probabilities) "
            f"nor {rows.batch} (class indices)."
        )
    if not kind.startswith(("int", "uint")):
        raise DtypeError(f"target has dtype {kind}; give integer class indices or float probabilities.")
    if tuple(tgt.shape) != rows.batch:
        raise ShapeError(
            f"target of shape {tuple(tgt.shape)} does not match {name} of shape {shape} without its "
            f"class axis {rows.axes[0]}: expected {rows.batch}."
        )
    if kind == "uint64" and concrete_host(tgt):
        big = int(xp.max(tgt)) if rows.n else 0
        if big >= 2**63:
            raise TargetError(f"target value {big} is out of range; class indices must be in [0, {rows.k}).")
    flat = xp.reshape(xp.astype(tgt, xp.int64), (rows.n,))
    _checks.check_targets(flat, rows.k, ignore_index, rows.batch)
    return flat


def check_class_weight(weight: Any, c: int, x: Any, xp: Any, name: str = "weight") -> Any:
    """Per-class weights ``(C,)`` in ``x``'s library, finite and >= 0; ``name`` is the argument's, for the message.

    A weight that requires grad is refused by name: the library gives class
    weights no gradient, and a silent zero is worse than an error.
    """
    if weight is None:
        return None
    if getattr(weight, "requires_grad", False):
        raise ArgumentError(
            f"{name} requires grad, and stablesoftmax gives class weights no gradient; pass {name}.detach(), "
            f"or weight the per-row losses of reduction='none' yourself."
        )
    w, _ = D.array_in(D.like(weight, x, xp, name), name)
    if tuple(w.shape) != (c,):
        raise ShapeError(f"{name} of shape {tuple(w.shape)} must have one entry per class: shape ({c},).")
    _checks.check_class_weight(w, name)
    return w


@overload
def nll_loss(
    log_probs: NumpyIn,
    target: ArrayIn,
    /,
    *,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> NumpyResult: ...


@overload
def nll_loss(
    log_probs: ArrayT,
    target: ArrayIn,
    /,
    *,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> ArrayT: ...


@overload
def nll_loss(
    log_probs: npt.ArrayLike,
    target: ArrayIn,
    /,
    *,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> NumpyResult: ...


def nll_loss(
    log_probs: Any,
    target: ArrayIn,
    /,
    *,
    axis: int = -1,
    weight: ArrayIn | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
) -> Any:
    r"""Negative log-likelihood of class-index targets given log-probabilities.

    .. math:: \ell_n = -w_{y_n}\, \text{log\_probs}_{n, y_n}

    Same shapes, ``weight``, ``ignore_index`` and ``reduction`` as
    :func:`cross_entropy`, which equals ``nll_loss(log_softmax(x), y)``.
    Only class-index targets are accepted, as in PyTorch.
    """

    arr, xp = D.array_in(log_probs, "log_probs")
    rows = _class_rows(arr, axis, "log_probs")
    red = D.choice(reduction, "reduction", REDUCTIONS)
    ignore = D.int_option(ignore_index, "ignore_index", "an int (the class index to ignore, -100 by default)")
    tgt = D.like(target, arr, xp, "target")
    if D.dtype_name(tgt.dtype) in D.FLOATS and tuple(tgt.shape) == tuple(arr.shape):
        raise TargetError(
            "nll_loss takes class-index targets only, as in PyTorch; use cross_entropy for probability targets."
        )
    tgt = class_target(tgt, rows, tuple(arr.shape), xp, "log_probs", ignore)
    w = check_class_weight(weight, rows.k, arr, xp)
    if rows.n == 0:
        return D.out(_empty_loss(rows.split(arr, xp), rows, red, xp), xp)
    loss = D.backend(arr).nll_loss(rows.split(arr, xp), tgt, xp, weight=w, ignore_index=ignore, reduction=red)
    return D.out(xp.reshape(loss, rows.batch) if red == "none" else loss, xp)


@overload
def binary_cross_entropy_with_logits(
    logits: NumpyIn,
    target: ArrayIn,
    /,
    *,
    weight: ArrayIn | None = None,
    pos_weight: ArrayIn | None = None,
    reduction: str = "mean",
) -> NumpyResult: ...


@overload
def binary_cross_entropy_with_logits(
    logits: ArrayT,
    target: ArrayIn,
    /,
    *,
    weight: ArrayIn | None = None,
    pos_weight: ArrayIn | None = None,
    reduction: str = "mean",
) -> ArrayT: ...


@overload
def binary_cross_entropy_with_logits(
    logits: npt.ArrayLike,
    target: ArrayIn,
    /,
    *,
    weight: ArrayIn | None = None,
    pos_weight: ArrayIn | None = None,
    reduction: str = "mean",
) -> NumpyResult: ...


def binary_cross_entropy_with_logits(
    logits: Any,
    target: ArrayIn,
    /,
    *,
    weight: ArrayIn | None = None,
    pos_weight: ArrayIn | None = None,
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

    arr, xp = D.array_in(logits, "logits")
    shape = tuple(arr.shape)
    t, _ = D.array_in(D.like(target, arr, xp, "target"), "target")
    if tuple(t.shape) != shape:
        raise ShapeError(f"target of shape {tuple(t.shape)} must have the logits' shape {shape}.")
    red = D.choice(reduction, "reduction", REDUCTIONS)
    w = None if weight is None else D.array_in(D.like(weight, arr, xp, "weight"), "weight")[0]
    w = None if w is None else D.broadcast(w, shape, xp, "weight", "the logits'")
    pw = None if pos_weight is None else D.array_in(D.like(pos_weight, arr, xp, "pos_weight"), "pos_weight")[0]
    if pw is not None:
        last = shape[-1:] if shape else ()
        if pw.ndim > 1 or (pw.ndim == 1 and tuple(pw.shape) not in ((1,), last)):
            raise ShapeError(
                f"pos_weight of shape {tuple(pw.shape)} must be a scalar or have one entry per class "
                f"along the last axis: shape {last}."
            )
        pw = D.broadcast(pw, shape, xp, "pos_weight", "the logits'")
    return D.out(D.backend(arr).bce(arr, t, xp, weight=w, pos_weight=pw, reduction=red), xp)
