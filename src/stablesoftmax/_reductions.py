"""logsumexp, softmax and log_softmax: one shared shift, one contract.

Every function here computes in float64 and rounds once to the input dtype.
The algorithm (Blanchard, Higham & Higham, "Accurately computing the
log-sum-exp and softmax functions", IMA J. Numer. Anal. 41, 2021):

* ``k = argmax(x)``, ``m = x[k]``; the shift ``d = x - m`` is made exact by
  carrying its rounding error ``e`` (TwoSum), so ``exp(x - m)`` is
  ``exp(d) * (1 + e)`` to first order. Without it, ``exp`` amplifies the
  rounding of ``x - m`` by ``|x - m|`` (hundreds of ulps at scale 100).
* ``s`` is the sum of the terms other than the max term (which is exactly 1),
  so ``logsumexp = m + log1p(s)``: ``log(1 + s)`` would lose ``s`` whenever it
  is below one ulp of 1.
* ``log_softmax = (x - m) - log1p(s)``, never ``x - logsumexp``: the
  latter cancels catastrophically at the max entry.
* ``softmax = exp(x - m) / (1 + s)``.

Special values (``-inf``, ``+inf``, NaN, empty and masked slices) follow the
single table in :mod:`stablesoftmax._contract`.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _arrays, _torch_autograd
from ._arrays import AxisLike, Rows, Source
from ._contract import documented

__all__ = ["logsumexp", "softmax", "log_softmax", "logsumexp_grad", "softmax_grad", "log_softmax_grad"]


@documented("logsumexp")
def logsumexp(
    x: Any,
    /,
    *,
    axis: AxisLike = -1,
    keepdims: bool = False,
    where: Any = None,
    b: Any = None,
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
    if type(x) is np.ndarray and x.ndim == 1 and where is None and b is None and not keepdims and not return_sign:
        short = _short_vector_lse(x, axis)  # the common 1-D call, with the least overhead
        if short is not None:
            return short
    if _torch_autograd.wants_grad(x):
        out = _torch_autograd.apply("logsumexp", x, axis=axis, keepdims=keepdims, where=where, b=b)
        if return_sign:
            return out, logsumexp(x.detach(), axis=axis, keepdims=keepdims, where=where, b=b, return_sign=True)[1]
        return out
    fast = _compiled(x, axis, where, 1.0) if b is None else None
    if fast is not None:
        kernels, x2, rows, src = fast
        lse = kernels.lse_rows(x2).reshape(rows.batch)
        lse = rows.keepdims(lse) if keepdims else lse
        return _arrays.restore_pair(src, lse, _sign_of(lse)) if return_sign else src.restore(lse)
    xw, mask, rows, src, exact = _prepare(x, axis, where)
    if b is not None:
        weights = _arrays.wide(rows.split(_arrays.broadcast_like(b, rows.shape, "b", "x's")))
        lse, sign = _weighted_lse(xw, mask, weights, exact)
    else:
        lse = _lse_rows(xw, mask, exact)
        sign = _sign_of(lse)
    if keepdims:
        lse, sign = rows.keepdims(lse), rows.keepdims(sign)
    if return_sign:
        return _arrays.restore_pair(src, lse, sign)
    with np.errstate(invalid="ignore"):  # NaN sign stays NaN; a negative sum is NaN by contract
        lse = np.where(sign < 0, np.nan, lse)
    return src.restore(lse)


def logsumexp_grad(
    x: Any, g: Any, /, *, axis: AxisLike = -1, keepdims: bool = False, where: Any = None, b: Any = None
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
    xw, mask, rows, src, exact = _prepare(x, axis, where)
    gb = _cotangent(g, rows, keepdims)
    if rows.k == 0:
        return src.restore(np.zeros(rows.shape))
    if b is not None:
        weights = _arrays.wide(rows.split(_arrays.broadcast_like(b, rows.shape, "b", "x's")))
        keep = weights != 0
        mask = keep if mask is None else mask & keep
    sh = _shift(xw, mask, exact)
    t, s = _terms(sh, reuse=True)
    if b is None:
        p = _probs(sh, t, s)
    else:
        np.put_along_axis(t, sh.k, 1.0, axis=-1)
        t *= weights
        with np.errstate(divide="ignore", invalid="ignore"):  # a zero weighted sum has an infinite derivative
            p = t / t.sum(axis=-1, keepdims=True)
    p *= gb[..., None]
    return src.restore(rows.join(_zero_dead(p, sh)))


@documented("softmax")
def softmax(x: Any, /, *, axis: AxisLike = -1, where: Any = None, temperature: float = 1.0) -> Any:
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
    if _torch_autograd.wants_grad(x):
        return _torch_autograd.apply("softmax", x, axis=axis, where=where, temperature=temperature)
    fast = _compiled(x, axis, where, temperature)
    if fast is not None:
        return _compiled_rows(*fast, "softmax_rows")
    xw, mask, rows, src, exact = _prepare(x, axis, where, temperature)
    if rows.k == 0:
        return src.restore(rows.join(np.empty(xw.shape)))
    sh = _shift(xw, mask, exact)
    return src.restore(rows.join(_probs(sh, *_terms(sh, reuse=True))))


def softmax_grad(x: Any, g: Any, /, *, axis: AxisLike = -1, where: Any = None, temperature: float = 1.0) -> Any:
    r"""Vector-Jacobian product of :func:`softmax` with respect to ``x``.

    .. math:: \bar x = \frac{1}{T}\, p \odot \big(g - \langle g, p \rangle\big),
              \quad p = \operatorname{softmax}(x / T)

    ``g`` has ``x``'s shape. The result sums to 0 along ``axis``. Masked and
    ``+-inf`` entries, and slices whose max is not finite, get exactly 0;
    NaN slices give NaN.
    """
    p, sh, rows, src, t = _probs_for_grad(x, axis, where, temperature)
    gb = _cotangent_like(g, rows, sh)
    p *= gb - np.sum(gb * p, axis=-1, keepdims=True)
    p /= t
    return src.restore(rows.join(_zero_dead(p, sh)))


@documented("log_softmax")
def log_softmax(x: Any, /, *, axis: AxisLike = -1, where: Any = None, temperature: float = 1.0) -> Any:
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
    if _torch_autograd.wants_grad(x):
        return _torch_autograd.apply("log_softmax", x, axis=axis, where=where, temperature=temperature)
    fast = _compiled(x, axis, where, temperature)
    if fast is not None:
        return _compiled_rows(*fast, "log_softmax_rows")
    xw, mask, rows, src, exact = _prepare(x, axis, where, temperature)
    if rows.k == 0:
        return src.restore(rows.join(np.empty(xw.shape)))
    sh = _shift(xw, mask, exact)
    _, s = _terms(sh, reuse=False)
    return src.restore(rows.join(_log_probs(sh, np.log1p(s))))


def log_softmax_grad(x: Any, g: Any, /, *, axis: AxisLike = -1, where: Any = None, temperature: float = 1.0) -> Any:
    r"""Vector-Jacobian product of :func:`log_softmax` with respect to ``x``.

    .. math:: \bar x = \frac{1}{T}\big(g - p \textstyle\sum_j g_j\big),
              \quad p = \operatorname{softmax}(x / T)

    ``g`` has ``x``'s shape. A ``-inf`` or masked entry gets exactly 0: any
    finite change leaves it ``-inf``, so it moves nothing. Slices whose max
    is not finite get 0; NaN slices give NaN.
    """
    p, sh, rows, src, t = _probs_for_grad(x, axis, where, temperature)
    gb = _cotangent_like(g, rows, sh)
    p *= -np.sum(gb, axis=-1, keepdims=True)
    p += gb
    p /= t
    return src.restore(rows.join(_zero_dead(p, sh)))


# --------------------------------------------------------------------------
# The compiled path (numba), for NumPy input
# --------------------------------------------------------------------------

_KERNELS: Any = False  # the _kernels module once looked up; None when it cannot load
_REFERENCE = contextvars.ContextVar("stablesoftmax_reference_path", default=False)


@contextlib.contextmanager
def reference_path() -> Iterator[None]:
    """Within this block every function takes the pure-NumPy path.

    The lab uses it so that its results are the same bytes with or without
    the compiled extra (the two paths agree within the ulp goals, not bit
    for bit).
    """
    token = _REFERENCE.set(True)
    try:
        yield
    finally:
        _REFERENCE.reset(token)


def kernels() -> Any:
    """The compiled kernels module when it can run here, else None.

    Imported on first use, so ``import stablesoftmax`` does not import numba.
    ``STABLESOFTMAX_DISABLE_KERNELS=1`` turns the compiled path off.
    """
    global _KERNELS
    if _KERNELS is False:
        try:
            from . import _kernels as module
        except ImportError:  # numba present but broken: the NumPy path serves
            module = None
        _KERNELS = module
    if _KERNELS is None or _REFERENCE.get() or not _KERNELS.available():
        return None
    return _KERNELS


def _compiled(x: Any, axis: AxisLike, where: Any, temperature: Any):
    """``(kernels, rows2d, rows, src)`` when the compiled path applies, else None.

    It applies to NumPy arrays and sequences with no ``where`` and temperature
    1; its results are those of the NumPy path to within the same ulp goals
    (``tests/test_kernels.py``), special values included.
    """
    if where is not None or temperature != 1.0 or not _arrays.is_numpy_like(x):
        return None  # (any other temperature, valid or not, is checked on the NumPy path)
    module = kernels()
    if module is None:
        return None
    arr, src = _arrays.to_numpy(x, "x")
    rows = Rows.of(arr.shape, _arrays.normalize_axes(axis, arr.ndim))
    if rows.k == 0:
        return None
    x2 = np.ascontiguousarray(rows.split(arr).reshape(-1, rows.k))  # a copy only when the axes are not last
    if x2.dtype.itemsize == 2:
        x2 = x2.astype(np.float32)  # exact: every float16 and bfloat16 value is a float32
    return module, x2, rows, src


def _short_vector_lse(x: np.ndarray, axis: AxisLike) -> Any:
    """logsumexp of a 1-D float32/float64 array by one kernel call, or None to take the general path."""
    if axis not in (-1, 0) or type(axis) is not int or x.dtype.char not in "fd" or not x.size or not x.flags.c_contiguous:
        return None
    module = kernels()
    if module is None:
        return None
    return x.dtype.type(module.lse_vector(x))  # float64 -> float32 rounds once, as astype does


def _compiled_rows(module: Any, x2: np.ndarray, rows: Rows, src: Source, name: str) -> Any:
    """softmax or log_softmax rows by the kernel, rounded once to the input's dtype."""
    out = np.empty(x2.shape, x2.dtype if x2.dtype == src.dtype else np.float64)
    getattr(module, name)(x2, out)
    return src.restore(rows.join(out.reshape(rows.batch + (rows.k,))))


# --------------------------------------------------------------------------
# Gradient plumbing
# --------------------------------------------------------------------------


def _probs_for_grad(x: Any, axis: AxisLike, where: Any, temperature: float):
    """Softmax rows for a VJP: ``(p, shifted, rows, src, T)``."""
    xw, mask, rows, src, exact = _prepare(x, axis, where, temperature)
    if rows.k == 0:
        empty = np.empty(xw.shape)
        return empty, Shifted(empty, empty, None, empty[..., :0], empty[..., :0], np.ones(xw.shape[:-1] + (0,), bool)), rows, src, 1.0
    sh = _shift(xw, mask, exact)
    return _probs(sh, *_terms(sh, reuse=False)), sh, rows, src, _arrays.check_temperature(temperature)


def _cotangent(g: Any, rows: Rows, keepdims: bool) -> np.ndarray:
    """A reduction's cotangent as a ``batch``-shaped float64 array."""
    arr = _arrays.wide(_arrays.to_numpy(g, "g")[0])
    if keepdims:
        shape = tuple(1 if d in rows.axes else n for d, n in enumerate(rows.shape))
        return np.squeeze(_arrays.broadcast_like(arr, shape, "g", "the keepdims result's"), axis=rows.axes)
    return _arrays.broadcast_like(arr, rows.batch, "g", "the result's")


def _cotangent_like(g: Any, rows: Rows, sh: Shifted) -> np.ndarray:
    """An elementwise function's cotangent in rows like ``x``, zero at dead outputs.

    A dead output (masked, ``+-inf`` input, or a row whose max is not finite)
    is constant, so its cotangent must not reach any input.
    """
    arr = _arrays.wide(_arrays.to_numpy(g, "g")[0])
    gb = rows.split(_arrays.broadcast_like(arr, rows.shape, "g", "x's"))
    return np.where(_live(sh), gb, 0.0)


def _live(sh: Shifted) -> np.ndarray:
    """Entries a finite change of the input can move: finite, unmasked, in a finite-max row."""
    return sh.finite & np.isfinite(sh.xm)


def _zero_dead(grad: np.ndarray, sh: Shifted) -> np.ndarray:
    """Zero the gradient where the input cannot move the output; NaN rows stay NaN."""
    if grad.size == 0:
        return grad
    np.copyto(grad, 0.0, where=~_live(sh))
    grad[np.isnan(sh.m[..., 0])] = np.nan
    return grad


# --------------------------------------------------------------------------
# The shared shift
# --------------------------------------------------------------------------


@dataclass
class Shifted:
    """A row-wise shift by the max, shared by every function of the family.

    Arrays are ``(*batch, K)`` or ``(*batch, 1)``. ``xm`` is the input with
    masked entries set to ``-inf``; ``d = xm - m`` rounded, ``-inf`` on rows
    whose max is not finite; ``err`` the exact remainder ``(xm - m) - d``
    (zero where ``d`` is infinite), or None when the shift is exact.
    """

    xm: np.ndarray
    d: np.ndarray
    err: np.ndarray | None
    k: np.ndarray
    m: np.ndarray
    finite: np.ndarray


def _prepare(x: Any, axis: AxisLike, where: Any, temperature: float = 1.0):
    """Validate and reshape to rows: ``(xw, mask, rows, src, exact)``.

    ``xw`` is float64 and may be a view of the caller's array: never write to
    it. ``exact`` says whether ``x - m`` needs its TwoSum error term (only
    float64 input; for narrower input the float64 difference is exact to far
    below the output's ulp).
    """
    t = _arrays.check_temperature(temperature)
    arr, src = _arrays.to_numpy(x, "x")
    rows = Rows.of(arr.shape, _arrays.normalize_axes(axis, arr.ndim))
    mask = _arrays.as_mask(where, arr.shape)
    xw = _arrays.wide(rows.split(arr))
    if t != 1.0:
        with np.errstate(over="ignore"):  # x / T past float64's range is +-inf, handled by the contract
            xw = xw / t
    return xw, None if mask is None else rows.split(mask), rows, src, arr.dtype == np.float64


def _shift(xw: np.ndarray, mask: np.ndarray | None, exact: bool) -> Shifted:
    xm = xw if mask is None else np.where(mask, xw, -np.inf)
    k = np.argmax(xm, axis=-1, keepdims=True)  # the first NaN wins, so NaN rows are found too
    m = np.take_along_axis(xm, k, axis=-1)
    finite = np.isfinite(m)
    with np.errstate(over="ignore"):  # -max - max is -inf: a term of weight 0, which is exact
        if finite.all():
            d = xm - m
        else:
            d = np.full(xm.shape, -np.inf)
            np.subtract(xm, m, out=d, where=finite)
    err = _twosum_error(xm, m, d) if exact else None
    return Shifted(xm, d, err, k, m, finite)


def _twosum_error(a: np.ndarray, m: np.ndarray, d: np.ndarray) -> np.ndarray:
    """The exact ``(a - m) - d`` where ``d = fl(a - m)`` (Knuth's TwoSum)."""
    with np.errstate(invalid="ignore"):  # -inf entries give inf - inf here; zeroed below
        bv = d - a
        av = d - bv
        np.subtract(a, av, out=av)
        np.add(bv, m, out=bv)
        np.subtract(av, bv, out=av)
    np.copyto(av, 0.0, where=~np.isfinite(av))
    return av


def _terms(sh: Shifted, *, reuse: bool) -> tuple[np.ndarray, np.ndarray]:
    """``t = exp(x - m)`` with the max term zeroed, and ``s = sum(t)`` (keepdims).

    With ``reuse`` the buffers of ``d`` and ``err`` are overwritten.
    """
    with np.errstate(under="ignore"):  # terms below the subnormals are negligible next to the max term, 1
        t = np.exp(sh.d, out=sh.d if reuse else None)
        if sh.err is not None:
            corr = np.multiply(t, sh.err, out=sh.err if reuse else None)
            t += corr
    np.put_along_axis(t, sh.k, 0.0, axis=-1)
    return t, t.sum(axis=-1, keepdims=True)


def _lse_rows(xw: np.ndarray, mask: np.ndarray | None, exact: bool) -> np.ndarray:
    """Unweighted logsumexp of each row, shape ``batch``."""
    if xw.shape[-1] == 0:
        return np.full(xw.shape[:-1], -np.inf)
    sh = _shift(xw, mask, exact)
    _, s = _terms(sh, reuse=True)
    return (sh.m + np.log1p(s))[..., 0]


def _sign_of(lse: np.ndarray) -> np.ndarray:
    sign = np.where(lse == -np.inf, 0.0, 1.0)
    sign[np.isnan(lse)] = np.nan
    return sign


def _weighted_lse(xw: np.ndarray, mask: np.ndarray | None, b: np.ndarray, exact: bool):
    """``(log|sum(b exp x)|, sign)`` per row. Zero weights drop their term."""
    keep = b != 0
    mask = keep if mask is None else mask & keep
    if xw.shape[-1] == 0:
        return np.full(xw.shape[:-1], -np.inf), np.zeros(xw.shape[:-1])
    sh = _shift(xw, mask, exact)
    t, _ = _terms(sh, reuse=True)
    bk = np.where(sh.finite, np.take_along_axis(b, sh.k, axis=-1), 1.0)
    t *= b
    q = t.sum(axis=-1, keepdims=True) / bk  # the sum is bk * (1 + q)
    with np.errstate(divide="ignore"):  # q == -1 is an exact zero sum: log 0 = -inf
        log_rest = np.where(q > -1, np.log1p(np.maximum(q, -1)), np.log(np.abs(1 + q)))
    lse = sh.m + np.log(np.abs(bk)) + log_rest
    sign = np.sign(bk) * np.sign(1 + q)
    _fix_weighted_rows(lse, sign, sh, b)
    return lse[..., 0], sign[..., 0]


def _fix_weighted_rows(lse: np.ndarray, sign: np.ndarray, sh: Shifted, b: np.ndarray) -> None:
    bad = ~sh.finite[..., 0]
    if not bad.any():
        return
    m = sh.m[bad][:, 0]
    at_inf = np.where(sh.xm[bad] == np.inf, b[bad], 0.0).sum(axis=-1)
    lse[bad, 0] = np.where(m == np.inf, np.where(at_inf != 0, np.inf, np.nan), m)
    sign[bad, 0] = np.where(m == np.inf, np.sign(at_inf), np.where(m == -np.inf, 0.0, np.nan))
    sign[bad & np.isnan(lse[..., 0]), 0] = np.nan


def _probs(sh: Shifted, t: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Softmax from the terms: ``t`` (max term zeroed) becomes ``t / (1 + s)`` in place."""
    np.put_along_axis(t, sh.k, 1.0, axis=-1)
    t /= 1.0 + s
    _fix_rows(t, sh, "softmax")
    return t


def _log_probs(sh: Shifted, log_rest: np.ndarray) -> np.ndarray:
    """Log-softmax ``(x - m) - log1p(s)`` as a new array; ``log_rest`` is ``log1p(s)``."""
    out = sh.d - log_rest
    if sh.err is not None:
        out += sh.err
    _fix_rows(out, sh, "log_softmax")
    return out


def _fix_rows(out: np.ndarray, sh: Shifted, kind: str) -> None:
    """Write the contract's values into rows whose max is not finite."""
    bad = ~sh.finite[..., 0]
    if bad.any():
        out[bad] = contract_rows(sh.xm[bad], sh.m[bad], kind)


def contract_rows(xb: np.ndarray, m: np.ndarray, kind: str) -> np.ndarray:
    """Softmax or log_softmax of rows ``xb`` whose max ``m`` is not finite.

    ``-inf`` max (all ``-inf`` or all masked): softmax 0, log_softmax ``-inf``.
    ``+inf`` max: the limit, uniform over the ``+inf`` entries. NaN: NaN.
    """
    at_inf = xb == np.inf
    count = np.maximum(at_inf.sum(axis=-1, keepdims=True), 1)
    if kind == "softmax":
        vals = np.where(m == np.inf, at_inf / count, 0.0)
    else:
        vals = np.where(m == np.inf, np.where(at_inf, -np.log(count), -np.inf), -np.inf)
    vals[np.isnan(m[..., 0])] = np.nan
    return vals
