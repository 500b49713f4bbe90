"""logsumexp, softmax and log_softmax, and their VJPs: the public functions.

Each function validates its arguments once, through :mod:`._dispatch`, and
hands rows to the backend of the input's library; the algorithm is the one
per-slice state of :mod:`._state` (Blanchard, Higham & Higham, "Accurately
computing the log-sum-exp and softmax functions", IMA J. Numer. Anal. 41,
2021):

* ``k = argmax(x)``, ``m = x[k]``; the shift ``d = x - m`` is made exact by
  carrying its rounding error (TwoSum);
* ``s`` is the sum of the terms other than the max term (which is exactly 1),
  so ``logsumexp = m + log1p(s)``;
* ``log_softmax = (x - m) - log1p(s)``, never ``x - logsumexp``;
* ``softmax = exp(x - m) / (1 + s)``.

Special values (``-inf``, ``+inf``, NaN, empty and masked slices) follow the
single table in :mod:`stablesoftmax._contract`.
"""

from __future__ import annotations

from typing import Any, Literal, overload

import numpy as np
import numpy.typing as npt

from . import _dispatch as D
from ._compute import (
    fast_logsumexp,
    fast_softmax,
    fast_vector_logsumexp,
    get_num_threads,
    reference_path,
    set_num_threads,
    set_reference_budget,
    triton_path,
)
from ._contract import documented
from ._dispatch import AxisLike
from ._errors import ShapeError
from ._typing import ArrayIn, ArrayT, NumpyArray, NumpyIn, NumpyResult

__all__ = [
    "logsumexp",
    "softmax",
    "log_softmax",
    "logsumexp_grad",
    "softmax_grad",
    "log_softmax_grad",
    "reference_path",
    "triton_path",
    "set_reference_budget",
    "set_num_threads",
    "get_num_threads",
]


@overload
def logsumexp(
    x: NumpyIn,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: Literal[False] = ...,
) -> NumpyResult: ...


@overload
def logsumexp(
    x: NumpyIn,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: Literal[True],
) -> tuple[NumpyResult, NumpyResult]: ...


@overload
def logsumexp(
    x: NumpyIn,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: bool,
) -> NumpyResult | tuple[NumpyResult, NumpyResult]: ...


@overload
def logsumexp(
    x: ArrayT,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: Literal[False] = ...,
) -> ArrayT: ...


@overload
def logsumexp(
    x: ArrayT,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: Literal[True],
) -> tuple[ArrayT, ArrayT]: ...


@overload
def logsumexp(
    x: ArrayT,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: bool,
) -> ArrayT | tuple[ArrayT, ArrayT]: ...


@overload
def logsumexp(
    x: npt.ArrayLike,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: Literal[False] = ...,
) -> NumpyResult: ...


@overload
def logsumexp(
    x: npt.ArrayLike,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: Literal[True],
) -> tuple[NumpyResult, NumpyResult]: ...


@overload
def logsumexp(
    x: npt.ArrayLike,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: bool,
) -> NumpyResult | tuple[NumpyResult, NumpyResult]: ...


@documented("logsumexp")
def logsumexp(
    x: Any,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
    return_sign: bool = False,
) -> Any:
    r"""Log of the sum of exponentials, ``log(sum(b * exp(x)))``, computed stably.

    .. math:: \operatorname{lse}(x) = m + \operatorname{log1p}\Big(\sum_{i \ne k} e^{x_i - m}\Big),
              \quad m = x_k = \max_i x_i

    Parameters
    ----------
    x : array_like
        Input: a NumPy array, a Python sequence, or any array-API array
        (PyTorch tensors included). float16, bfloat16, float32 and float64
        keep their dtype; integers and bools are promoted to float64.
    axis : int, tuple of ints or None, default -1
        Axes to reduce over. ``None`` reduces over every axis.
    keepdims : bool, default False
        Keep the reduced axes with length 1.
    where : array_like of bool, optional
        Entries where ``where`` is False are left out, exactly as if they
        were ``-inf``, whatever value they hold (NaN and ``inf`` included).
        Must broadcast to ``x``'s shape.
    b : array_like, optional
        Weights, broadcast to ``x``'s shape. A zero weight drops its term;
        negative weights may make the sum negative (see ``return_sign``).
    return_sign : bool, default False
        Return ``(log|sum|, sign(sum))``. Without it, a negative weighted sum
        gives NaN, as in SciPy.

    Returns
    -------
    array or (array, array)
        The reduction, of ``x``'s array type and dtype; with ``return_sign``
        also the sign (+1, -1, 0 for a zero sum, NaN for a NaN slice).

    See Also
    --------
    log_softmax, softmax, LogSumExp

    Notes
    -----
    Accuracy in float64: at most 2 ulp of ``max(|result|, max|x|)`` over the
    mpmath battery in ``tests/test_accuracy.py``; 16-bit and float32 input is
    computed in float64 and rounded once.

    Examples
    --------
    >>> import numpy as np
    >>> from stablesoftmax import logsumexp, naive
    >>> x = np.array([1000.0, 1001.0, 1002.0])
    >>> float(logsumexp(x))
    1002.4076059644444
    >>> with np.errstate(over="ignore"):
    ...     float(naive.logsumexp(x))
    inf
    """

    short = fast_vector_logsumexp(x, axis, where, b, keepdims, return_sign)
    if short is not None:
        return short
    if where is None and b is None and not return_sign:  # a plain ndarray: one kernel call, same bytes
        fast = fast_logsumexp(x, axis, keepdims)
        if fast is not None:
            return fast
    arr, xp, rows, mask, bb = _lse_inputs(x, axis, where, b)
    if rows.k == 0:
        lse = xp.full(rows.batch, -xp.inf, dtype=arr.dtype, device=D.device(arr))
        sign = xp.zeros_like(lse)
        lse = lse + rows.reduced(xp.sum(rows.split(arr, xp), axis=-1), xp, False)  # -inf, on x's graph
    else:
        lse, sign = D.backend(arr).logsumexp(
            rows.split(arr, xp), xp, mask=_split(rows, mask, xp), b=_split(rows, bb, xp)
        )
        if sign is None:
            sign = _sign_of(lse, xp) if return_sign else lse  # no sign asked: none is computed
        elif not return_sign:  # the log of a negative sum has no real value (as SciPy)
            lse = xp.where(sign < 0, xp.full_like(lse, xp.nan), lse)
        lse, sign = rows.reduced(lse, xp, False), rows.reduced(sign, xp, False)
    if keepdims:
        lse, sign = rows.reduced(lse, xp, True), rows.reduced(sign, xp, True)
    return (D.out(lse, xp), D.out(sign, xp)) if return_sign else D.out(lse, xp)


def _lse_inputs(x: Any, axis: AxisLike, where: Any, b: Any) -> tuple[Any, Any, D.Rows, Any, Any]:
    """Validated ``(x, xp, rows, mask, b)``; ``b`` and ``x`` broadcast together and promote, as in SciPy."""
    arr, xp = D.array_in(x, "x")
    bb = None
    if b is not None:
        arr, bb = D.weights_in(b, x, arr, xp)
        shape = _broadcast_shapes(tuple(arr.shape), tuple(bb.shape))
        arr = xp.broadcast_to(arr, shape)
        bb = xp.broadcast_to(bb, shape)
    rows = D.Rows.of(tuple(arr.shape), D.normalize_axes(axis, arr.ndim))
    return arr, xp, rows, D.mask_in(where, arr, xp, tuple(arr.shape)), bb


def _broadcast_shapes(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[int, ...]:
    try:
        return tuple(np.broadcast_shapes(a, b))
    except ValueError:
        raise ShapeError(f"b of shape {b} does not broadcast with x of shape {a}.") from None


def _split(rows: D.Rows, a: Any, xp: Any) -> Any:
    return None if a is None else rows.split(a, xp)


def _sign_of(lse: Any, xp: Any) -> Any:
    sign = xp.where(lse == -xp.inf, xp.zeros_like(lse), xp.ones_like(lse))
    return xp.where(xp.isnan(lse), xp.full_like(lse, xp.nan), sign)


@overload
def logsumexp_grad(
    x: NumpyIn,
    g: ArrayIn,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
) -> NumpyArray: ...


@overload
def logsumexp_grad(
    x: ArrayT,
    g: ArrayIn,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
) -> ArrayT: ...


@overload
def logsumexp_grad(
    x: npt.ArrayLike,
    g: ArrayIn,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
) -> NumpyArray: ...


def logsumexp_grad(
    x: Any,
    g: ArrayIn,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: ArrayIn | None = None,
    b: ArrayIn | None = None,
) -> Any:
    r"""Vector-Jacobian product of :func:`logsumexp` with respect to ``x``.

    .. math:: \frac{\partial}{\partial x_i} \log\Big|\sum_j b_j e^{x_j}\Big| \cdot g
              = g \, \frac{b_i e^{x_i - m}}{\sum_j b_j e^{x_j - m}}
              \quad (= g\,\operatorname{softmax}(x)_i \text{ without } b)

    ``g`` is the cotangent, shaped like :func:`logsumexp`'s result (with the
    same ``keepdims``). The max shift carries no gradient. Entries that are
    masked, ``-inf`` or have ``b = 0`` get exactly 0, and so does every entry
    of a slice whose max is ``+inf`` (the result stays ``+inf`` under any
    finite change) or ``-inf``. A NaN slice gives NaN.
    """

    arr, xp, rows, mask, bb = _lse_inputs(x, axis, where, b)
    gg = rows.cotangent(D.like(g, arr, xp, "g"), xp, keepdims)
    if rows.k == 0:
        return xp.zeros_like(arr)
    out = D.backend(arr).logsumexp_grad(
        rows.split(arr, xp), gg, xp, mask=_split(rows, mask, xp), b=_split(rows, bb, xp)
    )
    return rows.join(out, xp)


@overload
def softmax(
    x: NumpyIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> NumpyResult: ...


@overload
def softmax(x: ArrayT, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0) -> ArrayT: ...


@overload
def softmax(
    x: npt.ArrayLike, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> NumpyResult: ...


@documented("softmax")
def softmax(x: Any, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0) -> Any:
    r"""Softmax along ``axis``: ``exp(x / T) / sum(exp(x / T))``, computed stably.

    .. math:: \sigma(x)_i = \frac{e^{x_i - m}}{1 + \sum_{j \ne k} e^{x_j - m}}

    Parameters
    ----------
    x : array_like
        Logits; see :func:`logsumexp` for the accepted types and dtypes.
    axis : int, tuple of ints or None, default -1
        Axes the distribution is over (jointly, when several).
    where : array_like of bool, optional
        False entries get probability exactly 0 and never move the others.
    temperature : float, default 1.0
        Divides the logits before the shift. Finite and > 0.

    Returns
    -------
    array
        Probabilities of ``x``'s shape, array type and dtype.

    See Also
    --------
    log_softmax, logsumexp

    Notes
    -----
    Float64 results are within 4 ulp of the exact value over the mpmath
    battery; 16-bit and float32 results are within 1 ulp.

    Examples
    --------
    >>> import numpy as np
    >>> from stablesoftmax import softmax, naive
    >>> x = np.array([1.0, 92.0, 3.0, 0.0, 2.0], dtype=np.float32)
    >>> softmax(x).tolist()[1]
    1.0
    >>> with np.errstate(over="ignore", invalid="ignore"):
    ...     bool(np.isnan(naive.softmax(x)).any())
    True
    """

    return _elementwise(x, axis, where, temperature, log=False)


def _elementwise(x: Any, axis: AxisLike, where: Any, temperature: Any, *, log: bool) -> Any:
    fast = fast_softmax(x, axis, temperature, log) if where is None else None
    if fast is not None:  # a plain ndarray: one kernel call, same bytes
        return fast
    t = D.temperature(temperature)
    arr, xp = D.array_in(x, "x")
    rows = D.Rows.of(tuple(arr.shape), D.normalize_axes(axis, arr.ndim))
    mask = D.mask_in(where, arr, xp, tuple(arr.shape))
    if rows.k == 0 or rows.n == 0:  # empty: a copy (torch's clone, since asarray warns on a tensor that requires grad)
        return D.out(arr.clone() if D.library(arr) == "torch" else xp.asarray(arr, copy=True), xp)
    out = D.backend(arr).softmax(rows.split(arr, xp), xp, mask=_split(rows, mask, xp), temperature=t, log=log)
    return D.out(rows.join(out, xp), xp)


def _elementwise_grad(x: Any, g: Any, axis: AxisLike, where: Any, temperature: Any, *, log: bool) -> Any:
    t = D.temperature(temperature)
    arr, xp = D.array_in(x, "x")
    rows = D.Rows.of(tuple(arr.shape), D.normalize_axes(axis, arr.ndim))
    mask = D.mask_in(where, arr, xp, tuple(arr.shape))
    gg = D.broadcast(D.like(g, arr, xp, "g"), tuple(arr.shape), xp, "g", "x's")
    if rows.k == 0 or rows.n == 0:
        return xp.zeros_like(arr)
    out = D.backend(arr).softmax_grad(
        rows.split(arr, xp), rows.split(gg, xp), xp, mask=_split(rows, mask, xp), temperature=t, log=log
    )
    return rows.join(out, xp)


@overload
def softmax_grad(
    x: NumpyIn, g: ArrayIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> NumpyArray: ...


@overload
def softmax_grad(
    x: ArrayT, g: ArrayIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> ArrayT: ...


@overload
def softmax_grad(
    x: npt.ArrayLike, g: ArrayIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> NumpyArray: ...


def softmax_grad(
    x: Any, g: ArrayIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> Any:
    r"""Vector-Jacobian product of :func:`softmax` with respect to ``x``.

    .. math:: \bar x = \frac{1}{T}\, p \odot \big(g - \langle g, p \rangle\big),
              \quad p = \operatorname{softmax}(x / T)

    ``g`` has ``x``'s shape. The result sums to 0 along ``axis``. Masked and
    ``+-inf`` entries, and slices whose max is not finite, get exactly 0;
    NaN slices give NaN.
    """

    return _elementwise_grad(x, g, axis, where, temperature, log=False)


@overload
def log_softmax(
    x: NumpyIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> NumpyResult: ...


@overload
def log_softmax(
    x: ArrayT, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> ArrayT: ...


@overload
def log_softmax(
    x: npt.ArrayLike, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> NumpyResult: ...


@documented("log_softmax")
def log_softmax(x: Any, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0) -> Any:
    r"""Log of the softmax along ``axis``, computed without ever forming ``softmax``.

    .. math:: \log\sigma(x)_i = (x_i - m) - \operatorname{log1p}\Big(\sum_{j \ne k} e^{x_j - m}\Big)

    Parameters
    ----------
    x : array_like
        Logits; see :func:`logsumexp` for the accepted types and dtypes.
    axis : int, tuple of ints or None, default -1
        Axes the distribution is over.
    where : array_like of bool, optional
        False entries get ``-inf`` and never move the others.
    temperature : float, default 1.0
        Divides the logits before the shift. Finite and > 0.

    Returns
    -------
    array
        Log-probabilities of ``x``'s shape, array type and dtype.

    See Also
    --------
    softmax, logsumexp, cross_entropy

    Notes
    -----
    Computed as ``(x - m) - log1p(s)``, not ``x - logsumexp(x)``: at the max
    entry the latter subtracts two nearly equal numbers. Float64 results are
    within 2.5 ulp over the mpmath battery.

    Examples
    --------
    >>> import numpy as np
    >>> from stablesoftmax import log_softmax
    >>> x = np.array([10.0, 92.0, 30.0, -50.0, 40.0])
    >>> float(log_softmax(x)[1])       # SciPy and PyTorch give 0.0
    -2.6103975761543722e-23
    """

    return _elementwise(x, axis, where, temperature, log=True)


@overload
def log_softmax_grad(
    x: NumpyIn, g: ArrayIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> NumpyArray: ...


@overload
def log_softmax_grad(
    x: ArrayT, g: ArrayIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> ArrayT: ...


@overload
def log_softmax_grad(
    x: npt.ArrayLike, g: ArrayIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> NumpyArray: ...


def log_softmax_grad(
    x: Any, g: ArrayIn, /, *, axis: AxisLike = -1, where: ArrayIn | None = None, temperature: float = 1.0
) -> Any:
    r"""Vector-Jacobian product of :func:`log_softmax` with respect to ``x``.

    .. math:: \bar x = \frac{1}{T}\big(g - p \textstyle\sum_j g_j\big),
              \quad p = \operatorname{softmax}(x / T)

    ``g`` has ``x``'s shape. A ``-inf`` or masked entry gets exactly 0: any
    finite change leaves it ``-inf``, so it moves nothing. Slices whose max
    is not finite get 0; NaN slices give NaN.
    """

    return _elementwise_grad(x, g, axis, where, temperature, log=True)
